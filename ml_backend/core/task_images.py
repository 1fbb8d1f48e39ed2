"""The images of a batch of Label Studio tasks, read a chunk at a time on an I/O pool.

Every batch path (``/predict``, pre-annotation, re-ranking) reads its images through one
:class:`ImageBatch`, so a whole project's images never sit in memory at once, a task whose
image cannot be had fails alone (with the reason), and a request's time budget is honoured.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from ml_backend.core.errors import ImageError, LabelStudioUnavailable
from ml_backend.core.images import ImageLoader

Failure = tuple[str, str]  # why a task's image cannot be had: (task_errors reason, message)
CachedLookup = Callable[[str], np.ndarray | None]  # an image's sha256 → its cached embedding


@dataclass(frozen=True)
class TaskImage:
    """One task's image as a batch needs it: the ``sha256`` of its bytes, and ``pixels``
    (H x W x 3 uint8 RGB) unless a cached ``embedding`` of it was found, in which case it is
    never decoded."""

    sha256: str
    pixels: np.ndarray | None = None
    embedding: np.ndarray | None = None

    def rgb(self) -> np.ndarray:
        if self.pixels is None:
            raise RuntimeError(f"image {self.sha256[:12]} was not decoded (its embedding was "
                               "cached): load it without an embedding lookup to see pixels")
        return self.pixels


def task_id(task: Any) -> int | None:
    found = task.get("id") if isinstance(task, dict) else None
    return found if isinstance(found, int) and not isinstance(found, bool) else None


class ImageBatch:
    """Tasks (Label Studio task dicts) whose images are read on demand: ``failures`` collects,
    by row, why an image could not be had. Images not started by ``deadline`` (a
    ``time.monotonic()`` value; ``budget_s`` is the setting it came from, for the message)
    fail as ``time-budget``."""

    def __init__(self, tasks: Sequence[Any], images: ImageLoader, pool: Executor,
                 deadline: float | None = None, budget_s: float | None = None) -> None:
        self.tasks = tasks
        self.failures: dict[int, list[Failure]] = {}
        self._images = images
        self._pool = pool
        self._deadline = deadline
        self._budget_s = budget_s

    def __len__(self) -> int:
        return len(self.tasks)

    def subset(self, tasks: Sequence[Any]) -> ImageBatch:
        """Other tasks read the same way (same pool and deadline), with their own failures."""
        return ImageBatch(tasks, self._images, self._pool, self._deadline, self._budget_s)

    def chunks(self, key: str, size: int, cached: CachedLookup | None = None
               ) -> Iterator[list[tuple[int, TaskImage]]]:
        """The ``key`` images of the tasks, ``size`` rows at a time: each chunk's rows whose
        image loaded (the others go to :attr:`failures`). The next chunk loads on the pool
        while the caller works on this one, and only then: about two chunks of decoded images
        are held at a time, however many tasks. With ``cached``, an image whose embedding it
        knows is not decoded."""
        def submit(start: int) -> list[tuple[int, Future[TaskImage | Failure]]]:
            return [(row, self._pool.submit(self.fetch, self.tasks[row], key, cached))
                    for row in range(start, min(start + size, len(self.tasks)))]

        pending = submit(0)
        for start in range(0, len(self.tasks), size):
            loaded = []
            for row, future in pending:
                item = future.result()
                if isinstance(item, TaskImage):
                    loaded.append((row, item))
                else:
                    self.failures.setdefault(row, []).append(item)
            pending = submit(start + size)
            yield loaded

    def fetch(self, task: Any, key: str, cached: CachedLookup | None = None
              ) -> TaskImage | Failure:
        """A task's ``key`` image, decoded unless ``cached`` has its embedding, or why it
        cannot be had (or the time budget ran out before it was its turn)."""
        if self._deadline is not None and time.monotonic() > self._deadline:
            return ("time-budget", "not predicted: the request's time budget "
                    f"(REQUEST_TIME_BUDGET_S={self._budget_s or 0:g}) ran out; ask again for this "
                    "task")
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            return "bad-task", "task has no 'data' object"
        url = task["data"].get(key)
        if not isinstance(url, str) or not url:
            return "no-image", f"task data has no image URL under '{key}'"
        try:
            data, sha256 = self._images.load_bytes(url, task_id=task_id(task))
            embedding = cached(sha256) if cached is not None else None
            if embedding is not None:
                return TaskImage(sha256, embedding=embedding)
            return TaskImage(sha256, pixels=self._images.decode(data, url))
        except (ImageError, LabelStudioUnavailable) as exc:
            return type(exc).__name__, str(exc)
