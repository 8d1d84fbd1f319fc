"""Planes along an axis of an image layer: the glue between the viewer's current plane and the
engine's stack functions (propagation, segment everything over slices).

Everything here is napari-aware but Qt-free, so it is tested without a widget.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import numpy as np
import numpy.typing as npt
from napari.layers import Image, Labels

from ._layers import (
    Plane,
    _same_grid,
    affine_between,
    image_level0,
    paint_mask,
    sample_labels_on_plane,
    set_labels,
)

__all__ = [
    "anchor_masks",
    "paint_label_stack",
    "paint_stack",
    "plane_at",
    "stack_axes",
    "volume_view",
]


def stack_axes(plane: Plane) -> tuple[int, ...]:
    """The axes a plane can be propagated along: its non-displayed spatial axes."""
    return plane.not_displayed


def plane_at(plane: Plane, axis: int, index: int) -> Plane:
    """``plane`` moved to ``index`` along ``axis`` (a non-displayed axis)."""
    if axis not in plane.not_displayed:
        raise ValueError(f"axis {axis} is displayed (plane axes {plane.axes})")
    position = list(plane.index)
    position[axis] = int(index)
    return dataclasses.replace(plane, index=tuple(position))


def volume_view(image: Image, plane: Plane, axis: int) -> npt.NDArray:
    """The 3D stack through ``plane`` along ``axis``: shape ``(n, H, W)`` or ``(n, H, W, C)``.

    The other non-displayed axes stay at the plane's position. Read into memory (one 3D block of
    an nD image).
    """
    data = image_level0(image)
    index: list[int | slice] = [
        slice(None) if a in plane.axes or a == axis else plane.index[a] for a in range(plane.ndim)
    ]
    block = np.asarray(data[tuple(index)])
    # the kept axes in data order; move the stack axis first, then (row, col), then RGB
    kept = [a for a in range(plane.ndim) if a in plane.axes or a == axis]
    order = [kept.index(axis), kept.index(plane.axes[0]), kept.index(plane.axes[1])]
    order += list(range(3, block.ndim))  # RGB(A) channel, if any
    return np.transpose(block, order)


def anchor_masks(target: Labels, image: Image, plane: Plane, axis: int, value: int) -> dict:
    """``{index: (H, W) bool}`` of the slices along ``axis`` where ``target`` has ``value``."""
    out = {}
    for i in range(plane.spatial_shape[axis]):
        mask = sample_labels_on_plane(target, image, plane_at(plane, axis, i)) == value
        if mask.any():
            out[i] = mask
    return out


def paint_stack(
    target: Labels,
    image: Image,
    plane: Plane,
    axis: int,
    objects: Mapping[int, Mapping[int, npt.NDArray[np.bool_]]],
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict[int, list[int]]:
    """Write masks of several objects on several slices into ``target`` as one undo step.

    The result is the same as painting the objects one after the other in the mapping's order
    with :func:`~napari_sam.plugin._layers.paint_mask`: with ``overwrite`` off, a pixel two new
    objects claim goes to the *first* one (the later one finds it taken); with ``overwrite`` on,
    the *last* one wins. When ``target`` lies on the image's grid (same shape, identity
    transform between them) all objects of a slice are merged into one label plane and written
    with a few vectorised ``data_setitem`` calls (one per ~4 M pixels, see ``_WRITE_CHUNK``)
    instead of one per object and slice; on another grid every mask goes through
    ``paint_mask``.

    Parameters
    ----------
    target : napari.layers.Labels
        The layer written to.
    image : napari.layers.Image
        The image whose plane the masks live on.
    plane : Plane
        A plane of ``image``; the masks are on planes ``plane_at(plane, axis, index)``.
    axis : int
        The (non-displayed) data axis of ``image`` the slice indices run along.
    objects : mapping
        ``{label value: {slice index along axis: (H, W) bool mask}}``.
    overwrite : bool
        Let the masks take pixels of other objects (off: existing labels are kept).
    progress : callable, optional
        Called with ``(done, total)`` masks.

    Returns
    -------
    dict
        ``{label value: [slice indices where something was written]}`` (values that wrote
        nothing are left out). With ``overwrite`` on, a mask counts as written even if later
        objects took all its pixels (as with ``paint_mask`` in sequence).
    """
    total = sum(len(v) for v in objects.values())
    shape = tuple(int(s) for s in np.shape(target.data))
    a, b = affine_between(image, target, plane.world_point)
    with target.block_history():
        if _same_grid(a, b) and shape == plane.spatial_shape:
            return _paint_stack_on_grid(target, plane, axis, objects, overwrite, progress, total)
        return _paint_stack_each(target, image, plane, axis, objects, overwrite, progress, total)


#: Pixels per ``data_setitem`` call of :func:`paint_stack` (bounds the index arrays in memory).
_WRITE_CHUNK = 1 << 22


def _paint_stack_each(target, image, plane, axis, objects, overwrite, progress, total):
    """``paint_stack`` through ``paint_mask``, mask by mask (target on another grid)."""
    written: dict[int, list[int]] = {}
    done = 0
    for value, masks in objects.items():
        for index in sorted(masks):
            n = paint_mask(
                target, image, plane_at(plane, axis, index), masks[index], int(value), overwrite
            )
            if n:
                written.setdefault(int(value), []).append(int(index))
            done += 1
            if progress is not None:
                progress(done, total)
    return written


def _paint_stack_on_grid(target, plane, axis, objects, overwrite, progress, total):
    """``paint_stack`` for a target on the image's grid: one merged label plane per slice."""
    h, w = plane.shape
    by_slice: dict[int, list[tuple[int, npt.NDArray[np.bool_]]]] = {}
    for value, masks in objects.items():
        for index, mask in masks.items():
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != (h, w):
                raise ValueError(f"mask shape {mask.shape} does not match the plane {(h, w)}")
            by_slice.setdefault(int(index), []).append((int(value), mask))

    written: dict[int, set[int]] = {}
    writer = _PlaneWriter(target, plane, axis)
    if objects:
        writer.check_range(min(objects), max(objects))
    done = 0
    for index in sorted(by_slice):
        existing = None if overwrite else writer.existing(index)
        values = np.zeros(h * w, dtype=writer.dtype)
        claimed = np.zeros(h * w, dtype=bool)
        for value, mask in by_slice[index]:
            idx = _mask_pixels(mask)
            if not overwrite:
                idx = idx[(existing[idx] == 0) & ~claimed[idx]]
            if len(idx):
                written.setdefault(value, set()).add(index)
                # Painting 0 over free pixels changes nothing and leaves them free for later
                # objects, as paint_mask in sequence does.
                if overwrite or value != 0:
                    claimed[idx] = True
                    values[idx] = value
            done += 1
            if progress is not None:
                progress(done, total)
        flat = np.flatnonzero(claimed)
        writer.add(index, flat, values[flat])
    writer.close()
    return {int(v): sorted(written[int(v)]) for v in objects if int(v) in written}


