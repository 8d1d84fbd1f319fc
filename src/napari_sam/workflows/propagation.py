"""Propagate objects from prompted slices to their neighbours along an axis (z or t), headless.

A 3D stack or a time-lapse is a sequence of 2D slices along one axis. The user prompts an object
on one slice (a *seed*); the object's mask there prompts the next slice, that slice's mask the one
after, and so on in both directions until the evidence says the object has ended. Several
objects advance together: on each slice all of them are decoded in one batched call against one
embedding. Seeds of the same object on further slices are *anchors*: between two anchors the gap
is filled from both ends, beyond them propagation runs outward.

Slices are ``(H, W)`` (or ``(H, W, 3)``); coordinates are napari's ``(row, col)``; boxes
``(row0, col0, row1, col1)``. Nothing here imports Qt or napari.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import torch
from scipy import ndimage

from ..engine.decoding import (
    decode_low_res_windowed,
    stability_scores,
    upscale_masks,
)
from ..engine.masks import bounding_box, farthest_point, mask_iou
from ..engine.postprocess import keep_prompted_pieces
from ..engine.predictor import ImageEmbedding, SamPredictor
from ..modeling.sam2 import Sam2
from .mask_stack import MaskStack, Propagation
from .outline import contrast, gray, half_max_outlines
from .sam2_propagation import propagate_sam2

if TYPE_CHECKING:  # pragma: no cover
    from ..modeling import Sam

__all__ = [
    "PROMPT_PARTS",
    "MaskStack",
    "Propagation",
    "PropagationParams",
    "Seed",
    "propagate",
]

#: What the previous slice's mask can give the next slice as a prompt.
PROMPT_PARTS = ("mask", "box", "points")

#: Objects decoded per call. SAM's decoder runs over the whole embedding once per object, and
#: on a CPU larger batches were slower per object (memory-bound; benchmarks/
#: bench_propagation_automatic.py: 30 ms per object up to 4, 38 ms at 8, 48 ms at 16).
DECODE_CHUNK = 4
MIN_SEED_AREA = 10  #: a one-click seed: the best-scoring candidate of this many px at least


@dataclass
class Seed:
    """The prompts of one object on one slice: where propagation starts (an anchor).

    Attributes
    ----------
    object_id : int
        The object the prompts belong to (> 0). Several seeds with the same id on different
        slices are anchors of one object.
    index : int
        Slice index along the propagation axis.
    points : array, shape (N, 2), optional
        ``(row, col)`` in slice pixels.
    labels : array, shape (N,), optional
        1 positive, 0 negative (default: all positive).
    box : array, shape (4,), optional
        ``(row0, col0, row1, col1)``.
    mask : array, shape (H, W), optional
        A mask of the object on this slice. Alone it is taken as it is (an existing annotation);
        with points or a box it is a dense prompt to refine.
    """

    object_id: int
    index: int
    points: npt.NDArray | None = None
    labels: npt.NDArray | None = None
    box: npt.NDArray | None = None
    mask: npt.NDArray | None = None


@dataclass
class PropagationParams:
    """How the next slice is prompted and when an object is considered to have ended.

    The stopping tests apply beyond the outermost anchors of an object; between two anchors the
    object is known to continue, so only an empty mask stops a front there (and the front from
    the other anchor then fills the rest of the gap).

    Attributes
    ----------
    prompt : tuple of {"mask", "box", "points"}
        What the previous slice's result gives the next slice: its low-resolution logits as the
        dense prompt, its bounding box (grown by ``box_margin``), and/or a positive point at its
        deepest interior pixel. The default (points, with the negative points of
        ``negative_points``) was the best measured with the v0.4 default model on held-out
        synthetic tuning stacks; mask + points was with earlier models (docs/propagation.md).
    box_margin : float
        The box of the previous mask grows by this fraction of its side on every side (plus one
        pixel), so that a growing object is not cut by its box.
    multimask : bool or None
        Decode SAM's three candidate masks and keep the one that best continues the previous
        slice's mask (highest IoU with it). None: only when the prompt is a lone point (the
        ambiguous case); False: always the single-output mask.
    negative_points : bool
        With ``"points"``: add a negative point at the deepest pixel of every other object
        decoded on the same slice (keeps touching objects apart).
    min_score : float
        Stop when the model's predicted IoU of the new mask is below this.
    min_stability : float
        Stop when the stability score (IoU of the mask thresholded at logit ``+stability_offset``
        and at ``-stability_offset``) is below this; 0 (default since v0.13): off, as the v0.13
        model's soft edges on blurred objects (stability < 0.3 at mask IoU 0.9) stopped it.
    stability_offset : float
        Logit offset of the stability score.
    max_growth : float
        Stop when the mask's area grows by more than this factor from the previous slice (the
        mask has leaked into a neighbour or the background).
    min_overlap : float
        Stop when the new mask's overlap with the previous one, ``|new & prev| / min(|new|,
        |prev|)``, is below this (the mask has jumped to another object).
    min_area : int
        Stop when the new mask has fewer pixels (the object has ended).
    max_regrowth : float or None
        Stop when, after shrinking (by 10 % or more from its largest area in this direction),
        the mask grows again by more than this factor over its smallest area since: a convex
        object (a nucleus along z) does not, but the out-of-focus light beyond its end does.
        None turns the test off (for time-lapses, where cells may shrink and grow).
    min_contrast : float
        Only when :func:`propagate` is given the slices (``slice_image``; ``propagate_volume``
        does): stop when the image contrast of the new mask (mean inside minus mean in a 3 px
        band around it) falls below this fraction of the contrast at the anchor. 0 turns it off.
    max_slices : int or None
        Propagate at most this many slices beyond the outermost anchors in each direction.
    decode_window : float
        Decode each object against a window of the image embedding around its previous mask,
        this many times the mask's box side (at least 16 tokens; 0: the whole grid), with
        :func:`decode_low_res_windowed` (several times faster; masks reaching the window's
        edge, and objects scoring below ``min_score``, are decoded again on the whole grid).
    max_shift : float or None
        Once a front has shrunk from its largest area (past the object's widest section, where
        a nucleus's outline only moves inwards from slice to slice), keep only the part of each
        new mask within this many pixels of the previous slice's mask: ragged edges and
        leaks into touching neighbours are cut back. A front still growing (from a seed near
        the object's end towards its middle) is not limited. None (the default: the gain
        measured on held-out stacks was within noise, docs/propagation.md): never limit. Leave
        it None for time-lapses, where cells move.
    refine : bool
        Redraw each slice's masks with the model's mask refiner (when it has one and
        :func:`propagate` is given the slices). Off by default: on the tuning stacks it lowered
        the mean 3D IoU (0.491 -> 0.478; docs/propagation.md), although it improves 2D masks.
    prompted_pieces : bool
        Keep only the connected pieces of each new mask that hold the object's positive point
        (with a box prompt: cut to the box first), as the viewer does
        (:func:`~napari_sam.engine.postprocess.keep_prompted_pieces`): stray pieces on other objects
        are dropped.
    outline : {"half_max", "model"}
        With the slices at hand (SAM models): ``"half_max"`` (default) redraws each object,
        once propagated, where the smoothed stack is ``outline_level`` of its brightness above
        its background, near its masks and click, neighbours split by a watershed
        (:func:`~.outline.half_max_outlines`). ``"model"``: the masks (for time-lapses).
    outline_level : float or None
        In (0, 1): where that outline lies, as a fraction of the object's brightness above its
        background; None (default): by the object's size (0.56 small, 0.44 large).
    """

    prompt: tuple[str, ...] = ("points",)
    box_margin: float = 0.1
    multimask: bool | None = None
    negative_points: bool = True
    min_score: float = 0.5
    min_stability: float = 0.0
    stability_offset: float = 1.0
    max_growth: float = 1.8
    min_overlap: float = 0.5
    min_area: int = 4
    max_regrowth: float | None = 1.25
    min_contrast: float = 0.5
    max_slices: int | None = None
    decode_window: float = 2.5
    max_shift: float | None = None
    refine: bool = False
    prompted_pieces: bool = True
    outline: str = "half_max"
    outline_level: float | None = None

    def __post_init__(self) -> None:
        parts = (self.prompt,) if isinstance(self.prompt, str) else tuple(self.prompt)
        if not parts or any(p not in PROMPT_PARTS for p in parts):
            raise ValueError(
                f"prompt must be a non-empty combination of {PROMPT_PARTS}, got {self.prompt!r}"
            )
        self.prompt = parts
        if self.box_margin < 0:
            raise ValueError(f"box_margin must be >= 0, got {self.box_margin!r}")
        if self.max_growth <= 1:
            raise ValueError(f"max_growth must be > 1, got {self.max_growth!r}")
        for name in ("min_score", "min_stability", "min_overlap"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")
        if self.min_area < 1:
            raise ValueError(f"min_area must be >= 1, got {self.min_area!r}")
        if not 0 <= self.min_contrast <= 1:
            raise ValueError(f"min_contrast must be in [0, 1], got {self.min_contrast!r}")
        if self.max_regrowth is not None and self.max_regrowth <= 1:
            raise ValueError(f"max_regrowth must be > 1 or None, got {self.max_regrowth!r}")
        if self.decode_window < 0:
            raise ValueError(f"decode_window must be >= 0, got {self.decode_window!r}")
        if self.max_slices is not None and self.max_slices < 0:
            raise ValueError(f"max_slices must be >= 0 or None, got {self.max_slices!r}")
        level = self.outline_level
        if self.outline not in ("half_max", "model") or not (level is None or 0 < level < 1):
            raise ValueError(f"outline must be 'half_max' or 'model' and outline_level in "
                             f"(0, 1), got {self.outline!r}, {self.outline_level!r}")
        if self.max_shift is not None and not self.max_shift > 0:
            raise ValueError(f"max_shift must be > 0 or None, got {self.max_shift!r}")


def _box_of(mask: npt.NDArray[np.bool_], margin: float) -> npt.NDArray[np.float64]:
    r0, c0, r1, c1 = bounding_box(mask)
    dr = margin * (r1 - r0 + 1) + 1
    dc = margin * (c1 - c0 + 1) + 1
    h, w = mask.shape
    return np.array(
        [max(r0 - dr, 0), max(c0 - dc, 0), min(r1 + dr, h - 1), min(c1 + dc, w - 1)], float
    )


def _deepest(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.float64]:
    return np.asarray(farthest_point(mask), dtype=np.float64)


# -- propagation -----------------------------------------------------------------------------


@dataclass
class _Front:
    """One object advancing in one direction from one anchor."""

    object_id: int
    direction: int  # +1 up (increasing index), -1 down
    index: int  # the last slice decoded
    limit: int  # the last slice it may reach (inclusive)
    bounded: bool  # between two anchors: no stopping on evidence
    mask: npt.NDArray[np.bool_]
    logits: torch.Tensor  # (1, 4h, 4w)
    alive: bool = True
    reason: str = ""
    peak: int = 0  # largest area so far in this direction
    trough: int = 0  # smallest area since the peak
    contrast0: float | None = None  # image contrast of the anchor mask (with slice images)

    def __post_init__(self) -> None:
        self.peak = self.trough = int(np.count_nonzero(self.mask))
        if not self.mask.any():  # the anchor itself came out empty: nothing to continue
            self.alive, self.reason = False, "empty"
        elif self.index == self.limit:
            self.alive = False


def _check_seeds(seeds: Sequence[Seed], n_slices: int) -> dict[int, list[Seed]]:
    if n_slices < 1:
        raise ValueError(f"n_slices must be >= 1, got {n_slices!r}")
    if len(seeds) == 0:
        raise ValueError("no seeds: give at least one object's prompts on one slice")
    by_object: dict[int, list[Seed]] = {}
    for s in seeds:
        if not isinstance(s, Seed):
            raise TypeError(f"seeds must be Seed objects, got {type(s).__name__}")
        if int(s.object_id) < 1:
            raise ValueError(f"object ids must be >= 1, got {s.object_id!r}")
        if not 0 <= int(s.index) < n_slices:
            raise ValueError(
                f"seed of object {s.object_id} on slice {s.index}: outside 0..{n_slices - 1}"
            )
        if all(v is None or np.size(v) == 0 for v in (s.points, s.box, s.mask)):
            raise ValueError(f"seed of object {s.object_id} on slice {s.index} has no prompt")
        by_object.setdefault(int(s.object_id), []).append(s)
    for oid, group in by_object.items():
        idx = [int(s.index) for s in group]
        if len(set(idx)) != len(idx):
            raise ValueError(f"object {oid} has two seeds on the same slice: merge their prompts")
        group.sort(key=lambda s: int(s.index))
    return by_object


def _seed_mask(
    predictor: SamPredictor, seed: Seed, hw: tuple[int, int]
) -> tuple[npt.NDArray[np.bool_], float, torch.Tensor]:
    has_prompt = any(v is not None and np.size(v) > 0 for v in (seed.points, seed.box))
    if seed.mask is not None and np.size(seed.mask) > 0:
        mask = np.asarray(seed.mask)
        if mask.shape != hw:
            raise ValueError(
                f"seed mask of object {seed.object_id} has shape {mask.shape}, slices are {hw}"
            )
        mask = mask != 0
        if not has_prompt:
            return mask, float("inf"), torch.from_numpy(predictor.mask_to_logits(mask))
    else:
        mask = None
    m, score, logits = predictor.segment(seed.points, seed.labels, seed.box, mask,
                                         min_area=MIN_SEED_AREA)
    return m, score, torch.from_numpy(np.asarray(logits))


def propagate(
    model: Sam,
    embed: Callable[[int], ImageEmbedding],
    n_slices: int,
    seeds: Sequence[Seed],
    *,
    params: PropagationParams | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
    slice_image: Callable[[int], npt.NDArray] | None = None,
    intensity_range: tuple[float, float] | None = None,
) -> Propagation:
    """Segment the seeded objects on every slice where they continue.

    1. Each seed slice is decoded from its prompts (all seeds of a slice against one embedding).
    2. An *upward* sweep visits slices in increasing order and a *downward* sweep in decreasing
       order. On each slice, every object whose front arrives there is decoded in one batched
       call, prompted by its mask on the previous slice (``params.prompt``).
    3. Beyond an object's outermost anchors a front stops at the first slice that fails a test
       of ``params`` (that slice is not kept). Between two anchors the gap is split in the
       middle: the lower anchor fills the lower half, the upper anchor the rest (each slice is
       prompted from its nearest anchor, which drifts least); if one front dies early, the other
       takes over the remainder.

    Parameters
    ----------
    model : Sam or Sam2
        A SAM 2 model is tracked with its memory (:func:`propagate_sam2`, needs ``slice_image``;
        ``embed`` is ``None`` or gives each slice's ``Sam2Embedding``).
    embed : callable
        ``embed(i)`` returns the :class:`ImageEmbedding` of slice ``i``. It is called on the
        worker's thread, at most twice per slice (once per sweep), so pass a cached embedder.
    n_slices : int
        Length of the propagation axis.
    seeds : sequence of Seed
        At least one; at most one per object and slice.
    params : PropagationParams, optional
    progress : callable, optional
        ``progress(done, total)`` after every slice visited (total is the most slices the run can
        visit; it may finish earlier when all objects have ended).
    cancelled : callable, optional
        Polled before each slice; when it returns True the run stops and the result (marked
        ``complete=False``) keeps every slice done so far.
    slice_image : callable, optional
        ``slice_image(i)`` returns slice ``i`` itself, ``(H, W)`` or ``(H, W, 3)``. With it the
        contrast test of ``params.min_contrast`` applies (recommended for z-stacks: it stops
        fronts in the out-of-focus light beyond an object's end), with ``params.refine`` the
        model's mask refiner (:class:`napari_sam.modeling.MaskRefiner`) redraws the masks, and
        with ``params.outline`` "half_max" (the default) every object is redrawn at the end.
    intensity_range : (float, float), optional
        The range the embeddings were computed with (for the refiner; default: each slice's).

    Returns
    -------
    Propagation
    """
    params = PropagationParams() if params is None else params
    n_slices = int(n_slices)
    by_object = _check_seeds(seeds, n_slices)
    if isinstance(model, Sam2):  # tracked with SAM 2's memory (embed: None or Sam2Embeddings)
        return propagate_sam2(model, n_slices, by_object, params, slice_image=slice_image,
                              progress=progress, cancelled=cancelled, embed=embed,
                              intensity_range=intensity_range)
    predictor = SamPredictor(model, refine=params.refine)
    result = Propagation(masks={oid: MaskStack() for oid in by_object}, complete=False,
                         scores={oid: {} for oid in by_object},
                         stopped={oid: {} for oid in by_object})

    seed_slices = sorted({int(s.index) for group in by_object.values() for s in group})
    # Plan the fronts (their limits) to know the total work.
    plan_up: set[int] = set()
    plan_down: set[int] = set()
    for group in by_object.values():
        idx = [int(s.index) for s in group]
        for a, b in zip(idx[:-1], idx[1:]):
            plan_up.update(range(a + 1, b))
            plan_down.update(range(a + 1, b))
        reach = n_slices if params.max_slices is None else params.max_slices
        plan_up.update(range(idx[-1] + 1, min(n_slices, idx[-1] + reach + 1)))
        plan_down.update(range(max(0, idx[0] - reach), idx[0]))
    total = len(seed_slices) + len(plan_up) + len(plan_down)
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(min(done, total), total)

    def is_cancelled() -> bool:
        return cancelled is not None and bool(cancelled())

    def finish(complete: bool) -> Propagation:
        result.complete = complete
        if not complete:
            for oid in by_object:
                for key in ("up", "down"):
                    result.stopped[oid].setdefault(key, "cancelled")
        return result

    # 1. seed slices
    seed_state: dict[tuple[int, int], tuple[np.ndarray, torch.Tensor]] = {}
    shape_hw: tuple[int, int] | None = None
    for i in seed_slices:
        if is_cancelled():
            return finish(False)
        emb = embed(i)
        shape_hw = _check_embedding(emb, shape_hw, i)
        _use_slice(predictor, emb, i, slice_image, intensity_range)
        for oid, group in by_object.items():
            for s in group:
                if int(s.index) == i:
                    mask, score, logits = _seed_mask(predictor, s, shape_hw)
                    result.masks[oid][i] = mask
                    result.scores[oid][i] = score
                    seed_state[(oid, i)] = (mask, logits)
        tick()

    # 2. fronts
    up: list[_Front] = []
    down_outer: list[_Front] = []
    between: list[tuple[_Front, int, int]] = []  # upward front, lower anchor, upper anchor
    for oid, group in by_object.items():
        idx = [int(s.index) for s in group]
        reach = n_slices if params.max_slices is None else params.max_slices
        for a, b in zip(idx[:-1], idx[1:]):
            if b - a > 1:
                mask, logits = seed_state[(oid, a)]
                f = _Front(oid, +1, a, a + (b - a) // 2, True, mask, logits)
                up.append(f)
                between.append((f, a, b))
        mask, logits = seed_state[(oid, idx[-1])]
        top = min(n_slices - 1, idx[-1] + reach)
        up.append(_Front(oid, +1, idx[-1], top, False, mask, logits,
                         reason="end of stack" if top == n_slices - 1 else "max_slices"))
        mask, logits = seed_state[(oid, idx[0])]
        bottom = max(0, idx[0] - reach)
        down_outer.append(_Front(oid, -1, idx[0], bottom, False, mask, logits,
                                 reason="end of stack" if bottom == 0 else "max_slices"))

    if not _sweep(predictor, embed, up, range(n_slices), plan_up, params, result, tick,
                  is_cancelled, shape_hw, slice_image, intensity_range):
        return finish(False)

    down = list(down_outer)
    for f_up, a, b in between:
        reached = max((i for i in result.masks[f_up.object_id] if a <= i < b), default=a)
        if b - 1 > reached:
            mask, logits = seed_state[(f_up.object_id, b)]
            down.append(_Front(f_up.object_id, -1, b, reached + 1, True, mask, logits))
    if not _sweep(predictor, embed, down, range(n_slices - 1, -1, -1), plan_down, params, result,
                  tick, is_cancelled, shape_hw, slice_image, intensity_range):
        return finish(False)

    for f in up + down:
        if f.bounded:
            continue
        key = "up" if f.direction > 0 else "down"
        result.stopped[f.object_id][key] = f.reason
    if slice_image is not None and params.outline == "half_max":  # cancel: the model's masks
        half_max_outlines(result, slice_image, n_slices, by_object, level=params.outline_level,
                          cancelled=is_cancelled)
    return finish(not is_cancelled())


def _check_embedding(emb: ImageEmbedding, shape_hw, i: int) -> tuple[int, int]:
    if not isinstance(emb, ImageEmbedding):
        raise TypeError(f"embed({i}) returned {type(emb).__name__}, not an ImageEmbedding")
    hw = tuple(int(v) for v in emb.original_size)
    if shape_hw is not None and hw != shape_hw:
        raise ValueError(f"slice {i} has shape {hw}, the seed slices {shape_hw}")
    return hw


def _use_slice(predictor, emb, i, slice_image, intensity_range) -> None:
    """Decode against slice ``i``'s embedding (with its pixels for the refiner, if known)."""
    predictor.set_embedding(emb, None if slice_image is None else slice_image(i),
                            intensity_range)


def _sweep(predictor, embed, fronts, order, planned, params, result, tick, is_cancelled,
           shape_hw, slice_image=None, intensity_range=None) -> bool:
    """Advance ``fronts`` slice by slice in ``order``; False if cancelled."""
    remaining = [i for i in order if i in planned]
    for pos, i in enumerate(remaining):
        if not any(f.alive for f in fronts):  # every object has ended: skip the rest
            for _ in remaining[pos:]:
                tick()
            return True
        active = [f for f in fronts if f.alive and f.index + f.direction == i]
        if active:
            if is_cancelled():
                return False
            emb = embed(i)
            _check_embedding(emb, shape_hw, i)
            _use_slice(predictor, emb, i, slice_image, intensity_range)
            _advance(predictor, emb, active, i, params, result, slice_image)
        tick()
    return True


def _prompt_points(fronts: list[_Front], boxes, params: PropagationParams):
    """Points ``(B, N, 2)`` and labels ``(B, N)`` for the fronts decoded together.

    Each object gets a positive point at the deepest pixel of its previous mask (with
    ``"points"`` in the prompt) and, with ``negative_points``, a negative point at the deepest
    pixel of every other object whose point falls inside its box (or near it without a box);
    rows are padded with label -1.
    """
    with_own = "points" in params.prompt
    use_neg = params.negative_points and len(fronts) > 1
    if not with_own and not use_neg:
        return None, None
    centres = np.stack([_deepest(f.mask) for f in fronts])
    if boxes is None:
        boxes = np.stack([_box_of(f.mask, max(params.box_margin, 0.5)) for f in fronts])
    rows = []
    for b, f in enumerate(fronts):
        pts, labs = ([centres[b]], [1]) if with_own else ([], [])
        if use_neg:
            r0, c0, r1, c1 = boxes[b]
            for j, g in enumerate(fronts):
                if g.object_id == f.object_id:
                    continue
                r, c = centres[j]
                if r0 <= r <= r1 and c0 <= c <= c1 and not f.mask[int(r), int(c)]:
                    pts.append(centres[j])
                    labs.append(0)
        rows.append((pts, labs))
    n = max(len(p) for p, _ in rows)
    if n == 0:
        return None, None
    points = np.zeros((len(fronts), n, 2))
    labels = np.full((len(fronts), n), -1, dtype=np.int64)
    for b, (pts, labs) in enumerate(rows):
        if pts:
            points[b, : len(pts)] = pts
            labels[b, : len(labs)] = labs
    return points, labels


def _advance(predictor, emb, fronts: list[_Front], i: int, params: PropagationParams,
             result: Propagation, slice_image=None) -> None:
    """Decode the fronts arriving on slice ``i`` together and apply the stopping tests."""
    parts = params.prompt
    boxes = (
        np.stack([_box_of(f.mask, params.box_margin) for f in fronts]) if "box" in parts else None
    )
    points, labels = _prompt_points(fronts, boxes, params)
    masks_in = torch.stack([f.logits for f in fronts]) if "mask" in parts else None
    if params.multimask is None:  # a lone point is ambiguous: decode the three candidates
        multimask = (
            boxes is None and masks_in is None and points is not None and points.shape[1] == 1
        )
    else:
        multimask = bool(params.multimask)
    chunks = []
    for c in range(0, len(fronts), DECODE_CHUNK):
        part = slice(c, c + DECODE_CHUNK)
        centres, window = _windows(fronts[part], emb, params.decode_window)
        chunks.append(decode_low_res_windowed(
            predictor, emb,
            None if points is None else points[part], None if labels is None else labels[part],
            None if boxes is None else boxes[part], None if masks_in is None else masks_in[part],
            multimask, centres, window, min(params.min_score, 0.5), params.min_score,
        ))
    low_res, iou = (torch.cat(outs) for outs in zip(*chunks, strict=True))
    image = None
    for b, f in enumerate(fronts):
        if b % DECODE_CHUNK == 0:  # whole-slice masks of a few fronts at a time (memory)
            full = upscale_masks(predictor, low_res[b:b + DECODE_CHUNK], emb)  # (B', K, H, W)
        candidates = full[b % DECODE_CHUNK]
        if multimask:  # the candidate that best continues the previous mask
            k = int(np.argmax([mask_iou(m, f.mask) for m in candidates]))
        else:
            k = 0
        mask = candidates[k]
        if params.prompted_pieces:
            mask = keep_prompted_pieces(
                mask, None if points is None else points[b], None if labels is None else labels[b],
                None if boxes is None else boxes[b])
        if params.max_shift is not None and f.trough < f.peak:  # past its largest section
            mask = _near(mask, f.mask, params.max_shift)
        score = float(iou[b, k])
        # only where its test is on: over all candidates it was ~1/6 of a slice's decoding
        stab = stability_scores(low_res[b, k], params.stability_offset) if params.min_stability else 1
        reason = _stop_reason(mask, f, score, float(stab), params)
        if not reason and slice_image is not None and not f.bounded and params.min_contrast > 0:
            if f.contrast0 is None:
                f.contrast0 = contrast(gray(slice_image(f.index)), f.mask)
            if f.contrast0 > 0:
                if image is None:
                    image = gray(slice_image(i))
                if contrast(image, mask) < params.min_contrast * f.contrast0:
                    reason = "contrast"
        if reason:
            f.alive, f.reason = False, reason
            continue
        result.masks[f.object_id][i] = mask
        result.scores[f.object_id][i] = score
        f.mask, f.logits, f.index = mask, low_res[b, k][None].cpu(), i
        area = int(np.count_nonzero(mask))
        if area > f.peak:
            f.peak = f.trough = area
        else:
            f.trough = min(f.trough, area)
        if f.index == f.limit:
            f.alive = False
            if f.bounded:
                f.reason = "anchor"


def _near(mask: np.ndarray, prev: np.ndarray, distance: float) -> np.ndarray:
    """The pixels of ``mask`` within ``distance`` pixels of ``prev`` (Euclidean)."""
    if not prev.any():
        return mask
    pad = int(np.ceil(distance)) + 1  # the distances are computed in prev's padded box
    r0, c0, r1, c1 = bounding_box(prev)
    window = (slice(max(r0 - pad, 0), r1 + pad + 1), slice(max(c0 - pad, 0), c1 + pad + 1))
    near = np.zeros_like(mask)
    near[window] = ndimage.distance_transform_edt(~prev[window]) <= distance
    return mask & near


def _windows(fronts: list[_Front], emb: ImageEmbedding, scale: float):
    """Window centres ``(B, 2)`` (the previous masks' box centres) and one window side in
    tokens for the fronts decoded together: ``scale`` times the largest box side, at least 16
    tokens; 0 (the whole grid) when ``scale`` is 0."""
    boxes = np.stack([_box_of(f.mask, 0.0) for f in fronts])
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    if not scale:
        return centres, 0
    side = float(np.max(boxes[:, 2:] - boxes[:, :2]))
    geometry = emb.geometry
    h = emb.features.shape[-2]
    token_px = geometry.img_size / h / geometry.scale  # slice pixels per token
    return centres, max(16, int(np.ceil(scale * side / token_px)))


def _stop_reason(mask, front: _Front, score, stability, params: PropagationParams) -> str:
    prev = front.mask
    area = int(np.count_nonzero(mask))
    if area < params.min_area:
        return "empty"
    if front.bounded:
        return ""
    if score < params.min_score:
        return "score"
    if stability < params.min_stability:
        return "stability"
    prev_area = int(np.count_nonzero(prev))
    if area > params.max_growth * prev_area:
        return "growth"
    inter = int(np.count_nonzero(mask & prev))
    if inter < params.min_overlap * min(area, prev_area):
        return "overlap"
    if (
        params.max_regrowth is not None
        and front.trough <= 0.9 * front.peak
        and area > params.max_regrowth * front.trough
    ):
        return "regrowth"
    return ""


# -- whole volumes -----------------------------------------------------------------------------
