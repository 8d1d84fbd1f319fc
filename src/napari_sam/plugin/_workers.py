"""Worker bodies the session starts: model loading, embeddings, prefetch, decoding and the long
jobs (:func:`run_task`), all off the GUI thread. Each returns its error instead of raising it,
for one notification."""

from __future__ import annotations

import functools
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..engine.tiling import is_large

__all__ = [
    "PrefetchCancelled",
    "PrefetchState",
    "TaskContext",
    "build_model_worker",
    "compute_embedding",
    "install_yield_points",
    "prefetch",
    "run_task",
    "segment_objects",
    "segment_tiled",
    "tiled_predictor",
]

logger = logging.getLogger(__name__)


def _segment_each(segment, objects):
    """``segment(**obj)`` for every object: ``(masks, scores)``, bool masks and float scores
    (whatever else ``segment`` returns after the mask and score is dropped)."""
    masks, scores = [], []
    for obj in objects:
        mask, score = segment(**obj)[:2]
        masks.append(np.asarray(mask, dtype=bool))
        scores.append(float(score))
    return masks, scores


def segment_objects(predictor, objects, snapper=None, zoomer=None, memory=None):
    """Worker body: one mask per object of the slice the predictor holds, small objects
    decoded magnified by ``zoomer`` (a :class:`~napari_sam.engine.zoom.SliceZoomer`), a click
    added to an object decoded with its previous logits from ``memory`` (a
    :class:`~napari_sam.engine.click_memory.ClickMemory`, as SAM's protocol does), the
    masks snapped to the slice's objects by ``snapper`` (a
    :class:`~napari_sam.workflows.snap.SliceSnapper`), each if given, and a click's new mask
    kept near the click (:meth:`ClickMemory.settle`; the mask shown prompts the next click).

    Returns ``(masks, scores, error)``; a failure is returned, not raised, so the GUI thread
    reports it.
    """
    try:
        if memory is not None:
            segment = functools.partial(_segment_refining, predictor, zoomer, memory)
        elif zoomer is not None:
            segment = functools.partial(zoomer.segment, predictor)
        else:
            segment = predictor.segment
        masks, scores = _segment_each(segment, objects)
        if snapper is not None:
            masks = [snapper.snap(predictor, m, **obj) for m, obj in zip(masks, objects)]
        if memory is not None:  # a click changes its object's mask near the click
            masks = [memory.settle(predictor.embedding, obj, m) for m, obj in zip(masks, objects)]
        return masks, scores, None
    except Exception as exc:
        logger.exception("decoding the prompts failed")
        return None, None, exc


def _segment_refining(predictor, zoomer, memory, **obj):
    """One object's mask, with the mask shown after its previous click as the mask prompt
    when a click was added to it (``memory``): on the whole slice, or a small object in its
    magnified crop (``zoomer``; the zoom is decided per decode)."""
    previous = memory.mask_prompt(predictor.embedding, obj)
    prompt = dict(obj) if previous is None else {**obj, "mask_input": previous}
    if zoomer is not None and zoomer.zooms(predictor, obj.get("points"), obj.get("labels"),
                                           obj.get("box")):
        out = zoomer.segment(predictor, **prompt)
        memory.remember(predictor.embedding, obj, previous, None)  # the crop's logits: not kept
        return out
    out = predictor.segment(**prompt)
    memory.remember(predictor.embedding, obj, previous, out[2] if len(out) > 2 else None)
    return out


def prepare_snap(snapper, model, embedding, pixels, intensity_range) -> None:
    """Worker body: a slice's objects for "snap to objects", made before its first click
    (:meth:`~napari_sam.workflows.snap.SliceSnapper.prepare`). A failure is logged: the first
    click then makes them again and reports its error."""
    try:
        snapper.prepare(model, embedding, pixels, intensity_range)
    except Exception:
        logger.exception("finding the slice's objects for snapping failed")


def segment_tiled(tiled, objects):
    """Worker body: one mask per object over a whole large plane (tiles embedded on demand).

    ``tiled`` is a TiledPredictor, or a callable building one (first use of a plane).
    Returns ``(tiled, masks, scores, error)``.
    """
    try:
        if callable(tiled) and not hasattr(tiled, "segment"):
            tiled = tiled()
        return (tiled, *_segment_each(tiled.segment, objects), None)
    except Exception as exc:
        logger.exception("decoding in tiles failed")
        return None, None, None, exc


def compute_embedding(embedder, index):
    """Worker body: the embedding of one plane (memory, disk store, or the encoder).

    Returns ``(embedding, intensity_range, error)``; errors are returned, not raised, so that
    the GUI thread reports them as one notification.
    """
    try:
        embedding = embedder.get(index)
        return embedding, embedder.intensity_range, None
    except Exception as exc:
        logger.exception("computing the SAM embedding failed")
        return None, None, exc


