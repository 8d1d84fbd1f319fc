"""Persistent slice embeddings: :class:`StackEmbedder`, and the store API, importable from here.

The image encoder is the cost of the whole tool, so its output is kept on disk and read back
lazily. :class:`StackEmbedder` ``.get(index)`` gives a plane's
:class:`~napari_sam.engine.predictor.ImageEmbedding` from a bounded in-memory LRU, else the store,
else the encoder (and writes it). The rest lives in its own modules:

* :mod:`~napari_sam.engine.fingerprint`: the signature of a store (image content, weights...);
* :mod:`~napari_sam.engine.plane_store`: :class:`EmbeddingStore`, the zarr store whose planes
  carry a digest checked on every read (a plane that fails is recomputed, never used);
* :mod:`~napari_sam.engine.plane_claims`: writers sharing a store claim a plane before encoding
  it, so that no plane is computed twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy.typing as npt

from .fingerprint import (
    PREPROCESS_VERSION,
    _package_version,
    image_fingerprint,
    model_fingerprint,
    signature_digest,
)
from .plane_store import (
    _FLOAT16_MAX,
    EmbeddingStore,
    StaleStoreError,
    default_store_dir,
    prune_store_dir,
    writable_location,
)
from .planes import PlaneGeometry
from .preprocess import stack_intensity_range

__all__ = [
    "EmbeddingStore",
    "StackEmbedder",
    "StaleStoreError",
    "default_store_dir",
    "image_fingerprint",
    "model_fingerprint",
    "prune_store_dir",
    "signature_digest",
]

logger = logging.getLogger(__name__)

#: How long one wait for another writer's claim lasts before it is looked at again (seconds).
_CLAIM_POLL_S = 1.0
#: Folders whose automatic store could not be used, each warned about once per process.
_MEMORY_ONLY_WARNED: set[str] = set()


# -- the stack embedder ------------------------------------------------------------------------


StoreArg = str | os.PathLike | None | Literal["auto"]


class StackEmbedder(PlaneGeometry):
    """Embeddings of every 2D plane of an nD image: memory LRU, then a zarr store, then the encoder.

    Thread-safe: the UI thread may call :meth:`get` while a worker runs :meth:`precompute`. The
    encoder runs under one lock with the embedder's own :class:`~napari_sam.SamPredictor`, so a
    plane requested twice at once is computed once. Embedders of other threads or processes
    (or Dask workers) writing the same store claim each plane before computing it (see
    :mod:`~napari_sam.engine.plane_claims`), so no plane is computed twice there either.

    Every plane read from the store is checked against its digest; one that fails (a missing or
    swapped chunk, altered bytes) is logged, recorded in :attr:`problems` and recomputed.

    Embeddings are rounded to float16 as soon as they are computed, whether or not a store is
    used, so a plane decodes identically the first time and after a reload.

    Parameters
    ----------
    model : Sam
    image : array-like, shape (..., Y, X) or (..., Y, X, 3)
        numpy, dask or zarr; planes are read one at a time.
    axes : (int, int)
        The two plane axes among the spatial axes, ascending (negative values count from the last
        spatial axis). Default: the last two.
    rgb : bool
        The last axis holds RGB(A) channels (not a spatial axis).
    intensity_range : (float, float), optional
        Normalisation of the whole stack; estimated once (robust percentiles) when first needed.
        uint8 RGB is used as is.
    store : path, "auto" or None
        ``None``: memory only. A path: that zarr store. ``"auto"``: a store named by the
        signature in :func:`default_store_dir`; where that folder or store cannot be written
        (read-only, full), embeddings are kept in memory instead, with one logged warning.
        Opening a store hashes the whole image (about 1 GB/s), on first use, not in the
        constructor: do that off the GUI thread.
    model_name : str, optional
        Name recorded in the model fingerprint.
    memory_mb : float
        Bound of the in-memory LRU (float16 embeddings; the default model's take 1 MiB each,
        ViT-B's 2 MiB).
    fingerprint : str, optional
        The :func:`image_fingerprint` of ``image`` with these axes, ``rgb`` and intensity range,
        if already known (distributed workers get it from the client instead of rehashing).
    precision : {"float32", "bfloat16", "float16"}
        Arithmetic of the image encoder (see :class:`~napari_sam.SamPredictor`); part of the
        signature, so embeddings of different precisions never mix.

    Examples
    --------
    >>> emb = StackEmbedder(model, volume, store="auto")  # doctest: +SKIP
    >>> predictor.set_embedding(emb.get((12,)))  # z = 12 of a (Z, Y, X) volume  # doctest: +SKIP
    """

    def __init__(
        self,
        model,
        image: npt.ArrayLike,
        *,
        axes: Sequence[int] = (-2, -1),
        rgb: bool = False,
        intensity_range: tuple[float, float] | None = None,
        store: StoreArg = None,
        model_name: str | None = None,
        memory_mb: float = 256,
        fingerprint: str | None = None,
        precision: str = "float32",
    ) -> None:
        from .embedding_cache import EmbeddingCache
        from .predictor import SamPredictor

        super().__init__(image, axes=axes, rgb=rgb)
        if memory_mb <= 0:
            raise ValueError("memory_mb must be positive")
        self.model = model
        self.model_name = model_name
        pe = model.prompt_encoder
        self.feature_shape = (int(pe.embed_dim), *(int(v) for v in pe.image_embedding_size))
        self._range = None if intensity_range is None else tuple(float(v) for v in intensity_range)
        self._range_given = intensity_range is not None
        self._fingerprint = fingerprint
        self._store_arg = store
        self._store: EmbeddingStore | None = None
        self._store_opened = False
        self._store_writable = True
        self._memory = EmbeddingCache(max_bytes=int(memory_mb * 2**20))
        self._predictor = SamPredictor(model, precision=precision)
        self.precision = precision
        self._compute_lock = threading.Lock()
        self._setup_lock = threading.RLock()

    # -- signature and store -----------------------------------------------------------------

    @property
    def intensity_range(self) -> tuple[float, float] | None:
        """The stack's normalisation range (``None`` for uint8 RGB used as is)."""
        with self._setup_lock:
            if self._range is None and not self._range_given:
                self._range = stack_intensity_range(self.image, self.rgb)
                self._range_given = True
            return self._range

    @property
    def fingerprint(self) -> str:
        """:func:`image_fingerprint` of the image (hashes all of it on first access)."""
        with self._setup_lock:
            if self._fingerprint is None:
                self._fingerprint = image_fingerprint(
                    self.image, self.axes, self.intensity_range, rgb=self.rgb
                )
            return self._fingerprint

    def signature(self) -> dict:
        """What the embeddings depend on; a store is reused only if its signature is equal."""
        # The weights hash only: the same weights under another name are the same model.
        signature = {
            "image": self.fingerprint,
            "model": model_fingerprint(self.model).rsplit(":", 1)[-1],
            "img_size": int(self.model.img_size),
            "precision": self.precision,
            "plane_axes": list(self.axes),
            "planes": list(self.plane_shape),
            "package": _package_version(),
            "preprocess": PREPROCESS_VERSION,
        }
        upscale = getattr(self.model, "max_input_upscale", None)
        if upscale is not None:  # only then: stores of SAM's own models stay valid
            signature["max_input_upscale"] = float(upscale)
        return signature

    @property
    def store(self) -> EmbeddingStore | None:
        """The opened store (``None`` without one); opened, created or recreated on first use."""
        with self._setup_lock:
            if not self._store_opened:
                self._store = self._open_store(recreate=True)
                self._store_opened = True
            return self._store

    def open_store(self, *, recreate: bool = True) -> EmbeddingStore | None:
        """Open the store now (see :meth:`EmbeddingStore.open` for ``recreate``)."""
        with self._setup_lock:
            if not self._store_opened:
                self._store = self._open_store(recreate=recreate)
                self._store_opened = True
            return self._store

    def _open_store(self, recreate: bool) -> EmbeddingStore | None:
        path = self.store_path
        if path is None:
            return None
        read_only = self._auto and not writable_location(path)
        if read_only:  # a read-only cache: use what it holds, keep new planes in memory
            self._store_writable = False
            if not path.exists():
                _warn_memory_only(path.parent, f"the cache folder {path.parent} is read-only")
                return None
        try:
            return EmbeddingStore.open(
                path, self.signature(), n_planes=self.n_planes, feature_shape=self.feature_shape,
                original_size=self.original_size, img_size=int(self.model.img_size),
                recreate=recreate and not read_only,
                info={"model": model_fingerprint(self.model, self.model_name)},
            )
        except (OSError, StaleStoreError) as exc:
            if not self._auto or not (read_only or isinstance(exc, OSError)):
                raise
            self._store_writable = False
            _warn_memory_only(path.parent, f"cannot use the automatic embedding store {path} "
                                           f"({type(exc).__name__}: {exc})")
            return None

    @property
    def _auto(self) -> bool:
        return isinstance(self._store_arg, str) and self._store_arg == "auto"

    @property
    def store_path(self) -> Path | None:
        """Where the store is (``None`` without a store); ``"auto"`` hashes the image first."""
        arg = self._store_arg
        if arg is None:
            return None
        if self._auto:
            return default_store_dir() / f"{signature_digest(self.signature())}.zarr"
        return Path(arg).expanduser()


    # -- embeddings --------------------------------------------------------------------------

    def get(self, index: Sequence[int] | int):
        """The embedding of one plane, computing (and storing) it if needed.

        A plane that another writer of the store is computing right now is waited for rather than
        computed a second time.

        Parameters
        ----------
        index : tuple of int
            Position along the non-plane spatial axes in ascending axis order (``()`` for 2D).

        Returns
        -------
        ImageEmbedding
            ``features`` float32 on the CPU, shape ``(1, C, h, w)`` (values rounded to float16).
        """
        idx = self._check_index(index)
        half = self._memory.get(idx)
        if half is None:
            half = self._load(idx)
            if half is None:
                half, _ = self._obtain(idx, load=True)
            self._memory.put(idx, half)
        return _to_float32(half)

    def has(self, index: Sequence[int] | int) -> bool:
        """Whether the plane's embedding is in memory or on disk (never computes)."""
        idx = self._check_index(index)
        if idx in self._memory:
            return True
        store = self.store
        return store is not None and store.is_done(self._flat(idx))

    def missing(self, indices: Iterable[Sequence[int]] | None = None) -> list[tuple[int, ...]]:
        """The planes (of ``indices``, default all) that are neither stored nor in memory."""
        keys = self.planes() if indices is None else [self._check_index(i) for i in indices]
        store = self.store
        done = store.done_mask() if store is not None else None
        return [
            k for k in keys
            if not (done is not None and done[self._flat(k)]) and k not in self._memory
        ]

    def verify(
        self,
        indices: Iterable[Sequence[int]] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> dict[tuple[int, ...], str]:
        """Check the stored planes (of ``indices``, default all) against their digests.

        Planes that fail are marked not done, so that :meth:`missing` lists them and
        :meth:`precompute` recomputes them. Returns them with why they failed (``{}`` without a
        store). Reads every stored plane: about as long as loading them all.
        """
        store = self.store
        if store is None:
            return {}
        planes = None if indices is None else [self._flat(self._check_index(i)) for i in indices]
        return {self._unflat(i): why for i, why in store.verify(planes, progress).items()}

    @property
    def problems(self) -> dict[tuple[int, ...], str]:
        """Planes found unusable in the store since it was opened, and why (see :meth:`verify`)."""
        store = self._store
        return {} if store is None else {self._unflat(i): w for i, w in store.problems.items()}

    def precompute(
        self,
        indices: Iterable[Sequence[int]] | None = None,
        progress: Callable[[int, int], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> int:
        """Compute and store the planes that are not stored yet.

        Planes already written (by an earlier, interrupted run or another process) are skipped,
        so calling this again resumes. Planes that another writer has claimed are left to it and
        looked at again at the end (by then usually written). With a store, computed planes go to
        disk only (the memory LRU keeps what the user looks at); without one they go to the
        memory LRU.

        Parameters
        ----------
        indices : iterable of tuple, optional
            Planes to compute (default: all).
        progress : callable, optional
            ``progress(done, total)`` after each plane; ``done`` counts planes already present.
        cancelled : callable, optional
            Polled before each plane; when it returns true, stop (what was written is kept).

        Returns
        -------
        int
            Number of planes computed by this call.
        """
        keys = self.planes() if indices is None else [self._check_index(i) for i in indices]
        pending = self.missing(keys)
        total = len(keys)
        done = total - len(pending)
        if progress is not None:
            progress(done, total)
        computed = 0
        wait = False
        while pending:
            deferred = []
            for idx in pending:
                if cancelled is not None and cancelled():
                    return computed
                half, outcome = self._obtain(idx, load=False, wait=wait, cancelled=cancelled)
                if outcome == "busy":  # another writer is on it: come back to it at the end
                    deferred.append(idx)
                    continue
                if outcome == "computed":
                    computed += 1
                    if self.store is None or not self._store_writable:
                        self._memory.put(idx, half)
                done += 1
                if progress is not None:
                    progress(done, total)
            pending, wait = deferred, True
        return computed

    @property
    def memory(self):
        """The in-memory LRU (:class:`~napari_sam.engine.embedding_cache.EmbeddingCache`, float16)."""
        return self._memory

    def _obtain(self, idx: tuple[int, ...], *, load: bool, wait: bool = True,
                cancelled: Callable[[], bool] | None = None) -> tuple[Any, str]:
        """Find plane ``idx`` or compute it under a claim: ``(embedding, outcome)``.

        ``outcome`` is ``"present"`` (in memory or stored; the embedding is loaded only with
        ``load``), ``"computed"``, or ``"busy"`` (another writer holds its claim, and ``wait`` is
        false or ``cancelled()`` became true).
        """
        flat = self._flat(idx)
        while True:
            with self._compute_lock:
                store = self.store
                if load:
                    half = self._memory.get(idx)
                    if half is None:
                        half = self._load(idx)
                    if half is not None:
                        return half, "present"
                elif idx in self._memory or (store is not None and store.is_done(flat)):
                    return None, "present"
                claim = self._claim(store, flat)
                if claim is not None:
                    with claim:
                        # another writer may have finished it between our look and our claim
                        if store is not None and store.is_done(flat):
                            half = self._load(idx) if load else None
                            if half is not None or not load:
                                return half, "present"
                        return self._compute_and_save(idx), "computed"
            if not wait or (cancelled is not None and cancelled()):
                return None, "busy"
            store.claims.wait(flat, timeout=_CLAIM_POLL_S)

    def _claim(self, store: EmbeddingStore | None, flat: int):
        """A claim on plane ``flat`` (a no-op without a writable store), or ``None`` if taken."""
        if store is None or not self._store_writable:
            return contextlib.nullcontext()
        try:
            return store.claims.try_claim(flat)
        except OSError as exc:  # a read-only store: nothing to coordinate
            logger.debug("no claim on plane %d of %s: %s", flat, store.path, exc)
            return contextlib.nullcontext()

    def _load(self, idx: tuple[int, ...]):
        store = self.store
        if store is None:
            return None
        features = store.read(self._flat(idx))
        if features is None:
            return None
        import torch

        from .predictor import ImageEmbedding

        return ImageEmbedding(
            torch.from_numpy(features)[None], self.original_size, int(self.model.img_size),
            getattr(self.model, "max_input_upscale", None),
        )

    def _compute_and_save(self, idx: tuple[int, ...]):
        """Encode one plane (caller holds the compute lock); returns the float16 embedding."""
        import torch

        emb = self._predictor.compute_embedding(self.plane_image(idx), self.intensity_range)
        features = emb.features.detach().to("cpu", torch.float32)
        if not torch.isfinite(features).all() or features.abs().max() > _FLOAT16_MAX:
            raise RuntimeError(f"the encoder returned values outside the float16 range for "
                               f"plane {idx}")
        half = features.to(torch.float16)
        store, why = self.store, ""
        if store is not None and self._store_writable:
            try:
                store.write(self._flat(idx), half[0].numpy())
            except OSError as exc:
                if not self._auto:
                    raise
                self._store_writable = False
                why = f"cannot write the automatic embedding store {store.path} ({exc})"
        elif store is not None:
            why = f"the automatic embedding store {store.path} is read-only"
        if why:
            _warn_memory_only(store.path.parent, why)
        result = dataclasses.replace(emb, features=half)
        if store is None or not self._store_writable:
            # still under the compute lock: a thread waiting for this plane finds it in memory
            # instead of encoding it a second time
            self._memory.put(idx, result)
        return result


def _warn_memory_only(folder: Path, message: str) -> None:
    """Warn once per folder (per process) that embeddings are kept in memory only."""
    key = str(folder)
    if key not in _MEMORY_ONLY_WARNED:
        _MEMORY_ONLY_WARNED.add(key)
        logger.warning("%s: embeddings are kept in memory only", message)


def _to_float32(emb):
    import torch

    return dataclasses.replace(emb, features=emb.features.to(torch.float32))
