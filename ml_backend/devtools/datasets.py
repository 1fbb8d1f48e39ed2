"""Small, offline image data sets for demos and tests.

Nothing here downloads anything: the digits come from scikit-learn's bundled copy of the UCI
optical-recognition digits (1,797 images of 8x8 pixels, intensities 0..16).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["SHAPE_CLASSES", "ShapeScene", "render_shape_scene", "shape_scenes", "write_digit_pngs",
           "write_shape_pngs"]


def _digits() -> tuple[np.ndarray, np.ndarray]:
    """Return ``(images, labels)`` from sklearn's bundled digits."""
    # Imported here: sklearn takes a while to import and only the demos and benchmarks use it.
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return np.asarray(bunch.images), np.asarray(bunch.target)


def write_digit_pngs(
    out_dir: Path, count: int, size: int = 64, seed: int = 0
) -> list[tuple[Path, int]]:
    """Render ``count`` handwritten digits as grayscale PNGs of ``size`` x ``size`` pixels.

    Images are drawn without replacement in a class-balanced, seeded order (same
    ``seed`` and ``count`` give the same files), scaled from 0..16 to 0..255 (dark digit on a
    white background, as a person would draw it) and upscaled with nearest neighbour.
    Files are named ``digit_<index>_<label>.png`` after their index in the data set.

    Returns ``(path, label)`` pairs in the order written.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if size < 8:
        raise ValueError(f"size must be >= 8, got {size}")
    images, labels = _digits()
    if count > len(images):
        raise ValueError(f"count={count} exceeds the {len(images)} digits available")

    rng = np.random.default_rng(seed)
    # Round-robin over classes, each class shuffled: the first 10*k images hold k per digit.
    per_class = [rng.permutation(np.flatnonzero(labels == c)).tolist() for c in range(10)]
    order: list[int] = []
    while len(order) < count:
        for bucket in per_class:
            if bucket and len(order) < count:
                order.append(bucket.pop(0))

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[tuple[Path, int]] = []
    for index in order:
        pixels = 255 - np.clip(images[index] * (255.0 / 16.0), 0, 255).round().astype(np.uint8)
        image = Image.fromarray(pixels, mode="L").resize((size, size), Image.Resampling.NEAREST)
        label = int(labels[index])
        path = out_dir / f"digit_{index:04d}_{label}.png"
        image.save(path, format="PNG")
        written.append((path, label))
    return written


# --- Synthetic shapes with exact boxes (detection benchmark and tests) ----------------------

SHAPE_CLASSES = ("circle", "square", "triangle")
SHAPE_IMAGE_SIZES = ((320, 240), (256, 256), (240, 320))  # width, height: three aspects


@dataclass(frozen=True)
class ShapeScene:
    """One synthetic image ``pixels (H, W, 3) uint8`` with its objects' exact boxes
    ``xyxy (N, 4)`` (pixels) and class names ``labels``."""

    pixels: np.ndarray
    xyxy: np.ndarray
    labels: tuple[str, ...]


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    kind = rng.integers(3)
    if kind == 0:  # solid
        return np.broadcast_to(rng.integers(0, 256, 3), (height, width, 3)).astype(np.float64)
    if kind == 1:  # linear gradient between two colours
        a, b = rng.integers(0, 256, (2, 3))
        t = np.linspace(0, 1, width if rng.integers(2) else height)
        ramp = a + (b - a) * t[:, None]
        return (np.broadcast_to(ramp[None], (height, width, 3)) if len(t) == width
                else np.broadcast_to(ramp[:, None], (height, width, 3))).astype(np.float64)
    # low-frequency colour noise: a coarse random grid upsampled
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
    return np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC), np.float64)


def _contrasting(rng: np.random.Generator, under: np.ndarray) -> tuple[int, int, int]:
    """A colour far enough from the mean colour under the object to be visible."""
    for _ in range(50):
        colour = rng.integers(0, 256, 3)
        if np.abs(colour - under).sum() > 160:
            break
    return tuple(int(c) for c in colour)  # type: ignore[return-value]


def render_shape_scene(rng: np.random.Generator, width: int, height: int,
                       max_objects: int = 5) -> ShapeScene:
    """1–``max_objects`` non-overlapping circles, squares (rotated) and triangles (rotated)
    of varied sizes and colours over a varied background with clutter (lines and dots that
    are not objects). Boxes come from the geometry, so they are exact up to rasterisation."""
    from PIL import ImageDraw

    canvas = _background(rng, width, height)
    image = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 9))):  # clutter: thin lines and small dots
        x1, x2 = rng.integers(0, width, 2)
        y1, y2 = rng.integers(0, height, 2)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.integers(2):
            draw.line([(x1, y1), (x2, y2)], fill=colour, width=int(rng.integers(1, 3)))
        else:
            r = int(rng.integers(1, 4))
            draw.ellipse([x1 - r, y1 - r, x1 + r, y1 + r], fill=colour)
    boxes: list[np.ndarray] = []
    labels: list[str] = []
    short = min(width, height)
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _attempt in range(30):
            size = float(rng.uniform(0.1, 0.4) * short)
            cx = float(rng.uniform(size / 2 + 1, width - size / 2 - 1))
            cy = float(rng.uniform(size / 2 + 1, height - size / 2 - 1))
            label = SHAPE_CLASSES[int(rng.integers(len(SHAPE_CLASSES)))]
            if label == "circle":
                points = None
                box = np.array([cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2])
            else:
                corners = 4 if label == "square" else 3
                radius = size / 2 if corners == 3 else size / 2 / np.sqrt(2) * np.sqrt(2)
                angles = rng.uniform(0, 2 * np.pi) + np.arange(corners) * 2 * np.pi / corners
                points = np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], 1)
                box = np.concatenate([points.min(0), points.max(0)])
            if all(box[0] > b[2] + 2 or box[2] < b[0] - 2 or box[1] > b[3] + 2
                   or box[3] < b[1] - 2 for b in boxes):
                break
        else:
            continue  # no free place for this object
        x1, y1, x2, y2 = (int(v) for v in box.clip(0, [width, height, width, height]))
        under = np.asarray(image)[y1:y2 + 1, x1:x2 + 1].reshape(-1, 3).mean(0)
        colour = _contrasting(rng, under)
        if points is None:
            draw.ellipse(box.tolist(), fill=colour)
        else:
            draw.polygon([tuple(p) for p in points.tolist()], fill=colour)
        boxes.append(box)
        labels.append(label)
    return ShapeScene(np.asarray(image).copy(), np.array(boxes, dtype=np.float64).reshape(-1, 4),
                      tuple(labels))


def write_shape_pngs(out_dir: Path, count: int, seed: int = 0) -> list[tuple[Path, ShapeScene]]:
    """Render ``count`` seeded shape scenes as ``shapes_<index>.png`` files in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for i, scene in enumerate(shape_scenes(count, seed)):
        path = out_dir / f"shapes_{i:04d}.png"
        Image.fromarray(scene.pixels).save(path, format="PNG")
        written.append((path, scene))
    return written


def shape_scenes(count: int, seed: int = 0) -> list[ShapeScene]:
    """``count`` seeded scenes, cycling through three image sizes (landscape, square,
    portrait)."""
    rng = np.random.default_rng(seed)
    return [render_shape_scene(rng, *SHAPE_IMAGE_SIZES[i % len(SHAPE_IMAGE_SIZES)])
            for i in range(count)]
