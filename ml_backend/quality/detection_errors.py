"""Suspected label errors of object detection, as pure functions over arrays.

Per image: the annotated boxes (:class:`~ml_backend.core.detections.LabeledBoxes`) and a
detector's boxes on the same image (:class:`~ml_backend.core.detections.Detections`), both in
pixel corners ``xyxy``, labelled with the control's labels (which cleanlab sees as class ids,
their indices in the control's order: :func:`class_ids`, the one conversion). cleanlab's
ObjectLab scores (``cleanlab.object_detection``) compare them per image and give one
label-quality score in [0, 1] (low: the annotation is suspect) from three kinds of error:

- **overlooked**: a confident predicted box (confidence ≥ 0.95) that no annotated box
  overlaps;
- **swapped**: an annotated box on which a confident box (> 0.95) of *another* class sits;
- **badly located**: an annotated box whose best overlapping prediction of its class
  (confidence > 0.5) sits elsewhere.

The thresholds are cleanlab's own (``cleanlab.internal.constants``) and read a confidence as
the chance that the box is right: the quality job calibrates confidences to that first
(:mod:`ml_backend.models.detector.calibration`). Predictions must not have
seen the image (cleanlab asks for out-of-sample predictions): which images qualify is the
quality job's business (:mod:`ml_backend.quality.label_errors`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ml_backend.core.detections import Detections, LabeledBoxes


class SerialPool:
    """Stands in for ``multiprocessing.Pool`` in cleanlab's object-detection filter, which
    opens a pool on every ``find_label_issues`` call (even of one process). A pool forks, and
    a fork of this multithreaded server (request threads, other jobs running torch) copies
    locks that other threads hold: the child can wait on them forever, and the quality job
    with it (seen in ``test_detection_loop`` next to a re-rank). cleanlab asks for one
    process, so running its ``starmap`` in the calling thread computes the same."""

    def __init__(self, processes: int | None = None) -> None:
        self.processes = processes

    def starmap(self, func: Callable[..., Any], iterable: Iterable[Sequence[Any]]
                ) -> list[Any]:
        return [func(*args) for args in iterable]

    def close(self) -> None:
        pass

    def join(self) -> None:
        pass


def _without_fork() -> None:
    """Point cleanlab's object-detection filter at :class:`SerialPool` (once per process;
    idempotent, so concurrent jobs may all call it)."""
    from cleanlab.object_detection import filter as cleanlab_filter

    cleanlab_filter.Pool = SerialPool  # type: ignore[attr-defined,misc]


@dataclass(frozen=True)
class DetectionQuality:
    """Per image: ``scores (N,)`` in [0, 1] (low: likeliest label error) and ``issues (N,)
    bool`` (cleanlab's ``find_label_issues``)."""

    scores: np.ndarray
    issues: np.ndarray


def class_ids(labels: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """Each label's index in ``classes`` (cleanlab's class ids) ``(N,) int64``; ValueError
    names a label that is not among them."""
    index = {label: i for i, label in enumerate(classes)}
    unknown = sorted({label for label in labels if label not in index})
    if unknown:
        raise ValueError(f"labels {unknown} are not among the classes {list(classes)}")
    return np.array([index[label] for label in labels], dtype=np.int64)


def cleanlab_label(given: LabeledBoxes, classes: Sequence[str]) -> dict[str, Any]:
    """One image's annotation as cleanlab's ``labels[i]``: ``{"bboxes", "labels"}``."""
    return {"bboxes": given.xyxy, "labels": class_ids(given.labels, classes)}


def cleanlab_prediction(predicted: Detections, classes: Sequence[str]) -> list[np.ndarray]:
    """One image's predictions as cleanlab's ``predictions[i]``: for each class ``k`` of
    ``classes`` a ``(M_k, 5)`` float64 array of ``[x1, y1, x2, y2, confidence]`` (empty
    classes included)."""
    ids = class_ids(predicted.labels, classes)
    rows = np.concatenate([np.asarray(predicted.xyxy, dtype=np.float64).reshape(-1, 4),
                           np.asarray(predicted.scores, dtype=np.float64).reshape(-1, 1)],
                          axis=1)
    return [rows[ids == k] for k in range(len(classes))]


def _check(given: Sequence[LabeledBoxes], predicted: Sequence[Detections],
           classes: Sequence[str]) -> None:
    if len(given) != len(predicted):
        raise ValueError(f"one prediction per image: {len(given)} annotated images, "
                         f"{len(predicted)} predicted")
    if len(classes) < 1:
        raise ValueError(f"the classes must hold at least 1 label, got {list(classes)}")
    if len(set(classes)) != len(classes):
        raise ValueError(f"the classes must be distinct, got {list(classes)}")
    for i, p in enumerate(predicted):
        if len(p) and (p.scores.min() < 0.0 or p.scores.max() > 1.0):
            raise ValueError(f"image {i}: predicted scores must lie in [0, 1], got "
                             f"{p.scores.min()}..{p.scores.max()}")


def detection_label_quality(given: Sequence[LabeledBoxes], predicted: Sequence[Detections],
                            classes: Sequence[str]) -> DetectionQuality:
    """cleanlab's ObjectLab label-quality score and issue flag of each image's annotation,
    judged against out-of-sample ``predicted`` boxes (``classes``: the control's labels, in
its order; every box's label must be one of them).

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

    _check(given, predicted, classes)
    _without_fork()
    if not given:
        return DetectionQuality(np.zeros(0), np.zeros(0, dtype=bool))
    labels, predictions = [], []
    for i, (g, p) in enumerate(zip(given, predicted, strict=True)):
        try:
            labels.append(cleanlab_label(g, classes))
            predictions.append(cleanlab_prediction(p, classes))
        except ValueError as exc:
            raise ValueError(f"image {i}: {exc}") from None
    scores = np.asarray(get_label_quality_scores(labels, predictions, verbose=False),
                        dtype=np.float64)
    issues = np.asarray(find_label_issues(labels, predictions), dtype=bool)
    return DetectionQuality(np.clip(scores, 0.0, 1.0), issues)
