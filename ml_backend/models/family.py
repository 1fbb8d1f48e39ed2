"""What every model family offers the runtime, and what the batch families return.

A family (classifier, detector, SAM, CLIPSeg) is one object built once per process from the
settings: it reports its state to ``/health`` without loading anything (:meth:`Family.status`),
loads lazily and remembers a failed load (never serves filled-in weights), and loads eagerly
in :meth:`Family.warm_up`. A family that pre-labels whole batches is also a
:class:`BatchFamily`: ``/predict``, pre-annotation and re-ranking all reach it through
:meth:`BatchFamily.score_batch` (see :class:`ml_backend.pipeline.prediction.Predictor`).

Adding a family: its package under ``models/`` with a class satisfying these protocols, and
one registration line in :class:`ml_backend.runtime.Runtime`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ml_backend.core.task_images import ImageBatch
from ml_backend.labelstudio.label_config import ControlSpec, ModelFamily
from ml_backend.labelstudio.results import Output
from ml_backend.learning.selection import Strategy

TaskOutputs = tuple[list[Output], float]  # one task's outputs and its uncertainty

# A file's path, size, mtime (ns) and inode: one stat that changes when the file is replaced
# or rewritten. A load that failed is not retried until its file's signature changes.
FileSignature = tuple[str, int, int, int]


def file_signature(path: Path | str | None) -> FileSignature:
    """The :data:`FileSignature` of ``path``; a missing file (or none) has size 0."""
    if path is None:
        return ("", 0, 0, 0)
    try:
        stat = Path(path).stat()
    except FileNotFoundError:  # reported by whoever locates it; here only "not this file"
        return (str(path), 0, 0, 0)
    return (str(path), stat.st_size, stat.st_mtime_ns, stat.st_ino)


class LoadState:
    """What the families of one process share about loading: a lock for the small state
    (never held while loading), a lock that serialises slow loads of the classifier and
    detector (their peak memory adds up otherwise), and what is loading now (for /health)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.load_lock = threading.Lock()
        self._loading: set[str] = set()

    def is_loading(self, key: str) -> bool:
        with self.lock:
            return key in self._loading

    @contextmanager
    def marking(self, key: str) -> Iterator[None]:
        """``key`` counts as loading (status says ``loading``) while the block runs."""
        with self.lock:
            self._loading.add(key)
        try:
            yield
        finally:
            with self.lock:
                self._loading.discard(key)


@dataclass(frozen=True)
class Embeddings:
    """A family's embedding of each predicted row's ``key`` image, and ``embed`` to place
    other images (labeled ones, for the diversity term) in the same space."""

    key: str
    by_row: dict[int, np.ndarray]
    embed: Callable[[ImageBatch], dict[int, np.ndarray]]


@dataclass(frozen=True)
class FamilyScores:
    """One model family's predictions for a batch, by task row; a row it did not predict is
    absent (an image of it failed: see :attr:`ImageBatch.failures`). ``controls``: the ones
    it predicts, none when its model fits no control of the label config. ``uncertainty``:
    a row's every uncertainty score by name (each strategy's for the classifier, the least
    certain control deciding; ``detection`` for boxes), shown by GET /ranking."""

    family: ModelFamily
    version: str
    controls: tuple[ControlSpec, ...]
    outputs: dict[int, TaskOutputs]
    uncertainty: dict[int, dict[str, float]]
    embeddings: Embeddings | None = None


@runtime_checkable
class Family(Protocol):
    """One model family of a running process."""

    name: str  # its key under ``models`` in /health

    def status(self) -> dict[str, Any]:
        """Its state for /health: ``not-loaded``, ``loading``, ``ready`` (``degraded``),
        ``untrained`` or ``error`` with the reason. Cheap; never loads."""
        ...

    def warm_up(self) -> None:
        """Load what is configured now (a background thread at start); a failure is logged
        and remembered, never raised."""
        ...

    def version_prefix(self) -> str | None:
        """The architecture name its model versions start with (``resnet18-v3-…``), or
        None when it makes no versions."""
        ...


@runtime_checkable
class BatchFamily(Family, Protocol):
    """A family that pre-labels tasks of the controls routed to ``kind``."""

    kind: ModelFamily

    def score_batch(self, batch: ImageBatch, controls: tuple[ControlSpec, ...],
                    project: int | None, strategy: Strategy) -> FamilyScores | None:
        """Its outputs and uncertainties for ``batch``'s tasks, or None when it has no model
        for ``controls`` (untrained, or unavailable: logged, and its error is in /health).
        Images are read through ``batch`` a chunk at a time; rows whose image failed go to
        ``batch.failures``. ``strategy`` decides a classified task's uncertainty."""
        ...
