"""Geometry of 2D boolean masks shared by the engine, the workflows and the evaluation.

Masks are ``(H, W)`` bool arrays; points are ``(row, col)``; boxes ``(row0, col0, row1, col1)``
with inclusive pixel indices. numpy and scipy only.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy import ndimage

__all__ = ["bounding_box", "deepest_point", "farthest_point", "mask_iou"]


def bounding_box(mask: npt.NDArray[np.bool_]) -> tuple[int, int, int, int] | None:
    """The tight box ``(row0, col0, row1, col1)`` (inclusive) of a 2D mask, None if it is empty.

    Examples
    --------
    >>> m = np.zeros((5, 6), bool); m[1:3, 2:5] = True
    >>> bounding_box(m)
    (1, 2, 2, 4)
    """
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]), int(cols[-1])


def _as_2d_bool(mask: npt.ArrayLike, name: str) -> npt.NDArray[np.bool_]:
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"{name} must be a 2D (H, W) mask, got an array of shape {m.shape}")
    return m.astype(bool, copy=False)


def deepest_point(mask: npt.NDArray[np.bool_]) -> tuple[tuple[int, int], float]:
    """The pixel of a non-empty mask farthest from its boundary, and that distance.

    The distance transform is computed on the mask's bounding box padded by one background pixel:
    that is exact (every pixel outside the box is background, and the padding ring is closer than
    any of them) and makes the image border count as boundary. Ties go to the tied pixel nearest
    to the centroid of all tied pixels, then to the first in raster order.
    """
    r0, c0, r1, c1 = bounding_box(mask)
    crop = np.pad(mask[r0 : r1 + 1, c0 : c1 + 1], 1)
    dist = ndimage.distance_transform_edt(crop)[1:-1, 1:-1]
    best = dist.max()
    tied = np.argwhere(dist == best)  # raster order
    if len(tied) > 1:
        d2 = ((tied - tied.mean(axis=0)) ** 2).sum(axis=1)
        tied = tied[d2 == d2.min()]
    r, c = tied[0]
    return (int(r) + r0, int(c) + c0), float(best)


def farthest_point(mask: npt.ArrayLike) -> tuple[int, int]:
    """The pixel of a mask farthest from the mask's boundary: the protocol's first click.

    Parameters
    ----------
    mask : array-like, shape (H, W)
        Nonzero inside the object. The image border counts as boundary.

    Returns
    -------
    (int, int)
        ``(row, col)`` of the maximum of the interior Euclidean distance transform. Ties go to the
        tied pixel nearest to the centroid of the tied pixels, then to the first in raster order.

    Examples
    --------
    >>> m = np.zeros((9, 9), bool); m[2:7, 1:8] = True
    >>> farthest_point(m)
    (4, 4)
    """
    m = _as_2d_bool(mask, "mask")
    if not m.any():
        raise ValueError("the mask is empty, so it has no point farthest from its boundary")
    return deepest_point(m)[0]


def mask_iou(pred: npt.ArrayLike, gt: npt.ArrayLike) -> float:
    """Intersection over union of two masks of the same shape (1.0 if both are empty)."""
    p, g = np.asarray(pred, bool), np.asarray(gt, bool)
    if p.shape != g.shape:
        raise ValueError(f"masks of shape {p.shape} and {g.shape} differ")
    union = np.count_nonzero(p | g)
    return 1.0 if union == 0 else float(np.count_nonzero(p & g) / union)
