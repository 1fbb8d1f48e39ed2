"""After a correction: the unlabeled tasks nearest the corrected one that the model, retrained
on it, now labels as the annotator did.

Label Studio sends, with each annotation webhook, the prediction the annotator saw
(``annotation.prediction``: its project's current-version prediction of the task). Where a
single choice differs from the predicted one, the webhook keeps it as the project's last
correction (:func:`choice_corrections`). The quality job that follows the training it
triggers takes the :data:`LIKE_CORRECTION_K` unlabeled tasks nearest the corrected one (cosine
of the classifier backbone's embeddings, the find-similar index's) and marks those the new
head labels with the corrected label, with the corrected task's id and their similarity, in
their ``data`` (see :mod:`ml_backend.quality.views` for why there). The tab "Like the last
correction" lists them, most similar first, until they are annotated: an annotator who agrees
selects them all and runs Label Studio's own bulk action "Create Annotations From
Predictions", since each one's current prediction is that label.

No torch here: the job hands in embeddings and predicted labels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ml_backend.labelstudio.api import LabelStudioAPI
from ml_backend.quality.scoring import nearest, normalise
from ml_backend.quality.views import (
    LIKE_CORRECTION_KEY,
    LIKE_CORRECTION_VIEW,
    LIKE_SIMILARITY_KEY,
    like_correction_view,
)

LAST_CORRECTION_STATE = "last-correction"
# How many of the nearest unlabeled tasks are looked at; those labeled like the correction
# are marked. A screenful of the Data Manager, small enough to review before accepting.
LIKE_CORRECTION_K = 20
DECIMALS = 4


@dataclass(frozen=True)
class Correction:
    """An annotator's single choice that differs from the choice the model predicted."""

    task: int
    annotation: int
    control: str
    label: str
    predicted: str
    prediction: int | None  # the prediction's id in Label Studio
    updated_at: str

    def as_state(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Correction:
        """Raises KeyError / TypeError / ValueError on a record this version did not write."""
        prediction = state["prediction"]
        return cls(int(state["task"]), int(state["annotation"]), str(state["control"]),
                   str(state["label"]), str(state["predicted"]),
                   None if prediction is None else int(prediction), str(state["updated_at"]))


def single_choices(result: Any) -> dict[str, str]:
    """``{control name: choice}`` of every choices region in ``result`` holding exactly one
    choice (a multiple-choice answer is no single label to compare)."""
    out: dict[str, str] = {}
    for region in result if isinstance(result, list) else []:
        if not isinstance(region, dict) or region.get("type") != "choices":
            continue
        choices = (region.get("value") or {}).get("choices")
        if isinstance(choices, list) and len(choices) == 1 and isinstance(region.get(
                "from_name"), str):
            out[region["from_name"]] = str(choices[0])
    return out


def choice_corrections(annotation: Mapping[str, Any]) -> list[Correction]:
    """The single choices of a webhook's ``annotation`` that differ from those of the
    prediction it carries. Empty for a skipped task, an annotation made without a prediction
    (nothing was corrected), or one whose prediction had no choice for that control."""
    prediction = annotation.get("prediction")
    if annotation.get("was_cancelled") or not isinstance(prediction, dict):
        return []
    try:
        task, annotation_id = int(annotation["task"]), int(annotation["id"])
    except (KeyError, TypeError, ValueError):
        return []
    predicted = single_choices(prediction.get("result"))
    given = single_choices(annotation.get("result"))
    prediction_id = prediction.get("id")
    return [Correction(task, annotation_id, control, label, predicted[control],
                       prediction_id if isinstance(prediction_id, int) else None,
                       str(annotation.get("updated_at") or ""))
            for control, label in given.items()
            if control in predicted and predicted[control] != label]


def like_correction(embeddings: np.ndarray, anchor: int, unlabeled: Sequence[int],
                    labeled_alike: np.ndarray, k: int = LIKE_CORRECTION_K
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Of the ``k`` rows of ``unlabeled`` nearest row ``anchor`` of ``embeddings (N, D)``
    (cosine), those whose entry of ``labeled_alike`` (bool, one per ``unlabeled`` row) is
    set, best first: ``(rows, similarities)``."""
    rows = np.asarray(unlabeled, dtype=np.int64)
    alike = np.asarray(labeled_alike, dtype=bool)
    if alike.shape != rows.shape:
        raise ValueError(f"one labeled_alike flag per unlabeled row: {alike.shape} vs "
                         f"{rows.shape}")
    if not len(rows):
        return rows, np.zeros(0)
    unit = normalise(np.asarray(embeddings)[rows])
    picked, sims = nearest(unit, np.asarray(embeddings)[anchor], k)
    keep = alike[picked]
    return rows[picked[keep]], sims[keep]


def write_like_correction(ls_api: LabelStudioAPI, project: int, corrected_task: int | None,
                          marked: Mapping[int, float],
                          tasks: Mapping[int, dict[str, Any]]) -> dict[str, int]:
    """Mark each task of ``marked`` (task id → similarity) with ``corrected_task`` and its
    similarity to it (none without a correction), clear the marks of every other task of
    ``tasks`` (task id → data) that has one (an older correction's, or a task annotated
    since), and make sure the tab exists. One PATCH per task whose marks change; each
    ``tasks`` entry is updated in place to what was written, so that a later writer of the
    same job (the label-quality scores) starts from it."""
    written = cleared = 0
    for task_id, data in tasks.items():
        if task_id in marked and corrected_task is not None:
            marks = {LIKE_CORRECTION_KEY: corrected_task,
                     LIKE_SIMILARITY_KEY: round(float(marked[task_id]), DECIMALS)}
            if any(data.get(key) != value for key, value in marks.items()):
                ls_api.update_task_data(task_id, {**data, **marks})
                data.update(marks)
                written += 1
        elif LIKE_CORRECTION_KEY in data or LIKE_SIMILARITY_KEY in data:
            ls_api.update_task_data(task_id, {key: value for key, value in data.items()
                                              if key not in (LIKE_CORRECTION_KEY,
                                                             LIKE_SIMILARITY_KEY)})
            data.pop(LIKE_CORRECTION_KEY, None)
            data.pop(LIKE_SIMILARITY_KEY, None)
            cleared += 1
    view = ls_api.ensure_view(project, LIKE_CORRECTION_VIEW, like_correction_view())
    return {"written": written, "cleared": cleared, "view": view}
