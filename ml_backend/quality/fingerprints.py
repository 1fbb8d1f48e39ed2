"""Pixel fingerprints for near-duplicate search: what stays the same when an image is
resized, re-encoded, brightened or cropped by a few per cent.

A fingerprint is a set of small thumbnails of one image: the whole image, and crops that
drop :data:`CROP_FRACTIONS` of its width and height at each corner and around the centre.
Each thumbnail is kept twice, mean-subtracted and scaled to unit length (so brightness and
contrast drop out):

- **colour**: RGB at :data:`SIDE` × :data:`SIDE` (box filter, so any input size gives the
  same thumbnail);
- **detail**: the grey thumbnail minus its local mean (a high-pass), so a shared smooth
  background (a gradient, a wall, the sky) cannot make two different images look alike.

Two images are a pair when, with the whole of one against any view of the other (either
way round), both the colour and the detail correlations reach their thresholds, and their
aspect ratios agree within :data:`MAX_LOG_ASPECT`. A copy cropped by ``f`` equals the
original's view that drops ``f``, so the crop views turn a small crop into an (almost)
exact match, which neither a hash nor a whole-image thumbnail gives. Thresholds were chosen
on ``scripts/bench_quality.py`` (docs/quality.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

SIDE = 16
CROP_FRACTIONS = (0.03, 0.06)
DETAIL_WINDOW = 5  # thumbnail pixels: the local mean the detail thumbnail subtracts
MIN_COLOUR = 0.98
MIN_DETAIL = 0.80
MAX_LOG_ASPECT = 0.1  # |log(w1/h1) - log(w2/h2)|: about a 10 % change of aspect ratio


@dataclass(frozen=True)
class Fingerprints:
    """Fingerprints of ``N`` images: ``colour (N, V, 3·SIDE²)`` (float16: it is only read
    for candidate pairs) and ``detail (N, V, SIDE²)`` (float32: searched over all pairs)
    unit rows, view 0 the whole image, then the crops; and ``log_aspect (N,)``."""

    colour: np.ndarray
    detail: np.ndarray
    log_aspect: np.ndarray

    def __len__(self) -> int:
        return len(self.log_aspect)


def crop_boxes(width: int, height: int, fractions: Sequence[float] = CROP_FRACTIONS
               ) -> list[tuple[float, float, float, float]]:
    """The whole image, then for each fraction the crops dropping it at each corner and
    evenly around the centre, as PIL ``(left, top, right, bottom)`` boxes."""
    boxes = [(0.0, 0.0, float(width), float(height))]
    for fraction in fractions:
        dx, dy = fraction * width, fraction * height
        boxes += [(dx, dy, width, height), (0.0, 0.0, width - dx, height - dy),
                  (dx, 0.0, width, height - dy), (0.0, dy, width - dx, height),
                  (dx / 2, dy / 2, width - dx / 2, height - dy / 2)]
    return boxes


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def _local_mean(grey: np.ndarray, window: int) -> np.ndarray:
    """Mean over a ``window`` × ``window`` neighbourhood (edges repeated), per thumbnail."""
    pad = window // 2
    padded = np.pad(grey, ((0, 0), (pad, pad), (pad, pad)), mode="edge")
    sums = padded.cumsum(axis=1).cumsum(axis=2)
    sums = np.pad(sums, ((0, 0), (1, 0), (1, 0)))
    side = grey.shape[1]
    total = (sums[:, window:window + side, window:window + side]
             - sums[:, :side, window:window + side] - sums[:, window:window + side, :side]
             + sums[:, :side, :side])
    return total / window**2


def fingerprint(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """``(colour (V, 3·SIDE²), detail (V, SIDE²), log aspect)`` of an ``(H, W, 3)`` or
    ``(H, W)`` uint8 image."""
    from PIL import Image

    image = Image.fromarray(np.asarray(pixels, dtype=np.uint8)).convert("RGB")
    width, height = image.size
    thumbs = np.stack([np.asarray(image.resize((SIDE, SIDE), Image.Resampling.BOX, box=box),
                                  dtype=np.float32)
                       for box in crop_boxes(width, height)])
    grey = thumbs @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    detail = grey - _local_mean(grey, DETAIL_WINDOW)
    return (_unit_rows(thumbs.reshape(len(thumbs), -1)).astype(np.float16),
            _unit_rows(detail.reshape(len(detail), -1)), float(np.log(width / height)))


def stack_fingerprints(parts: Iterable[tuple[np.ndarray, np.ndarray, float]]) -> Fingerprints:
    """:func:`fingerprint` results, stacked (one image's worth of memory at a time when
    ``parts`` is a generator)."""
    parts = list(parts)
    views = len(crop_boxes(1, 1))
    if not parts:
        return Fingerprints(np.zeros((0, views, 3 * SIDE * SIDE), np.float16),
                            np.zeros((0, views, SIDE * SIDE), np.float32), np.zeros(0))
    colour, detail, aspect = zip(*parts, strict=True)
    return Fingerprints(np.stack(colour), np.stack(detail), np.array(aspect))


def fingerprints(images: Iterable[np.ndarray]) -> Fingerprints:
    """:func:`fingerprint` of every image, stacked."""
    return stack_fingerprints(fingerprint(p) for p in images)


def _best_view(whole: np.ndarray, views: np.ndarray) -> np.ndarray:
    """``(B, N)``: for each whole-image row of ``whole (B, D)`` and image of
    ``views (N, V, D)``, the highest correlation over that image's views."""
    n, v, d = views.shape
    return (whole @ views.reshape(n * v, d).T).reshape(len(whole), n, v).max(axis=2)


