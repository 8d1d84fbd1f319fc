"""Propagation through a whole volume: read slices of an nD image lazily along one axis, and
run many seeds through magnified crops where the objects are small.

Volumes are any array-like with the propagation axis at ``axis``; slices are ``(H, W)`` or
``(H, W, 3)``; points ``(row, col)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ..engine.predictor import ImageEmbedding, SamPredictor
from ..modeling.sam2 import Sam2

if TYPE_CHECKING:  # pragma: no cover
    from ..modeling import Sam

from .mask_stack import MaskStack, Propagation
from .propagation import PropagationParams, Seed, _check_seeds, propagate

__all__ = ["propagate_in_crops", "propagate_volume"]


def _volume_slices(volume: Any, axis: int) -> tuple[Callable[[int], np.ndarray], int, tuple]:
    shape = tuple(np.shape(volume))
    rgb = len(shape) == 4 and shape[-1] in (3, 4)
    spatial = shape[:-1] if rgb else shape
    if len(spatial) != 3:
        raise ValueError(
            f"propagate_volume takes a 3D stack (N, H, W) or (N, H, W, 3), got shape {shape}; "
            "for 4D data pick the 3D sub-volume to propagate in"
        )
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not -3 <= axis < 3:
        raise ValueError(f"axis must be 0, 1 or 2 (or -3..-1), got {axis!r}")
    axis = int(axis) % 3
    n = spatial[axis]
    hw = tuple(s for k, s in enumerate(spatial) if k != axis)

    def get(i: int) -> np.ndarray:
        key = [slice(None)] * len(shape)
        key[axis] = i
        return np.asarray(volume[tuple(key)])

    return get, n, (axis, hw, spatial)


def propagate_volume(
    model: Sam,
    volume: npt.ArrayLike,
    seeds: Sequence[Seed],
    *,
    axis: int = 0,
    intensity_range: tuple[float, float] | None = None,
    params: PropagationParams | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
    zoom: float | str = 1.0,
) -> npt.NDArray[np.int32]:
    """Propagate seeds through a 3D stack and return the label volume.

    Embeddings are computed here (each slice once, kept for the run). For the viewer, call
    :func:`propagate` with a cached embedder instead.

    Parameters
    ----------
    model : Sam
    volume : array-like, shape (Z, Y, X) or (Z, Y, X, 3)
        Any dtype; ``axis`` chooses the propagation axis among the three spatial axes.
    seeds : sequence of Seed
        ``index`` along ``axis``; points, boxes and masks in the slice's own ``(row, col)``.
    axis : int
    intensity_range : (float, float), optional
        Normalisation range; by default one robust range for the whole volume.
    params, progress, cancelled
        As in :func:`propagate`.
    zoom : float or "auto"
        Propagate small objects in magnified crops (:func:`propagate_in_crops`); 1 embeds
        whole slices.

    Returns
    -------
    numpy.ndarray, int32, the volume's spatial shape
        Each object painted with its ``object_id`` (no overlaps, see
        :meth:`Propagation.to_labels`); all slices done so far if cancelled.
    """
    get, n, (axis, hw, spatial) = _volume_slices(volume, axis)
    if intensity_range is None:
        from ..engine.preprocess import estimate_intensity_range

        intensity_range = estimate_intensity_range(volume)
    result = propagate_in_crops(model, get, n, seeds, zoom=zoom,
                                intensity_range=intensity_range, params=params,
                                progress=progress, cancelled=cancelled)
    labels = result.to_labels(n, hw)
    return np.moveaxis(labels, 0, axis)


def propagate_in_crops(
    model: Sam,
    slice_image: Callable[[int], npt.NDArray],
    n_slices: int,
    seeds: Sequence[Seed],
    *,
    zoom: float | str = "auto",
    intensity_range: tuple[float, float] | None = None,
    params: PropagationParams | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
    overlap: float = 0.5,
) -> Propagation:
    """:func:`propagate` with the slices magnified: small objects followed in crops.

    The slices are cut into overlapping crops ``zoom`` times smaller than a slice (as
    :class:`napari_sam.engine.zoom.ZoomPredictor` does in 2D); every object is propagated in the crop
    where its first seed is most central, all objects of one crop together in one
    :func:`propagate` run against the crop's embeddings (computed here, once per crop and
    slice visited). An object whose seeds do not fit in that crop (a box or mask reaching past
    it) is propagated on whole slices. Masks are returned in slice coordinates.

    Parameters
    ----------
    model : Sam
    slice_image : callable
        ``slice_image(i)`` returns slice ``i``, ``(H, W)`` or ``(H, W, 3)``.
    n_slices : int
    seeds : sequence of Seed
        In slice coordinates.
    zoom : float or "auto"
        Magnification (>= 1; 1 embeds whole slices). ``"auto"``:
        :func:`napari_sam.engine.zoom.auto_zoom` of the slice holding the most seeds.
    intensity_range : (float, float), optional
        One normalisation range for every crop (default: robust percentiles of that slice).
    params, progress, cancelled
        As in :func:`propagate`; progress counts over all crops' runs.
    overlap : float
        Neighbouring crops overlap by this fraction of their side.

    Returns
    -------
    Propagation
        As from :func:`propagate`; when cancelled, objects of crops not reached yet have no
        masks and stopped reasons ``"cancelled"``.
    """
    from ..engine.preprocess import estimate_intensity_range
    from ..engine.zoom import auto_zoom, crop_origin, prompt_centre, zoomed_crop_shape

    if isinstance(model, Sam2):  # whole slices: SAM 2's memory is per slice, not per crop
        return propagate(model, None, n_slices, seeds, params=params, progress=progress,
                         cancelled=cancelled, slice_image=slice_image,
                         intensity_range=intensity_range)
    if not (zoom == "auto" or (isinstance(zoom, (int, float)) and zoom >= 1)):
        raise ValueError(f"zoom must be 'auto' or a number >= 1, got {zoom!r}")
    by_object = _check_seeds(seeds, int(n_slices))
    indices = [int(s.index) for s in seeds]
    busiest = max(set(indices), key=indices.count)
    first = np.asarray(slice_image(busiest))
    hw = first.shape[:2]
    for s in seeds:
        if s.mask is not None and np.shape(s.mask) != hw:
            raise ValueError(f"the mask of object {s.object_id} has shape {np.shape(s.mask)}, "
                             f"the slices {hw}")
    if intensity_range is None:
        intensity_range = estimate_intensity_range(first)
    if zoom == "auto":
        zoom = auto_zoom(first, model.img_size, intensity_range)
    crop = zoomed_crop_shape(hw, float(zoom))

    groups: dict[tuple[int, int] | None, list[Seed]] = {}
    for oid, group in by_object.items():
        origin = None
        if crop != hw:
            s0 = group[0]
            origin = crop_origin(prompt_centre(s0.points, s0.labels, s0.box, s0.mask), hw, crop,
                                 overlap)
            if not all(_fits(s, origin, crop) for s in group):
                origin = None
        groups.setdefault(origin, []).extend(group)

    predictor = SamPredictor(model)
    merged = Propagation(masks={}, complete=True, scores={}, stopped={})
    n_groups = len(groups)
    for k, (origin, group) in enumerate(groups.items()):
        window = (slice(None), slice(None)) if origin is None else (
            slice(origin[0], origin[0] + crop[0]), slice(origin[1], origin[1] + crop[1]))
        cache: dict[int, ImageEmbedding] = {}

        def get(i: int, window=window) -> np.ndarray:
            return np.asarray(slice_image(i))[window]

        # a crop is magnified on purpose: no cap on its magnification (as in ZoomPredictor)
        def embed(i: int, get=get, cache=cache, fill=origin is not None) -> ImageEmbedding:
            if i not in cache:
                cache[i] = predictor.compute_embedding(get(i), intensity_range, fill=fill)
            return cache[i]

        def step(done: int, total: int, k=k) -> None:
            if progress is not None:
                progress(k * 1000 + (1000 * done) // max(total, 1), n_groups * 1000)

        local = group if origin is None else [_shift_seed(s, origin, crop) for s in group]
        part = propagate(model, embed, n_slices, local, params=params, progress=step,
                         cancelled=cancelled, slice_image=get, intensity_range=intensity_range)
        for oid, masks in part.masks.items():
            if origin is not None:  # into the slice's frame, one mask at a time
                pasted = MaskStack()
                for i, m in masks.items():
                    pasted[i] = _paste(m, origin, hw)
                masks = pasted
            merged.masks[oid] = masks
        merged.scores.update(part.scores)
        merged.stopped.update(part.stopped)
        if not part.complete:
            merged.complete = False
            for oid in by_object:
                merged.masks.setdefault(oid, MaskStack())
                merged.scores.setdefault(oid, {})
                merged.stopped.setdefault(oid, {"up": "cancelled", "down": "cancelled"})
            break
    return merged


def _fits(seed: Seed, origin: tuple[int, int], crop: tuple[int, int]) -> bool:
    """Whether the seed's positive points, box and mask lie inside the crop."""
    r0, c0 = origin
    r1, c1 = r0 + crop[0], c0 + crop[1]
    if seed.points is not None:
        pts = np.asarray(seed.points, dtype=np.float64).reshape(-1, 2)
        lab = np.ones(len(pts)) if seed.labels is None else np.asarray(seed.labels).reshape(-1)
        pos = pts[lab == 1]
        if np.any((pos < [r0, c0]) | (pos >= [r1, c1])):
            return False
    if seed.box is not None:
        b = np.asarray(seed.box, dtype=np.float64).reshape(4)
        if b[0] < r0 or b[1] < c0 or b[2] > r1 or b[3] > c1:
            return False
    if seed.mask is not None:
        m = np.asarray(seed.mask, dtype=bool)
        if m.any() and (m[:r0].any() or m[r1:].any() or m[:, :c0].any() or m[:, c1:].any()):
            return False
    return True


