"""Propagation through a stack with SAM 2's memory, with :func:`propagate`'s inputs and result.

:func:`~napari_sam.workflows.propagation.propagate` hands SAM 2 models here. The seeds become
prompts of an :class:`~napari_sam.engine.sam2_video.Sam2Tracker` (every seed slice a
conditioning frame); each object is then tracked forward and backward from its first seed,
every slice attending to the object's seeds and its recent slices, so an object's later seeds
(anchors) guide the slices between them instead of restarting a front.

Stopping follows :class:`~napari_sam.workflows.propagation.PropagationParams` where it applies:
beyond an object's outermost seeds a front stops at the first slice where SAM 2's object score
says the object is absent (``"empty"``), whose mask has fewer than ``min_area`` pixels
(``"empty"``) or whose predicted IoU is below ``min_score`` (``"score"``), and after
``max_slices``. Between seeds the object is known to continue: empty slices there are skipped,
not a stop. SAM 2 prompts each slice from its memory, so ``prompt``, ``multimask``,
``decode_window`` and the shape tests of the single-image propagation do not apply.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from ..engine.lru import LRUCache
from ..engine.preprocess import estimate_intensity_range
from ..engine.sam2_predictor import Sam2Embedding
from ..engine.sam2_video import BACKWARD, FORWARD, Sam2Tracker
from .mask_stack import MaskStack, Propagation

if TYPE_CHECKING:  # pragma: no cover
    from ..modeling.sam2 import Sam2
    from .propagation import PropagationParams, Seed

__all__ = ["propagate_sam2"]


def propagate_sam2(
    model: Sam2,
    n_slices: int,
    by_object: dict[int, list[Seed]],
    params: PropagationParams,
    *,
    slice_image: Callable[[int], npt.NDArray] | None,
    progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
    intensity_range: tuple[float, float] | None = None,
    cache: LRUCache | None = None,
    embed: Callable[[int], Sam2Embedding] | None = None,
) -> Propagation:
    """Segment the seeded objects on every slice where they continue, with SAM 2's memory.

    Called by :func:`~napari_sam.workflows.propagation.propagate` for a SAM 2 model, with its
    checked seeds.

    Parameters
    ----------
    model : Sam2
    n_slices : int
        Length of the propagation axis.
    by_object : dict of int to list of Seed
        Each object's seeds in slice order (at most one per slice). A seed's mask is used as
        the prompt only without points and box.
    params : PropagationParams
        ``min_area``, ``min_score`` and ``max_slices`` apply (see the module docstring).
    slice_image : callable
        ``slice_image(i)`` returns slice ``i``, ``(H, W)`` or ``(H, W, 3)`` (required).
    progress, cancelled : callable, optional
        As in :func:`~napari_sam.workflows.propagation.propagate`.
    intensity_range : (float, float), optional
        The stack's intensity range (default: estimated from the first seed slice).
    cache : LRUCache, optional
        Image features per slice (default: the 8 most recent slices).
    embed : callable, optional
        ``embed(i)`` returns slice ``i``'s
        :class:`~napari_sam.engine.sam2_predictor.Sam2Embedding` from the caller's cache (the
        viewer's embedder, computed with ``intensity_range``): the tracker reads its features
        there instead of encoding ``slice_image(i)`` (``cache`` is then unused).

    Returns
    -------
    Propagation
        ``stopped[oid]`` has ``"up"`` (increasing index) and ``"down"`` reasons.
    """
    if slice_image is None:
        raise ValueError("propagating with a SAM 2 model needs slice_image=")
    n_slices = int(n_slices)
    first_seed = min(int(g[0].index) for g in by_object.values())
    if intensity_range is None:
        intensity_range = estimate_intensity_range(np.asarray(slice_image(first_seed)))
    if embed is not None:
        cache = _EmbedFeatures(embed)
    tracker = Sam2Tracker(model, n_slices, slice_image, intensity_range=intensity_range,
                          cache=cache)
    if embed is not None:  # the tracker learns the slice shape from the slices it encodes
        tracker.shape_hw = tuple(int(v) for v in cache.embedding(first_seed).original_size)
    result = Propagation(masks={oid: MaskStack() for oid in by_object}, complete=False,
                         scores={oid: {} for oid in by_object},
                         stopped={oid: {} for oid in by_object})
    lo = {oid: int(g[0].index) for oid, g in by_object.items()}
    hi = {oid: int(g[-1].index) for oid, g in by_object.items()}
    reach = n_slices if params.max_slices is None else int(params.max_slices)
    total = sum(min(n_slices - 1, hi[o] + reach) - lo[o] + 1 + min(lo[o], reach) for o in lo)
    done = 0

    def tick(k: int) -> None:
        nonlocal done
        done += k
        if progress is not None:
            progress(min(done, total), total)

    def is_cancelled() -> bool:
        return cancelled is not None and bool(cancelled())

    for oid, group in by_object.items():
        for s in group:
            if is_cancelled():
                return _finish(result, False)
            has_prompt = any(v is not None and np.size(v) > 0 for v in (s.points, s.box))
            logits = tracker.add_prompt(
                oid, int(s.index),
                points=s.points if has_prompt else None,
                labels=s.labels if has_prompt else None,
                box=s.box if has_prompt else None,
                mask=None if has_prompt else s.mask,
            )
            mask = logits > 0
            if not has_prompt:  # an existing annotation is kept as it is
                mask, score = np.asarray(s.mask) != 0, float("inf")
            else:
                score = float("nan")  # the predicted IoU, filled in when tracking passes here
            result.masks[oid][int(s.index)] = mask
            result.scores[oid][int(s.index)] = score

    alive = {(oid, d): True for oid in by_object for d in (FORWARD, BACKWARD)}

    def objects(index: int, direction: str) -> list[int]:
        up = direction == FORWARD
        chosen = []
        for oid in by_object:
            if not alive[(oid, direction)]:
                continue
            if (index < lo[oid]) if up else (index > lo[oid]):
                continue  # before the object's first seed in this direction
            beyond = index - hi[oid] if up else lo[oid] - index
            if beyond > reach:
                alive[(oid, direction)] = False
                result.stopped[oid]["up" if up else "down"] = "max_slices"
                continue
            chosen.append(oid)
        return chosen

    for tracked in tracker.propagate(objects=objects):
        up = tracked.direction == FORWARD
        for oid, logits in tracked.logits.items():
            i = tracked.index
            if oid in tracked.prompted:
                if result.scores[oid].get(i) != float("inf"):
                    result.scores[oid][i] = tracked.ious[oid]
                continue
            mask = logits > 0
            outer = i > hi[oid] if up else i < lo[oid]
            reason = None
            if tracked.object_scores[oid] <= 0 or int(mask.sum()) < params.min_area:
                reason = "empty"
            elif outer and tracked.ious[oid] < params.min_score:
                reason = "score"
            if reason is not None and outer:
                alive[(oid, tracked.direction)] = False
                result.stopped[oid]["up" if up else "down"] = reason
                continue
            if reason is None:
                result.masks[oid][i] = mask
                result.scores[oid][i] = tracked.ious[oid]
        tick(len(tracked.logits))
        if is_cancelled() or not any(alive.values()):
            break
    else:
        for oid in by_object:
            result.stopped[oid].setdefault("up", "end of stack")
            result.stopped[oid].setdefault("down", "end of stack")
        return _finish(result, True)
    if any(alive.values()) and is_cancelled():
        return _finish(result, False)
    for oid in by_object:
        result.stopped[oid].setdefault("up", "end of stack")
        result.stopped[oid].setdefault("down", "end of stack")
    return _finish(result, True)


class _EmbedFeatures:
    """A :class:`Sam2Tracker` feature cache read through a caller's ``embed(i)`` (which caches
    and computes on its own)."""

    def __init__(self, embed: Callable[[int], Sam2Embedding]) -> None:
        self.embed = embed

    def embedding(self, index: int) -> Sam2Embedding:
        emb = self.embed(int(index))
        if not isinstance(emb, Sam2Embedding):
            raise TypeError(f"embed({index}) gave a {type(emb).__name__}: propagating with a "
                            "SAM 2 model needs Sam2Embedding s (or embed=None)")
        return emb

    def get(self, index: int):
        return self.embedding(index).features

    def put(self, index: int, features) -> None:
        pass  # embed() keeps what it computes


def _finish(result: Propagation, complete: bool) -> Propagation:
    result.complete = complete
    if not complete:
        for stopped in result.stopped.values():
            stopped.setdefault("up", "cancelled")
            stopped.setdefault("down", "cancelled")
    return result
