"""A thread-safe in-memory LRU bounded by total size: the memory tier of every cache of
per-image model state (classifier embeddings, SAM embeddings, CLIPSeg activations)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BoundedLRU(Generic[K, V]):
    """Keeps the most recently used values whose ``size_of`` sum fits ``capacity`` (bytes,
    or items with ``size_of=lambda _: 1``); a value larger than the capacity is not kept."""

    def __init__(self, capacity: int, size_of: Callable[[V], int]) -> None:
        self.capacity = capacity
        self._size_of = size_of
        self._items: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._used = 0
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0]

    def __contains__(self, key: K) -> bool:
        with self._lock:
            return key in self._items

    def put(self, key: K, value: V) -> None:
        size = self._size_of(value)
        with self._lock:
            previous = self._items.pop(key, None)
            if previous is not None:
                self._used -= previous[1]
            if size > self.capacity:
                return
            self._items[key] = (value, size)
            self._used += size
            while self._used > self.capacity:
                _, (_, dropped) = self._items.popitem(last=False)
                self._used -= dropped

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    @property
    def used(self) -> int:
        with self._lock:
            return self._used
