"""Score and order a project's unlabeled tasks with its current model, and write the queue to
Label Studio.

``rank_tasks`` turns tasks into predictions plus the selector's order (the learning benchmark
calls it directly); ``rerank_project`` is the background job that runs after every new
version: it re-scores all unlabeled tasks, writes the predictions in bulk with scores that
sort in the selector's order, makes the version the project's, and deletes the predictions of
older versions so Label Studio does not accumulate one prediction per task per version.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ml_backend.core.errors import BackendError, LabelStudioUnavailable
from ml_backend.core.settings import Settings
from ml_backend.core.store import RANKING_STATE
from ml_backend.jobs.kinds import RerankRequest
from ml_backend.labelstudio.label_config import parse_label_config
from ml_backend.labelstudio.results import combine_outputs, empty_prediction, task_prediction
from ml_backend.learning.selection import Strategy, queue_scores, select
from ml_backend.models.sam.precompute import queue_head_job
from ml_backend.pipeline.prediction import predictor_for
from ml_backend.runtime import Runtime, version_index

log = logging.getLogger(__name__)
STATE_TOP = 2000  # tasks whose uncertainties the backend keeps for GET /ranking


@dataclass(frozen=True)
class RankedTasks:
    """``order``: every scored task id, most informative first; its first ``batch`` ids are
    the selector's pick. ``predictions`` (with scores that sort in ``order``) and
    ``uncertainty`` (every strategy's score) are by task id; tasks whose image failed are in
    ``failed`` only."""

    version: str
    strategy: Strategy
    order: list[int]
    batch: list[int]
    predictions: dict[int, dict[str, Any]]
    uncertainty: dict[int, dict[str, float]]
    failed: list[int]


def rank_tasks(runtime: Runtime, project: int, label_config: str,
               candidates: list[dict[str, Any]], labeled: list[dict[str, Any]],
               strategy: Strategy, batch_size: int, random_share: float,
               rng: np.random.Generator) -> RankedTasks:
    """Predict ``candidates`` (Label Studio tasks) and order them: the first ``batch_size`` by
    ``strategy`` (with a ``random_share`` hedge), the rest by uncertainty. ``labeled`` tasks
    only matter to the diversity term of ranked batch sampling. With a classifier and a
    detector, the least certain family decides a task's uncertainty. The predictions are
    the server's own (:meth:`Predictor.score_tasks`, as ``/predict`` makes them)."""
    predictor = predictor_for(runtime)
    scored = predictor.score_tasks(candidates, parse_label_config(label_config), project,
                                   strategy)
    # A classifier whose heads fit none of the label config's controls ranks nothing.
    families = [f for f in scored.families if f.controls]
    if not families:
        raise BackendError(f"project {project} has no trained model for its label config")
    for row, failures in scored.failures.items():
        log.warning("project %s: task %s not ranked: %s", project, candidates[row].get("id"),
                    "; ".join(message for _, message in failures))
    version = runtime.model_version(project)
    # A task is scored only if every family could read its images.
    good = sorted(set.intersection(*(set(f.outputs) for f in families)) - set(scored.failures))
    ids = [int(candidates[r]["id"]) for r in good]
    failed = sorted({int(t["id"]) for t in candidates} - set(ids))
    if not ids:
        return RankedTasks(version, strategy, [], [], {}, {}, failed)
    combined = [combine_outputs([f.outputs[r] for f in families]) for r in good]
    uncertainty = np.array([c[1] for c in combined if c is not None])
    embeddings = labeled_x = None
    effective = strategy
    embedded = next((f.embeddings for f in families if f.embeddings is not None), None)
    if embedded is not None:
        embeddings = np.stack([embedded.by_row[r] for r in good])
        if strategy is Strategy.RANKED_BATCH and labeled:
            labeled_batch = predictor.batch(labeled)
            vectors = embedded.embed(labeled_batch)
            for row, failures in labeled_batch.failures.items():
                log.warning("project %s: labeled task %s left out of the diversity term: %s",
                            project, labeled[row].get("id"),
                            "; ".join(message for _, message in failures))
            labeled_x = np.stack(list(vectors.values())) if vectors else None
    elif strategy is Strategy.RANKED_BATCH:
        effective = Strategy.MARGIN  # diversity needs embeddings: plain uncertainty order
    first = select(effective, uncertainty, batch_size, rng, embeddings=embeddings,
                   labeled_embeddings=labeled_x, random_share=random_share)
    rest = np.setdiff1d(np.arange(len(ids)), first)
    rest = rest[np.argsort(-uncertainty[rest], kind="stable")]
    order = np.concatenate([first, rest]).astype(np.int64)
    scores = queue_scores(first, 1.0 - uncertainty)
    predictions = {ids[j]: task_prediction(c[0], version, float(scores[j]))
                   for j, c in enumerate(combined) if c is not None}
    details = {ids[j]: {k: v for f in families for k, v in f.uncertainty[r].items()}
               for j, r in enumerate(good)}
    return RankedTasks(version=version, strategy=strategy, order=[ids[i] for i in order],
                       batch=[ids[i] for i in first], predictions=predictions,
                       uncertainty=details, failed=failed)


def _seed(version: str) -> int:
    """The random share of a batch is reproducible per version."""
    return int(hashlib.sha256(version.encode()).hexdigest()[:8], 16)


def rerank_project(runtime: Runtime, request: RerankRequest) -> dict[str, Any]:
    """Job entry: re-score the project's unlabeled tasks. Skips when the newest version
    already ranked the queue, unless ``force``. One re-rank per project at a time, so an
    older version never announces itself after a newer one."""
    project = request.project
    with runtime.store.locked(project, "ranking"):
        return _rerank_locked(runtime, project, request.force)


def _rerank_locked(runtime: Runtime, project: int, force: bool) -> dict[str, Any]:
    ls_api = runtime.label_studio("re-ranking")
    latest = runtime.store.latest(project)
    if latest is None:
        return {"project": project, "status": "no-model"}
    state = runtime.store.read_state(project, RANKING_STATE)
    if state is not None and state.get("version") == latest.name and not force:
        return {"project": project, "status": "skipped", "version": latest.name,
                "detail": "this version already ranked the queue"}
    waited = throttle_rerank(runtime.settings, state)
    latest = runtime.store.latest(project) or latest  # newer versions saved while waiting
    started = time.perf_counter()
    phases: dict[str, float] = {}

    def mark(phase: str) -> None:
        phases[phase] = round(time.perf_counter() - started, 3)

    settings = runtime.settings
    config = ls_api.label_config(project)
    labeled, unlabeled = ls_api.project_tasks(project)
    mark("read")
    labeled_tasks = [{"id": t.task_id, "data": t.data} for t in labeled]
    rng = np.random.default_rng(_seed(latest.name))
    ranked = rank_tasks(runtime, project, config,
                        [t for t in unlabeled if not t.get("skipped")], labeled_tasks,
                        settings.ranking_strategy, settings.ranking_batch_size,
                        settings.ranking_random_share, rng)
    # Tasks an annotator skipped keep a prediction (for when someone opens them) but go to
    # the end of the queue instead of topping it again.
    skipped = rank_tasks(runtime, project, config, [t for t in unlabeled if t.get("skipped")],
                         labeled_tasks, settings.ranking_strategy, 0, 0.0, rng)
    mark("score")
    rows = [{"task": task_id, **ranked.predictions[task_id]} for task_id in ranked.order]
    rows += [{"task": task_id, **skipped.predictions[task_id], "score": 1.0}
             for task_id in skipped.order]
    # A task whose image fails gets an empty prediction that sorts last (score 1.0).
    rows += [{"task": task_id, **empty_prediction(ranked.version)}
             for task_id in ranked.failed + skipped.failed]
    # Read once: the cleanup below only needs versions older than this one, which nothing
    # creates from here on.
    existing = ls_api.prediction_versions(project)
    created = _write_predictions(runtime, project, ranked.version, rows, existing)
    # The queue is live from here on; what follows is clean-up.
    runtime.announce(project, ranked.version, retitle=False)
    mark("live")
    current = version_index(ranked.version)
    deleted = []
    for version in existing:
        index = version_index(version)
        # Only this backend's older versions: a newer one may have been saved meanwhile.
        if runtime.is_our_version(version) and index is not None and current is not None \
                and index < current:
            ls_api.delete_predictions(project, version)
            deleted.append(version)
    # Label Studio clears the project's version on a deletion while a connection is titled
    # with it (a title from before re-ranking was on): set it again then.
    if deleted and ls_api.model_version(project) != ranked.version:
        runtime.announce(project, ranked.version, retitle=False)
    mark("cleanup")
    seconds = time.perf_counter() - started
    top = ranked.order[:STATE_TOP]
    runtime.store.write_state(project, RANKING_STATE, {
        "version": ranked.version, "strategy": ranked.strategy.value, "ranked_at": time.time(),
        "seconds": round(seconds, 3), "batch": ranked.batch, "n_unlabeled": len(unlabeled),
        "skipped": skipped.order, "failed": ranked.failed + skipped.failed,
        "top": [{"task": task_id, "score": ranked.predictions[task_id]["score"],
                 "uncertainty": {k: round(v, 4) for k, v in ranked.uncertainty[task_id].items()}}
                for task_id in top],
    })
    result = {"project": project, "status": "ranked", "version": ranked.version,
              "strategy": ranked.strategy.value, "scored": len(ranked.order),
              "skipped": len(skipped.order), "failed": len(ranked.failed + skipped.failed),
              "written": created, "batch": ranked.batch,
              "deleted_versions": deleted, "waited_s": round(waited, 3),
              "seconds": round(seconds, 3), "phases": phases}
    log.info("re-ranked project %s: %s", project, {k: v for k, v in result.items()
                                                  if k != "batch"})
    ahead = queue_head_job(runtime, project, config, ranked.order, unlabeled)
    if ahead is not None:
        result["next_jobs"] = [ahead]
    return result


def throttle_rerank(settings: Settings, state: dict[str, Any] | None) -> float:
    """Wait until ``RERANK_MIN_INTERVAL_S`` has passed since the last re-rank ended, and
    long enough that re-ranking keeps Label Studio busy at most ``RERANK_MAX_LOAD`` of the
    time (a big project's re-rank writes and deletes a prediction per unlabeled task).
    Training goes on meanwhile: re-ranking has its own worker lane. Returns the seconds
    waited."""
    if state is None or "ranked_at" not in state:
        return 0.0
    idle_for_load = float(state.get("seconds", 0.0)) * (1.0 / settings.rerank_max_load - 1.0)
    wait = state["ranked_at"] + max(settings.rerank_min_interval_s, idle_for_load) - time.time()
    if wait <= 0:
        return 0.0
    time.sleep(wait)
    return wait


def _write_predictions(runtime: Runtime, project: int, version: str,
                       rows: list[dict[str, Any]], existing: dict[str, int]) -> int:
    """Import ``rows``; if Label Studio refuses them (typically: a task deleted since the
    export), drop what was written of this version and retry once with the tasks that still
    exist, so a deletion during a re-rank does not cost the whole queue."""
    assert runtime.ls_api is not None
    if not rows:
        return 0
    # Predictions of this version may exist already (a forced re-rank, or /predict on a task
    # opened meanwhile): two per task would average their scores and break the order.
    if version in existing:
        runtime.ls_api.delete_predictions(project, version)
    try:
        return runtime.ls_api.import_predictions(project, rows)
    except LabelStudioUnavailable as exc:
        log.warning("project %s: writing predictions failed (%s); retrying once", project, exc)
    if version in runtime.ls_api.prediction_versions(project):
        runtime.ls_api.delete_predictions(project, version)
    labeled, unlabeled = runtime.ls_api.project_tasks(project)
    present = {t.task_id for t in labeled} | {int(t["id"]) for t in unlabeled}
    return runtime.ls_api.import_predictions(
        project, [row for row in rows if row["task"] in present])


def ranking_state(runtime: Runtime, project: int, limit: int) -> dict[str, Any] | None:
    """The last ranking of ``project`` for inspection (GET /ranking/<project>)."""
    state = runtime.store.read_state(project, RANKING_STATE)
    if state is None:
        return None
    return {**state, "top": state["top"][:limit]}
