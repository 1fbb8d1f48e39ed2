"""The vectorised brush RLE against label-studio-sdk's reference encoder and decoder."""

from __future__ import annotations

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle as sdk_decode_rle
from label_studio_sdk.converter.brush import encode_rle as sdk_encode_rle
from label_studio_sdk.converter.brush import mask2rle

from ml_backend.labelstudio.rle import decode_rle, encode_rle, mask_to_rle, rle_to_mask


def _masks(count: int, seed: int = 0) -> list[np.ndarray]:
    """Random and edge-case masks: empty, full, single pixels, odd sizes, stripes, blobs,
    noise, every 8-bit value, and runs around the format's 65536 boundary."""
    rng = np.random.default_rng(seed)
    edge = [np.zeros((1, 1), np.uint8), np.full((1, 1), 255, np.uint8),
            np.zeros((300, 300), np.uint8), np.full((301, 299), 255, np.uint8),
            np.zeros((1, 16384), np.uint8), np.zeros((1, 16385), np.uint8),
            np.full((128, 129), 7, np.uint8), np.arange(256, dtype=np.uint8).reshape(16, 16)]
    single = np.zeros((7, 9), np.uint8)
    single[3, 4] = 255
    edge.append(single)
    masks = list(edge)
    while len(masks) < count:
        h, w = (int(v) for v in rng.integers(1, 48, 2))
        kind = len(masks) % 4
        if kind == 0:  # noise of random density
            mask = (rng.random((h, w)) < rng.random()).astype(np.uint8) * 255
        elif kind == 1:  # arbitrary 8-bit values
            mask = rng.integers(0, 256, (h, w)).astype(np.uint8)
        elif kind == 2:  # stripes
            mask = np.zeros((h, w), np.uint8)
            mask[:, ::int(rng.integers(1, 5))] = 255
        else:  # a filled disc
            yy, xx = np.mgrid[:h, :w]
            radius = rng.uniform(1, max(h, w))
            mask = (((yy - rng.uniform(0, h)) ** 2 + (xx - rng.uniform(0, w)) ** 2)
                    < radius ** 2).astype(np.uint8) * 255
        masks.append(mask)
    return masks


def test_byte_identical_to_the_sdk_on_1000_masks() -> None:
    masks = _masks(1000)
    mismatches = [m.shape for m in masks if mask_to_rle(m) != mask2rle(m)]
    assert not mismatches
    for mask in masks[:200]:
        assert np.array_equal(rle_to_mask(mask_to_rle(mask), *mask.shape), mask)


def test_general_arrays_match_the_sdk_including_single_values() -> None:
    rng = np.random.default_rng(1)
    for _ in range(200):
        values = rng.integers(0, 3, int(rng.integers(1, 300)))
        rle = encode_rle(values)
        assert rle.tolist() == sdk_encode_rle(values)
        assert np.array_equal(decode_rle(rle), values)
        assert np.array_equal(sdk_decode_rle(bytes(rle)), values)


def test_decoder_reads_literal_records_of_several_values() -> None:
    # Header: 5 values, 8-bit words, sizes 3/4/8/16; one literal record of 3 values (flag 0,
    # index 0, length-1 = 2), then a run of 2 sevens (flag 1, index 0, length-1 = 1).
    bits = (f"{5:032b}{7:05b}" + "".join(f"{s - 1:04b}" for s in (3, 4, 8, 16))
            + "0" + "00" + "010" + f"{1:08b}{2:08b}{3:08b}" + "1" + "00" + "001" + f"{7:08b}")
    bits += "0" * (-len(bits) % 8)
    data = [int(bits[i:i + 8], 2) for i in range(0, len(bits), 8)]
    assert decode_rle(data).tolist() == [1, 2, 3, 7, 7]


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match=r"0\.\.255"):
        encode_rle(np.array([0, 256]))
    with pytest.raises(ValueError, match="2-D"):
        mask_to_rle(np.zeros((2, 2, 2), np.uint8))
    with pytest.raises(ValueError, match="needs"):
        rle_to_mask(mask_to_rle(np.zeros((4, 4), np.uint8)), 5, 4)
    with pytest.raises(ValueError, match="ends early"):
        decode_rle(mask_to_rle(np.eye(8, dtype=np.uint8))[:-3])


def test_byte_arrays_are_written_as_the_same_json_as_lists() -> None:
    import json

    from flask import Flask

    from ml_backend.core.jsonio import ArrayJSONProvider, plain, uint8_array_json

    rng = np.random.default_rng(3)
    for values in [np.array([], np.uint8), np.array([0], np.uint8),
                   np.array([255, 10, 9, 100, 99], np.uint8),
                   rng.integers(0, 256, 10_000).astype(np.uint8)]:
        assert uint8_array_json(values) == json.dumps(values.tolist(), separators=(",", ":"))
    provider = ArrayJSONProvider(Flask("t"))
    body = {"rle": np.array([1, 200], np.uint8), "other": [np.array([7], np.uint8)], "s": "x"}
    assert json.loads(provider.dumps(body)) == {"rle": [1, 200], "other": [[7]], "s": "x"}
    assert plain(body) == {"rle": [1, 200], "other": [[7]], "s": "x"}
