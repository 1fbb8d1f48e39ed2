"""Files on disk, written so that readers and crashes never see half of one: atomic writes,
``flock`` locks across processes, and the countdown caches use to decide when to sweep.
The model store and the image and embedding caches all build on these."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def file_lock(path: Path, remove: bool = False) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created if missing), across processes and threads;
    ``remove`` deletes the file on release (for one-off locks, e.g. one per cached item)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            if remove:
                path.unlink(missing_ok=True)
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


class Countdown:
    """True every ``every``-th call of :meth:`due` (the first call too), thread-safe: how
    caches decide when to sweep without scanning on every write."""

    def __init__(self, every: int) -> None:
        self.every = every
        self._left = 1
        self._lock = threading.Lock()

    def due(self) -> bool:
        with self._lock:
            self._left -= 1
            if self._left > 0:
                return False
            self._left = self.every
            return True


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (a crash must not lose a completed save)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=1, sort_keys=True).encode("utf-8"))
