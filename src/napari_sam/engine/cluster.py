"""Precompute a stack's embeddings on a Dask distributed cluster, every worker writing one store.

The client creates (or reuses) the zarr store and submits one task per missing plane with
``distributed.Client.map``; each worker process loads the model and opens the image once (cached
per process), embeds its planes and writes them into the shared store, each plane its own chunk.
Dask does the scheduling, retries and bookkeeping; nothing here is a job system of its own. A
worker claims each plane before encoding it (see :mod:`~napari_sam.engine.plane_claims`), so a
plane that Dask runs twice (a retry, a stolen task) or that another ``embed`` run on the same
store is computing is not computed a second time.

Workers must see the image, the checkpoint and the store under the same paths as the client (a
shared file system on a cluster).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .embedding_store import StackEmbedder

__all__ = ["EmbedJob", "embed_planes", "make_embedder", "precompute_distributed"]


@dataclass(frozen=True)
class EmbedJob:
    """Everything a worker needs to embed planes of one stack into one store (picklable).

    Attributes
    ----------
    image : str
        Path of the image (zarr, TIFF, npy), read lazily with :func:`napari_sam.data.io.open_image_lazy`.
    store : str
        Path of the zarr embedding store, already created by the client.
    model : str
        Registry name or checkpoint path, as for :func:`napari_sam.build_model`.
    checkpoint : str, optional
        Weights for a registry ``model``.
    device : str, optional
    axes : (int, int)
        Plane axes.
    rgb : bool
    intensity_range : (float, float) or None
        The stack's range, fixed by the client so that every worker normalises alike.
    fingerprint : str
        :func:`~napari_sam.engine.embedding_store.image_fingerprint` computed by the client.
    model_name : str, optional
        Name in the model fingerprint.
    precision : str
        Encoder arithmetic, as for :class:`~napari_sam.SamPredictor`.
    """

    image: str
    store: str
    model: str
    checkpoint: str | None = None
    device: str | None = None
    axes: tuple[int, int] = (-2, -1)
    rgb: bool = False
    intensity_range: tuple[float, float] | None = None
    fingerprint: str | None = None
    model_name: str | None = None
    precision: str = "float32"


_WORKER_CACHE: dict[EmbedJob, StackEmbedder] = {}
_WORKER_LOCK = threading.Lock()


def make_embedder(job: EmbedJob, model=None) -> StackEmbedder:
    """A :class:`StackEmbedder` for ``job`` (the model is built unless given)."""
    from ..data.io import open_image_lazy

    if model is None:
        from ..models.build import build_model

        model = build_model(job.model, checkpoint=job.checkpoint, device=job.device)
    return StackEmbedder(
        model, open_image_lazy(job.image), axes=job.axes, rgb=job.rgb,
        intensity_range=job.intensity_range, store=job.store, model_name=job.model_name,
        fingerprint=job.fingerprint, memory_mb=1, precision=job.precision,
    )


def embed_planes(job: EmbedJob, planes: Sequence[Sequence[int]]) -> int:
    """Worker task: embed ``planes`` into the job's store; returns how many were computed.

    The model and image are set up once per worker process. The store is opened with
    ``recreate=False``: a worker whose weights or image differ from the client's raises
    :class:`~napari_sam.engine.embedding_store.StaleStoreError` instead of deleting the store.
    """
    with _WORKER_LOCK:
        embedder = _WORKER_CACHE.get(job)
        if embedder is None:
            embedder = make_embedder(job)
            embedder.open_store(recreate=False)
            _WORKER_CACHE.clear()  # one stack at a time per worker
            _WORKER_CACHE[job] = embedder
    return embedder.precompute([tuple(p) for p in planes])


def precompute_distributed(
    client,
    job: EmbedJob,
    planes: Sequence[Sequence[int]],
    *,
    planes_per_task: int = 1,
    progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> int:
    """Spread ``planes`` over the workers of ``client``; return the number of planes computed.

    Parameters
    ----------
    client : distributed.Client
    job : EmbedJob
        Its store must exist already (open it on the client first, e.g. with
        ``make_embedder(job, model).store``).
    planes : sequence of tuple
        The planes to compute (typically ``embedder.missing()``).
    planes_per_task : int
        Planes per task; 1 balances best, more lowers the scheduler overhead for tiny models.
    progress : callable, optional
        ``progress(done, total)`` as tasks finish, ``total = len(planes)``.
    cancelled : callable, optional
        Polled as tasks finish; when true, the remaining tasks are cancelled (what was written is
        kept, and a later run resumes).
    """
    from distributed import as_completed

    planes = [tuple(int(v) for v in p) for p in planes]
    if not planes:
        return 0
    k = max(1, int(planes_per_task))
    batches = [planes[i : i + k] for i in range(0, len(planes), k)]
    futures = client.map(embed_planes, [job] * len(batches), batches, pure=False)
    size = {f.key: len(b) for f, b in zip(futures, batches)}
    done = computed = 0
    try:
        for future in as_completed(futures):
            computed += future.result()
            done += size[future.key]
            if progress is not None:
                progress(done, len(planes))
            if cancelled is not None and cancelled():
                break
    finally:
        client.cancel([f for f in futures if not f.done()])
    return computed
