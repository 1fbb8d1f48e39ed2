"""Find similar: a per-project index of task embeddings and exact cosine search over it.

The index (task ids and unit-length embeddings of every task with an image, from the
project's current classifier backbone) is rebuilt by the ``quality`` job after each
classifier training and by ``ml-backend dedupe``; ``GET /similar`` only reads it, so the
request path loads no model and embeds nothing. Exact search is one matrix-vector product:
a median of 8 ms at 10k tasks and 17 ms at 100k (512-d float32, 2 busy cores; see
docs/quality.md), so no approximate index is needed at these sizes. No torch here (the HTTP
layer reaches it).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np

from ml_backend.core.files import atomic_write_bytes
from ml_backend.core.store import ModelStore
from ml_backend.quality.scoring import nearest, normalise

INDEX_FILE = "similar-index.npz"
MIN_INDEXED = 2  # a search needs the query and at least one other task


@dataclass(frozen=True)
class SimilarIndex:
    """``task_ids (N,) int64`` and their unit embeddings ``(N, D) float32``, from the
    backbone of ``version``."""

    task_ids: np.ndarray
    unit: np.ndarray
    version: str
    built_at: float

    def __post_init__(self) -> None:
        if self.unit.ndim != 2 or self.task_ids.shape != (len(self.unit),):
            raise ValueError(f"task_ids (N,) and embeddings (N, D) disagree: "
                             f"{self.task_ids.shape} vs {self.unit.shape}")

    def row(self, task_id: int) -> int | None:
        hits = np.flatnonzero(self.task_ids == task_id)
        return int(hits[0]) if len(hits) else None


def save_index(store: ModelStore, project: int, task_ids: list[int], embeddings: np.ndarray,
               version: str, built_at: float) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, task_ids=np.asarray(task_ids, dtype=np.int64),
             unit=normalise(np.asarray(embeddings).reshape(len(task_ids), -1)),
             version=np.array(version), built_at=np.array(built_at))
    atomic_write_bytes(store.project_dir(project) / "state" / INDEX_FILE, buffer.getvalue())


def load_index(store: ModelStore, project: int) -> SimilarIndex | None:
    """The project's index, or None before one was built (or when its file is unreadable:
    the next training rebuilds it)."""
    path = store.project_dir(project) / "state" / INDEX_FILE
    try:
        with np.load(path, allow_pickle=False) as z:
            return SimilarIndex(z["task_ids"], z["unit"], str(z["version"]),
                                float(z["built_at"]))
    except (FileNotFoundError, OSError, ValueError, KeyError):
        return None


def similar_to(index: SimilarIndex, row: int, k: int) -> list[dict[str, Any]]:
    """The ``k`` tasks nearest to the task at ``row`` (itself left out), best first."""
    rows, sims = nearest(index.unit, index.unit[row], k, exclude=row)
    return [{"task": int(index.task_ids[r]), "similarity": round(float(s), 4)}
            for r, s in zip(rows, sims, strict=True)]