def tiled_predictor(cls, model, data, indexer, zoom=False, **kwargs):
    """A TiledPredictor on one plane of an nD image (the plane is read into memory).

    With ``zoom``, tiles are :func:`napari_sam.engine.zoom.auto_zoom` times smaller than the plane
    (the model sees small objects magnified), or one tile of the whole plane when its objects
    are large enough (and the plane is not large).
    """
    plane = np.asarray(data[indexer])
    if zoom:
        from ..engine.zoom import auto_zoom

        side = max(plane.shape[:2])
        factor = auto_zoom(plane, model.img_size, kwargs.get("intensity_range"))
        if factor > 1:
            kwargs["tile_shape"] = max(16, int(np.ceil(side / factor)))
            kwargs["overlap"] = kwargs["tile_shape"] // 2
        elif not is_large(plane.shape, model.img_size):
            kwargs["tile_shape"] = side  # one tile: the whole plane
    return cls(model, plane, **kwargs)


class PrefetchCancelled(Exception):
    """Raised inside the image encoder of a prefetch whose plane is no longer wanted."""


@dataclass
class PrefetchState:
    """What a prefetch worker shares with the GUI thread (all fields thread-safe to read).

    Attributes
    ----------
    stop : threading.Event
        Set: start no further plane.
    abort : threading.Event
        Set: abandon the plane being encoded now, at the encoder's next part (it holds the
        embedder's compute lock, which the plane on screen needs).
    current : tuple of int or None
        The plane being embedded now.
    """

    stop: threading.Event = field(default_factory=threading.Event)
    abort: threading.Event = field(default_factory=threading.Event)
    current: tuple | None = None


_local = threading.local()


def _abort_point(module, args) -> None:
    abort = getattr(_local, "abort", None)
    if abort is not None and abort.is_set():
        raise PrefetchCancelled


def install_yield_points(model) -> list:
    """Let prefetch workers abandon an encoding between two parts of ``model``'s image encoder.

    The hooks act only in a thread running :func:`prefetch` whose ``abort`` is set: other
    encodings (the slice on screen, jobs, tests) never see them. Returns the hook handles
    (``handle.remove()`` uninstalls).
    """
    encoder = getattr(model, "image_encoder", None)
    if encoder is None:
        return []
    # each block and each of its parts (norms, attention, MLP): a default-model block is a
    # quarter of the encoder, its parts a sixteenth
    parts = [m for name, m in encoder.named_modules()
             if re.search(r"blocks\.\d+(\.[^.]+)?$", name) or name == "neck"]
    return [m.register_forward_pre_hook(_abort_point) for m in parts or [encoder]]


def prefetch(embedder, indices, state: PrefetchState) -> int:
    """Worker body: embed the planes ``indices`` not stored yet, until ``state.stop`` is set.

    With :func:`install_yield_points` on the model, setting ``state.abort`` abandons the plane
    being encoded within one part of an encoder block. Returns the number of planes computed.
    """
    done = 0
    _local.abort = state.abort
    try:
        for index in indices:
            if state.stop.is_set() or state.abort.is_set():
                break
            state.current = tuple(index)
            try:
                if not embedder.has(index):
                    embedder.get(index)
                    done += 1
            except PrefetchCancelled:
                break
            except Exception:  # best effort; the plane is retried when visited
                logger.debug("prefetching plane %s failed", index, exc_info=True)
                break
    finally:
        _local.abort = None
        state.current = None
    return done


def build_model_worker(name, checkpoint, device):
    try:
        from .. import build_model

        return build_model(name, checkpoint=checkpoint, device=device), None
    except Exception as exc:
        logger.info("loading model %r failed", name, exc_info=True)
        return None, exc


@dataclass
class TaskContext:
    """What the body of a long job receives: report progress, ask whether it was cancelled.

    Every method is safe to call from any thread. The engine's long functions take
    ``progress=ctx.progress, cancelled=ctx.cancelled`` and return what they finished when
    cancelled.
    """

    title: str
    #: What the job works on (the plugin: the image layer's id), so it can be cancelled with it.
    owner: Any = None
    _event: threading.Event = field(default_factory=threading.Event, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _progress: tuple[int, int] = (0, 0)
    _message: str = ""
    started: float = field(default_factory=time.monotonic)

    def progress(self, done: int, total: int, message: str = "") -> None:
        """Record ``done`` of ``total`` units (``total == 0``: unknown)."""
        with self._lock:
            self._progress = (int(done), int(total))
            if message:
                self._message = message

    def cancelled(self) -> bool:
        return self._event.is_set()

    def cancel(self) -> None:
        self._event.set()

    def snapshot(self) -> tuple[int, int, str]:
        """``(done, total, message)`` as last reported."""
        with self._lock:
            return (*self._progress, self._message)


def run_task(body, ctx: TaskContext):
    """Worker body of a long job: ``(body(ctx), None)``, or ``(None, error)`` if it raised."""
    try:
        return body(ctx), None
    except Exception as exc:  # reported on the calling thread
        logger.exception("%s failed", ctx.title)
        return None, exc