def _pair_scores(x: np.ndarray, rows: np.ndarray, cols: np.ndarray, chunk: int = 4096
                 ) -> np.ndarray:
    """For each pair ``(rows[p], cols[p])`` of ``x (N, V, D)``: the highest correlation of
    one's whole image with any view of the other, either way round (``chunk`` pairs at a
    time, widened to float32)."""
    scores = np.empty(len(rows), np.float32)
    for start in range(0, len(rows), chunk):
        a = x[rows[start:start + chunk]].astype(np.float32)
        b = x[cols[start:start + chunk]].astype(np.float32)
        scores[start:start + chunk] = np.maximum(
            np.einsum("pd,pvd->pv", a[:, 0], b).max(axis=1),
            np.einsum("pd,pvd->pv", b[:, 0], a).max(axis=1))
    return scores


def fingerprint_pairs(prints: Fingerprints, min_colour: float = MIN_COLOUR,
                      min_detail: float = MIN_DETAIL, max_log_aspect: float = MAX_LOG_ASPECT,
                      block: int = 256) -> np.ndarray:
    """``(P, 2)`` index pairs ``i < j`` of near-duplicate images. The detail correlation is
    searched over all pairs, ``block`` rows at a time (memory ``block × N × V``); the
    colour correlation is checked only on the pairs that pass it."""
    n = len(prints)
    if n < 2:
        return np.zeros((0, 2), np.int64)
    candidates: list[np.ndarray] = []
    for start in range(0, n, block):
        stop = min(n, start + block)
        sims = _best_view(prints.detail[start:stop, 0], prints.detail)
        rows, cols = np.nonzero(sims >= min_detail)
        rows = rows + start
        # Each pair once, whichever way round it matched: as the number low · n + high.
        candidates.append(np.minimum(rows, cols).astype(np.int64) * n + np.maximum(rows, cols))
    keys = np.unique(np.concatenate(candidates))
    rows, cols = keys // n, keys % n
    distinct = rows < cols  # every image matches itself
    rows, cols = rows[distinct], cols[distinct]
    keep = np.abs(prints.log_aspect[rows] - prints.log_aspect[cols]) <= max_log_aspect
    rows, cols = rows[keep], cols[keep]
    keep = ((_pair_scores(prints.detail, rows, cols) >= min_detail)
            & (_pair_scores(prints.colour, rows, cols) >= min_colour))
    return np.stack([rows[keep], cols[keep]], axis=1).astype(np.int64)
