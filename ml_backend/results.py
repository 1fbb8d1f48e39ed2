"""Model outputs as typed containers, and their conversion to Label Studio JSON.

Adapters return containers; only this module builds Label Studio result dicts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .label_config import ControlSpec
from .learning import confidence

MULTI_CHOICE_THRESHOLD = 0.5


@dataclass(frozen=True)
class Classification:
    """Calibrated class probabilities of one image for one ``Choices`` control.

    ``proba (C,)`` follows ``control.labels``; rows sum to 1 for single choice, each entry is an
    independent probability for multiple choice.
    """

    control: ControlSpec
    proba: np.ndarray

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


Output = Classification


def classification_to_region(item: Classification) -> dict[str, Any] | None:
    """One ``choices`` region, or None when a multiple-choice control selects nothing."""
    chosen = item.chosen()
    if not chosen:
        return None
    return {
        "id": f"{item.control.name}-0",
        "from_name": item.control.name,
        "to_name": item.control.to_name,
        "type": item.control.result_type,
        "value": {"choices": chosen},
        "score": round(item.confidence, 6),
    }


def task_prediction(outputs: Sequence[Output], model_version: str) -> dict[str, Any]:
    """The prediction for one task: every output's regions, and ``score`` = the lowest
    confidence among them (the least certain control decides how informative the task is)."""
    regions = [r for r in (classification_to_region(o) for o in outputs) if r is not None]
    scores = [o.confidence for o in outputs]
    return {
        "result": regions,
        "score": round(min(scores), 6) if scores else 0.0,
        "model_version": model_version,
    }


def empty_prediction(model_version: str, score: float = 0.0) -> dict[str, Any]:
    """A prediction with no regions: a task whose image failed, or a model not trained yet."""
    return {"result": [], "score": round(float(score), 6), "model_version": model_version}
