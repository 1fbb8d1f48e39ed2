"""SAM image embeddings before anyone clicks: the ``sam_embed`` job and the project-wide
precompute command.

The job's payload holds requests, each a list of tasks stamped with when it was asked for.
A run encodes the first task of the newest request, then queues the rest again under the
same key, where it merges with anything asked meanwhile. So a task being opened now jumps
ahead of a thousand imported ones, at most one encode later.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from ml_backend.core.errors import BackendError, ImageError, LabelStudioUnavailable
from ml_backend.core.progress import progress_bar
from ml_backend.core.store import RANKING_STATE
from ml_backend.jobs.kinds import JobName, SamEmbedRequest, job_key
from ml_backend.labelstudio.label_config import parse_label_config
from ml_backend.models.sam.encoding import embed_image
from ml_backend.runtime import Runtime

log = logging.getLogger(__name__)



def prompt_keys(label_config: str) -> list[str]:
    """The task data keys of the images a config's smart tools click on ([] for a config
    without SAM prompts)."""
    parsed = parse_label_config(label_config)
    targets = {c.to_name for c in parsed.prompts}
    return sorted({c.value_key for c in parsed.controls
                   if c.to_name in targets and c.value_key})


def precompute_request(project: int, tasks: Sequence[Any], keys: Sequence[str],
                       limit: int | None = None) -> SamEmbedRequest | None:
    """A ``sam_embed`` request for ``tasks`` in the given order (first = most urgent), or
    None when there is nothing to encode."""
    items = [{"id": t.get("id"), "data": t["data"]} for t in tasks
             if isinstance(t, dict) and isinstance(t.get("data"), dict)]
    if limit is not None:
        items = items[:limit]
    if not items or not keys:
        return None
    return SamEmbedRequest(project, [{"at": time.time(), "keys": list(keys), "tasks": items}])


def merge_precompute_requests(queued: SamEmbedRequest, new: SamEmbedRequest
                              ) -> SamEmbedRequest:
    """Both requests' parts, newest first (the newest is what an annotator looks at)."""
    requests = sorted([*queued.requests, *new.requests], key=lambda r: -float(r.get("at", 0.0)))
    return SamEmbedRequest(new.project, requests)


def queue_head_job(runtime: Runtime, project: int, config: str, order: Sequence[int],
                   tasks: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The job that encodes SAM embeddings for the first ``SAM_PRECOMPUTE_AHEAD`` tasks of
    a new queue ``order``, so the tasks annotators open next are ready to click on; None
    when SAM is not configured or the config has no smart tools."""
    if not runtime.sam.configured():
        return None
    by_id = {int(t["id"]): t for t in tasks}
    head = [by_id[i] for i in order[:runtime.settings.sam_precompute_ahead] if i in by_id]
    request = precompute_request(project, head, prompt_keys(config))
    if request is None:
        return None
    return {"name": JobName.SAM_EMBED, "payload": request.as_payload(),
            "key": job_key(JobName.SAM_EMBED, project)}


def precompute_sam_job(runtime: Runtime, request: SamEmbedRequest) -> dict[str, Any]:
    """Job: encode the next task image of the newest request; queue the rest."""
    project = request.project
    requests = [dict(r) for r in request.requests if r.get("tasks")]
    if not requests:
        return {"project": project, "status": "done"}
    head = requests[0]
    task, *rest = head["tasks"]
    head["tasks"] = rest
    result: dict[str, Any] = {"project": project, "task": task.get("id"), "encoded": []}
    for key in head["keys"]:
        url = task["data"].get(key)
        if not isinstance(url, str):
            continue
        try:
            lookup = embed_image(runtime, url, task.get("id"))
        except (ImageError, LabelStudioUnavailable) as exc:
            log.warning("sam_embed: task %s: %s", task.get("id"), exc)
            result["encoded"].append({"key": key, "error": str(exc)})
            continue
        result["encoded"].append({"key": key, "source": lookup.source})
    remaining = [r for r in requests if r.get("tasks")]
    if remaining:
        result["next_jobs"] = [{"name": JobName.SAM_EMBED,
                                "payload": SamEmbedRequest(project, remaining).as_payload(),
                                "key": job_key(JobName.SAM_EMBED, project)}]
    return result


def precompute_project(runtime: Runtime, project: int, limit: int | None = None,
                       out: TextIO = sys.stderr,
                       order: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]
                       | None = None) -> dict[str, Any]:
    """Encode every unlabeled task image of a Label Studio project now, in the ranked
    order when the project has been ranked, with a progress bar on ``out``."""
    ls_api = runtime.label_studio("precomputing a project's embeddings")
    keys = prompt_keys(ls_api.label_config(project))
    if not keys:
        raise BackendError(f"project {project}'s label config has no smart KeyPointLabels or "
                           "RectangleLabels tool on an image with a BrushLabels or "
                           "PolygonLabels control: nothing for SAM to precompute")
    runtime.sam.segmenter()  # fail before the loop when SAM is unavailable
    _, unlabeled = ls_api.project_tasks(project)
    tasks = (order or ranked_first(runtime, project))(unlabeled)[:limit]
    counts: dict[str, int] = {}
    started = time.monotonic()
    for done, task in enumerate(tasks, 1):
        for key in keys:
            url = task["data"].get(key)
            source = "no-image"
            if isinstance(url, str):
                try:
                    source = embed_image(runtime, url, task["id"]).source
                except (ImageError, LabelStudioUnavailable) as exc:
                    source = "error"
                    log.warning("task %s: %s", task["id"], exc)
            counts[source] = counts.get(source, 0) + 1
        progress_bar(out, done, len(tasks), time.monotonic() - started)
    out.write("\n")
    return {"project": project, "tasks": len(tasks), "images": counts,
            "seconds": round(time.monotonic() - started, 1)}


def ranked_first(runtime: Runtime, project: int
                 ) -> Callable[[list[dict[str, Any]]], list[dict[str, Any]]]:
    """Order tasks as the annotators' queue: the last ranking's order, then the rest by
    id (Label Studio's default order)."""
    state = runtime.store.read_state(project, RANKING_STATE) or {}
    position = {int(row["task"]): i for i, row in enumerate(state.get("top") or [])}

    def order(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return sorted(tasks, key=lambda t: (position.get(int(t["id"]), len(position)),
                                            int(t["id"])))

    return order
