"""What a prompt asked for of a mask: cut to the box, the prompted connected pieces.

SAM decodes the mask of "the object at this prompt", but its masks can hold stray pieces on
other objects and, for a box, spill past it. The predictors' ``segment`` (the viewer's path),
propagation and the evaluation protocol all keep only what the prompt asked for, with the
functions here. Numpy and scipy only: no torch, Qt or napari.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from .masks import bounding_box

__all__ = ["BOX_MARGIN", "clip_to_box", "keep_prompted_pieces"]

BOX_MARGIN = 0.1
"""How far (a fraction of the box's side, plus one pixel) a box's mask may reach outside it.

SAM is trained on boxes jittered by about 10 % of their side, so it reads a box as "the object
is about here" and its masks of small or blurred objects spill past it (halo, neighbours). A
user's box is drawn around the object: what lies well outside it is not the object."""


def clip_to_box(
    mask: npt.NDArray[np.bool_],
    box: npt.ArrayLike,
    points: npt.ArrayLike | None = None,
    labels: npt.ArrayLike | None = None,
    margin: float = BOX_MARGIN,
) -> npt.NDArray[np.bool_]:
    """``mask`` without the pixels far outside a box prompt.

    The box is first grown to take in the positive points (a click outside the box says the
    object reaches there), then by ``margin`` of its side plus one pixel on each side.

    Parameters
    ----------
    mask : numpy.ndarray, shape (H, W), bool
    box : array-like, shape (4,)
        ``(row0, col0, row1, col1)``, inclusive.
    points : array-like, shape (N, 2), optional
        ``(row, col)``.
    labels : array-like, shape (N,), optional
        1 positive, 0 negative (default all positive).
    margin : float
        Fraction of the box's height (width) allowed above and below (left and right).

    Returns
    -------
    numpy.ndarray, shape (H, W), bool
        A new array; ``mask`` itself is not changed.
    """
    r0, c0, r1, c1 = np.asarray(box, dtype=np.float64).reshape(4)
    if points is not None and np.size(points):
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        labs = np.ones(len(pts)) if labels is None else np.asarray(labels).reshape(-1)
        pos = pts[labs == 1]
        if len(pos):
            r0, c0 = min(r0, pos[:, 0].min()), min(c0, pos[:, 1].min())
            r1, c1 = max(r1, pos[:, 0].max()), max(c1, pos[:, 1].max())
    dr = margin * (r1 - r0 + 1) + 1
    dc = margin * (c1 - c0 + 1) + 1
    h, w = mask.shape
    rows = slice(max(int(np.floor(r0 - dr)), 0), max(min(int(np.ceil(r1 + dr)) + 1, h), 0))
    cols = slice(max(int(np.floor(c0 - dc)), 0), max(min(int(np.ceil(c1 + dc)) + 1, w), 0))
    out = np.zeros_like(mask)
    out[rows, cols] = mask[rows, cols]
    return out


def keep_prompted_pieces(
    mask: npt.NDArray[np.bool_],
    points: npt.ArrayLike | None = None,
    labels: npt.ArrayLike | None = None,
    box: npt.ArrayLike | None = None,
) -> npt.NDArray[np.bool_]:
    """What the prompt asked for of ``mask``: its prompted connected pieces (8-connected).

    With a box, the mask is first cut to the box (:func:`clip_to_box`). Then, with positive
    points: the pieces that hold one (a mask that holds none is kept as it is); with a box and
    no positive point: the pieces that overlap the box. Otherwise ``mask``.

    Parameters
    ----------
    mask : numpy.ndarray, shape (H, W), bool
    points : array-like, shape (N, 2), optional
        ``(row, col)``.
    labels : array-like, shape (N,), optional
        1 positive, 0 negative (default all positive).
    box : array-like, shape (4,), optional
        ``(row0, col0, row1, col1)``.
    """
    has_box = box is not None and np.size(box) > 0
    if has_box:
        mask = clip_to_box(mask, box, points, labels)
    box = bounding_box(mask)
    if box is None:
        return mask
    # label inside the mask's bounding box only: a small object on a large slice is cheap
    r_off, c_off, r1, c1 = box
    window = (slice(r_off, r1 + 1), slice(c_off, c1 + 1))
    pieces, n = ndimage.label(mask[window], structure=np.ones((3, 3), dtype=bool))
    if n <= 1:
        return mask
    ph, pw = pieces.shape
    keep = np.zeros(n + 1, dtype=bool)
    if points is not None and np.size(points):
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        labs = np.ones(len(pts)) if labels is None else np.asarray(labels).reshape(-1)
        for r, c in pts[labs == 1]:
            ri, ci = int(round(r)) - r_off, int(round(c)) - c_off
            if 0 <= ri < ph and 0 <= ci < pw:
                keep[pieces[ri, ci]] = True
    elif has_box:
        r0, c0, r1, c1 = (int(round(v)) for v in np.asarray(box, dtype=np.float64).reshape(4))
        r0, r1, c0, c1 = r0 - r_off, r1 - r_off, c0 - c_off, c1 - c_off
        inside = pieces[max(r0, 0):max(r1 + 1, 0), max(c0, 0):max(c1 + 1, 0)]
        keep[np.unique(inside)] = True
    else:
        return mask
    keep[0] = False
    if not keep.any():
        return mask
    out = np.zeros_like(mask)
    out[window] = keep[pieces]
    return out
