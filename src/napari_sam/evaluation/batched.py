"""The click protocol on many objects of one slice at once.

:func:`evaluate_objects` runs the protocol of :func:`napari_sam.evaluation.interactive.evaluate_object`
round by round: every object's first prompt in one batched decoding, then every object's second
click, and so on. Each round decodes once per object for both the kept mask and, where the
oracle is scored, the candidates (:func:`napari_sam.engine.every_output.predict_every_output`),
where the object-by-object path calls ``predict`` twice; rounds without the oracle upsample and
refine the kept mask alone. The clicks and scores are the object-by-object
path's (one :class:`~napari_sam.evaluation.clicks.ClickSession` per object); the masks are the
same up to float rounding of batched arithmetic, which can flip a pixel at a mask's edge.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from itertools import islice
from typing import Any

import numpy as np
import numpy.typing as npt

from .clicks import ClickSession, ObjectEvaluation, check_protocol

__all__ = ["batched_decoder", "evaluate_objects"]

#: Slice pixels of the masks decoded in one round (objects x outputs x H x W): bounds the
#: memory of a round (the predictor holds float32 logits of as many pixels).
ROUND_PIXELS = 2**25
#: Most objects decoded in one round.
MAX_OBJECTS = 64


def batched_decoder(predictor: Any) -> Callable | None:
    """The batched decoding of ``predictor`` (``predict_every_output(points, labels, boxes,
    mask_input, origins, single_output, candidates)``), or None if it has none.

    A :class:`~napari_sam.engine.zoom.ZoomPredictor` has one; a plain
    :class:`~napari_sam.engine.predictor.SamPredictor` gets one from
    :func:`~napari_sam.engine.every_output.predict_every_output`. Anything else (a subclass with
    its own ``predict``, a stand-in) is evaluated object by object.
    """
    method = getattr(predictor, "predict_every_output", None)
    if method is not None:
        return method
    if "napari_sam.engine.predictor" not in sys.modules:  # then it cannot be a SamPredictor
        return None
    from ..engine.predictor import SamPredictor

    if type(predictor) is not SamPredictor:
        return None
    from ..engine.every_output import predict_every_output

    def decode(points, labels, boxes, mask_input, origins, single_output, candidates=True):
        out = predict_every_output(predictor, points, labels, boxes, mask_input, single_output,
                                   candidates)
        return (*out, np.zeros((len(out[0]), 2), dtype=np.int64))

    return decode


def objects_per_round(shape_hw: tuple[int, int]) -> int:
    """How many objects of an ``(H, W)`` slice one round decodes (see :data:`ROUND_PIXELS`)."""
    return int(max(1, min(MAX_OBJECTS, ROUND_PIXELS // (4 * shape_hw[0] * shape_hw[1]))))


def evaluate_objects(
    decode: Callable,
    gt_masks: Iterable[npt.ArrayLike],
    prompt: str = "point",
    clicks: int = 1,
    raw: bool = False,
    batch_size: int | None = None,
    progress: Callable[[], None] | None = None,
    oracle: str = "first",
    finish: Callable | None = None,
    to_logits: Callable | None = None,
) -> list[ObjectEvaluation]:
    """Run the click protocol on objects of the slice currently set, a batch at a time.

    Parameters
    ----------
    decode : callable
        :func:`batched_decoder` of the predictor that holds the slice.
    gt_masks : iterable of array-like, shape (H, W)
        The objects' ground truths (non-empty), consumed a batch at a time.
    prompt, clicks, raw, oracle, finish, to_logits
        As in :class:`~napari_sam.evaluation.clicks.ClickSession`.
    batch_size : int, optional
        Objects decoded together (default :func:`objects_per_round` of the slice).
    progress : callable, optional
        Called with no argument after each object.

    Returns
    -------
    list of ObjectEvaluation
        In the order of ``gt_masks``.
    """
    check_protocol(prompt, clicks, oracle)
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    masks = iter(gt_masks)
    results: list[ObjectEvaluation] = []
    while True:
        first = next(masks, None)
        if first is None:
            return results
        first = np.asarray(first)
        size = batch_size or objects_per_round(first.shape[:2])
        sessions = [ClickSession(m, prompt, clicks, raw, oracle, finish, to_logits)
                    for m in (first, *islice(masks, size - 1))]
        _run_rounds(decode, sessions)
        for session in sessions:
            results.append(session.result())
            if progress is not None:
                progress()


def _run_rounds(decode: Callable, sessions: list[ClickSession]) -> None:
    """Decode all sessions' clicks round by round until every session is done."""
    origins = None  # each object's frame, as the decoder returned it
    while True:
        for session in sessions:
            session.advance()
        active = [i for i, s in enumerate(sessions) if not s.done]
        if not active:
            return
        prompts = [sessions[i].prompts() for i in active]  # all at the same click
        pts = None if prompts[0][0] is None else np.stack([p[0] for p in prompts])
        labs = None if prompts[0][1] is None else np.stack([p[1] for p in prompts])
        boxes = None if prompts[0][2] is None else np.asarray([p[2] for p in prompts],
                                                              dtype=np.float64)
        later = prompts[0][3] is not None
        mask_input = np.stack([p[3] for p in prompts]) if later else None
        ambiguous = sessions[active[0]].ambiguous
        candidates = sessions[active[0]].wants_candidates
        masks, scores, logits, where = decode(pts, labs, boxes, mask_input,
                                              origins[active] if later else None,
                                              not ambiguous, candidates)
        for j, i in enumerate(active):
            if ambiguous:
                sessions[i].record(masks[j], scores[j], logits[j], frame=where[j])
            elif not candidates:  # the single output alone (no oracle after the first prompt)
                sessions[i].record([], [], [], masks[j, 0], logits[j, 0], frame=where[j])
            else:
                sessions[i].record(masks[j, 1:], scores[j, 1:], logits[j, 1:],
                                   masks[j, 0], logits[j, 0], frame=where[j])
        if origins is None:
            origins = np.zeros((len(sessions), *np.shape(where)[1:]), dtype=np.int64)
        origins[active] = where
