"""The glyph set (the harder active-learning benchmark's data): images of the right shape,
the same pixels for the same seed, every class present and the classes uneven."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ml_backend.devtools.datasets import (
    GLYPH_CLASSES,
    GLYPH_IMBALANCE,
    glyph_class_counts,
    render_glyphs,
    write_glyph_pngs,
)


def test_images_are_rgb_uint8_of_the_requested_size() -> None:
    images, labels = render_glyphs(12, size=32, seed=3)
    assert len(images) == len(labels) == 12
    assert labels.dtype.kind == "i"
    assert set(labels.tolist()) <= set(range(len(GLYPH_CLASSES)))
    for pixels in images:
        assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8
        assert pixels.std() > 5  # something is drawn, not a flat fill


def test_the_same_seed_gives_the_same_pixels_and_another_seed_does_not() -> None:
    first, first_labels = render_glyphs(8, size=32, seed=7)
    again, again_labels = render_glyphs(8, size=32, seed=7)
    other, _ = render_glyphs(8, size=32, seed=8)
    np.testing.assert_array_equal(first_labels, again_labels)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_every_class_present_and_the_largest_about_three_times_the_smallest() -> None:
    _, labels = render_glyphs(60, size=16, seed=0)
    counts = np.bincount(labels, minlength=len(GLYPH_CLASSES))
    assert (counts > 0).all()
    np.testing.assert_array_equal(counts, glyph_class_counts(60))
    big = glyph_class_counts(1000)
    assert big.sum() == 1000 and (np.diff(big) <= 0).all()  # falling from class 0
    assert abs(big[0] / big[-1] - GLYPH_IMBALANCE) < 0.1


def test_pngs_hold_the_rendered_pixels(tmp_path: Path) -> None:
    written = write_glyph_pngs(tmp_path, 5, size=32, seed=1)
    images, labels = render_glyphs(5, size=32, seed=1)
    assert [label for _, label in written] == labels.tolist()
    for (path, _), pixels in zip(written, images, strict=True):
        with Image.open(path) as image:
            np.testing.assert_array_equal(np.asarray(image.convert("RGB")), pixels)
