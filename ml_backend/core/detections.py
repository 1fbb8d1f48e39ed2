"""Boxes as typed arrays (a detector's :class:`Detections`, an annotation's
:class:`LabeledBoxes`), and their conversions between the formats the detector meets:
pixel corners (``xyxy``, what YOLO predicts), Label Studio's rectangle values (percent of the
original image, top-left corner, optional rotation), and YOLO's normalised centre format (the
training dataset). Pure functions; building Label Studio result dicts stays in ``results``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Detections:
    """``xyxy (N, 4)`` pixel corners, ``labels`` the config label of each box, ``scores (N,)``
    confidences in [0, 1], for one image of ``width × height`` pixels."""

    xyxy: np.ndarray
    labels: tuple[str, ...]
    scores: np.ndarray
    width: int
    height: int

    def __post_init__(self) -> None:
        n = len(self.labels)
        if self.xyxy.shape != (n, 4) or self.scores.shape != (n,):
            raise ValueError(f"{n} labels need xyxy (N, 4) and scores (N,), got "
                             f"{self.xyxy.shape} and {self.scores.shape}")
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"image size must be positive, got {self.width}x{self.height}")

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class LabeledBoxes:
    """One image's annotated boxes: ``xyxy (N, 4)`` pixel corners (float64) and ``labels`` the
    config label of each box. ``N`` may be 0 (an image annotated as holding no object); an
    empty ``xyxy`` of any shape becomes ``(0, 4)``."""

    xyxy: np.ndarray
    labels: tuple[str, ...]

    def __post_init__(self) -> None:
        xyxy = np.asarray(self.xyxy, dtype=np.float64)
        if xyxy.size == 0:
            xyxy = xyxy.reshape(0, 4)
        labels = tuple(self.labels)
        n = len(labels)
        if xyxy.shape != (n, 4):
            raise ValueError(f"xyxy must be (N, 4) pixel corners, one row per label: {n} "
                             f"labels need xyxy ({n}, 4), got {xyxy.shape}")
        object.__setattr__(self, "xyxy", xyxy)
        object.__setattr__(self, "labels", labels)

    def __len__(self) -> int:
        return len(self.labels)


def _size(width: float, height: float) -> tuple[float, float]:
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    return float(width), float(height)


def clip_xyxy(xyxy: np.ndarray, width: float, height: float) -> np.ndarray:
    """Corners clipped to the image."""
    w, h = _size(width, height)
    box = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4).copy()
    box[:, [0, 2]] = box[:, [0, 2]].clip(0.0, w)
    box[:, [1, 3]] = box[:, [1, 3]].clip(0.0, h)
    return box


def xyxy_to_ls_rect(xyxy: Sequence[float] | np.ndarray, width: float, height: float
                    ) -> dict[str, float]:
    """One pixel box → Label Studio's rectangle ``value`` (percent, no rotation), clipped to
    the image."""
    w, h = _size(width, height)
    x1, y1, x2, y2 = clip_xyxy(np.asarray(xyxy), w, h)[0]
    return {"x": 100.0 * x1 / w, "y": 100.0 * y1 / h, "width": 100.0 * (x2 - x1) / w,
            "height": 100.0 * (y2 - y1) / h, "rotation": 0.0}


def ls_rect_to_xyxy(value: Mapping[str, Any], width: float, height: float) -> np.ndarray:
    """Label Studio's rectangle ``value`` → pixel corners ``(4,)``. A rotated rectangle
    (degrees, clockwise about its top-left corner) becomes its axis-aligned bounding box;
    the result is clipped to the image."""
    w, h = _size(width, height)
    x, y = float(value["x"]) * w / 100.0, float(value["y"]) * h / 100.0
    bw, bh = float(value["width"]) * w / 100.0, float(value["height"]) * h / 100.0
    angle = np.deg2rad(float(value.get("rotation") or 0.0))
    if angle:
        # Corners relative to the pivot, rotated clockwise in image coordinates (y down).
        corners = np.array([[0.0, 0.0], [bw, 0.0], [bw, bh], [0.0, bh]])
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        points = corners @ rot.T + [x, y]
        box = np.concatenate([points.min(axis=0), points.max(axis=0)])
    else:
        box = np.array([x, y, x + bw, y + bh])
    return clip_xyxy(box, w, h)[0]


def xyxy_to_yolo(xyxy: np.ndarray, width: float, height: float) -> np.ndarray:
    """Pixel corners ``(N, 4)`` → YOLO's normalised ``(cx, cy, w, h)`` rows ``(N, 4)``."""
    w, h = _size(width, height)
    box = clip_xyxy(xyxy, w, h)
    out = np.empty_like(box)
    out[:, 0] = (box[:, 0] + box[:, 2]) / (2 * w)
    out[:, 1] = (box[:, 1] + box[:, 3]) / (2 * h)
    out[:, 2] = (box[:, 2] - box[:, 0]) / w
    out[:, 3] = (box[:, 3] - box[:, 1]) / h
    return out


def label_map(labels: Sequence[str], label_attrs: Mapping[str, Mapping[str, str]],
              model_classes: Iterable[str]) -> dict[str, str]:
    """Model class name → config label. A ``<Label predicted_values="car,truck">`` takes the
    classes it lists; a label without that attribute takes the class of its exact name.
    Classes mapped to no label are absent (their boxes are dropped)."""
    classes = set(model_classes)
    mapping: dict[str, str] = {}
    for label in labels:
        listed = label_attrs.get(label, {}).get("predicted_values")
        wanted = [c.strip() for c in listed.split(",") if c.strip()] if listed else [label]
        for name in wanted:
            if name in classes and name not in mapping:
                mapping[name] = label
    return mapping
