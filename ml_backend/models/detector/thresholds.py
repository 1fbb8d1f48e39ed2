"""The box threshold that costs an annotator least, rather than the one that maximises mAP.

A shown box is accepted (1 s) or adjusted (3 s) when right and deleted (1 s) when wrong; a
box not shown is drawn (7 s) if it was real. So a box pays off when it is right more often
than about one time in seven: the mAP-chosen 0.25 hides many boxes worth showing. After a
fine-tune the new weights predict the held-out tasks once, and :func:`fixup_threshold`
prices each threshold of a grid with the annotator cost model of
:mod:`ml_backend.reporting.effort` (the effort benchmark's and the savings report's rules).
Pure functions over :class:`~ml_backend.core.detections.Detections` (predicted) and
:class:`~ml_backend.core.detections.LabeledBoxes` (true).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ml_backend.core.detections import Detections, LabeledBoxes
from ml_backend.reporting.effort import DEFAULT_COSTS, CostModel, box_effort

# 0.05 … 0.50: below 0.05 a detector's boxes are noise, above 0.5 the mAP default already
# shows too few (the grid's lowest is also the confidence the held-out tasks are predicted at).
DEFAULT_GRID: tuple[float, ...] = tuple(round(0.05 * k, 2) for k in range(1, 11))
# Summed seconds closer than this are a tie (float sums of the same costs in another order).
_TIE_S = 1e-9


@dataclass(frozen=True)
class ThresholdChoice:
    """The cheapest threshold (``value``), the annotator seconds per image at every threshold
    of the grid, and the images they were measured on."""

    value: float
    seconds_per_image: dict[float, float]
    n_images: int

    def as_meta(self) -> dict[str, Any]:
        """JSON for a version's manifest (thresholds as keys become strings)."""
        return {"value": self.value, "n_images": self.n_images,
                "seconds_per_image": {f"{t:.2f}": round(s, 4)
                                      for t, s in self.seconds_per_image.items()}}


def kept_above(predicted: Detections, threshold: float) -> Detections:
    """The boxes an annotator is shown at ``threshold`` (scores ≥ it, as
    :func:`~ml_backend.models.detector.boxes.control_boxes` keeps them)."""
    keep = predicted.scores >= threshold
    labels = tuple(label for label, kept in zip(predicted.labels, keep, strict=True) if kept)
    return Detections(predicted.xyxy[keep], labels, predicted.scores[keep], predicted.width,
                      predicted.height)


def fixup_seconds(predictions: Sequence[Detections], truths: Sequence[LabeledBoxes],
                  threshold: float, costs: CostModel = DEFAULT_COSTS) -> float:
    """Annotator seconds, summed over the images, to turn the boxes shown at ``threshold``
    into the truth (:func:`~ml_backend.reporting.effort.box_effort`)."""
    total = 0.0
    for predicted, truth in zip(predictions, truths, strict=True):
        shown = kept_above(predicted, threshold)
        total += box_effort(shown.xyxy, shown.labels, truth.xyxy, truth.labels, costs).seconds
    return total


def fixup_threshold(predictions: Sequence[Detections], truths: Sequence[LabeledBoxes],
                    costs: CostModel = DEFAULT_COSTS, grid: Sequence[float] = DEFAULT_GRID
                    ) -> ThresholdChoice:
    """The threshold of ``grid`` whose shown boxes cost the least fix-up time over the images
    (``predictions[i]`` made at most at the grid's lowest threshold, ``truths[i]`` the same
    image's true boxes); ties go to the higher threshold (fewer boxes on screen for the same
    time). Raises ValueError for no images, a length mismatch or an empty or out-of-range
    grid."""
    if not predictions:
        raise ValueError("no images to choose a box threshold on")
    if len(predictions) != len(truths):
        raise ValueError(f"{len(predictions)} images of predictions but {len(truths)} of "
                         "true boxes")
    thresholds = sorted({float(t) for t in grid})
    if not thresholds or not 0.0 <= thresholds[0] <= thresholds[-1] <= 1.0:
        raise ValueError(f"the threshold grid must hold numbers in [0, 1], got {list(grid)}")
    seconds = {t: fixup_seconds(predictions, truths, t, costs) / len(predictions)
               for t in thresholds}
    cheapest = min(seconds.values())
    best = max(t for t, s in seconds.items() if s <= cheapest + _TIE_S)
    return ThresholdChoice(best, seconds, len(predictions))


def tuned_threshold(detector_meta: Mapping[str, Any] | None) -> float | None:
    """The threshold a version's training chose (its ``box_threshold``), or None when it has
    none or the record is not a number in [0, 1]."""
    record = (detector_meta or {}).get("box_threshold")
    value = record.get("value") if isinstance(record, Mapping) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if 0.0 <= value <= 1.0 else None
