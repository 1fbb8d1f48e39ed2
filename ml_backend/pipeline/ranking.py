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
from ml_backend.core.task_images import Failure
from ml_backend.jobs.kinds import RerankRequest
from ml_backend.labelstudio.label_config import ModelFamily, ParsedConfig, parse_label_config
from ml_backend.labelstudio.results import combine_outputs, empty_prediction, task_prediction
from ml_backend.learning.cold_start import cold_start_clusters, coverage_order
from ml_backend.learning.selection import Strategy, queue_scores, select
from ml_backend.models.classifier.family import embed_batch
from ml_backend.models.family import FamilyScores
from ml_backend.models.sam.precompute import queue_head_job
from ml_backend.pipeline.prediction import predictor_for
from ml_backend.quality.views import is_marked_duplicate
from ml_backend.runtime import Runtime, version_index

log = logging.getLogger(__name__)
STATE_TOP = 2000  # tasks whose uncertainties the backend keeps for GET /ranking
COVERAGE = "coverage"  # the cold-start order's name in the ranking state


@dataclass(frozen=True)
class RankedTasks:
    """``order``: every scored task id, most informative first; its first ``batch`` ids are
    the selector's pick. ``predictions`` (with scores that sort in ``order``) and
    ``uncertainty`` (every strategy's score) are by task id; tasks whose image failed are in
    ``failed`` only."""

    version: str
    strategy: str  # a Strategy's value, or COVERAGE
    order: list[int]
    batch: list[int]
    predictions: dict[int, dict[str, Any]]
    uncertainty: dict[int, dict[str, float]]
    failed: list[int]
    # Cold start: the coverage order's cluster of each ranked task (see learning.cold_start).
    clusters: dict[int, int] | None = None


def needs_coverage(runtime: Runtime, project: int, parsed: ParsedConfig) -> bool:
    """Cold start: the project classifies images and has no head yet, or one trained on
    fewer labels than its classes (its uncertainties say little): rank for coverage."""
    controls = parsed.for_family(ModelFamily.CLASSIFIER)
    if not controls:
        return False
    model = runtime.classifier.model(project)
    if model is None:
        return True
    return any(c.name not in model.heads or model.heads[c.name].stats.get("n", 0.0)
               < len(c.labels) for c in controls)


def rank_tasks(runtime: Runtime, project: int, label_config: str,
               candidates: list[dict[str, Any]], labeled: list[dict[str, Any]],
               strategy: Strategy, batch_size: int, random_share: float,
               rng: np.random.Generator, cold_start: bool = False) -> RankedTasks:
    """Predict ``candidates`` (Label Studio tasks) and order them: the first ``batch_size`` by
    ``strategy`` (with a ``random_share`` hedge), the rest by uncertainty. ``labeled`` tasks
    only matter to the diversity term of ranked batch sampling. With a classifier and a
    detector, the least certain family decides a task's uncertainty. The predictions are
    the server's own (:meth:`Predictor.score_tasks`, as ``/predict`` makes them)."""
    predictor = predictor_for(runtime)
    parsed = parse_label_config(label_config)
    scored = predictor.score_tasks(candidates, parsed, project, strategy)
    # A classifier whose heads fit none of the label config's controls ranks nothing.
    families = [f for f in scored.families if f.controls]
    if cold_start:
        return _coverage_ranking(runtime, project, parsed, candidates, families,
                                 scored.failures, batch_size, rng)
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
        return RankedTasks(version, strategy.value, [], [], {}, {}, failed)
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
    return RankedTasks(version=version, strategy=strategy.value, order=[ids[i] for i in order],
                       batch=[ids[i] for i in first], predictions=predictions,
                       uncertainty=details, failed=failed)


