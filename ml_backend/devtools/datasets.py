"""Small, offline image data sets for demos and tests.

Nothing here downloads anything: the digits come from scikit-learn's bundled copy of the UCI
optical-recognition digits (1,797 images of 8x8 pixels, intensities 0..16); the shape scenes
and the glyphs are drawn here (the glyphs with the fonts matplotlib ships).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["GLYPH_CLASSES", "SHAPE_CLASSES", "ShapeScene", "glyph_class_counts", "render_glyph",
           "render_glyphs", "render_shape_scene", "shape_scenes", "write_digit_pngs",
           "write_glyph_pngs", "write_shape_pngs"]


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
    ``xyxy (N, 4)`` (pixels), class names ``labels`` and masks ``masks (N, H, W) bool`` (each
    object's own pixels, as drawn: objects never overlap)."""

    pixels: np.ndarray
    xyxy: np.ndarray
    labels: tuple[str, ...]
    masks: np.ndarray


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
    masks: list[np.ndarray] = []
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
        mask = Image.new("1", (width, height))
        for target, fill in ((draw, colour), (ImageDraw.Draw(mask), 1)):
            if points is None:
                target.ellipse(box.tolist(), fill=fill)
            else:
                target.polygon([tuple(p) for p in points.tolist()], fill=fill)
        boxes.append(box)
        labels.append(label)
        masks.append(np.asarray(mask, dtype=bool))
    return ShapeScene(np.asarray(image).copy(), np.array(boxes, dtype=np.float64).reshape(-1, 4),
                      tuple(labels), np.array(masks, dtype=bool).reshape(-1, height, width))


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


# --- Glyphs: characters in several fonts, rotated, blurred, noisy, cluttered ----------------

# Ten capitals with shared strokes (E/T/H, K/X, C/O/S, Z/S). A set of near-twins (O/Q, C/G,
# 8/B, 5/S, 2/Z) was tried first: a randomly initialised backbone (the product without
# downloaded weights) then reached 21 % (5-fold CV of a logistic regression on 1000), too
# close to chance for a learning curve; these reach about 40 %.
GLYPH_CLASSES = ("A", "C", "E", "H", "K", "O", "S", "T", "X", "Z")
# The fonts matplotlib ships (file names under its ``fonts/ttf``): sans, serif, mono and
# STIX, upright, bold and slanted.
GLYPH_FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf",
               "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf",
               "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "STIXGeneral.ttf",
               "STIXGeneralItalic.ttf")
GLYPH_IMBALANCE = 3.0  # the largest class over the smallest


def glyph_font_paths() -> list[Path]:
    """The :data:`GLYPH_FONTS` found in matplotlib's data directory (no network: the files
    come with the package)."""
    import matplotlib

    root = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    found = [root / name for name in GLYPH_FONTS if (root / name).is_file()]
    if not found:
        raise FileNotFoundError(f"none of {GLYPH_FONTS} in {root}")
    return found


def glyph_class_counts(count: int, n_classes: int = len(GLYPH_CLASSES),
                       imbalance: float = GLYPH_IMBALANCE) -> np.ndarray:
    """Images per class: weights falling geometrically from class 0 to the last, so the
    first class has ``imbalance`` times the last one's share; rounded to sum to ``count``
    (largest remainders first)."""
    weights = imbalance ** (-np.arange(n_classes) / max(n_classes - 1, 1))
    exact = count * weights / weights.sum()
    counts = np.floor(exact).astype(np.int64)
    for c in np.argsort(-(exact - counts), kind="stable")[:count - int(counts.sum())]:
        counts[c] += 1
    return counts


def _glyph_mask(char: str, font_path: Path, side: int,
                scale: float, offset: tuple[float, float], angle: float) -> np.ndarray:
    """Coverage ``(side, side)`` in 0..1 of ``char`` drawn at ``scale`` × ``side`` pixels
    high, centred at the middle plus ``offset`` (fractions of ``side``), rotated by
    ``angle`` degrees."""
    from PIL import ImageDraw, ImageFont

    font = ImageFont.truetype(str(font_path), max(4, int(scale * side)))
    mask = Image.new("L", (side, side), 0)
    centre = (side / 2 + offset[0] * side, side / 2 + offset[1] * side)
    ImageDraw.Draw(mask).text(centre, char, fill=255, font=font, anchor="mm")
    mask = mask.rotate(angle, resample=Image.Resampling.BICUBIC, center=centre)
    return np.asarray(mask, dtype=np.float64) / 255.0


