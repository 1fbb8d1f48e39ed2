"""Small, offline image data sets for demos and tests.

Nothing here downloads anything: the digits come from scikit-learn's bundled copy of the UCI
optical-recognition digits (1,797 images of 8x8 pixels, intensities 0..16).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["write_digit_pngs"]


def _digits() -> tuple[np.ndarray, np.ndarray]:
    """Return ``(images, labels)`` from sklearn's bundled digits (imported lazily)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "scikit-learn is needed for the digits data set: pip install -e '.[test]'"
        ) from exc
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
