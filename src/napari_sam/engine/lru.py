"""One thread-safe least-recently-used cache, bounded by entry count and/or total size.

Used for slice embeddings (:class:`~napari_sam.engine.embedding_cache.EmbeddingCache`), the
magnified crops of :class:`~napari_sam.engine.zoom.ZoomPredictor` and CLIP crop embeddings.
Workers write from background threads while the viewer reads, hence the lock.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["LRUCache"]

V = TypeVar("V")


class LRUCache(Generic[V]):
    """A mapping that forgets its least recently used entries beyond its bounds.

    Parameters
    ----------
    max_items : int, optional
        At most this many entries.
    max_bytes : int, optional
        At most this total ``size(value)``; the newest entry is always kept, even alone over it.
    size : callable, optional
        ``size(value) -> int`` bytes; needed with ``max_bytes``.

    Examples
    --------
    >>> c = LRUCache(max_items=2)
    >>> c.put("a", 1); c.put("b", 2); _ = c.get("a"); c.put("c", 3)
    >>> sorted(c.keys())
    ['a', 'c']
    """

    def __init__(self, max_items: int | None = None, max_bytes: int | None = None,
                 size: Callable[[V], int] | None = None) -> None:
        if max_items is not None and max_items < 1:
            raise ValueError("max_items must be positive")
        if max_bytes is not None and (max_bytes <= 0 or size is None):
            raise ValueError("max_bytes must be positive and needs size")
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._size = size
        self._items: OrderedDict[Hashable, V] = OrderedDict()
        self._nbytes = 0
        self._lock = threading.Lock()

    def _sizeof(self, value: V) -> int:
        return 0 if self._size is None else int(self._size(value))

    def get(self, key: Hashable) -> V | None:
        """The value under ``key`` (now the most recently used), or ``None``."""
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: Hashable, value: V) -> None:
        """Store ``value``; evict the least recently used entries beyond the bounds."""
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._nbytes -= self._sizeof(old)
            self._items[key] = value
            self._nbytes += self._sizeof(value)
            while len(self._items) > 1 and (
                (self.max_items is not None and len(self._items) > self.max_items)
                or (self.max_bytes is not None and self._nbytes > self.max_bytes)
            ):
                _, dropped = self._items.popitem(last=False)
                self._nbytes -= self._sizeof(dropped)

    def discard(self, predicate: Callable[[Hashable], bool]) -> int:
        """Drop every entry whose key satisfies ``predicate(key)``; return how many."""
        with self._lock:
            keys = [k for k in self._items if predicate(k)]
            for k in keys:
                self._nbytes -= self._sizeof(self._items.pop(k))
            return len(keys)

    def keys(self) -> list[Hashable]:
        with self._lock:
            return list(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._nbytes = 0

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    @property
    def nbytes(self) -> int:
        """Total size of the entries (0 without ``size``)."""
        with self._lock:
            return self._nbytes
