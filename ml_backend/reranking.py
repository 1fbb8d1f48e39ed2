"""Score and order a project's unlabeled tasks with its current model.

Used by the learning-efficiency benchmark now, and the basis of the re-ranking job (issue:
active learning): one function that turns tasks into predictions plus a selector order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .label_config import ModelFamily, parse_label_config
from .ls_api import LabeledTask
from .ranking import UNCERTAINTY, Strategy, select
from .results import Classification, task_prediction
from .runtime import Runtime
from .training import embed_images, fetch_images


@dataclass(frozen=True)
class RankedTasks:
    """``order``: task ids, most informative first; ``predictions`` and ``uncertainty`` by
    task id (tasks whose image failed are absent)."""

    version: str
    order: list[int]
    predictions: dict[int, dict[str, Any]]
    uncertainty: dict[int, float]


def rank_tasks(runtime: Runtime, project: int, label_config: str,
               candidates: list[dict[str, Any]], labeled: list[dict[str, Any]],
               strategy: Strategy, batch_size: int, random_share: float,
               rng: np.random.Generator) -> RankedTasks:
    """Predict ``candidates`` (Label Studio tasks) and order them: the first ``batch_size`` by
    ``strategy`` (with a ``random_share`` hedge), the rest by uncertainty."""
    model = runtime.classifier(project)
    if model is None:
        raise RuntimeError(f"project {project} has no trained model to rank with")
    controls = [c for c in parse_label_config(label_config).for_family(ModelFamily.CLASSIFIER)
                if c.name in model.heads and model.heads[c.name].labels == c.labels]
    if not controls:
        raise RuntimeError(f"project {project}: no trained head matches the label config")
    key = controls[0].value_key

    def as_tasks(items: list[dict[str, Any]]) -> list[LabeledTask]:
        return [LabeledTask(int(t["id"]), t.get("data", {}), 0, "", []) for t in items]

    images = fetch_images(runtime, as_tasks(candidates), key)
    rows, x = embed_images(runtime, model.embedder, images)
    ids = [int(candidates[r]["id"]) for r in rows]
    probas = {c.name: model.heads[c.name].predict_proba(x) for c in controls}
    if strategy is Strategy.RANDOM:
        uncertainty = np.zeros(len(ids))
    else:
        uncertainty = np.mean([UNCERTAINTY[strategy](probas[c.name], c.multiple)
                               for c in controls], axis=0)
    labeled_x = None
    if strategy is Strategy.RANKED_BATCH and labeled:
        _, labeled_x = embed_images(runtime, model.embedder,
                              fetch_images(runtime, as_tasks(labeled), key))
    first = select(strategy, uncertainty, batch_size, rng, embeddings=x,
                   labeled_embeddings=labeled_x, random_share=random_share)
    rest = np.setdiff1d(np.arange(len(ids)), first)
    rest = rest[np.argsort(-uncertainty[rest], kind="stable")] if strategy is not \
        Strategy.RANDOM else rng.permutation(rest)
    order = [ids[i] for i in np.concatenate([first, rest]).astype(int)]
    predictions = {}
    for j, task_id in enumerate(ids):
        outputs = [Classification(c, probas[c.name][j]) for c in controls]
        predictions[task_id] = task_prediction(outputs, model.version)
    return RankedTasks(model.version, order, predictions,
                       {task_id: float(u) for task_id, u in zip(ids, uncertainty, strict=True)})
