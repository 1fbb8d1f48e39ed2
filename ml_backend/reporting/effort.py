"""What a task costs an annotator, from the pre-label they saw and the labels they submitted.

Pure functions over typed values: the effort benchmark (a simulated annotator) and the
per-project savings report (real annotations) count with the same rules. The annotator's
final labels are the truth, so corrections are complete: only the time differs by arm.

Default costs, in seconds (every one is a :class:`CostModel` field):

- image-level class: pick one 3 s, confirm a correct pre-label 1 s, change a wrong one 3 s;
- box: draw one 7 s (extreme clicking: Papadopoulos et al., "Extreme clicking for efficient
  object annotation", ICCV 2017, 7.0 s per box; the traditional two-corner box took them
  34.5 s: :data:`TRADITIONAL_BOX_S`), accept a correct pre-box 1 s, adjust one whose IoU with
  the truth is in [0.5, 0.9) 3 s, delete a false positive 1 s, draw a missed one 7 s;
- mask: a polygon drawn by hand 79 s (COCO: Lin et al. 2014 report 79.2 s per instance), or
  SAM clicks at 2 s each up to 20 clicks (the interactive segmentation protocol).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

TRADITIONAL_BOX_S = 34.5  # Papadopoulos et al. 2017, drawing a box by its two corners
ACCEPT_IOU = 0.9  # a pre-box at least this close to the truth is accepted as it is
MATCH_IOU = 0.5  # below this a pre-box is not the truth's box at all: delete + draw


@dataclass(frozen=True)
class CostModel:
    pick_class_s: float = 3.0
    confirm_class_s: float = 1.0
    change_class_s: float = 3.0
    draw_box_s: float = 7.0
    accept_box_s: float = 1.0
    adjust_box_s: float = 3.0
    delete_box_s: float = 1.0
    polygon_s: float = 79.0
    click_s: float = 2.0
    max_clicks: int = 20


DEFAULT_COSTS = CostModel()


@dataclass
class Effort:
    """Seconds spent and what was done, additive over tasks."""

    seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, what: str, seconds: float, n: int = 1) -> None:
        if n <= 0:
            return
        self.seconds += seconds * n
        self.counts[what] = self.counts.get(what, 0) + n

    def __iadd__(self, other: Effort) -> Effort:
        self.seconds += other.seconds
        for what, n in other.counts.items():
            self.counts[what] = self.counts.get(what, 0) + n
        return self

    @property
    def untouched(self) -> bool:
        """Every pre-label accepted as it was, nothing added or removed."""
        edits = {"changed", "adjusted", "deleted", "drawn", "picked", "clicked", "polygon"}
        return not any(self.counts.get(k) for k in edits)


def class_effort(predicted: str | None, truth: str, costs: CostModel = CostModel()) -> Effort:
    """One image-level class: picked without a pre-label, confirmed when it was right,
    changed when it was wrong."""
    effort = Effort()
    if predicted is None:
        effort.add("picked", costs.pick_class_s)
    elif predicted == truth:
        effort.add("confirmed", costs.confirm_class_s)
    else:
        effort.add("changed", costs.change_class_s)
    return effort


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a (N, 4)`` with every box in ``b (M, 4)`` (pixel corners)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0.0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0.0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0.0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def match_boxes(predicted: np.ndarray, truth: np.ndarray, min_iou: float = MATCH_IOU
                ) -> list[tuple[int, int, float]]:
    """One-to-one matches ``(predicted row, truth row, IoU)`` with IoU ≥ ``min_iou``, chosen
    to maximise the summed IoU (Hungarian assignment)."""
    return match_iou(box_iou(predicted, truth), min_iou)


def match_iou(iou: np.ndarray, min_iou: float = MATCH_IOU) -> list[tuple[int, int, float]]:
    """One-to-one matches ``(row, column, IoU)`` of an IoU matrix ``(N, M)`` (boxes, masks)
    with IoU ≥ ``min_iou``, chosen to maximise the summed IoU (Hungarian assignment)."""
    iou = np.asarray(iou, dtype=np.float64)
    if iou.size == 0:
        return []
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(-iou)
    return [(int(r), int(c), float(iou[r, c])) for r, c in zip(rows, cols, strict=True)
            if iou[r, c] >= min_iou]


def box_effort(predicted: np.ndarray, predicted_labels: Sequence[str], truth: np.ndarray,
               truth_labels: Sequence[str], costs: CostModel = CostModel()) -> Effort:
    """One image's boxes: each pre-box matched to a true box is accepted (IoU ≥ 0.9) or
    adjusted (IoU in [0.5, 0.9)), and relabelled when its label is wrong; unmatched pre-boxes
    are deleted and unmatched true boxes drawn."""
    effort = Effort()
    matches = match_boxes(predicted, truth)
    for p, t, iou in matches:
        if iou >= ACCEPT_IOU:
            effort.add("accepted", costs.accept_box_s)
        else:
            effort.add("adjusted", costs.adjust_box_s)
        if predicted_labels[p] != truth_labels[t]:
            effort.add("changed", costs.change_class_s)
    effort.add("deleted", costs.delete_box_s, len(predicted_labels) - len(matches))
    effort.add("drawn", costs.draw_box_s, len(truth_labels) - len(matches))
    return effort


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def mask_effort(clicks_to_target: int | None, costs: CostModel = CostModel()) -> Effort:
    """One mask: SAM clicks when a clicker reached the target IoU within ``max_clicks``
    (``clicks_to_target``), else a polygon drawn by hand (no SAM, or it never got there)."""
    effort = Effort()
    if clicks_to_target is None or clicks_to_target > costs.max_clicks:
        effort.add("polygon", costs.polygon_s)
    else:
        effort.add("clicked", costs.click_s, clicks_to_target)
    return effort
