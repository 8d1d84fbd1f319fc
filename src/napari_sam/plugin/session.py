"""The plugin's state and background work, without Qt or napari: a :class:`SamSession`.

The session holds what the "Segment Anything" widget works with -- the model and its predictor,
the embeddings (an LRU of decoded planes, one
:class:`~napari_sam.engine.embedding_store.StackEmbedder` per image, plane axes and model), the
preview, and the background work: loading a model, embedding the plane on screen, prefetching
its neighbours, decoding prompts, and one long job at a time (propagation, precompute, segment
everything, text search: :meth:`SamSession.start_task`, with progress and cancel). The widget
reads the viewer and shows the results; the session can be driven without one (see
``tests/plugin/test_session.py``).

Work runs through a *runner*, ``runner(fn, args, on_done)``: it calls ``fn(*args)`` off the
calling thread and later ``on_done(result)`` on the calling thread. The widget's runner uses
napari's thread workers (``on_done`` arrives through the Qt event loop); the default
:class:`ThreadRunner` uses plain threads and delivers results when
:meth:`ThreadRunner.process_events` (or :meth:`SamSession.wait`) is called. Worker bodies
return their errors instead of raising.

The plane on screen never waits behind prefetching: asking for its embedding stops the prefetch
and abandons the neighbour being encoded within a fraction of an encoder block (see
:func:`._workers.install_yield_points`), unless that neighbour is the plane asked for.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._runner import ThreadRunner
from ._workers import (
    PrefetchState,
    TaskContext,
    build_model_worker,
    compute_embedding,
    install_yield_points,
    prefetch,
    prepare_snap,
    run_task,
    segment_objects,
    segment_tiled,
)

__all__ = ["DecodeResult", "EmbeddingJob", "Preview", "SamSession", "TaskContext", "ThreadRunner"]

logger = logging.getLogger(__name__)

#: Slices on each side of the current one embedded in the background while the user looks.
PREFETCH_SLICES = 2

Runner = Callable[[Callable, tuple, Callable[[Any], None]], Any]


@dataclass
class Preview:
    """The masks decoded for the prompts of one plane, not yet committed.

    Attributes
    ----------
    image : napari.layers.Image
    plane : napari_sam.plugin._layers.Plane
    masks : list of numpy.ndarray of bool, shape (H, W)
        One per object, in the order of :func:`._layers.assemble_objects`.
    scores : list of float
        SAM's predicted IoU of each mask.
    mask_objects : dict
        ``{label value: digest}`` of the mask-prompt layer's objects used.
    prompts : list of dict
        The prompts of each object (keyword arguments of :meth:`SamPredictor.segment`).
    """

    image: Any
    plane: Any
    masks: list[np.ndarray]
    scores: list[float]
    mask_objects: dict[int, str] = field(default_factory=dict)
    prompts: list[dict] = field(default_factory=list)

    @property
    def label_image(self) -> np.ndarray:
        """The masks as one ``(H, W)`` label image (object ``i`` is ``i + 1``; first one wins)."""
        out = np.zeros(self.plane.shape, dtype=np.uint8)
        for i, mask in enumerate(self.masks):
            out[mask & (out == 0)] = i + 1
        return out

    @property
    def mask(self) -> np.ndarray:
        """Union of all masks, ``(H, W)`` bool."""
        return self.label_image > 0

    @property
    def empty(self) -> bool:
        return not any(m.any() for m in self.masks)


@dataclass
class EmbeddingJob:
    """The embedding of the plane on screen, being computed."""

    key: tuple
    image_uid: Any
    image_name: str
    plane_label: str
    model_token: int
    index: tuple = ()
    cancelled: bool = False


@dataclass
class DecodeResult:
    """What a decode job hands back: ``masks`` (bool ``(H, W)`` each) and ``scores``, or the
    ``error``. ``again``: the prompts changed meanwhile (decode them again); ``stale``: the
    model, embedding or data changed meanwhile (drop it)."""

    masks: list | None
    scores: list | None
    error: BaseException | None = None
    again: bool = False
    stale: bool = False


class SamSession:
    """Model, embeddings, preview and background jobs of the plugin, without a viewer.

    Parameters
    ----------
    runner : callable, optional
        ``runner(fn, args, on_done)`` (see the module docstring); default a :class:`ThreadRunner`.

    Attributes
    ----------
    predictor : SamPredictor or None
    model_name : str or None
    model_token : int
        Bumped by every :meth:`set_model`: keys and jobs of an older model are stale.
    cache : EmbeddingCache
        Embeddings of planes by ``(image id, plane key, model token)``.
    preview : Preview or None
    prefetch_slices : int
        Planes on each side of the one on screen embedded in the background (0: off).
    refine : bool
        Whether masks are redrawn with the model's refiner.
    job : EmbeddingJob or None
        The embedding being computed for the plane on screen.
    generation : int
        Bumped whenever cached embeddings are dropped.
    task : TaskContext or None
        The long job running (progress, cancel), see :meth:`start_task`.
    """

    def __init__(self, runner: Runner | None = None) -> None:
        from ..engine.embedding_cache import EmbeddingCache

        self.runner: Runner = runner if runner is not None else ThreadRunner()
        self.predictor = None
        self.model_name: str | None = None
        self.model_token = 0
        self.cache = EmbeddingCache()
        self.preview: Preview | None = None
        self.prefetch_slices = PREFETCH_SLICES
        self.refine = True
        self.snapper = None  # a SliceSnapper while "snap to objects" is on
        self.zoomer = None  # a SliceZoomer (small objects magnified) for a SAM model
        self.clicks = None  # a ClickMemory (a click refines its object's last mask) likewise
        self.job: EmbeddingJob | None = None
        self.task: TaskContext | None = None
        self.generation = 0
        self.embedding_key: tuple | None = None
        self.model_loading = False
        self.failed: set[tuple] = set()
        self._load_generation = 0
        self._embedders: dict[tuple, Any] = {}
        self._ranges: dict[Any, tuple[float, float] | None] = {}
        self._tiled: dict[tuple, Any] = {}
        self._consumed: dict[tuple, dict[int, str]] = {}
        self._prefetch: PrefetchState | None = None
        self._hooks: list = []
        self._decoding = False
        self._decode_again = False
        self._tiling = False
        self._tiled_again = False

    # -- model -----------------------------------------------------------------------------------

    def set_model(self, model: Any, name: str = "model") -> None:
        """Use ``model`` (a :class:`napari_sam.modeling.Sam`, or a SAM 2 ``Sam2``: see
        :mod:`._sam2`); embeddings of the previous model are dropped."""
        from ..engine.click_memory import ClickMemory
        from ..engine.predictor import SamPredictor
        from ..engine.sam2_predictor import predictor_for
        from ..engine.zoom import SliceZoomer

        for handle in self._hooks:
            handle.remove()
        self.predictor = predictor_for(model, refine=self.refine)
        sam = type(self.predictor) is SamPredictor
        self.zoomer, self.clicks = (SliceZoomer(), ClickMemory()) if sam else (None, None)
        self._hooks = install_yield_points(model)
        self.model_name = name
        self.model_token += 1
        self.embedding_key = None
        self.cache.clear()
        self.drop_embedders()
        self.failed.clear()

    def load_model(self, name: str, checkpoint: str | None, device: str | None,
                   on_done: Callable[[str, BaseException | None, bool], None]) -> None:
        """Build a model in the background and :meth:`set_model` it.

        ``on_done(name, error, applied)`` follows on the runner's thread; the newest request
        wins: an older load, or a load overtaken by a :meth:`set_model`, is not applied.
        """
        self.model_loading = True
        self._load_generation += 1
        ticket = (self._load_generation, self.model_token)
        self.runner(build_model_worker, (name, checkpoint, device),
                    functools.partial(self._model_loaded, name, ticket, on_done))

    def _model_loaded(self, name, ticket, on_done, result) -> None:
        model, error = result
        if ticket[0] != self._load_generation:
            return  # a newer load is running; it reports
        self.model_loading = False
        applied = error is None and ticket[1] == self.model_token
        if applied:
            self.set_model(model, name)
        on_done(name, error, applied)

    def set_refine(self, refine: bool) -> None:
        self.refine = bool(refine)
        if self.predictor is not None:
            self.predictor.refine = self.refine

    # -- embeddings ------------------------------------------------------------------------------

    def embedder(self, uid: Hashable, data: Any, axes: Sequence[int], *, rgb: bool = False,
                 coarsest: Any = None, disk: bool = True):
        """The :class:`~napari_sam.engine.embedding_store.StackEmbedder` (SAM 2: a memory-only
        ``Sam2StackEmbedder``) of image ``uid``'s planes on ``axes`` with the current model.

        ``data`` is the full-resolution array; ``coarsest``, for a pyramid, its smallest level
        (the intensity range of the whole pyramid is estimated from it). With ``disk``,
        embeddings are kept in the zarr store named by the image content and the model.
        """
        from ..engine.sam2_embedder import stack_embedder_for

        key = (uid, tuple(axes), self.model_token)
        embedder = self._embedders.get(key)
        if embedder is None:
            intensity_range = self._ranges.get(uid)
            if intensity_range is None and coarsest is not None:
                from ..engine.preprocess import estimate_intensity_range

                intensity_range = estimate_intensity_range(coarsest)
                self._ranges[uid] = intensity_range
            embedder = stack_embedder_for(
                self.predictor.model, data, axes=tuple(axes), rgb=rgb,
                intensity_range=intensity_range, store="auto" if disk else None,
                model_name=self.model_name,
            )
            self._embedders[key] = embedder
        return embedder

    def intensity_range(self, uid: Hashable) -> tuple[float, float] | None:
        """The normalisation used for image ``uid`` (``None`` until its first embedding)."""
        return self._ranges.get(uid)

    def remember_range(self, uid: Hashable, intensity_range) -> None:
        self._ranges.setdefault(uid, intensity_range)

    def drop_embedders(self, uid: Hashable | None = None) -> None:
        """Forget the embedders (and tiled predictors) of image ``uid`` (``None``: all)."""
        self.stop_prefetch()
        self.generation += 1
        for store in (self._embedders, self._tiled):
            for key in [k for k in store if uid is None or k[0] == uid]:
                del store[key]

    def forget_image(self, uid: Hashable) -> None:
        """Drop everything computed from image ``uid`` (its data changed or it was removed)."""
        self.cache.discard(lambda key: key[0] == uid)
        self.drop_embedders(uid)
        self._ranges.pop(uid, None)
        self.failed = {k for k in self.failed if k[0] != uid}
        if self.embedding_key is not None and self.embedding_key[0] == uid:
            self.embedding_key = None

    def cancel_embedding_of(self, uid: Hashable) -> bool:
        """Discard the running embedding of image ``uid``; whether there was one."""
        job = self.job
        if job is not None and job.image_uid == uid and not job.cancelled:
            job.cancelled = True
            return True
        return False

    def consumed_for(self, source_uid, image_uid, plane_key) -> dict[int, str]:
        """``{label value: digest}`` of the mask-prompt objects already committed on a plane."""
        return self._consumed.setdefault((source_uid, image_uid, plane_key), {})

    def request_embedding(self, job: EmbeddingJob, embedder,
                          on_done: Callable[[EmbeddingJob, BaseException | None], None]) -> bool:
        """Compute the embedding of the plane on screen (``job.index`` of ``embedder``) into
        :attr:`cache` under ``job.key``; ``on_done(job, error)`` follows. ``False`` when another
        embedding is running (ask again when it is done)."""
        if self.job is not None:
            return False
        self.stop_prefetch(keep=job.index)  # the plane on screen goes first
        self.job = job
        self.runner(compute_embedding, (embedder, job.index),
                    functools.partial(self._embedded, job, on_done))
        return True

    def _embedded(self, job, on_done, result) -> None:
        embedding, intensity_range, error = result
        self.job = None
        if job.cancelled or job.model_token != self.model_token:
            error = None  # the image was removed (already reported) or the model replaced
        elif error is not None:
            self.failed.add(job.key)
        else:
            self._ranges[job.image_uid] = intensity_range
            self.cache.put(job.key, embedding)
        on_done(job, error)

    def use_embedding(self, key: tuple, pixels: np.ndarray | None) -> None:
        """Give the predictor the cached embedding ``key`` (``pixels``: the plane, ``(H, W)`` or
        ``(H, W, C)``, for the mask refiner)."""
        if self.embedding_key != key:
            self.predictor.set_embedding(self.cache.get(key), pixels, self._ranges.get(key[0]))
            self.embedding_key = key
            if self.snapper is not None and pixels is not None:  # its objects, in the background
                self.runner(prepare_snap, (self.snapper, self.predictor.model, self.cache.get(key),
                                           pixels, self._ranges.get(key[0])), lambda _: None)

    # -- prefetch ----------------------------------------------------------------------------------

    def start_prefetch(self, embedder, indices: Sequence[tuple]) -> bool:
        """Embed ``indices`` (neighbours of the plane on screen) in the background, while idle."""
        if self._prefetch is not None or self.job is not None or not indices:
            return False
        state = PrefetchState()
        self._prefetch = state
        self.runner(prefetch, (embedder, list(indices), state),
                    functools.partial(self._prefetched, state))
        return True

    def _prefetched(self, state, result) -> None:
        if self._prefetch is state:
            self._prefetch = None

    def stop_prefetch(self, keep: tuple | None = None) -> None:
        """Start no further prefetch; abandon the plane being encoded unless it is ``keep``."""
        state = self._prefetch
        if state is None:
            return
        state.stop.set()
        if keep is None or state.current != tuple(keep):
            state.abort.set()
        self._prefetch = None  # a new one may start; the old one ends at its next check

    @property
    def is_prefetching(self) -> bool:
        return self._prefetch is not None

    # -- decoding ------------------------------------------------------------------------------

    def _ticket(self) -> tuple:
        return (self.generation, self.model_token, self.embedding_key)

    def defer_decode(self, tiled: bool = False) -> bool:
        """Whether a decode (``tiled`` or not) runs; if so, its result comes back with
        ``again`` set (the prompts changed meanwhile)."""
        if tiled and self._tiling:
            self._tiled_again = True
            return True
        if not tiled and self._decoding:
            self._decode_again = True
            return True
        return False

    def decode(self, objects: list[dict], on_done: Callable[[DecodeResult], None]) -> bool:
        """Decode ``objects`` (keyword arguments of :meth:`SamPredictor.segment`) on the plane the
        predictor holds. While a decode runs, ``False``: its result comes back with ``again``."""
        if self._decoding:
            self._decode_again = True
            return False
        self._decoding = True
        self.runner(segment_objects, (self.predictor, objects, self.snapper, self.zoomer,
                                      self.clicks),
                    functools.partial(self._decoded, self._ticket(), on_done))
        return True

    def _decoded(self, ticket, on_done, result) -> None:
        masks, scores, error = result
        self._decoding = False
        again, self._decode_again = self._decode_again, False
        on_done(DecodeResult(masks, scores, error, again, ticket != self._ticket()))

    def decode_tiled(self, key: tuple, make_tiled: Callable[[], Any], objects: list[dict],
                     on_done: Callable[[DecodeResult], None]) -> bool:
        """As :meth:`decode`, over a whole large (or zoomed) plane with the
        :class:`~napari_sam.engine.tiling.TiledPredictor` kept under ``key`` (``make_tiled()``
        builds it in the worker on first use)."""
        if self._tiling:
            self._tiled_again = True
            return False
        self._tiling = True
        tiled = self._tiled.get(key, make_tiled)
        self.runner(segment_tiled, (tiled, objects),
                    functools.partial(self._decoded_tiled, key, self.generation, on_done))
        return True

    def _decoded_tiled(self, key, generation, on_done, result) -> None:
        tiled, masks, scores, error = result
        self._tiling = False
        if tiled is not None and generation == self.generation:
            self._tiled[key] = tiled  # (not if the data or model changed meanwhile)
        elif error is not None:
            self.failed.add(key)
        again, self._tiled_again = self._tiled_again, False
        on_done(DecodeResult(masks, scores, error, again, generation != self.generation))

    def tiled_predictors(self) -> list:
        """The :class:`~napari_sam.engine.tiling.TiledPredictor` s kept (large or zoomed planes)."""
        return list(self._tiled.values())

    # -- long jobs ---------------------------------------------------------------------------------

    def start_task(self, title: str, body: Callable[[TaskContext], Any],
                   on_done: Callable[[Any, bool], None],
                   on_error: Callable[[BaseException], None] | None = None,
                   owner: Any = None) -> TaskContext | None:
        """Run the long job ``body(ctx)`` through the runner, one at a time; then
        ``on_done(result, cancelled)``, or ``on_error(error)`` if it raised. ``owner`` (an image
        id) lets :meth:`cancel_task` stop it with its image. ``None`` while another job runs."""
        if self.task is not None:
            return None
        ctx = self.task = TaskContext(title, owner)
        self.runner(run_task, (body, ctx),
                    functools.partial(self._task_done, ctx, on_done, on_error))
        return ctx

    def _task_done(self, ctx, on_done, on_error, result) -> None:
        value, error = result
        if self.task is ctx:
            self.task = None
        if error is None:
            on_done(value, ctx.cancelled())
        elif on_error is not None:
            on_error(error)

    def cancel_task(self, owner: Any = None) -> TaskContext | None:
        """Ask the long job (with ``owner``: only if it works on it) to stop; it returns what it
        finished. Returns the job so asked, ``None`` if there was none."""
        ctx = self.task
        if ctx is None or ctx.cancelled() or (owner is not None and ctx.owner != owner):
            return None
        ctx.cancel()
        return ctx

    # -- state -------------------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """Whether a model load, an embedding of the plane on screen or a decode is running."""
        return self.model_loading or self.job is not None or self._decoding or self._tiling

    @property
    def decoding(self) -> bool:
        return self._decoding or self._tiling

    def wait(self, timeout: float = 30.0, prefetch: bool = True) -> bool:
        """With a :class:`ThreadRunner`: deliver results until idle, no long job running (and
        done prefetching); whether that happened within ``timeout`` s."""
        end = time.monotonic() + timeout
        process = getattr(self.runner, "process_events", None)
        while self.busy or self.task is not None or (prefetch and self.is_prefetching):
            if time.monotonic() > end:
                return False
            if process is not None:
                process(0.01)
            else:
                time.sleep(0.005)
        return True

    def close(self) -> None:
        """Stop background work (the long job is cancelled) and uninstall the model hooks."""
        self.stop_prefetch()
        self.cancel_task()
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
