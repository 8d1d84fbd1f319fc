"""In-memory cache of slice embeddings, bounded by size (least recently used slices dropped)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable

from .predictor import ImageEmbedding

__all__ = ["EmbeddingCache"]


class EmbeddingCache:
    """A thread-safe LRU of :class:`ImageEmbedding` bounded by their total size in bytes.

    Keys are any hashable; the plugin uses ``(image id, slice key, model id)`` so that switching
    the model or the image never returns a stale embedding. Workers write from background
    threads while the UI reads, hence the lock.

    Parameters
    ----------
    max_bytes : int
        Upper bound of the cached embeddings' size. A ViT-B embedding is 4 MiB in float32; the
        default of 512 MiB keeps 128 of them.
    """

    def __init__(self, max_bytes: int = 512 * 2**20) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[Hashable, ImageEmbedding] = OrderedDict()
        self._nbytes = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> ImageEmbedding | None:
        """The embedding stored under ``key`` (and mark it recently used), or ``None``."""
        with self._lock:
            emb = self._items.get(key)
            if emb is not None:
                self._items.move_to_end(key)
            return emb

    def put(self, key: Hashable, embedding: ImageEmbedding) -> None:
        """Store ``embedding``; evict the least recently used entries beyond ``max_bytes``."""
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._nbytes -= old.nbytes
            self._items[key] = embedding
            self._nbytes += embedding.nbytes
            while self._nbytes > self.max_bytes and len(self._items) > 1:
                _, dropped = self._items.popitem(last=False)
                self._nbytes -= dropped.nbytes

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._nbytes

    def discard(self, predicate) -> int:
        """Drop every entry whose key satisfies ``predicate(key)``; return how many were dropped."""
        with self._lock:
            keys = [k for k in self._items if predicate(k)]
            for k in keys:
                self._nbytes -= self._items.pop(k).nbytes
            return len(keys)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._nbytes = 0
