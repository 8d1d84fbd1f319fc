"""The CLIP scorer: a CLIP model, in this process or in the isolated worker, that embeds queries
and object crops, with the crop-embedding cache that scoring calls share.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from ...engine.lru import LRUCache
from .clip_model import LoadedClip, encode_images_local, encode_text_local, load_clip
from .clip_weights import parse_clip_spec

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["ClipScorer", "CropEmbeddingCache"]


def _gui_hazard() -> bool:
    """Whether importing open_clip here could crash: a GL stack is loaded and triton is not."""
    return "vispy" in sys.modules and "triton" not in sys.modules


class ClipScorer:
    """A CLIP model (open_clip) that embeds queries and object crops.

    Parameters
    ----------
    spec : str
        ``"MODEL:TAG"`` (a pretrained tag of open_clip, e.g. ``"ViT-B-32:openai"``; the weights
        are downloaded once into :func:`clip_cache_dir`), ``"MODEL:PATH"`` (a local weights
        file), ``"CONFIG.json:PATH"`` (an open_clip model config plus weights), ``"MODEL:random"``
        (random weights, for tests), or a model folder. See :func:`parse_clip_spec`.
    device : str or torch.device, optional
        Default: the best available (:func:`napari_sam.models.device.resolve_device`).
    cache_dir : path, optional
        Where pretrained weights are looked for and downloaded (default :func:`clip_cache_dir`).
    isolate : bool, optional
        Run the model in a separate worker process (required inside a napari viewer, see
        :mod:`napari_sam.workflows.text.clip_worker`). Default: isolate when importing open_clip
        here could crash the process (vispy loaded, triton not yet).
    download : bool
        Allow downloading missing pretrained weights (never in tests).
    cache_size : int
        How many crop embeddings :attr:`cache` keeps.

    Raises
    ------
    ClipWeightsMissing
        Pretrained weights are missing and cannot be downloaded; the message says what to do.
    ValueError, FileNotFoundError
        Bad specification, unknown tag, or a weights file that does not fit the architecture.

    Notes
    -----
    The constructor loads the model (seconds; more with ``isolate=True``, which starts a Python
    process): construct it in a background thread in a GUI. Call :meth:`close` (or use ``with``)
    to end the worker process early; it also ends when the scorer is garbage collected.
    """

    def __init__(
        self,
        spec: str = "ViT-B-32:openai",
        *,
        device=None,
        cache_dir: str | os.PathLike | None = None,
        isolate: bool | None = None,
        download: bool = True,
        cache_size: int = 20_000,
    ) -> None:
        self.spec = os.fspath(spec)
        parse_clip_spec(self.spec)  # syntax errors here, before any process starts
        self.isolated = _gui_hazard() if isolate is None else bool(isolate)
        cache_dir = None if cache_dir is None else str(cache_dir)
        device = None if device is None else str(device)
        self._worker = None
        self._clip: LoadedClip | None = None
        if self.isolated:
            from .clip_worker import ClipWorker

            self._worker = ClipWorker()
            self._finalizer = weakref.finalize(self, self._worker.close)
            try:
                info = self._worker.call("load", self.spec, device, cache_dir, download)
            except BaseException:
                self.close()
                raise
        else:
            self._clip = load_clip(self.spec, device, cache_dir, download)
            info = self._clip.info()
        #: Side of the model's square image input, in pixels.
        self.image_size: int = int(info["image_size"])
        #: CLIP's learned temperature (exp of ``logit_scale``): softmax(logit_scale * cos).
        self.logit_scale: float = float(info["logit_scale"])
        #: Length of the embeddings.
        self.embed_dim: int = int(info["embed_dim"])
        #: The weights loaded: a file path, a folder, or ``"random"``.
        self.weights: str = str(info["weights"])
        self.device: str = str(info["device"])
        #: Crop embeddings by crop digest, shared by every scoring call of this scorer.
        self.cache = CropEmbeddingCache(max_items=cache_size)
        self._text_cache: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    @property
    def key(self) -> str:
        """Identifies the model (spec and weights) in cache keys."""
        return f"{self.spec}|{self.weights}"

    def close(self) -> None:
        """End the worker process of an isolated scorer (no-op otherwise)."""
        if self._worker is not None:
            self._finalizer()
            self._worker = None

    def __enter__(self) -> ClipScorer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _run(self, local_fn, worker_fn: str, arg):
        if self.isolated:
            worker = self._worker
            if worker is None:
                raise RuntimeError("this ClipScorer was closed")
            return worker.call(worker_fn, arg)
        with self._lock:
            return local_fn(self._clip, arg)

    def encode_text_numpy(self, queries: Sequence[str]) -> np.ndarray:
        """:meth:`encode_text` as a float32 numpy array (Q, D); cached per text."""
        queries = [str(q) for q in queries]
        todo = [q for q in dict.fromkeys(queries) if q not in self._text_cache]
        if todo:
            emb = self._run(encode_text_local, "encode_text", todo)
            for q, e in zip(todo, emb):
                self._text_cache[q] = e
        if not queries:
            return np.zeros((0, self.embed_dim), dtype=np.float32)
        return np.stack([self._text_cache[q] for q in queries]).astype(np.float32)

    def encode_text(self, queries: Sequence[str]) -> torch.Tensor:
        """Unit-length CLIP text embeddings.

        Parameters
        ----------
        queries : sequence of str, length Q

        Returns
        -------
        torch.Tensor, shape (Q, D), float32, on the CPU
        """
        import torch

        return torch.from_numpy(self.encode_text_numpy(queries))

    def encode_crops_numpy(
        self,
        crops: np.ndarray,
        batch_size: int = 32,
        progress: Callable[[int, int], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> np.ndarray:
        """:meth:`encode_crops` as a float32 numpy array."""
        crops = np.asarray(crops)
        if crops.ndim != 4 or crops.shape[-1] != 3 or crops.dtype != np.uint8:
            raise ValueError(
                f"crops must be uint8 of shape (K, S, S, 3), got {crops.dtype} {crops.shape}"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        out = []
        total = len(crops)
        for start in range(0, total, batch_size):
            if cancelled is not None and cancelled():
                break
            batch = crops[start:start + batch_size]
            out.append(self._run(encode_images_local, "encode_images", batch))
            if progress is not None:
                progress(min(start + batch_size, total), total)
        if not out:
            return np.zeros((0, self.embed_dim), dtype=np.float32)
        return np.concatenate(out).astype(np.float32)

    def encode_crops(
        self,
        crops: np.ndarray,
        batch_size: int = 32,
        progress: Callable[[int, int], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> torch.Tensor:
        """Unit-length CLIP image embeddings of crops, in batches.

        Parameters
        ----------
        crops : numpy.ndarray, shape (K, S, S, 3), uint8
            From :func:`extract_crops`; resized to the model's input if ``S`` differs.
        batch_size : int
        progress : callable, optional
            ``progress(done, total)`` after each batch.
        cancelled : callable, optional
            Polled before each batch; when it returns true, the crops done so far are returned.

        Returns
        -------
        torch.Tensor, shape (K', D), float32, on the CPU
            ``K' == K`` unless cancelled (then the first ``K'`` crops).
        """
        import torch

        return torch.from_numpy(self.encode_crops_numpy(crops, batch_size, progress, cancelled))

    def __repr__(self) -> str:
        where = "child process" if self.isolated else self.device
        return f"ClipScorer({self.spec!r}, weights={self.weights!r}, {where})"


class CropEmbeddingCache(LRUCache[np.ndarray]):
    """Thread-safe LRU of crop embeddings keyed by ``(model key, crop digest)``.

    The digest covers the crop's pixels, so editing the query re-scores without re-encoding, and
    an object whose mask or image changed gets a new entry instead of a stale one.

    Parameters
    ----------
    max_items : int
    """

    def __init__(self, max_items: int = 20_000) -> None:
        super().__init__(max_items=int(max_items))

    @staticmethod
    def digest(crop: np.ndarray) -> str:
        """Digest of one crop's pixels and shape."""
        h = hashlib.blake2b(digest_size=16)
        h.update(str(crop.shape).encode())
        h.update(np.ascontiguousarray(crop).tobytes())
        return h.hexdigest()
