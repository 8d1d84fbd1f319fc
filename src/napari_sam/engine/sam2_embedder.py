"""SAM 2 slice embeddings of an nD image, in memory: :class:`Sam2StackEmbedder`, and
:func:`stack_embedder_for`, which picks it or :class:`~napari_sam.engine.embedding_store.StackEmbedder`
by model.

A SAM 2 slice embedding is three feature levels (:class:`~napari_sam.engine.sam2_predictor.Sam2Embedding`),
not SAM's one tensor, so the zarr store (one ``(C, h, w)`` array per plane) cannot hold it:
SAM 2 embeddings are kept in a size-bounded in-memory LRU only, in float32 (SAM 2's decoder
reads the high-resolution levels directly, so they are not rounded to float16 as SAM's are).
The embedder has :class:`StackEmbedder`'s reading side (``get``, ``has``, ``missing``,
``precompute``, ``intensity_range``, ``store_path``), so the viewer's cache, prefetch and jobs
use either alike.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy.typing as npt

from ..modeling.sam2 import Sam2
from .embedding_cache import EmbeddingCache
from .planes import PlaneGeometry
from .preprocess import stack_intensity_range
from .sam2_predictor import Sam2Embedding, Sam2Predictor

__all__ = ["Sam2StackEmbedder", "is_sam2_model", "stack_embedder_for"]


def is_sam2_model(model: Any) -> bool:
    """Whether ``model`` is a SAM 2 model (whose embeddings are :class:`Sam2Embedding` s)."""
    return isinstance(model, Sam2)


def stack_embedder_for(model, image: npt.ArrayLike, *, store: Any = None, **kwargs):
    """A :class:`Sam2StackEmbedder` for a SAM 2 model (``store`` ignored: memory only), else a
    :class:`~napari_sam.engine.embedding_store.StackEmbedder` (``store`` and ``kwargs`` passed
    on). ``kwargs`` the SAM 2 embedder does not take (``model_name``, ``precision``,
    ``fingerprint``) are ignored for it."""
    if is_sam2_model(model):
        keep = {k: v for k, v in kwargs.items() if k in ("axes", "rgb", "intensity_range",
                                                         "memory_mb")}
        return Sam2StackEmbedder(model, image, **keep)
    from .embedding_store import StackEmbedder

    return StackEmbedder(model, image, store=store, **kwargs)


class Sam2StackEmbedder(PlaneGeometry):
    """SAM 2 embeddings of every 2D plane of an nD image, computed on demand, kept in memory.

    Thread-safe: the encoder runs under one lock with the embedder's own
    :class:`~napari_sam.engine.sam2_predictor.Sam2Predictor`, so a plane asked for by two
    threads at once is computed once.

    Parameters
    ----------
    model : Sam2
    image : array-like, shape (..., Y, X) or (..., Y, X, 3)
        numpy, dask or zarr; planes are read one at a time.
    axes : (int, int)
        The two plane axes among the spatial axes (default: the last two).
    rgb : bool
        The last axis holds RGB(A) channels.
    intensity_range : (float, float), optional
        Normalisation of the whole stack; estimated once (robust percentiles) when first needed.
        uint8 RGB is used as is.
    memory_mb : float
        Bound of the in-memory LRU. SAM 2 embeddings of a 1024 px input take about 20 MiB each
        (float32: the stride-16 features and their positional encoding, 4 MiB each, and the two
        high-resolution levels, 8 and 4 MiB).

    Attributes
    ----------
    store_path, store : None
        SAM 2 embeddings are never written to disk.
    """

    store_path = None
    store = None

    def __init__(
        self,
        model: Sam2,
        image: npt.ArrayLike,
        *,
        axes: Sequence[int] = (-2, -1),
        rgb: bool = False,
        intensity_range: tuple[float, float] | None = None,
        memory_mb: float = 256,
    ) -> None:
        if not is_sam2_model(model):
            raise TypeError(f"Sam2StackEmbedder needs a SAM 2 model, got {type(model).__name__}")
        if memory_mb <= 0:
            raise ValueError("memory_mb must be positive")
        super().__init__(image, axes=axes, rgb=rgb)
        self.model = model
        self._range = None if intensity_range is None else tuple(float(v) for v in intensity_range)
        self._range_known = intensity_range is not None
        self._memory = EmbeddingCache(max_bytes=int(memory_mb * 2**20))
        self._predictor = Sam2Predictor(model)
        self._compute_lock = threading.Lock()
        self._setup_lock = threading.Lock()

    @property
    def intensity_range(self) -> tuple[float, float] | None:
        """The stack's normalisation range (``None`` for uint8 RGB used as is)."""
        with self._setup_lock:
            if not self._range_known:
                self._range = stack_intensity_range(self.image, self.rgb)
                self._range_known = True
            return self._range

    @property
    def memory(self) -> EmbeddingCache:
        """The in-memory LRU of :class:`Sam2Embedding` s by plane index."""
        return self._memory

    @property
    def problems(self) -> dict:
        """Always empty (no store to check)."""
        return {}

    def get(self, index: Sequence[int] | int) -> Sam2Embedding:
        """The embedding of one plane (``index``: position along the non-plane axes, ascending;
        ``()`` for 2D), computed if it is not in memory."""
        idx = self._check_index(index)
        emb = self._memory.get(idx)
        if emb is not None:
            return emb
        with self._compute_lock:
            emb = self._memory.get(idx)  # another thread may have computed it meanwhile
            if emb is None:
                emb = self._predictor.compute_embedding(self.plane_image(idx),
                                                        self.intensity_range)
                self._memory.put(idx, emb)
        return emb

    def has(self, index: Sequence[int] | int) -> bool:
        """Whether the plane's embedding is in memory (never computes)."""
        return self._check_index(index) in self._memory

    def missing(self, indices: Iterable[Sequence[int]] | None = None) -> list[tuple[int, ...]]:
        """The planes (of ``indices``, default all) not in memory."""
        keys = self.planes() if indices is None else [self._check_index(i) for i in indices]
        return [k for k in keys if k not in self._memory]

    def verify(self, indices=None, progress=None) -> dict:
        """Nothing to verify without a store: ``{}``."""
        return {}

    def precompute(
        self,
        indices: Iterable[Sequence[int]] | None = None,
        progress: Callable[[int, int], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> int:
        """Compute the planes not in memory (as :meth:`StackEmbedder.precompute`; planes beyond
        the memory bound push out the oldest). Returns the number computed."""
        keys = self.planes() if indices is None else [self._check_index(i) for i in indices]
        pending = self.missing(keys)
        done = len(keys) - len(pending)
        if progress is not None:
            progress(done, len(keys))
        computed = 0
        for idx in pending:
            if cancelled is not None and cancelled():
                break
            if not self.has(idx):
                self.get(idx)
                computed += 1
            done += 1
            if progress is not None:
                progress(done, len(keys))
        return computed
