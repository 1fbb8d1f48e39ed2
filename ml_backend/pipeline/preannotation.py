"""Whole-project pre-annotation as background jobs, on the in-process worker or on any
number of RQ workers.

The planner (``preannotate``) pages through the project's tasks with the SDK, skips those
that already have a prediction of the current model version, and queues the rest in chunks
(``preannotate_chunk``). A chunk re-reads its tasks, predicts those still without a
current prediction with the same code as ``/predict`` and writes them to Label Studio in one
bulk call. Exactly once per model version, however often a chunk runs:
- a chunk holds a lock on its tasks while it checks, predicts and writes (Redis on RQ, so
  it spans machines; it expires if its worker dies);
- a chunk run again (RQ retries it after a failure, a timeout or its worker's death) or a
  planner run again skips what is already written, so an interrupted run resumes.
Progress is kept in the model store (``state/preannotate.json``) for ``GET /preannotate``
and ``ml-backend preannotate``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ml_backend.jobs.kinds import (
    JobName,
    PreannotateChunkRequest,
    PreannotateRequest,
    job_key,
)
from ml_backend.jobs.queues import exclusive
from ml_backend.labelstudio.label_config import parse_label_config
from ml_backend.pipeline.prediction import predictor_for
from ml_backend.runtime import Runtime

log = logging.getLogger(__name__)

STATE = "preannotate"


def preannotate_project(runtime: Runtime, request: PreannotateRequest) -> dict[str, Any]:
    """Queue a chunk job for every task without a prediction of the current version."""
    project = request.project
    api = runtime.label_studio("pre-annotation")
    settings = runtime.settings
    config = api.label_config(project)
    parse_label_config(config)  # a config this backend cannot serve fails here, clearly
    version = runtime.model_version(project)
    total, already, pending = 0, 0, []
    for page in api.task_pages(project, page_size=max(settings.preannotate_chunk_size, 100)):
        for task in page:
            total += 1
            if version in task.prediction_versions:
                already += 1
            else:
                pending.append(task.id)
    size = settings.preannotate_chunk_size
    chunks = [pending[i:i + size] for i in range(0, len(pending), size)]
    now = time.time()
    state = {"project": project, "version": version, "total": total, "already": already,
             "chunks": len(chunks), "chunks_done": 0, "predicted": 0, "skipped": 0,
             "done": already, "started_at": now, "updated_at": now,
             "status": "running" if chunks else "finished"}
    with runtime.store.locked(project, STATE):
        runtime.store.write_state(project, STATE, state)
    log.info("pre-annotation of project %s (%s): %d tasks, %d already predicted, %d chunks",
             project, version, total, already, len(chunks))
    jobs = [{"name": JobName.PREANNOTATE_CHUNK,
             "key": job_key(JobName.PREANNOTATE_CHUNK, project, chunk[0]),
             "payload": PreannotateChunkRequest(
                 project, version, chunk, config, timeout_s=settings.preannotate_chunk_timeout_s,
                 retries=settings.preannotate_retries).as_payload()}
            for chunk in chunks]
    return {**state, "next_jobs": jobs}


def preannotate_chunk(runtime: Runtime, request: PreannotateChunkRequest) -> dict[str, Any]:
    """Predict and write the chunk's tasks that have no prediction of the current version."""
    project = request.project
    ids = [int(i) for i in request.task_ids]
    api = runtime.label_studio("pre-annotation")
    parsed = parse_label_config(request.label_config)
    with exclusive(job_key(JobName.PREANNOTATE_CHUNK, project, ids[0]),
                   ttl_s=float(request.timeout_s or 600)):
        version = runtime.model_version(project)
        tasks = [api.task(task_id) for task_id in ids]
        todo = [t for t in tasks if version not in t.prediction_versions]
        if todo:
            predictions = predictor_for(runtime).predict_tasks(
                [{"id": t.id, "data": t.data} for t in todo], parsed, project)
            api.import_predictions(project, [{"task": t.id, **p}
                                             for t, p in zip(todo, predictions, strict=True)])
    result = {"project": project, "version": version, "tasks": len(ids),
              "predicted": len(todo), "skipped": len(ids) - len(todo)}
    _count_chunk(runtime, project, result)
    return result


def _count_chunk(runtime: Runtime, project: int, chunk: dict[str, Any]) -> None:
    with runtime.store.locked(project, STATE):
        state = runtime.store.read_state(project, STATE)
        if state is None or state.get("version") != chunk["version"]:
            return  # a newer plan (or none): its own counts apply
        state["chunks_done"] += 1
        state["predicted"] += chunk["predicted"]
        state["skipped"] += chunk["skipped"]
        state["done"] += chunk["tasks"]
        state["updated_at"] = time.time()
        if state["chunks_done"] >= state["chunks"]:
            state["status"] = "finished"
        runtime.store.write_state(project, STATE, state)


def preannotation_state(runtime: Runtime, project: int) -> dict[str, Any] | None:
    """The latest pre-annotation of ``project``: counts, status and share done."""
    state = runtime.store.read_state(project, STATE)
    if state is None:
        return None
    total = max(int(state.get("total") or 0), 1)
    return {**state, "progress": round(min(state.get("done", 0) / total, 1.0), 4)}