def paint_label_stack(
    target: Labels,
    image: Image,
    plane: Plane,
    axis: int | None,
    planes: Mapping[int, npt.NDArray[np.integer]],
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict[int, list[int]]:
    """Write label images of several slices into ``target`` as one undo step.

    Same as :func:`paint_stack` with one mask per value and slice (``planes[i] == v``), but
    without making those masks: the form an automatic segmentation comes in. On the image's
    grid each slice is written as it is, with a few vectorised ``data_setitem`` calls; on
    another grid value by value through ``paint_mask``.

    Parameters
    ----------
    axis : int or None
        The (non-displayed) data axis of ``image`` the slice indices run along; None: write
        ``planes[0]`` on ``plane`` itself (e.g. a 2D image).
    planes : mapping
        ``{slice index along axis: (H, W) integer labels}``; 0 is background (not written).
    overwrite : bool
        Let the labels take pixels of other objects (off: existing labels are kept).
    progress : callable, optional
        Called with ``(done, total)`` slices.

    Returns
    -------
    dict
        ``{label value: [slice indices where something was written]}``, values ascending.
    """
    h, w = plane.shape
    planes = {int(i): np.asarray(p) for i, p in planes.items()}
    if axis is None and set(planes) - {0}:
        raise ValueError("without an axis, the only slice is 0 (the plane itself)")
    for p in planes.values():
        if p.shape != (h, w) or not np.issubdtype(p.dtype, np.integer):
            raise ValueError(f"label plane {p.shape} {p.dtype} is not integer labels of {(h, w)}")
    shape = tuple(int(s) for s in np.shape(target.data))
    a, b = affine_between(image, target, plane.world_point)
    on_grid = _same_grid(a, b) and shape == plane.spatial_shape
    written: dict[int, list[int]] = {}
    with target.block_history():
        writer = _PlaneWriter(target, plane, axis) if on_grid else None
        if writer is not None and planes:
            writer.check_range(
                min(int(p.min()) for p in planes.values()),
                max(int(p.max()) for p in planes.values()),
            )
        for done, index in enumerate(sorted(planes), start=1):
            labels = planes[index].ravel()
            if writer is not None:
                keep = labels != 0
                if not overwrite:
                    keep &= writer.existing(index) == 0
                flat = np.flatnonzero(keep)
                writer.add(index, flat, labels[flat])
                values = _present(labels[flat])
            else:
                at = _slice_plane(plane, axis, index)
                values = []
                for v in np.unique(labels[labels != 0]):
                    mask = planes[index] == v
                    if paint_mask(target, image, at, mask, int(v), overwrite):
                        values.append(v)
            for v in values:
                written.setdefault(int(v), []).append(index)
            if progress is not None:
                progress(done, len(planes))
        if writer is not None:
            writer.close()
    return dict(sorted(written.items()))


def _mask_pixels(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.intp]:
    """Flat indices of the set pixels of an (H, W) mask, ascending.

    Finds the band of rows with pixels first (a cheap reduction), then only scans that band:
    a few times faster than ``np.flatnonzero`` for an object of a megapixel slice.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    if len(rows) == 0:
        return np.zeros(0, dtype=np.intp)
    r0, r1 = int(rows[0]), int(rows[-1]) + 1
    return np.flatnonzero(mask[r0:r1]) + r0 * mask.shape[1]


def _slice_plane(plane: Plane, axis: int | None, index: int) -> Plane:
    return plane if axis is None else plane_at(plane, axis, index)


def _present(values: npt.NDArray[np.integer]) -> npt.NDArray[np.integer]:
    """The distinct values of a 1D integer array, ascending (a histogram when their range is
    small: much faster than sorting a megapixel slice)."""
    if len(values) == 0:
        return values[:0]
    lo, hi = int(values.min()), int(values.max())
    if hi - lo > max(1 << 20, 4 * len(values)):
        return np.unique(values)
    counts = np.bincount((values - lo).astype(np.intp), minlength=hi - lo + 1)
    return np.flatnonzero(counts) + lo


class _PlaneWriter:
    """Collects ``(flat pixel indices, values)`` of slices on the image's grid and writes them
    with one ``data_setitem`` per ``_WRITE_CHUNK`` pixels; only the last call refreshes the
    view."""

    def __init__(self, target: Labels, plane: Plane, axis: int | None) -> None:
        self.target, self.plane, self.axis = target, plane, axis
        self.dtype = np.dtype(getattr(target.data, "dtype", np.int64))
        self.pending: list[tuple[tuple[npt.NDArray, ...], npt.NDArray]] = []
        self.n_pending = 0

    def check_range(self, lo: int, hi: int) -> None:
        """Refuse (before anything is written) values the target's dtype cannot hold."""
        if np.issubdtype(self.dtype, np.integer):
            info = np.iinfo(self.dtype)
            if lo < info.min or hi > info.max:
                bad = lo if lo < info.min else hi
                raise ValueError(
                    f"label value {bad} does not fit Labels layer "
                    f"'{self.target.name}' ({self.dtype})"
                )

    def existing(self, index: int) -> npt.NDArray:
        """The target's current values on slice ``index``, flat ``(H * W,)``."""
        at = _slice_plane(self.plane, self.axis, index)
        return np.asarray(self.target.data[at.indexer()]).ravel()

    def add(self, index: int, flat: npt.NDArray, values: npt.NDArray) -> None:
        """Queue ``values`` at the flat ``(row * W + col)`` pixels ``flat`` of slice ``index``."""
        if len(flat) == 0:
            return
        if self.pending and self.n_pending + len(flat) > _WRITE_CHUNK:
            self._flush(refresh=False)
        rc = np.stack(np.divmod(flat, self.plane.shape[1]), axis=1)
        at = _slice_plane(self.plane, self.axis, index)
        idx = tuple(np.round(at.to_nd(rc)).astype(np.intp).T)
        self.pending.append((idx, np.asarray(values, dtype=self.dtype)))
        self.n_pending += len(flat)

    def close(self) -> None:
        if self.pending:
            self._flush(refresh=True)

    def _flush(self, refresh: bool) -> None:
        ndim = len(self.pending[0][0])
        idx = tuple(np.concatenate([p[0][d] for p in self.pending]) for d in range(ndim))
        values = np.concatenate([p[1] for p in self.pending])
        self.pending, self.n_pending = [], 0
        set_labels(self.target, idx, values, refresh=refresh)
