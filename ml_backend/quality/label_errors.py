"""The ``quality`` job: suspected label errors of a classification project, written to Label
Studio, and the project's find-similar index.

After each classifier training (never on a request): every annotated task's label is scored
by cleanlab from out-of-fold probabilities of the production learner (the head the
classifier trains, with the regularisation the current version chose, cross-validated on
the cached embeddings of the current backbone). The score goes into the task's ``data``
(see :mod:`ml_backend.quality.views`, which also says why there) and the "Suspected label
errors" tab lists annotated tasks lowest score first. Object detection is not scored yet.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from ml_backend.jobs.kinds import QualityRequest
from ml_backend.labelstudio.api import LabeledTask
from ml_backend.labelstudio.label_config import ControlSpec, ModelFamily, parse_label_config
from ml_backend.learning.heads import BASELINE, Regularisation, out_of_fold_proba
from ml_backend.models.classifier.model import ResNetEmbedder
from ml_backend.models.classifier.training import embed_images, fetch_images, targets_for
from ml_backend.quality.scoring import label_issues, label_quality_scores
from ml_backend.quality.similar import save_index
from ml_backend.quality.views import (
    LABEL_ERRORS_VIEW,
    QUALITY_KEY,
    label_errors_view,
)
from ml_backend.runtime import Runtime

log = logging.getLogger(__name__)
QUALITY_STATE = "label-quality"
# Fewer labels than this (or fewer than two classes) give folds too small to say anything:
# the job reports "not-enough-labels" instead of scores.
MIN_LABELS = 10
FOLDS = 5
# Scores are written rounded, and only where the rounded value changed (one PATCH a task).
DECIMALS = 4


def embed_tasks(runtime: Runtime, embedder: ResNetEmbedder, tasks: list[dict[str, Any]],
                key: str) -> tuple[list[int], np.ndarray]:
    """Task ids whose ``key`` image embedded, and their embeddings (from the cache where the
    ranking or training put them)."""
    as_labeled = [LabeledTask(int(t["id"]), t.get("data") or {}, 0, "", []) for t in tasks]
    rows, x = embed_images(runtime, embedder, fetch_images(runtime, as_labeled, key))
    return [as_labeled[r].task_id for r in rows], x


def score_labels(x: np.ndarray, y: np.ndarray, n_classes: int, head_regularisation: Regularisation,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(scores (N,), issues (N,) bool)`` for embeddings ``x`` labeled ``y``."""
    proba = out_of_fold_proba(x, y, n_classes, head_regularisation, FOLDS, seed)
    return label_quality_scores(proba, y), label_issues(proba, y)


def _single_choice(config: str) -> ControlSpec | None:
    controls = [c for c in parse_label_config(config).for_family(ModelFamily.CLASSIFIER)
                if not c.multiple]
    return controls[0] if controls else None


def quality_job(runtime: Runtime, request: QualityRequest) -> dict[str, Any]:
    """Job entry: score the labels, write the scores and the tab, rebuild the index."""
    project = request.project
    with runtime.store.locked(project, "quality"):
        return _quality_locked(runtime, project)


def _quality_locked(runtime: Runtime, project: int) -> dict[str, Any]:
    started = time.perf_counter()
    ls_api = runtime.label_studio("label quality")
    config = ls_api.label_config(project)
    control = _single_choice(config)
    version = runtime.store.latest(project)
    model = runtime.classifier.model(project)
    if control is None or version is None or model is None:
        return {"project": project, "status": "skipped",
                "detail": "no single-choice classification control with a trained model"}
    embedder = runtime.classifier.embedder(version)
    labeled, unlabeled = ls_api.project_tasks(project)
    result: dict[str, Any] = {"project": project, "version": version.name}

    # The find-similar index: every task with an image, labeled or not.
    everything = [{"id": t.task_id, "data": t.data} for t in labeled] + unlabeled
    ids, vectors = embed_tasks(runtime, embedder, everything, control.value_key)
    if ids:
        save_index(runtime.store, project, ids, vectors, version.name, time.time())
    result["indexed"] = len(ids)
    by_id = dict(zip(ids, range(len(ids)), strict=True))

    rows, y = targets_for(control, [t.result for t in labeled])
    usable = [(labeled[r], int(label)) for r, label in zip(rows, y, strict=True)
              if labeled[r].task_id in by_id]
    if len(usable) < MIN_LABELS or len({label for _, label in usable}) < 2:
        runtime.store.write_state(project, QUALITY_STATE, {
            "version": version.name, "status": "not-enough-labels", "n": len(usable),
            "computed_at": time.time()})
        return {**result, "status": "not-enough-labels", "n_labeled": len(usable),
                "detail": f"label quality needs {MIN_LABELS} labeled images in at least two "
                          "classes"}
    x = np.stack([vectors[by_id[task.task_id]] for task, _ in usable])
    labels = np.array([label for _, label in usable], dtype=np.int64)
    head = model.heads.get(control.name)
    regularisation = head.regularisation() if head is not None else BASELINE
    scores, issues = score_labels(x, labels, len(control.labels), regularisation)

    written = 0
    for (task, _), score in zip(usable, scores, strict=True):
        value = round(float(score), DECIMALS)
        if task.data.get(QUALITY_KEY) != value:
            ls_api.update_task_data(task.task_id, {**task.data, QUALITY_KEY: value})
            written += 1
    view = ls_api.ensure_view(project, LABEL_ERRORS_VIEW, label_errors_view())
    order = np.argsort(scores, kind="stable")
    worst = [{"task": usable[i][0].task_id, "score": round(float(scores[i]), DECIMALS),
              "label": control.labels[usable[i][1]], "issue": bool(issues[i])}
             for i in order]
    seconds = round(time.perf_counter() - started, 3)
    runtime.store.write_state(project, QUALITY_STATE, {
        "version": version.name, "status": "scored", "control": control.name,
        "n": len(usable), "issues": int(issues.sum()), "computed_at": time.time(),
        "seconds": seconds, "tasks": worst})
    log.info("project %s: label quality of %d tasks, %d suspected, %d written (%.1f s)",
             project, len(usable), int(issues.sum()), written, seconds)
    return {**result, "status": "scored", "n_labeled": len(usable),
            "issues": int(issues.sum()), "written": written, "view": view,
            "worst": worst[:10], "seconds": seconds}
