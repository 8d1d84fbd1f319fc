"""Worker bodies the widget starts: model loading, embeddings, prefetch and decoding, all
off the GUI thread. Each returns its error instead of raising it, for one notification."""

from __future__ import annotations

import logging

import numpy as np

from ..engine.tiling import is_large

__all__ = [
    "build_model_worker",
    "compute_embedding",
    "prefetch",
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


def segment_objects(predictor, objects):
    """Worker body: one mask per object of the slice the predictor holds.

    Returns ``(masks, scores, error)``; a failure is returned, not raised, so the GUI thread
    reports it.
    """
    try:
        return (*_segment_each(predictor.segment, objects), None)
    except Exception as exc:
        logger.exception("decoding the prompts failed")
        return None, None, exc


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


def prefetch(embedder, indices, cancelled):
    """Worker body: embed the planes ``indices`` not stored yet, until ``cancelled()``."""
    done = 0
    for index in indices:
        if cancelled():
            break
        try:
            if not embedder.has(index):
                embedder.get(index)
                done += 1
        except Exception:  # prefetching is best effort; the plane is retried when visited
            logger.debug("prefetching plane %s failed", index, exc_info=True)
            break
    return done


def build_model_worker(name, checkpoint, device):
    try:
        from .. import build_model

        return build_model(name, checkpoint=checkpoint, device=device), None
    except Exception as exc:
        logger.info("loading model %r failed", name, exc_info=True)
        return None, exc
