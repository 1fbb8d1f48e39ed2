"""Model outputs as typed containers, and their conversion to Label Studio JSON.

Adapters return containers; only this module builds Label Studio result dicts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ml_backend.core.detections import Detections, xyxy_to_ls_rect
from ml_backend.labelstudio.label_config import ControlSpec
from ml_backend.labelstudio.masks import mask_to_polygons, polygon_to_percent
from ml_backend.labelstudio.rle import mask_to_rle_array
from ml_backend.learning.heads import confidence
from ml_backend.learning.selection import Strategy, task_uncertainty, uncertainty_table

MULTI_CHOICE_THRESHOLD = 0.5


@dataclass(frozen=True)
class Classification:
    """Calibrated class probabilities of one image for one ``Choices`` control.

    ``proba (C,)`` follows ``control.labels``; rows sum to 1 for single choice, each entry is an
    independent probability for multiple choice. ``uncertainty`` holds every uncertainty
    score of this output by name, kept in the result (region ``meta``) for inspection.
    """

    control: ControlSpec
    proba: np.ndarray
    uncertainty: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.proba.shape != (len(self.control.labels),):
            raise ValueError(
                f"proba must have shape ({len(self.control.labels)},) for control "
                f"'{self.control.name}', got {self.proba.shape}"
            )

    @property
    def confidence(self) -> float:
        return float(confidence(self.proba[None, :], self.control.multiple)[0])

    def chosen(self) -> list[str]:
        labels = self.control.labels
        if self.control.multiple:
            return [lab for lab, p in zip(labels, self.proba, strict=True)
                    if p >= MULTI_CHOICE_THRESHOLD]
        return [labels[int(np.argmax(self.proba))]]


@dataclass(frozen=True)
class Boxes:
    """One image's detections for one ``RectangleLabels`` control, already mapped to the
    control's labels; ``uncertainty`` is the image's aggregated detection uncertainty."""

    control: ControlSpec
    detections: Detections
    uncertainty: float


@dataclass(frozen=True)
class Mask:
    """One labelled mask ``(H, W)`` bool for a ``BrushLabels`` or ``PolygonLabels``
    control, with the model's confidence in it. ``polygon_tolerance_px`` is how far a
    simplified polygon may stray from the mask's outline."""

    control: ControlSpec
    label: str
    mask: np.ndarray
    score: float
    polygon_tolerance_px: float = 1.5

    def __post_init__(self) -> None:
        if self.mask.ndim != 2 or self.mask.dtype != np.bool_:
            raise ValueError(f"mask must be a 2-D bool array, got {self.mask.shape} "
                             f"{self.mask.dtype}")


Output = Classification | Boxes | Mask


def boxes_to_regions(item: Boxes) -> list[dict[str, Any]]:
    """One ``rectanglelabels`` region per box, in percent of the original image, with the
    box's confidence as ``score``."""
    det = item.detections
    return [{
        "id": f"{item.control.name}-{i}",
        "from_name": item.control.name,
        "to_name": item.control.to_name,
        "type": item.control.result_type,
        "original_width": det.width,
        "original_height": det.height,
        "image_rotation": 0,
        "value": {**xyxy_to_ls_rect(det.xyxy[i], det.width, det.height),
                  "rectanglelabels": [det.labels[i]]},
        "score": round(float(det.scores[i]), 6),
    } for i in range(len(det))]


def mask_to_regions(item: Mask) -> list[dict[str, Any]]:
    """A ``brushlabels`` region (Label Studio RLE), or one ``polygonlabels`` region per
    mask component (simplified outline). An empty mask gives none."""
    height, width = item.mask.shape
    common = {"from_name": item.control.name, "to_name": item.control.to_name,
              "type": item.control.result_type, "original_width": width,
              "original_height": height, "image_rotation": 0,
              "score": round(float(item.score), 6)}
    if not item.mask.any():
        return []
    if item.control.tag == "PolygonLabels":
        polygons = mask_to_polygons(item.mask, item.polygon_tolerance_px)
        return [{"id": f"{item.control.name}-{i}", **common,
                 "value": {"points": polygon_to_percent(points, width, height),
                           "closed": True, "polygonlabels": [item.label]}}
                for i, points in enumerate(polygons)]
    # An array, not a list: the HTTP layer writes it to JSON without a Python int per byte.
    rle = mask_to_rle_array(item.mask.view(np.uint8) * np.uint8(255))
    return [{"id": f"{item.control.name}-0", **common,
             "value": {"format": "rle", "rle": rle, "brushlabels": [item.label]}}]


def output_regions(item: Output) -> list[dict[str, Any]]:
    if isinstance(item, Boxes):
        return boxes_to_regions(item)
    if isinstance(item, Mask):
        return mask_to_regions(item)
    region = classification_to_region(item)
    return [region] if region is not None else []


def classification_to_region(item: Classification) -> dict[str, Any] | None:
    """One ``choices`` region, or None when a multiple-choice control selects nothing."""
    chosen = item.chosen()
    if not chosen:
        return None
    region: dict[str, Any] = {
        "id": f"{item.control.name}-0",
        "from_name": item.control.name,
        "to_name": item.control.to_name,
        "type": item.control.result_type,
        "value": {"choices": chosen},
        "score": round(item.confidence, 6),
    }
    if item.uncertainty:
        region["meta"] = {"uncertainty": {k: round(v, 4) for k, v in item.uncertainty.items()}}
    return region


def task_prediction(outputs: Sequence[Output], model_version: str, score: float
                    ) -> dict[str, Any]:
    """The prediction for one task: every output's regions and the task's ``score``."""
    regions = [r for o in outputs for r in output_regions(o)]
    return {"result": regions, "score": round(float(score), 6), "model_version": model_version}


def classification_outputs(controls: Sequence[ControlSpec], probas: dict[str, np.ndarray],
                           strategy: Strategy) -> list[tuple[list[Output], float]]:
    """Each of N tasks' outputs from each control's probabilities ``probas[name] (N, C)``,
    with the task's uncertainty under ``strategy`` (the least certain control decides)."""
    tables = {c.name: uncertainty_table(probas[c.name], c.multiple) for c in controls}
    uncertainty = task_uncertainty(strategy, list(tables.values()))
    return [([Classification(c, probas[c.name][row],
                             {k: float(v[row]) for k, v in tables[c.name].items()})
              for c in controls], float(uncertainty[row]))
            for row in range(len(uncertainty))]


def combine_outputs(parts: Sequence[tuple[list[Output], float] | None]
                    ) -> tuple[list[Output], float] | None:
    """One task's outputs from several model families: all regions, and the largest
    uncertainty (the least certain family decides). None when no family had any."""
    present = [p for p in parts if p is not None]
    if not present:
        return None
    return [o for outputs, _ in present for o in outputs], max(u for _, u in present)


def empty_prediction(model_version: str, score: float = 1.0) -> dict[str, Any]:
    """A prediction with no regions: a task whose image failed, or a model not trained yet.
    The default score 1.0 sorts a task that cannot be scored after those that can, so a
    broken image never tops the annotators' queue."""
    return {"result": [], "score": round(float(score), 6), "model_version": model_version}