def _coverage_ranking(runtime: Runtime, project: int, parsed: ParsedConfig,
                      candidates: list[dict[str, Any]], families: list[FamilyScores],
                      failures: dict[int, list[Failure]], batch_size: int,
                      rng: np.random.Generator) -> RankedTasks:
    """The cold-start queue: every candidate in coverage order (k-means clusters of the
    classifier's embeddings, most typical member first, every cluster once before any
    repeats), with the model's predictions where it has any and scores that sort in that
    order."""
    controls = parsed.for_family(ModelFamily.CLASSIFIER)
    key = controls[0].value_key
    embedded = next((f.embeddings for f in families if f.embeddings is not None
                     and f.embeddings.key == key), None)
    if embedded is not None:
        vectors, failed_rows = embedded.by_row, dict(failures)
    else:  # no head yet: the base backbone's embeddings (cached for the first training)
        batch = predictor_for(runtime).batch(candidates)
        vectors = embed_batch(runtime.classifier.embedder(None), batch, key)
        failed_rows = {**failures, **batch.failures}
    for row, reasons in failed_rows.items():
        log.warning("project %s: task %s not ranked: %s", project, candidates[row].get("id"),
                    "; ".join(message for _, message in reasons))
    good = sorted(set(vectors) - set(failed_rows))
    if families:
        good = sorted(set(good).intersection(*(set(f.outputs) for f in families)))
    ids = [int(candidates[r]["id"]) for r in good]
    failed = sorted({int(t["id"]) for t in candidates} - set(ids))
    version = runtime.model_version(project)
    if not ids:
        return RankedTasks(version, COVERAGE, [], [], {}, {}, failed, {})
    n_classes = max(len(c.labels) for c in controls)
    order, clusters = coverage_order(
        np.stack([vectors[r] for r in good]),
        cold_start_clusters(len(good), n_classes, batch_size), int(rng.integers(2**31)))
    n_clusters = len(set(clusters.tolist()))
    scores = queue_scores(order, np.ones(len(good)))
    predictions = {}
    for j, row in enumerate(good):
        combined = combine_outputs([f.outputs[row] for f in families]) if families else None
        predictions[ids[j]] = (task_prediction(combined[0], version, float(scores[j]))
                               if combined is not None
                               else empty_prediction(version, float(scores[j])))
    uncertainty = {ids[j]: {"coverage_position": float(scores[j])} for j in range(len(ids))}
    return RankedTasks(version=version, strategy=COVERAGE,
                       order=[ids[i] for i in order],
                       batch=[ids[i] for i in order[:min(batch_size, n_clusters)]],
                       predictions=predictions, uncertainty=uncertainty, failed=failed,
                       clusters={ids[j]: int(clusters[j]) for j in range(len(ids))})


def queue_candidates(unlabeled: list[dict[str, Any]]
                     ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(queued, later)``: the unlabeled tasks the selector ranks, and those that go to the
    end of the queue (skipped by an annotator, or marked as a near-duplicate)."""
    later = [t for t in unlabeled if t.get("skipped") or is_marked_duplicate(t)]
    ids = {id(t) for t in later}
    return [t for t in unlabeled if id(t) not in ids], later


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
    name = runtime.model_version(project)
    state = runtime.store.read_state(project, RANKING_STATE)
    if state is not None and state.get("version") == name and not force:
        return {"project": project, "status": "skipped", "version": name,
                "detail": "this version already ranked the queue"}
    waited = throttle_rerank(runtime.settings, state)
    name = runtime.model_version(project)  # newer versions saved while waiting
    started = time.perf_counter()
    phases: dict[str, float] = {}

    def mark(phase: str) -> None:
        phases[phase] = round(time.perf_counter() - started, 3)

    settings = runtime.settings
    config = ls_api.label_config(project)
    cold = needs_coverage(runtime, project, parse_label_config(config))
    if runtime.store.latest(project) is None and not cold:
        return {"project": project, "status": "no-model"}
    labeled, unlabeled = ls_api.project_tasks(project)
    mark("read")
    labeled_tasks = [{"id": t.task_id, "data": t.data} for t in labeled]
    rng = np.random.default_rng(_seed(name))
    queued, later = queue_candidates(unlabeled)
    ranked = rank_tasks(runtime, project, config, queued, labeled_tasks,
                        settings.ranking_strategy, settings.ranking_batch_size,
                        settings.ranking_random_share, rng, cold_start=cold)
    # Tasks an annotator skipped, and near-duplicates marked by `ml-backend dedupe --apply`,
    # keep a prediction (for when someone opens them) but go to the end of the queue
    # instead of topping it.
    skipped = rank_tasks(runtime, project, config, later, labeled_tasks,
                         settings.ranking_strategy, 0, 0.0, rng, cold_start=cold)
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
        "version": ranked.version, "strategy": ranked.strategy, "ranked_at": time.time(),
        "seconds": round(seconds, 3), "batch": ranked.batch, "n_unlabeled": len(unlabeled),
        "skipped": skipped.order, "failed": ranked.failed + skipped.failed,
        "top": [{"task": task_id, "score": ranked.predictions[task_id]["score"],
                 "uncertainty": {k: round(v, 4) for k, v in ranked.uncertainty[task_id].items()},
                 **({"cluster": ranked.clusters[task_id]} if ranked.clusters else {})}
                for task_id in top],
    })
    result = {"project": project, "status": "ranked", "version": ranked.version,
              "strategy": ranked.strategy, "scored": len(ranked.order),
              "skipped": len(skipped.order),
              "duplicates": sum(1 for t in later if is_marked_duplicate(t)),
              "failed": len(ranked.failed + skipped.failed),
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
