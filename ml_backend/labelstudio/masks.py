"""Binary masks to Label Studio geometry: polygons in percent of the image.

(Brush RLE lives in :mod:`ml_backend.labelstudio.rle`.)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MAX_POLYGONS = 10  # components of one mask shown as polygons, largest first
MIN_AREA_SHARE = 0.01  # components smaller than this share of the largest are noise


def mask_to_polygons(mask: np.ndarray, tolerance_px: float) -> list[np.ndarray]:
    """The outer contours of ``mask (H, W)``, simplified so no vertex is dropped that lies
    more than ``tolerance_px`` from the result (Douglas-Peucker); each ``(K, 2)`` float
    x, y in pixels, K >= 3, largest area first. Holes are not represented (a Label Studio
    polygon has none)."""
    import cv2  # imported here to keep module import light

    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    binary = np.ascontiguousarray(mask.astype(np.uint8))
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    shapes = []
    for contour in contours:
        area = float(cv2.contourArea(contour))
        simplified = cv2.approxPolyDP(contour, float(tolerance_px), True).reshape(-1, 2)
        if len(simplified) >= 3:
            shapes.append((max(area, 1.0), simplified.astype(np.float64)))
    if not shapes:
        return []
    shapes.sort(key=lambda item: -item[0])
    largest = shapes[0][0]
    return [points for area, points in shapes[:MAX_POLYGONS]
            if area >= MIN_AREA_SHARE * largest]


def polygon_to_percent(points: np.ndarray, width: int, height: int) -> list[list[float]]:
    """Pixel vertices to Label Studio's percent coordinates, clipped to the image."""
    scaled = points / np.array([width, height], dtype=np.float64) * 100.0
    return [[round(float(x), 4), round(float(y), 4)] for x, y in np.clip(scaled, 0.0, 100.0)]


def mask_components(mask: np.ndarray, min_area_px: int) -> tuple[np.ndarray, int]:
    """The 8-connected components of ``mask (H, W)`` with at least ``min_area_px`` pixels:
    a label image ``(H, W)`` int32 numbering them 1..n in raster order (0 elsewhere), and
    n. Smaller components are dropped (label 0)."""
    from scipy import ndimage

    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return labels.astype(np.int32), 0
    areas = np.bincount(labels.ravel(), minlength=count + 1)
    keep = areas >= max(int(min_area_px), 1)
    keep[0] = False
    renumber = np.zeros(count + 1, dtype=np.int32)
    renumber[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return renumber[labels], int(keep.sum())


def component_boxes(probability: np.ndarray, threshold: float, min_area_px: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """One box per 8-connected component of ``probability > threshold`` with at least
    ``min_area_px`` pixels: ``xyxy (N, 4)`` pixel-edge corners (a component covering
    columns 3..5 spans x 3.0 to 6.0) and ``scores (N,)``, the mean probability inside
    each component; highest score first."""
    from scipy import ndimage

    labels, count = mask_components(probability > threshold, min_area_px)
    if count == 0:
        return np.zeros((0, 4), dtype=np.float64), np.zeros(0, dtype=np.float64)
    index = np.arange(1, count + 1)
    slices = ndimage.find_objects(labels)
    xyxy = np.array([[s[1].start, s[0].start, s[1].stop, s[0].stop] for s in slices],
                    dtype=np.float64)
    scores = np.asarray(ndimage.mean(probability, labels, index), dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    return xyxy[order], scores[order]


def polygon_mask(points: Sequence[Sequence[float]], width: int, height: int) -> np.ndarray:
    """Label Studio polygon ``points`` (percent) → a ``(height, width)`` bool mask."""
    from PIL import Image, ImageDraw

    xy = [(float(x) * width / 100.0, float(y) * height / 100.0) for x, y in points]
    if len(xy) < 3:
        raise ValueError("a polygon needs three points")
    canvas = Image.new("1", (width, height), 0)
    ImageDraw.Draw(canvas).polygon(xy, fill=1)
    return np.asarray(canvas, dtype=bool)
