"""Near-duplicate tasks of a project (``ml-backend dedupe``): found from pixel fingerprints
(:mod:`ml_backend.quality.fingerprints`) and the classifier backbone's embeddings, grouped,
and, with ``apply``, every member of a group but one marked in Label Studio.

A marked task keeps its data, predictions and annotations; it gains a ``near_duplicate_of``
key in its ``data`` (the task kept for its group), shows in the "Near-duplicates" tab, and
the re-ranking puts it at the end of the unlabeled queue. Annotated tasks are never marked
(their label stands); a group keeps an annotated member when it has one. A mark that no
longer holds (the images changed, or a group member got its own label) is removed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ml_backend.core.errors import BackendError, ImageError
from ml_backend.labelstudio.api import LabeledTask
from ml_backend.labelstudio.label_config import ModelFamily, parse_label_config
from ml_backend.models.classifier.training import embed_images, fetch_images
from ml_backend.quality.fingerprints import fingerprint, stack_fingerprints
from ml_backend.quality.scoring import (
    centre,
    duplicate_pairs,
    duplicates_to_mark,
    groups_from_pairs,
)
from ml_backend.quality.similar import save_index
from ml_backend.quality.views import DUPLICATE_KEY, DUPLICATES_VIEW, duplicates_view
from ml_backend.runtime import Runtime

log = logging.getLogger(__name__)
DUPLICATES_STATE = "duplicates"


@dataclass(frozen=True)
class Dedupe:
    """Groups of near-duplicate task ids (each list: the kept task first), the marks
    ``{task: kept task}`` they call for, and the signals that found them."""

    project: int
    n_tasks: int
    groups: list[list[int]]
    marks: dict[int, int]
    signals: list[str]  # what found the pairs: "fingerprints", and "embeddings" if trusted

    def as_dict(self) -> dict[str, Any]:
        return {"project": self.project, "tasks": self.n_tasks, "groups": self.groups,
                "marked": len(self.marks), "signals": self.signals}


def _image_key(config: str) -> str:
    controls = parse_label_config(config).for_family(ModelFamily.CLASSIFIER) \
        or parse_label_config(config).for_family(ModelFamily.DETECTOR)
    if not controls:
        raise BackendError("dedupe needs an image control (classification or boxes)")
    return controls[0].value_key


def find_duplicates(runtime: Runtime, project: int) -> tuple[Dedupe, list[dict[str, Any]]]:
    """The project's near-duplicate groups, and every task as read (``id``, ``data``,
    ``annotated``). Also rebuilds the find-similar index from the same embeddings."""
    ls_api = runtime.label_studio("dedupe")
    config = ls_api.existing_label_config(project)
    key = _image_key(config)
    labeled, unlabeled = ls_api.project_tasks(project)
    tasks = [{"id": t.task_id, "data": t.data, "annotated": True} for t in labeled] + [
        {**t, "annotated": False} for t in unlabeled]
    tasks.sort(key=lambda t: int(t["id"]))
    version = runtime.store.latest(project)
    embedder = runtime.classifier.embedder(version)
    as_labeled = [LabeledTask(int(t["id"]), t["data"], 0, "", []) for t in tasks]
    images = fetch_images(runtime, as_labeled, key)
    rows, x = embed_images(runtime, embedder, images)
    position = {row: i for i, row in enumerate(images.rows)}
    parts: list[tuple[np.ndarray, np.ndarray, float]] = []
    good: list[int] = []
    for j, row in enumerate(rows):
        try:
            pixels = images.pixels(position[row], runtime.settings.max_image_pixels)
        except ImageError as exc:
            log.warning("dedupe: task %s left out: %s", tasks[row]["id"], exc)
            continue
        parts.append(fingerprint(pixels))  # about 28 kB a task; the pixels are dropped
        good.append(j)
    prints = stack_fingerprints(parts)
    x = x[good] if len(good) else np.zeros((0, 1), np.float32)
    kept_rows = [rows[j] for j in good]
    ids = [int(tasks[r]["id"]) for r in kept_rows]
    if ids:
        save_index(runtime.store, project, ids, x, version.name if version else "base",
                   time.time())
    annotated = np.array([bool(tasks[r]["annotated"]) for r in kept_rows], dtype=bool)
    # A random-init backbone's embeddings say nothing about content: pixels only, then.
    trusted = not runtime.classifier.base_weights().degraded
    pairs = duplicate_pairs(prints, centre(x) if trusted else None)
    groups = groups_from_pairs(len(ids), pairs) if ids else np.zeros(0, dtype=np.int64)
    marks_by_row = duplicates_to_mark(groups, annotated)
    marks = {ids[i]: ids[int(k)] for i, k in enumerate(marks_by_row) if k >= 0}
    listed: list[list[int]] = []
    for group in np.unique(groups):
        members = [ids[i] for i in np.flatnonzero(groups == group)]
        if len(members) > 1:
            kept = [m for m in members if m not in marks]
            listed.append(kept + [m for m in members if m in marks])
    signals = ["fingerprints", "embeddings"] if trusted else ["fingerprints"]
    return Dedupe(project, len(tasks), listed, marks, signals), tasks


def apply_marks(runtime: Runtime, dedupe: Dedupe, tasks: list[dict[str, Any]]
                ) -> dict[str, int]:
    """Write the marks to Label Studio (only where they change), remove stale ones, and
    make sure the "Near-duplicates" tab exists. Returns counts written."""
    ls_api = runtime.label_studio("dedupe")
    marked = unmarked = 0
    for task in tasks:
        data = dict(task["data"])
        want = dedupe.marks.get(int(task["id"]))
        have = data.get(DUPLICATE_KEY)
        if want is not None and have != want:
            ls_api.update_task_data(int(task["id"]), {**data, DUPLICATE_KEY: want})
            marked += 1
        elif want is None and have is not None:
            data.pop(DUPLICATE_KEY)
            ls_api.update_task_data(int(task["id"]), data)
            unmarked += 1
    view = ls_api.ensure_view(dedupe.project, DUPLICATES_VIEW, duplicates_view())
    runtime.store.write_state(dedupe.project, DUPLICATES_STATE, {
        "applied_at": time.time(), **dedupe.as_dict(),
        "marks": {str(k): v for k, v in dedupe.marks.items()}})
    return {"written": marked, "unmarked": unmarked, "view": view}
