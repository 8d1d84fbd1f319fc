"""SAM 2's memory tracking through the slices of a stack (z or t), headless.

:class:`Sam2Tracker` holds one stack: the user's prompts per object and slice (each prompted
slice is a *conditioning* frame, segmented like SAM without memory), the image features of
recently used slices (an :class:`~napari_sam.engine.lru.LRUCache`, computed lazily), and one
memory bank per object. :meth:`Sam2Tracker.propagate` then tracks every object through the
stack as Meta's ``SAM2VideoPredictor.propagate_in_video`` does: forward from the first
prompted slice to the end, then backward from it to the start, each slice attending to the
conditioning frames, the ``num_maskmem - 1`` previous slices and the object pointers of up to
16 slices. Unlike Meta's predictor, the bank only keeps what later slices of the run can still
read: its size is bounded by the stack's prompts, not by its length.

Slices are ``(H, W)`` or ``(H, W, 3)``; coordinates are napari's ``(row, col)``; boxes
``(row0, col0, row1, col1)``. Nothing here imports Qt or napari.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from ..modeling.sam2 import FrameFeatures, MemoryBank, Sam2
from ..modeling.sam2.memory_select import used_frames
from .lru import LRUCache
from .preprocess import to_rgb_uint8_range

__all__ = ["BACKWARD", "FORWARD", "Sam2Tracker", "TrackedSlice"]

FORWARD, BACKWARD = "forward", "backward"


@dataclass
class TrackedSlice:
    """The result of one slice: per object, logits at the slice's resolution.

    Attributes
    ----------
    index : int
        Slice index.
    direction : str
        ``"forward"`` or ``"backward"``: the pass that produced it.
    logits : dict of int to numpy.ndarray, shape (H, W), float32
        Mask logits per object id (the mask is ``logits > 0``).
    object_scores : dict of int to float
        Object-presence logit per object id (<= 0: the model sees no object here).
    ious : dict of int to float
        The model's predicted IoU of each object's mask.
    prompted : set of int
        The objects for which this slice is a prompted (conditioning) slice.
    """

    index: int
    direction: str
    logits: dict[int, npt.NDArray[np.float32]]
    object_scores: dict[int, float]
    ious: dict[int, float]
    prompted: set[int]


class Sam2Tracker:
    """Track objects through a stack with SAM 2's memory.

    Parameters
    ----------
    model : Sam2
    n_slices : int
        Length of the tracking axis.
    slice_image : callable
        ``slice_image(i)`` returns slice ``i``, ``(H, W)`` or ``(H, W, 3)``; every slice has the
        same shape. Called only for slices whose features are not cached.
    intensity_range : (float, float), optional
        Values mapped to 0 and 255 (pass the stack's range; default: each slice's own).
    cache : LRUCache, optional
        Image features per slice index (:class:`FrameFeatures`); default: the 8 most recent.
    """

    def __init__(
        self,
        model: Sam2,
        n_slices: int,
        slice_image: Callable[[int], npt.ArrayLike],
        *,
        intensity_range: tuple[float, float] | None = None,
        cache: LRUCache | None = None,
    ) -> None:
        if not isinstance(model, Sam2):
            raise TypeError(f"Sam2Tracker needs a SAM 2 model, got {type(model).__name__}")
        if int(n_slices) < 1:
            raise ValueError(f"n_slices must be >= 1, got {n_slices!r}")
        self.model = model
        self.n_slices = int(n_slices)
        self._slice_image = slice_image
        self.intensity_range = intensity_range
        self.cache = LRUCache(max_items=8) if cache is None else cache
        self.shape_hw: tuple[int, int] | None = None
        self._banks: dict[int, MemoryBank] = {}
        self._pending: set[tuple[int, int]] = set()  # (object, slice) without encoded memory

    # ---- inputs -------------------------------------------------------------------------

    @property
    def object_ids(self) -> list[int]:
        """Object ids with at least one prompt, in the order they were added."""
        return list(self._banks)

    def features(self, index: int) -> FrameFeatures:
        """Image features of slice ``index`` (batch of one), computed once while cached."""
        if not 0 <= int(index) < self.n_slices:
            raise ValueError(f"slice {index} outside 0..{self.n_slices - 1}")
        feats = self.cache.get(int(index))
        if feats is None:
            image = np.asarray(self._slice_image(int(index)))
            hw = tuple(int(v) for v in image.shape[:2])
            if self.shape_hw is not None and hw != self.shape_hw:
                raise ValueError(f"slice {index} has shape {hw}, the others {self.shape_hw}")
            self.shape_hw = hw
            rgb = torch.from_numpy(to_rgb_uint8_range(image, self.intensity_range))
            with torch.inference_mode():
                x = self.model.preprocess(rgb.permute(2, 0, 1)[None].to(self.model.device))
                feats = self.model.forward_image(x)
            self.cache.put(int(index), feats)
        return feats

    def set_features(self, index: int, features: FrameFeatures, shape_hw: tuple[int, int]) -> None:
        """Provide slice ``index``'s features (computed elsewhere) for slices of ``shape_hw``."""
        self.shape_hw = (int(shape_hw[0]), int(shape_hw[1]))
        self.cache.put(int(index), features)

    def _to_input(self, rc: npt.ArrayLike) -> torch.Tensor:
        """``(..., 2)`` ``(row, col)`` slice pixels -> ``(..., 2)`` ``(x, y)`` model pixels."""
        h, w = self.shape_hw
        s = self.model.image_size
        rc = np.asarray(rc, dtype=np.float32)
        xy = np.stack([rc[..., 1] * (s / w), rc[..., 0] * (s / h)], axis=-1)
        return torch.from_numpy(xy).to(self.model.device)

    def add_prompt(
        self,
        object_id: int,
        index: int,
        points: npt.ArrayLike | None = None,
        labels: npt.ArrayLike | None = None,
        box: npt.ArrayLike | None = None,
        mask: npt.ArrayLike | None = None,
    ) -> npt.NDArray[np.float32]:
        """Prompt object ``object_id`` on slice ``index`` (replacing its earlier prompts there).

        The slice becomes a conditioning frame of the object: segmented from these prompts
        alone, then remembered by every other slice.

        Parameters
        ----------
        points : array-like, shape (N, 2), optional
            ``(row, col)`` in slice pixels.
        labels : array-like, shape (N,), optional
            1 positive, 0 negative (default: all positive).
        box : array-like, shape (4,), optional
            ``(row0, col0, row1, col1)``.
        mask : array-like, shape (H, W), optional
            A mask of the object, taken as it is (not with points or a box).

        Returns
        -------
        numpy.ndarray, shape (H, W), float32
            The object's logits on this slice.
        """
        oid, index = int(object_id), int(index)
        if oid < 1:
            raise ValueError(f"object ids must be >= 1, got {object_id!r}")
        has_points = points is not None and np.size(points) > 0
        has_box = box is not None and np.size(box) > 0
        has_mask = mask is not None and np.size(mask) > 0
        if has_mask and (has_points or has_box):
            raise ValueError("a mask prompt is taken as it is: give it without points or a box")
        if not (has_points or has_box or has_mask):
            raise ValueError(f"no prompt for object {oid} on slice {index}")
        feats = self.features(index)
        with torch.inference_mode():
            if has_mask:
                m = np.asarray(mask)
                if m.shape != self.shape_hw:
                    raise ValueError(f"mask shape {m.shape} differs from the slices' {self.shape_hw}")
                s = self.model.image_size
                t = torch.from_numpy((m != 0).astype(np.float32))[None, None].to(self.model.device)
                if t.shape[-2:] != (s, s):  # as Meta's add_new_mask
                    t = F.interpolate(t, size=(s, s), mode="bilinear", align_corners=False,
                                      antialias=True)
                t = t >= 0.5
                out = self.model.track_step(feats, index, MemoryBank(), is_init_cond_frame=True,
                                            mask_inputs=t, run_mem_encoder=False)
            else:
                coords = labs = boxes = None
                if has_points:
                    pts = np.asarray(points, dtype=np.float32).reshape(-1, 2)
                    coords = self._to_input(pts)[None]
                    lab = np.ones(len(pts)) if labels is None else np.asarray(labels).reshape(-1)
                    if lab.shape != (len(pts),):
                        raise ValueError(f"{lab.size} labels for {len(pts)} points")
                    labs = torch.as_tensor(lab, dtype=torch.int32, device=self.model.device)[None]
                if has_box:
                    r0, c0, r1, c1 = np.asarray(box, dtype=np.float32).reshape(4)
                    boxes = self._to_input(np.array([[r0, c0], [r1, c1]])).reshape(1, 4)
                coords, labs = self.model.prompt_points(coords, labs, boxes)
                out = self.model.track_step(feats, index, MemoryBank(), is_init_cond_frame=True,
                                            coords=coords, labels=labs, run_mem_encoder=False)
        bank = self._banks.setdefault(oid, MemoryBank())
        bank.cond[index] = out
        bank.non_cond.pop(index, None)
        self._pending.add((oid, index))
        return self._logits_at_slice(out.mask_logits)

    def _logits_at_slice(self, low: torch.Tensor) -> npt.NDArray[np.float32]:
        """``(1, 1, 4h, 4w)`` logits -> ``(H, W)`` float32 at the slice's resolution."""
        up = F.interpolate(low.float(), size=self.shape_hw, mode="bilinear", align_corners=False)
        return up[0, 0].cpu().numpy()

    # ---- tracking -----------------------------------------------------------------------

    def _encode_pending(self) -> None:
        """Encode the memory of prompted slices (after all prompts, as Meta does)."""
        for oid, index in sorted(self._pending):
            out = self._banks[oid].cond.get(index)
            if out is None:
                continue
            feats = self.features(index)
            with torch.inference_mode():
                # the thresholded mask the user saw (Meta: binarize_mask_from_pts_for_mem_enc)
                high = self.model.upsample(out.mask_logits)
                f, pos = self.model.encode_memory(feats.embed, high, out.object_score, True)
            out.features, out.pos = f.to(torch.bfloat16), pos
        self._pending.clear()

    def propagate(
        self,
        *,
        directions: tuple[str, ...] = (FORWARD, BACKWARD),
        start: int | None = None,
        objects: Callable[[int, str], list[int]] | None = None,
    ) -> Iterator[TrackedSlice]:
        """Track every prompted object through the stack, yielding one slice at a time.

        Parameters
        ----------
        directions : tuple of {"forward", "backward"}
            The passes, in order.
        start : int, optional
            First slice of both passes. By default the forward pass starts at the first
            prompted slice of any object and the backward pass at the last object's first
            prompted slice; each object is tracked forward and backward from its own first
            prompted slice (Meta's predictor, from one start for all, tracks an object
            prompted later forward from before its prompts).
        objects : callable, optional
            ``objects(index, direction)`` returns the object ids to track on that slice
            (default: those whose first prompted slice is at or before ``index`` going
            forward, at or after it going backward); a caller stops an object's front by
            leaving it out.

        Yields
        ------
        TrackedSlice
            Slices in processing order (the start slice once per pass).
        """
        if not self._banks:
            raise ValueError("no prompts: add a prompt for at least one object first")
        bad = [d for d in directions if d not in (FORWARD, BACKWARD)]
        if bad:
            raise ValueError(f"directions must be 'forward' or 'backward', got {bad}")
        self._encode_pending()
        for bank in self._banks.values():
            bank.non_cond.clear()  # a fresh run: nothing from an earlier one is read
        first = {oid: min(bank.cond) for oid, bank in self._banks.items()}
        if objects is None:
            def objects(index: int, direction: str) -> list[int]:
                if direction == FORWARD:
                    return [o for o, f in first.items() if f <= index]
                return [o for o, f in first.items() if f >= index]
        plans = []
        for d in directions:
            if d == FORWARD:
                a = min(first.values()) if start is None else int(start)
                plans.append((d, list(range(a, self.n_slices))))
            else:
                a = max(first.values()) if start is None else int(start)
                plans.append((d, list(range(a, -1, -1)) if a > 0 else []))
        for p, (direction, order) in enumerate(plans):
            reverse = direction == BACKWARD
            for k, index in enumerate(order):
                chosen = objects(index, direction)
                yield self._track_slice(index, direction, reverse, chosen)
                self._forget(plans[p:], k + 1)

    def _track_slice(self, index: int, direction: str, reverse: bool, oids: list[int]) -> TrackedSlice:
        result = TrackedSlice(index, direction, {}, {}, {}, set())
        feats = None
        for oid in oids:
            bank = self._banks[oid]
            out = bank.cond.get(index)
            if out is not None:
                result.prompted.add(oid)
            else:
                feats = self.features(index) if feats is None else feats
                with torch.inference_mode():
                    out = self.model.track_step(feats, index, bank, is_init_cond_frame=False,
                                                num_frames=self.n_slices, reverse=reverse)
                bank.non_cond[index] = out
            result.logits[oid] = self._logits_at_slice(out.mask_logits)
            result.object_scores[oid] = float(out.object_score.reshape(-1)[0])
            result.ious[oid] = float(out.iou.reshape(-1)[0]) if out.iou is not None else 1.0
        return result

    def _forget(self, plans: list[tuple[str, list[int]]], done: int) -> None:
        """Drop the tracked memories no slice left in ``plans`` can read (the bank's bound).

        ``plans[0]`` is the running pass, of which ``done`` slices are processed.
        """
        m = self.model
        wanted: list[range] = []
        for p, (direction, order) in enumerate(plans):
            rest = order[done:] if p == 0 else order
            if rest:
                reverse = direction == BACKWARD
                first = used_frames(rest[0], m.num_maskmem, m.max_obj_ptrs_in_encoder, reverse)
                last = used_frames(rest[-1], m.num_maskmem, m.max_obj_ptrs_in_encoder, reverse)
                wanted.append(range(min(first.start, last.start), max(first.stop, last.stop)))
        for bank in self._banks.values():
            for t in [t for t in bank.non_cond if not any(t in r for r in wanted)]:
                del bank.non_cond[t]

    def memory_size(self) -> int:
        """Tracked (non-prompted) memories held, over all objects."""
        return sum(len(bank.non_cond) for bank in self._banks.values())