def _shift_seed(seed: Seed, origin: tuple[int, int], crop: tuple[int, int]) -> Seed:
    """The seed in the frame of the crop at ``origin`` (negative points outside it dropped)."""
    r0, c0 = origin
    pts, labels = seed.points, seed.labels
    if pts is not None:
        pts = np.asarray(pts, dtype=np.float64).reshape(-1, 2) - [r0, c0]
        labels = np.ones(len(pts), int) if labels is None else np.asarray(labels).reshape(-1)
        keep = (labels == 1) | np.all((pts >= 0) & (pts < crop), axis=1)
        pts, labels = pts[keep], labels[keep]
        if not len(pts):
            pts = labels = None
    box = None if seed.box is None else (
        np.asarray(seed.box, dtype=np.float64).reshape(4) - [r0, c0, r0, c0])
    mask = None if seed.mask is None else (
        np.asarray(seed.mask, dtype=bool)[r0:r0 + crop[0], c0:c0 + crop[1]])
    return Seed(seed.object_id, seed.index, points=pts, labels=labels, box=box, mask=mask)


def _paste(mask: np.ndarray, origin: tuple[int, int], hw: tuple[int, int]) -> np.ndarray:
    full = np.zeros(hw, dtype=bool)
    full[origin[0]:origin[0] + mask.shape[0], origin[1]:origin[1] + mask.shape[1]] = mask
    return full


# -- evaluation --------------------------------------------------------------------------------