def render_glyph(rng: np.random.Generator, label: int, size: int = 64,
                 fonts: list[Path] | None = None) -> np.ndarray:
    """One ``(size, size, 3) uint8`` grey image of ``GLYPH_CLASSES[label]``: a random font,
    rotation (±30°), scale and offset; random grey levels for background (with a gradient)
    and ink; clutter behind and over it (lines, dots, a fragment of another character near
    the border); Gaussian blur and pixel noise. Drawn at twice the size and reduced, so
    edges are anti-aliased."""
    from PIL import ImageDraw, ImageFilter

    fonts = fonts or glyph_font_paths()
    side = 2 * size
    background = float(rng.uniform(0, 255))
    # Ink at least 70 grey levels from the background, on either side of it.
    choices = [v for v in (background - rng.uniform(70, 255), background + rng.uniform(70, 255))
               if 0 <= v <= 255]
    ink = float(choices[int(rng.integers(len(choices)))]) if choices else 255.0 - background
    ramp = rng.uniform(-35, 35) * np.linspace(-1, 1, side)
    canvas = background + (ramp[None, :] if rng.integers(2) else ramp[:, None])
    canvas = np.broadcast_to(canvas, (side, side)).copy()

    def clutter(n: int) -> None:
        layer = Image.new("L", (side, side), 0)
        shade = Image.new("L", (side, side), 0)
        draw, paint = ImageDraw.Draw(layer), ImageDraw.Draw(shade)
        for _ in range(n):
            grey = int(rng.integers(0, 256))
            x1, y1, x2, y2 = (int(v) for v in rng.integers(0, side, 4))
            if rng.random() < 0.6:
                width = int(rng.integers(1, max(2, side // 32)))
                draw.line([(x1, y1), (x2, y2)], fill=255, width=width)
                paint.line([(x1, y1), (x2, y2)], fill=grey, width=width)
            else:
                r = int(rng.integers(1, max(2, side // 24)))
                draw.ellipse([x1 - r, y1 - r, x1 + r, y1 + r], fill=255)
                paint.ellipse([x1 - r, y1 - r, x1 + r, y1 + r], fill=grey)
        alpha = np.asarray(layer, dtype=np.float64) / 255.0
        canvas[:] = canvas * (1 - alpha) + np.asarray(shade, dtype=np.float64) * alpha

    clutter(int(rng.integers(0, 5)))  # behind the glyph
    # A fragment of another character, small, centred near an edge (partly cut off).
    other = GLYPH_CLASSES[int(rng.integers(len(GLYPH_CLASSES)))]
    edge = float(rng.uniform(0.38, 0.5) * rng.choice([-1.0, 1.0]))
    along = float(rng.uniform(-0.4, 0.4))
    where = (edge, along) if rng.integers(2) else (along, edge)
    fragment = _glyph_mask(other, fonts[int(rng.integers(len(fonts)))], side,
                           float(rng.uniform(0.2, 0.35)), where, float(rng.uniform(-180, 180)))
    canvas[:] = canvas * (1 - fragment) + float(rng.uniform(0, 255)) * fragment
    glyph = _glyph_mask(GLYPH_CLASSES[label], fonts[int(rng.integers(len(fonts)))], side,
                        float(rng.uniform(0.55, 0.8)),
                        (float(rng.uniform(-0.08, 0.08)), float(rng.uniform(-0.08, 0.08))),
                        float(rng.uniform(-30, 30)))
    canvas[:] = canvas * (1 - glyph) + ink * glyph
    clutter(int(rng.integers(0, 3)))  # over the glyph: occlusion
    image = Image.fromarray(canvas.clip(0, 255).astype(np.uint8), mode="L")
    image = image.resize((size, size), Image.Resampling.LANCZOS)
    image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.0, 0.8))))
    pixels = np.asarray(image, dtype=np.float64)
    pixels = pixels + rng.normal(0.0, float(rng.uniform(0, 12)), pixels.shape)
    grey = pixels.clip(0, 255).round().astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def render_glyphs(count: int, size: int = 64, seed: int = 0
                  ) -> tuple[list[np.ndarray], np.ndarray]:
    """``count`` glyph images (``(size, size, 3) uint8`` RGB) and their labels (indices into
    :data:`GLYPH_CLASSES`), classes uneven (:func:`glyph_class_counts`), in a shuffled order.
    The same ``count``, ``size`` and ``seed`` give the same pixels."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if size < 16:
        raise ValueError(f"size must be >= 16, got {size}")
    rng = np.random.default_rng(seed)
    counts = glyph_class_counts(count)
    labels = rng.permutation(np.repeat(np.arange(len(GLYPH_CLASSES)), counts))
    fonts = glyph_font_paths()
    return [render_glyph(rng, int(label), size, fonts) for label in labels], labels


def write_glyph_pngs(out_dir: Path, count: int, size: int = 64, seed: int = 0
                     ) -> list[tuple[Path, int]]:
    """:func:`render_glyphs` saved as ``glyph_<index>_<label>.png`` in ``out_dir``; returns
    ``(path, label)`` pairs in order."""
    images, labels = render_glyphs(count, size, seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[tuple[Path, int]] = []
    for i, (pixels, label) in enumerate(zip(images, labels, strict=True)):
        path = out_dir / f"glyph_{i:04d}_{int(label)}.png"
        Image.fromarray(pixels).save(path, format="PNG")
        written.append((path, int(label)))
    return written
