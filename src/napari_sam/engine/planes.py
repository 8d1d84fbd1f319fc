"""The 2D planes of an nD image: which axes span them, how they are indexed and numbered.

A plane is indexed by its position along the non-plane spatial axes, in ascending axis order
(``()`` for a 2D image, ``(t, z)`` for a ``(T, Z, Y, X)`` time-lapse), and numbered in C order
over those axes (``numpy.ravel_multi_index``): the plane numbers of an embedding store.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["PlaneGeometry"]


class PlaneGeometry:
    """The planes of ``image`` spanned by the two spatial ``axes``.

    Parameters
    ----------
    image : array-like, shape (..., Y, X) or (..., Y, X, 3)
        numpy, dask or zarr; planes are read one at a time.
    axes : (int, int)
        The two plane axes among the spatial axes, ascending (negative values count from the last
        spatial axis).
    rgb : bool
        The last axis holds RGB(A) channels (not a spatial axis).

    Attributes
    ----------
    plane_shape : tuple of int
        Number of planes along each non-plane spatial axis.
    original_size : (int, int)
        ``(H, W)`` of a plane.
    """

    def __init__(self, image: npt.ArrayLike, *, axes: Sequence[int] = (-2, -1),
                 rgb: bool = False) -> None:
        if not hasattr(image, "shape") or not hasattr(image, "dtype"):
            image = np.asarray(image)
        shape = tuple(int(s) for s in image.shape)
        if rgb and (len(shape) < 3 or shape[-1] not in (3, 4)):
            raise ValueError(f"rgb=True needs a last axis of 3 or 4 channels, got shape {shape}")
        spatial = shape[:-1] if rgb else shape
        if len(spatial) < 2:
            raise ValueError(f"the image needs at least two spatial axes, got shape {shape}")
        self.image = image
        self.rgb = bool(rgb)
        self.axes = _normalise_axes(axes, len(spatial))
        self._spatial_shape = spatial
        self._lead_axes = tuple(a for a in range(len(spatial)) if a not in self.axes)
        self.plane_shape = tuple(spatial[a] for a in self._lead_axes)
        self.original_size = (spatial[self.axes[0]], spatial[self.axes[1]])
        if min(self.original_size) < 1:
            raise ValueError(f"the planes are empty (image shape {shape})")

    def planes(self) -> list[tuple[int, ...]]:
        """Every plane index, in C order over the non-plane axes (``[()]`` for a 2D image)."""
        return [tuple(int(v) for v in i) for i in np.ndindex(*self.plane_shape)]

    @property
    def n_planes(self) -> int:
        return int(np.prod(self.plane_shape, dtype=np.int64))

    def plane_image(self, index: Sequence[int]) -> np.ndarray:
        """The pixels of one plane, shape ``(H, W)`` or ``(H, W, 3)``, as numpy."""
        idx = self._check_index(index)
        key: list[Any] = [slice(None)] * len(self._spatial_shape)
        for axis, i in zip(self._lead_axes, idx):
            key[axis] = i
        return np.asarray(self.image[tuple(key)])

    def _check_index(self, index: Sequence[int] | int) -> tuple[int, ...]:
        if isinstance(index, (int, np.integer)):
            index = (index,)
        idx = tuple(int(v) for v in index)
        if len(idx) != len(self.plane_shape) or any(
            not 0 <= i < n for i, n in zip(idx, self.plane_shape)
        ):
            raise IndexError(f"plane index {tuple(index)} is outside the planes {self.plane_shape}")
        return idx

    def _flat(self, idx: tuple[int, ...]) -> int:
        return int(np.ravel_multi_index(idx, self.plane_shape)) if idx else 0

    def _unflat(self, flat: int) -> tuple[int, ...]:
        return tuple(int(v) for v in np.unravel_index(flat, self.plane_shape))


def _normalise_axes(axes: Sequence[int], ndim: int) -> tuple[int, int]:
    if len(axes) != 2:
        raise ValueError(f"axes must name the two plane axes, got {tuple(axes)}")
    out = []
    for a in axes:
        a = int(a)
        if not -ndim <= a < ndim:
            raise ValueError(f"plane axis {a} is out of range for {ndim} spatial axes")
        out.append(a % ndim)
    if not out[0] < out[1]:
        raise ValueError(
            f"plane axes must be two different axes in ascending order, got {tuple(axes)}"
        )
    return out[0], out[1]
