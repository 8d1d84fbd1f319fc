"""In-memory cache of slice embeddings, bounded by size (least recently used slices dropped)."""

from __future__ import annotations

from .lru import LRUCache
from .predictor import ImageEmbedding

__all__ = ["EmbeddingCache"]


class EmbeddingCache(LRUCache[ImageEmbedding]):
    """A thread-safe LRU of :class:`ImageEmbedding` bounded by their total size in bytes.

    Keys are any hashable; the plugin uses ``(image id, slice key, model id)`` so that switching
    the model or the image never returns a stale embedding.

    Parameters
    ----------
    max_bytes : int
        Upper bound of the cached embeddings' size. A ViT-B embedding is 4 MiB in float32; the
        default of 512 MiB keeps 128 of them.
    """

    def __init__(self, max_bytes: int = 512 * 2**20) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        super().__init__(max_bytes=int(max_bytes), size=lambda emb: emb.nbytes)
