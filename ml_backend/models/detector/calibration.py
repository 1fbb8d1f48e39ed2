"""What a detector's confidence is worth: held-out precision as a function of confidence.

cleanlab's ObjectLab reads a predicted box's confidence as the probability that the box is
right: a box of 0.95 or more that no annotation overlaps is an overlooked object, one of
another class on an annotated box a swap. A YOLO trained from few labels is far from that:
on the shape scenes (val mAP50 0.80) a box of 0.6 was right 94 % of the time, and 95 % of
its boxes stayed under 0.76, so ObjectLab saw no confident box and scored nearly every image
1 (suspected label errors at chance). After a fine-tune the new weights predict the held-out
tasks once (for the box threshold too); :func:`fit_calibration` fits the share of right boxes
against confidence there (isotonic: it only rises with confidence), and the quality job maps
confidences through it before ObjectLab, so its thresholds mean what it assumes.

Pure functions over :class:`~ml_backend.core.detections.Detections` (predicted) and
:class:`~ml_backend.core.detections.LabeledBoxes` (true).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ml_backend.core.detections import Detections, LabeledBoxes
from ml_backend.reporting.effort import MATCH_IOU, box_iou

# Fewer right boxes than this say too little about which confidences can be trusted: the
# version keeps none and ObjectLab reads the raw confidences.
MIN_CALIBRATION_MATCHES = 10


def right_boxes(predicted: Detections, truth: LabeledBoxes, min_iou: float = MATCH_IOU
                ) -> np.ndarray:
    """``(N,) bool``: which predicted boxes are right, as detection precision counts them
    (most confident first, each takes the unclaimed true box of its label it overlaps most,
    with IoU ≥ ``min_iou``; a second box on the same object is wrong)."""
    right = np.zeros(len(predicted), dtype=bool)
    if not len(predicted) or not len(truth.labels):
        return right
    iou = box_iou(predicted.xyxy, truth.xyxy)
    same_label = np.array([[p == t for t in truth.labels] for p in predicted.labels])
    free = np.ones(len(truth.labels), dtype=bool)
    for i in np.argsort(-predicted.scores, kind="stable"):
        candidates = np.where(same_label[i] & free, iou[i], -1.0)
        j = int(np.argmax(candidates))
        if candidates[j] >= min_iou:
            right[i], free[j] = True, False
    return right


@dataclass(frozen=True)
class ConfidenceCalibration:
    """A non-decreasing curve from confidence to the held-out share of right boxes:
    ``confidence`` and ``precision`` are its knots (linear in between, flat above), fitted
    on ``n_boxes`` predicted boxes of ``n_images`` images, ``n_right`` of them right."""

    confidence: tuple[float, ...]
    precision: tuple[float, ...]
    n_boxes: int
    n_right: int
    n_images: int

    def __post_init__(self) -> None:
        if not self.confidence or len(self.confidence) != len(self.precision):
            raise ValueError(f"a calibration needs as many precisions as confidences (at "
                             f"least one), got {len(self.confidence)} and "
                             f"{len(self.precision)}")
        if np.any(np.diff(self.confidence) < 0) or np.any(np.diff(self.precision) < 0):
            raise ValueError("a calibration's confidences and precisions must both rise")

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        """Calibrated ``scores`` (the same shape, in [0, 1])."""
        return np.interp(np.asarray(scores, dtype=np.float64), self.confidence,
                         self.precision)

    def applied(self, predicted: Detections) -> Detections:
        """``predicted`` with calibrated confidences."""
        return Detections(predicted.xyxy, predicted.labels, self(predicted.scores),
                          predicted.width, predicted.height)

    def as_meta(self) -> dict[str, Any]:
        """JSON for a version's manifest."""
        return {"confidence": [round(c, 6) for c in self.confidence],
                "precision": [round(p, 6) for p in self.precision],
                "n_boxes": self.n_boxes, "n_right": self.n_right, "n_images": self.n_images}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> ConfidenceCalibration:
        """The inverse of :meth:`as_meta`; ValueError (or KeyError) for a broken record."""
        return cls(tuple(float(c) for c in meta["confidence"]),
                   tuple(float(p) for p in meta["precision"]), int(meta["n_boxes"]),
                   int(meta["n_right"]), int(meta["n_images"]))


def fit_calibration(predictions: Sequence[Detections], truths: Sequence[LabeledBoxes],
                    min_right: int = MIN_CALIBRATION_MATCHES) -> ConfidenceCalibration | None:
    """The isotonic fit of "this box is right" on confidence over held-out images
    (``predictions[i]`` and ``truths[i]`` the same image), or None with fewer than
    ``min_right`` right boxes. Raises ValueError for a length mismatch."""
    from sklearn.isotonic import IsotonicRegression

    if len(predictions) != len(truths):
        raise ValueError(f"{len(predictions)} images of predictions but {len(truths)} of "
                         "true boxes")
    scores = np.concatenate([p.scores for p in predictions]) if predictions else np.zeros(0)
    right = (np.concatenate([right_boxes(p, t) for p, t in zip(predictions, truths,
                                                                strict=True)])
             if predictions else np.zeros(0, dtype=bool))
    if int(right.sum()) < min_right:
        return None
    fit = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True,
                             out_of_bounds="clip").fit(scores, right.astype(np.float64))
    confidence, precision = list(fit.X_thresholds_), list(fit.y_thresholds_)
    if confidence[0] > 0.0:
        # Below the weakest box seen (the held-out tasks are predicted from 0.05, the quality
        # job from 0.01) nothing was measured: fall to 0 at confidence 0 rather than carry the
        # lowest measured precision down (all right at 0.05 would make every 0.01 box sure).
        confidence, precision = [0.0, *confidence], [0.0, *precision]
    return ConfidenceCalibration(tuple(float(c) for c in confidence),
                                 tuple(float(p) for p in precision), int(scores.size),
                                 int(right.sum()), len(predictions))
