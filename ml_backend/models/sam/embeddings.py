"""SAM image embeddings, computed once per (model, image content) and shared.

An embedding is 4 MB for SAM 1 (256 x 64 x 64 float32; 16 MB for SAM 2.1 with its two finer
feature maps) and costs seconds to tens of seconds of CPU,
so it lives in three places:
- a bounded in-memory LRU (``SAM_EMBEDDING_MEMORY_MB``) for clicks in this process;
- files under ``CACHE_DIR/sam/<model id>/`` (bounded by ``SAM_EMBEDDING_DISK_MB``, least
  recently used deleted first) shared by every thread, process and worker on the machine;
- nowhere else: a miss is computed by whoever asks first, while others asking for the same
  image wait for that result (a lock per key in-process, ``flock`` across processes)
  instead of encoding it again.
Keys are the image's sha256 and the model id (a checkpoint digest), so the same picture
under two URLs is encoded once and a new checkpoint never reads old embeddings.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import threading
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ml_backend.core.files import Countdown, atomic_write_bytes, file_lock
from ml_backend.core.lru import BoundedLRU
from ml_backend.models.sam.model import SamEmbedding

log = logging.getLogger(__name__)

_KEY = re.compile(r"[0-9a-zA-Z_.-]{1,128}")
_SWEEP_EVERY_WRITES = 16


@dataclass(frozen=True)
class Lookup:
    """An embedding and where it came from: ``memory``, ``disk``, ``computed`` (by this
    call) or ``waited`` (another thread or process computed it meanwhile)."""

    embedding: SamEmbedding
    source: str


def serialize(embedding: SamEmbedding) -> bytes:
    buffer = io.BytesIO()
    high_res = {f"high_res_{i}": level.astype(np.float32, copy=False)
                for i, level in enumerate(embedding.high_res)}
    np.savez(buffer, features=embedding.features.astype(np.float32, copy=False),
             original_size=np.array(embedding.original_size, dtype=np.int64),
             input_size=np.array(embedding.input_size, dtype=np.int64), **high_res)
    return buffer.getvalue()


def deserialize(data: bytes) -> SamEmbedding:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        features = np.ascontiguousarray(npz["features"], dtype=np.float32)
        original = tuple(int(v) for v in npz["original_size"])
        input_size = tuple(int(v) for v in npz["input_size"])
        levels = sum(1 for name in npz.files if name.startswith("high_res_"))
        high_res = tuple(np.ascontiguousarray(npz[f"high_res_{i}"], dtype=np.float32)
                         for i in range(levels))
    if (features.ndim != 4 or len(original) != 2 or len(input_size) != 2
            or any(level.ndim != 4 for level in high_res)):
        raise ValueError("not a SAM embedding file")
    return SamEmbedding(features, original, input_size, high_res)  # type: ignore[arg-type]


class SamEmbeddingStore:
    """Thread-safe; several processes may share ``root``."""

    def __init__(self, root: Path, memory_bytes: int, disk_bytes: int) -> None:
        self.root = Path(root)
        self.memory_bytes = memory_bytes
        self.disk_bytes = disk_bytes
        self._memory: BoundedLRU[tuple[str, str], SamEmbedding] = BoundedLRU(
            memory_bytes, lambda embedding: embedding.nbytes)
        self._lock = threading.Lock()
        self._key_locks: dict[tuple[str, str], tuple[threading.Lock, int]] = {}
        self._sweep_due = Countdown(_SWEEP_EVERY_WRITES)
        self.counts = {"memory": 0, "disk": 0, "computed": 0, "waited": 0}

    # --- paths --------------------------------------------------------------------------
    def path(self, model_id: str, sha256: str) -> Path:
        if not _KEY.fullmatch(model_id) or not _KEY.fullmatch(sha256) or ".." in model_id:
            raise ValueError(f"bad embedding key: {model_id!r}/{sha256!r}")
        return self.root / model_id / sha256[:2] / f"{sha256}.npz"

    # --- lookups ------------------------------------------------------------------------
    def cached(self, model_id: str, sha256: str) -> Lookup | None:
        """From memory or disk, else None; never computes."""
        key = (model_id, sha256)
        embedding = self._memory.get(key)
        if embedding is not None:
            with self._lock:
                self.counts["memory"] += 1
            return Lookup(embedding, "memory")
        embedding = self._read(model_id, sha256)
        if embedding is None:
            return None
        self._memory.put(key, embedding)
        with self._lock:
            self.counts["disk"] += 1
        return Lookup(embedding, "disk")

    def is_ready(self, model_id: str, sha256: str) -> bool:
        """Whether a click on this image would find its embedding (memory or disk)."""
        if (model_id, sha256) in self._memory:
            return True
        return self.path(model_id, sha256).is_file()

    def get_or_compute(self, model_id: str, sha256: str,
                       compute: Callable[[], SamEmbedding]) -> Lookup:
        """The embedding of ``sha256``, computing it (once, across threads and processes)
        when nobody has yet."""
        found = self.cached(model_id, sha256)
        if found is not None:
            return found
        lock_path = self.path(model_id, sha256).with_suffix(".lock")
        with self._key_lock((model_id, sha256)), file_lock(lock_path, remove=True):
            # Whoever held the locks before us may have just stored it.
            found = self.cached(model_id, sha256)
            if found is not None:
                with self._lock:
                    self.counts[found.source] -= 1
                    self.counts["waited"] += 1
                return Lookup(found.embedding, "waited")
            embedding = compute()
            self.put(model_id, sha256, embedding)
        with self._lock:
            self.counts["computed"] += 1
        return Lookup(embedding, "computed")

    def put(self, model_id: str, sha256: str, embedding: SamEmbedding) -> None:
        path = self.path(model_id, sha256)
        try:
            atomic_write_bytes(path, serialize(embedding))
        except OSError as exc:  # a full disk costs only the sharing, not the click
            log.warning("could not store SAM embedding %s: %s", path, exc)
        self._memory.put((model_id, sha256), embedding)
        if self._sweep_due.due():
            self.sweep()

    # --- internals ----------------------------------------------------------------------
    def _read(self, model_id: str, sha256: str) -> SamEmbedding | None:
        path = self.path(model_id, sha256)
        try:
            data = path.read_bytes()
        except OSError:
            return None
        try:
            embedding = deserialize(data)
        except (ValueError, OSError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            log.warning("dropping unreadable SAM embedding %s: %s", path, exc)
            path.unlink(missing_ok=True)
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # mtime = last use: the disk sweep evicts least recently used
        return embedding

    @contextlib.contextmanager
    def _key_lock(self, key: tuple[str, str]) -> Iterator[None]:
        with self._lock:
            lock, users = self._key_locks.get(key, (threading.Lock(), 0))
            self._key_locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._lock:
                lock, users = self._key_locks[key]
                if users <= 1:
                    del self._key_locks[key]
                else:
                    self._key_locks[key] = (lock, users - 1)

    def sweep(self) -> int:
        """Delete least recently used files until the store fits ``disk_bytes``; returns
        how many were deleted."""
        entries: list[tuple[float, int, Path]] = []
        for path in self.root.glob("*/*/*.npz"):
            try:
                st = path.stat()
            except OSError:
                continue
            entries.append((st.st_mtime, st.st_size, path))
        total = sum(size for _, size, _ in entries)
        deleted = 0
        for _, size, path in sorted(entries):
            if total <= self.disk_bytes:
                break
            with contextlib.suppress(OSError):
                path.unlink()
                deleted += 1
                total -= size
        if deleted:
            log.info("SAM embedding store: evicted %d files (limit %d MB)", deleted,
                     self.disk_bytes // 2**20)
        return deleted

    def stats(self) -> dict[str, object]:
        with self._lock:
            counts = dict(self.counts)
        return {"in_memory": len(self._memory),
                "memory_mb": round(self._memory.used / 2**20, 1), **counts}
