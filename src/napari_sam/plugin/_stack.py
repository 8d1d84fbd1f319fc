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

from ._layers import Plane, image_level0, paint_mask, sample_labels_on_plane

__all__ = [
    "anchor_masks",
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

    Parameters
    ----------
    objects : mapping
        ``{label value: {slice index along axis: (H, W) bool mask}}``.
    overwrite : bool
        Let the masks take pixels of other objects (off: existing labels are kept).

    Returns
    -------
    dict
        ``{label value: [slice indices where something was written]}`` (values that wrote
        nothing are left out).
    """
    written: dict[int, list[int]] = {}
    total = sum(len(v) for v in objects.values())
    done = 0
    with target.block_history():
        for value, masks in objects.items():
            for index in sorted(masks):
                n = paint_mask(target, image, plane_at(plane, axis, index), masks[index],
                               int(value), overwrite)
                if n:
                    written.setdefault(int(value), []).append(int(index))
                done += 1
                if progress is not None:
                    progress(done, total)
    return written
