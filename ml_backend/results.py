"""Model outputs as typed containers, and their conversion to Label Studio JSON.

Adapters return containers; only this module builds Label Studio result dicts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .label_config import ControlSpec
from .learning import confidence
from .ranking import Strategy, task_uncertainty, uncertainty_table

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


Output = Classification


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
    regions = [r for r in (classification_to_region(o) for o in outputs) if r is not None]
    return {"result": regions, "score": round(float(score), 6), "model_version": model_version}


def classification_predictions(controls: Sequence[ControlSpec], probas: dict[str, np.ndarray],
                               model_version: str, strategy: Strategy,
                               scores: np.ndarray | None = None) -> list[dict[str, Any]]:
    """Predictions for N tasks from each control's probabilities ``probas[name] (N, C)``.

    ``score`` defaults to ``1 - uncertainty`` under ``strategy`` (the model's confidence as
    the strategy measures it), so sorting ascending puts the most informative task first;
    the re-ranking job passes ``scores`` that also encode its batch order."""
    tables = {c.name: uncertainty_table(probas[c.name], c.multiple) for c in controls}
    if scores is None:
        scores = 1.0 - task_uncertainty(strategy, list(tables.values()))
    out = []
    for row, score in enumerate(scores):
        outputs = [Classification(c, probas[c.name][row],
                                  {k: float(v[row]) for k, v in tables[c.name].items()})
                   for c in controls]
        out.append(task_prediction(outputs, model_version, float(score)))
    return out


def empty_prediction(model_version: str, score: float = 1.0) -> dict[str, Any]:
    """A prediction with no regions: a task whose image failed, or a model not trained yet.
    The default score 1.0 sorts a task that cannot be scored after those that can, so a
    broken image never tops the annotators' queue."""
    return {"result": [], "score": round(float(score), 6), "model_version": model_version}
