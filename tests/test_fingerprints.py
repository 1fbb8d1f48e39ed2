"""Pixel fingerprints for near-duplicates: the copies dedupe must catch (resize, JPEG
re-encode, brightness, a few per cent cropped at any side) pair with their original; different
scenes, also over one shared smooth background, and another aspect ratio do not."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image

from ml_backend.devtools.datasets import shape_scenes
from ml_backend.quality.fingerprints import (
    Fingerprints,
    crop_boxes,
    fingerprint_pairs,
    fingerprints,
)


def _jpeg(pixels: np.ndarray) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=75)
    return np.asarray(Image.open(buffer).convert("RGB"))


def _resized(pixels: np.ndarray) -> np.ndarray:
    h, w = pixels.shape[:2]
    return np.asarray(Image.fromarray(pixels).resize((w * 3 // 2, h * 3 // 2)))


def _cropped(side: str) -> Callable[[np.ndarray], np.ndarray]:
    def crop(pixels: np.ndarray) -> np.ndarray:
        h, w = pixels.shape[:2]
        dy, dx = round(0.05 * h), round(0.05 * w)
        part = {"top-left": pixels[dy:, dx:], "bottom-right": pixels[:-dy, :-dx],
                "centre": pixels[dy // 2:h - dy // 2, dx // 2:w - dx // 2]}[side]
        return np.asarray(Image.fromarray(part).resize((w, h), Image.Resampling.BILINEAR))
    return crop


COPIES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "same": lambda p: p.copy(), "jpeg": _jpeg, "resize": _resized,
    "brighter": lambda p: np.clip(p.astype(np.int16) + 15, 0, 255).astype(np.uint8),
    **{f"crop {side}": _cropped(side) for side in ("top-left", "bottom-right", "centre")}}


@pytest.fixture(scope="module")
def scenes() -> list[np.ndarray]:
    return [s.pixels for s in shape_scenes(12, seed=8)]


@pytest.mark.parametrize("kind", list(COPIES))
def test_a_copy_pairs_with_its_original_only(scenes: list[np.ndarray], kind: str) -> None:
    copy = _jpeg(COPIES[kind](scenes[4])) if kind != "same" else scenes[4].copy()
    pairs = fingerprint_pairs(fingerprints([*scenes, copy]))
    assert pairs.tolist() == [[4, len(scenes)]]


def test_scenes_over_one_gradient_are_not_paired() -> None:
    ramp = np.linspace(0, 255, 320)[None, :, None] * np.ones((240, 1, 3))
    images = []
    for x, y in [(20, 20), (140, 20), (260, 20), (20, 180), (140, 180), (260, 180)]:
        image = ramp.copy()
        image[y:y + 40, x:x + 40] = (200, 30, 90)  # one square each, at different places
        images.append(image.astype(np.uint8))
    assert fingerprint_pairs(fingerprints(images)).tolist() == []


def test_another_aspect_ratio_is_not_a_near_duplicate(scenes: list[np.ndarray]) -> None:
    square = scenes[1]  # 256 x 256
    wide = np.asarray(Image.fromarray(square).resize((384, 256)))
    assert fingerprint_pairs(fingerprints([square, square.copy()])).tolist() == [[0, 1]]
    assert fingerprint_pairs(fingerprints([square, wide])).tolist() == []


def test_blocks_do_not_change_the_pairs(scenes: list[np.ndarray]) -> None:
    prints = fingerprints([*scenes, scenes[2], _jpeg(scenes[7])])
    assert fingerprint_pairs(prints, block=3).tolist() == \
        fingerprint_pairs(prints, block=256).tolist() == [[2, 12], [7, 13]]


def test_shapes_and_empty_input() -> None:
    prints = fingerprints([np.zeros((30, 50, 3), np.uint8), np.full((30, 50), 9, np.uint8)])
    views = len(crop_boxes(50, 30))
    assert views == 11 and crop_boxes(50, 30)[0] == (0.0, 0.0, 50.0, 30.0)
    assert prints.colour.shape == (2, views, 768) and prints.colour.dtype == np.float16
    assert prints.detail.shape == (2, views, 256) and prints.detail.dtype == np.float32
    # A flat image has no pattern to match: its rows are zero, and it pairs with nothing.
    assert not prints.detail.any() and fingerprint_pairs(prints).tolist() == []
    empty = fingerprints([])
    assert isinstance(empty, Fingerprints) and len(empty) == 0
    assert fingerprint_pairs(empty).shape == (0, 2)
