"""Label Studio's brush RLE, vectorised with numpy.

The format (as ``label_studio_sdk.converter.brush`` writes and reads it): a bit stream of a
32-bit value count, a 5-bit word size minus one, four 4-bit run-length field sizes minus one
(3, 4, 8, 16), then one record per run: a flag bit (1: a run of one value, 0: literal
values), a 2-bit index into the field sizes, the run length minus one in that many bits, and
the value(s) in ``word size`` bits. A brush mask is encoded as RGBA: every pixel repeated 4
times. :func:`mask_to_rle` gives byte-identical output to the SDK's ``mask2rle`` (including
its quirks: runs of one value use the literal form, runs longer than 65536 are split into
65536-long pieces with the rest still in the 16-bit field, and a stream that already ends on
a byte boundary still gets a zero byte of padding), without building the bit stream as a
Python string.
"""

from __future__ import annotations

import numpy as np

WORD_SIZE = 8
RLE_SIZES = (3, 4, 8, 16)
_MAX_RUN = 1 << 16
_HEADER_BITS = 32 + 5 + 4 * 4


def _runs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run lengths and values of a 1-D array."""
    change = np.flatnonzero(values[1:] != values[:-1])
    ends = np.append(change, len(values) - 1)
    lengths = np.diff(np.append(-1, ends))
    return lengths.astype(np.int64), values[ends].astype(np.int64)


def encode_rle(values: np.ndarray, repeat: int = 1) -> np.ndarray:
    """Label Studio RLE bytes (``uint8``) of the 1-D array ``values`` (each in 0..255), each
    value taken ``repeat`` times (4 for an RGBA brush mask) without materialising it."""
    values = np.asarray(values).reshape(-1)
    if values.size and (values.min() < 0 or values.max() > 255):
        raise ValueError("RLE values must be in 0..255 (8-bit words)")
    count = values.size * repeat
    if count >= 1 << 32:
        raise ValueError(f"{count} values do not fit the format's 32-bit count")
    lengths, run_values = _runs(values) if values.size else (np.zeros(0, np.int64),) * 2
    lengths = lengths * repeat
    # Runs over 65536 become ceil(L / 65536) records: full 65536 pieces, then the rest.
    pieces = np.maximum((lengths - 1) // _MAX_RUN, 0) + 1
    record_length = np.full(int(pieces.sum()), _MAX_RUN, dtype=np.int64)
    last = np.cumsum(pieces) - 1
    record_length[last] = lengths - (pieces - 1) * _MAX_RUN
    record_value = np.repeat(run_values, pieces)
    # Field index by the run's length: 1 → literal form with a 3-bit zero length; 2..8 → 3
    # bits; 9..16 → 4; 17..256 → 8; longer → 16, for every piece of it (even a short rest).
    run_index = np.select([lengths <= 8, lengths <= 16, lengths <= 256], [0, 1, 2], default=3)
    index = np.repeat(run_index, pieces)
    field = np.array(RLE_SIZES, dtype=np.int64)[index]
    flag = (record_length > 1).astype(np.int64)
    width = 1 + 2 + field + WORD_SIZE
    code = ((flag << (2 + field + WORD_SIZE)) | (index << (field + WORD_SIZE))
            | ((record_length - 1) << WORD_SIZE) | record_value)
    header = (count << 21) | ((WORD_SIZE - 1) << 16)
    for i, size in enumerate(RLE_SIZES):
        header |= (size - 1) << (12 - 4 * i)
    total = _HEADER_BITS + int(width.sum())
    n_bytes = (total + (8 - total % 8)) // 8  # the SDK always pads, a whole byte when aligned
    header_bits = (header >> np.arange(_HEADER_BITS - 1, -1, -1)) & 1
    head = np.packbits(header_bits.astype(np.uint8))  # 7 bytes, the last one partly filled
    out = np.zeros(n_bytes + 5, dtype=np.float64)
    out[:len(head)] = head
    if len(code):
        # Records never share a bit, so placing each one's (at most 5) bytes by summing is
        # the same as OR-ing them in: one bincount per byte of a record instead of a loop.
        starts = _HEADER_BITS + np.concatenate([[0], np.cumsum(width)[:-1]])
        first, offset = starts >> 3, starts & 7
        aligned = code << (40 - offset - width)  # the record's bits at the top of 40
        for k in range(5):
            out += np.bincount(first + k, weights=(aligned >> (32 - 8 * k)) & 0xFF,
                               minlength=len(out))[:len(out)]
    return out[:n_bytes].astype(np.uint8)


def mask_to_rle(mask: np.ndarray) -> list[int]:
    """A 2-D ``uint8`` mask as Label Studio brush RLE (the ``rle`` list of a ``brushlabels``
    value), byte-identical to ``label_studio_sdk.converter.brush.mask2rle``."""
    return mask_to_rle_array(mask).tolist()


def mask_to_rle_array(mask: np.ndarray) -> np.ndarray:
    """:func:`mask_to_rle` as a ``uint8`` array (the HTTP layer writes it to JSON fast)."""
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    return encode_rle(mask.reshape(-1), repeat=4)


class _Bits:
    """Big-endian bit reader over a byte array."""

    def __init__(self, data: bytes | list[int] | np.ndarray) -> None:
        self.bits = np.unpackbits(np.asarray(data, dtype=np.uint8))
        self.pos = 0

    def read(self, n: int) -> int:
        if self.pos + n > len(self.bits):
            raise ValueError("RLE data ends early")
        chunk = self.bits[self.pos:self.pos + n]
        self.pos += n
        return int(chunk.dot(1 << np.arange(n - 1, -1, -1, dtype=np.int64))) if n else 0


def decode_rle(rle: bytes | list[int] | np.ndarray) -> np.ndarray:
    """The flat value array (``uint8``) of Label Studio RLE; accepts both record forms."""
    reader = _Bits(rle)
    count = reader.read(32)
    word = reader.read(5) + 1
    sizes = [reader.read(4) + 1 for _ in range(4)]
    out = np.zeros(count, dtype=np.uint8)
    i = 0
    while i < count:
        is_run = reader.read(1)
        j = i + 1 + reader.read(sizes[reader.read(2)])
        if j > count:
            raise ValueError("RLE run goes past the declared value count")
        if is_run:
            out[i:j] = reader.read(word)
        else:
            for k in range(i, j):
                out[k] = reader.read(word)
        i = j
    return out


def rle_to_mask(rle: bytes | list[int] | np.ndarray, height: int, width: int) -> np.ndarray:
    """A brush RLE back to its ``(height, width)`` mask (the alpha channel)."""
    flat = decode_rle(rle)
    if flat.size != height * width * 4:
        raise ValueError(f"RLE holds {flat.size} values, a {width}x{height} RGBA mask needs "
                         f"{height * width * 4}")
    return flat.reshape(height, width, 4)[:, :, 3].copy()
