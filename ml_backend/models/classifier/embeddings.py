"""Embedding cache: vectors keyed by (backbone digest, image content hash).

Bounded in memory (LRU) and persisted on disk so that worker processes and restarts reuse
what was computed once. Files are written atomically; a corrupt file is treated as a miss.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ml_backend.core.files import atomic_write_bytes
from ml_backend.core.lru import BoundedLRU


class EmbeddingCache:
    def __init__(self, root: Path, max_items_in_memory: int = 20_000) -> None:
        self.root = Path(root)
        self.max_items = max_items_in_memory
        # Counted in items (each is one small vector), not bytes.
        self._memory: BoundedLRU[tuple[str, str], np.ndarray] = BoundedLRU(max_items_in_memory,
                                                                     lambda _: 1)
        self.hits = 0
        self.misses = 0

    def _path(self, backbone: str, sha256: str) -> Path:
        if not sha256.isalnum() or not backbone.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"bad cache key: {backbone!r}/{sha256!r}")
        return self.root / backbone / sha256[:2] / f"{sha256}.npy"

    def get_many(self, backbone: str, shas: Iterable[str]) -> dict[str, np.ndarray]:
        """Cached vectors for the given image hashes; missing ones are absent from the dict."""
        found: dict[str, np.ndarray] = {}
        for sha in shas:
            key = (backbone, sha)
            vec = self._memory.get(key)
            if vec is None:
                try:
                    vec = np.load(io.BytesIO(self._path(backbone, sha).read_bytes()),
                                  allow_pickle=False)
                except (FileNotFoundError, ValueError, OSError):
                    vec = None
                if vec is not None:
                    self._memory.put(key, vec)
            if vec is None:
                self.misses += 1
            else:
                self.hits += 1
                found[sha] = vec
        return found

    def put_many(self, backbone: str, vectors: dict[str, np.ndarray]) -> None:
        for sha, vec in vectors.items():
            vec = np.asarray(vec, dtype=np.float32)
            buffer = io.BytesIO()
            np.save(buffer, vec, allow_pickle=False)
            atomic_write_bytes(self._path(backbone, sha), buffer.getvalue())
            self._memory.put((backbone, sha), vec)
