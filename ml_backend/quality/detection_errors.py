"""Suspected label errors of object detection, as pure functions over arrays.

Per image: the annotated boxes (:class:`GivenBoxes`) and a detector's boxes on the same image
(:class:`PredictedBoxes`), both in pixel corners ``xyxy``, classes as indices into the
control's labels. cleanlab's ObjectLab scores (``cleanlab.object_detection``) compare them
per image and give one label-quality score in [0, 1] (low: the annotation is suspect) from
three kinds of error:

- **overlooked**: a confident predicted box (confidence ≥ 0.95) that no annotated box
  overlaps;
- **swapped**: an annotated box on which a confident box (> 0.95) of *another* class sits;
- **badly located**: an annotated box whose best overlapping prediction of its class
  (confidence > 0.5) sits elsewhere.

The thresholds are cleanlab's own (``cleanlab.internal.constants``). Predictions must not have
seen the image (cleanlab asks for out-of-sample predictions): which images qualify is the
quality job's business (:mod:`ml_backend.quality.label_errors`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


def _boxes(xyxy: np.ndarray, name: str) -> np.ndarray:
    boxes = np.asarray(xyxy, dtype=np.float64)
    if boxes.size == 0:
        return boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name} must be (N, 4) pixel corners, got shape {boxes.shape}")
    return boxes


def _class_ids(class_ids: np.ndarray, n: int, name: str) -> np.ndarray:
    ids = np.asarray(class_ids, dtype=np.int64).reshape(-1)
    if len(ids) != n:
        raise ValueError(f"{name} needs one class id per box: {n} boxes, {len(ids)} ids")
    return ids


@dataclass(frozen=True)
class GivenBoxes:
    """One image's annotated boxes: ``xyxy (N, 4)`` pixel corners and ``class_ids (N,)``.
    ``N`` may be 0: an image annotated as holding no object."""

    xyxy: np.ndarray
    class_ids: np.ndarray

    def __post_init__(self) -> None:
        xyxy = _boxes(self.xyxy, "given xyxy")
        object.__setattr__(self, "xyxy", xyxy)
        object.__setattr__(self, "class_ids", _class_ids(self.class_ids, len(xyxy),
                                                         "given boxes"))


@dataclass(frozen=True)
class PredictedBoxes:
    """One image's predicted boxes: ``xyxy (M, 4)`` pixel corners, ``class_ids (M,)`` and
    ``scores (M,)`` confidences in [0, 1]. ``M`` may be 0."""

    xyxy: np.ndarray
    class_ids: np.ndarray
    scores: np.ndarray

    def __post_init__(self) -> None:
        xyxy = _boxes(self.xyxy, "predicted xyxy")
        object.__setattr__(self, "xyxy", xyxy)
        object.__setattr__(self, "class_ids", _class_ids(self.class_ids, len(xyxy),
                                                         "predicted boxes"))
        scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        if len(scores) != len(xyxy):
            raise ValueError(f"predicted boxes need one score per box: {len(xyxy)} boxes, "
                             f"{len(scores)} scores")
        if len(scores) and (scores.min() < 0.0 or scores.max() > 1.0):
            raise ValueError(f"predicted scores must lie in [0, 1], got "
                             f"{scores.min()}..{scores.max()}")
        object.__setattr__(self, "scores", scores)


@dataclass(frozen=True)
class DetectionQuality:
    """Per image: ``scores (N,)`` in [0, 1] (low: likeliest label error) and ``issues (N,)
    bool`` (cleanlab's ``find_label_issues``)."""

    scores: np.ndarray
    issues: np.ndarray


def cleanlab_label(given: GivenBoxes) -> dict[str, Any]:
    """One image's annotation as cleanlab's ``labels[i]``: ``{"bboxes", "labels"}``."""
    return {"bboxes": given.xyxy, "labels": given.class_ids}


def cleanlab_prediction(predicted: PredictedBoxes, n_classes: int) -> list[np.ndarray]:
    """One image's predictions as cleanlab's ``predictions[i]``: for each class ``k`` a
    ``(M_k, 5)`` array of ``[x1, y1, x2, y2, confidence]`` (empty classes included)."""
    rows = np.concatenate([predicted.xyxy, predicted.scores[:, None]], axis=1)
    return [rows[predicted.class_ids == k] for k in range(n_classes)]


def _check(given: Sequence[GivenBoxes], predicted: Sequence[PredictedBoxes], n_classes: int
           ) -> None:
    if len(given) != len(predicted):
        raise ValueError(f"one prediction per image: {len(given)} annotated images, "
                         f"{len(predicted)} predicted")
    if n_classes < 1:
        raise ValueError(f"n_classes must be at least 1, got {n_classes}")
    for i, (g, p) in enumerate(zip(given, predicted, strict=True)):
        ids = np.concatenate([g.class_ids, p.class_ids])
        if len(ids) and (ids.min() < 0 or ids.max() >= n_classes):
            raise ValueError(f"image {i}: class ids must lie in [0, {n_classes}), got "
                             f"{ids.min()}..{ids.max()}")


def detection_label_quality(given: Sequence[GivenBoxes], predicted: Sequence[PredictedBoxes],
                            n_classes: int) -> DetectionQuality:
    """cleanlab's ObjectLab label-quality score and issue flag of each image's annotation,
    judged against out-of-sample ``predicted`` boxes (``n_classes``: the control's labels).

    Edge cases, as cleanlab decides them (there is nothing to decide otherwise):

    - no images: empty arrays (cleanlab itself rejects an empty list);
    - an image with no annotated box: 1 when nothing confident is predicted on it, low when
      a confident box is (an overlooked object);
    - an image with annotated boxes and no prediction the thresholds admit: 1. A box drawn
      around nothing is **not** suspected: no subtype scores an annotated box that no
      predicted box overlaps;
    - a single class: scored on overlooked and badly located boxes; a swap needs another
      class, so that part is always 1.

    Scores depend on the whole set of images (ObjectLab's smallest box similarity is taken
    over all of them): compare scores within one call, not across calls.
    """
    from cleanlab.object_detection.filter import find_label_issues
    from cleanlab.object_detection.rank import get_label_quality_scores

    _check(given, predicted, n_classes)
    if not given:
        return DetectionQuality(np.zeros(0), np.zeros(0, dtype=bool))
    labels = [cleanlab_label(g) for g in given]
    predictions = [cleanlab_prediction(p, n_classes) for p in predicted]
    scores = np.asarray(get_label_quality_scores(labels, predictions, verbose=False),
                        dtype=np.float64)
    issues = np.asarray(find_label_issues(labels, predictions), dtype=bool)
    return DetectionQuality(np.clip(scores, 0.0, 1.0), issues)
