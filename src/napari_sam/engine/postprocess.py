"""What a prompt asked for of a mask: cut to the box, its corrective clicks followed, the
prompted connected pieces.

SAM decodes the mask of "the object at this prompt", but its masks can hold stray pieces on
other objects and, for a box, spill past it; and a corrective click near the mask's edge
often leaves the edge where it was (SAM's masks come from logits at a quarter of its input's
resolution). The predictors' ``segment`` (the viewer's path), propagation and the evaluation
protocol all keep only what the prompt asked for, with the functions here. Numpy and scipy
only: no torch, Qt or napari.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from .masks import bounding_box

__all__ = [
    "BOX_MARGIN",
    "CLICK_REACH",
    "EDGE_CLICK",
    "FOCUS_RADIUS",
    "SAME_OBJECT_IOU",
    "after_click",
    "clip_to_box",
    "follow_clicks",
    "keep_prompted_pieces",
]

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


CLICK_REACH = (1.0, 2.0)
"""``(a, b)``: how far along the edge a corrective click moves it, ``a * depth + b`` pixels
(the Gaussian's sigma; ``depth`` is the click's distance to the mask's edge). See
:func:`follow_clicks`."""


def follow_clicks(
    mask: npt.NDArray[np.bool_],
    points: npt.ArrayLike | None,
    labels: npt.ArrayLike | None = None,
    box: npt.ArrayLike | None = None,
    reach: tuple[float, float] = CLICK_REACH,
) -> npt.NDArray[np.bool_]:
    """``mask`` with its edge moved, near each corrective click, to the click's side.

    A corrective click says on which side of the object's edge its pixel lies. SAM's masks
    often ignore a click placed near their edge (the edge of a mask upsampled from a
    quarter-resolution grid barely moves for it), so the click is lost. Here each corrective
    click (every point after the first; with a box, every point) that lies on the wrong side
    (a negative click inside the mask, a positive one outside) moves the edge locally: with
    ``d`` the click's distance to the edge, the pixels ``q`` on the click's side of the edge
    whose distance to it is at most ``(d + 0.5) * exp(-|q - click|^2 / (2 s^2))``, with
    ``s = a * d + b``, change sides. The click's own pixel always does; the change fades out
    a few ``s`` away. Clicks are applied in the order they were placed.

    Parameters
    ----------
    mask : numpy.ndarray, shape (H, W), bool
    points : array-like, shape (N, 2), optional
        ``(row, col)``, in the order they were placed.
    labels : array-like, shape (N,), optional
        1 positive, 0 negative (default all positive).
    box : array-like, shape (4,), optional
        With a box every point is corrective.
    reach : (float, float)
        ``(a, b)`` (:data:`CLICK_REACH`).

    Returns
    -------
    numpy.ndarray, shape (H, W), bool
        ``mask`` itself if no click is on the wrong side, otherwise a new array.

    Examples
    --------
    >>> m = np.zeros((9, 9), bool); m[2:7, 2:7] = True
    >>> out = follow_clicks(m, [[4, 4], [2, 4]], [1, 0])   # a negative click on the top edge
    >>> bool(out[2, 4]), bool(out[4, 4]), int(m.sum() - out.sum()) > 0
    (False, True, True)
    """
    if points is None or not np.size(points):
        return mask
    pts = np.rint(np.asarray(points, dtype=np.float64).reshape(-1, 2)).astype(np.int64)
    labs = (np.ones(len(pts), dtype=np.int64) if labels is None
            else np.asarray(labels, dtype=np.int64).reshape(-1))
    first = 0 if box is not None and np.size(box) > 0 else 1
    h, w = mask.shape
    out = mask
    for (r, c), lab in zip(pts[first:], labs[first:]):
        if not (0 <= r < h and 0 <= c < w) or bool(out[r, c]) == (lab == 1):
            continue
        grow = lab == 1
        extent = bounding_box(out)
        if extent is None:  # an empty mask: nothing to move
            continue
        r0, c0, r1, c1 = extent
        if grow:  # the click's distance to the mask bounds how far the change reaches
            rows, cols = np.nonzero(out[r0:r1 + 1, c0:c1 + 1])
            depth = float(np.sqrt(((rows + r0 - r) ** 2 + (cols + c0 - c) ** 2).min()))
            pad = int(np.ceil(depth)) + 2
            r0, c0, r1, c1 = min(r0, r) - pad, min(c0, c) - pad, max(r1, r) + pad, max(c1, c) + pad
        window = (slice(max(r0 - 1, 0), min(r1 + 2, h)), slice(max(c0 - 1, 0), min(c1 + 2, w)))
        side = ~out[window] if grow else out[window]
        # the image's border is not an edge: the side goes on beyond it
        dist = ndimage.distance_transform_edt(np.pad(side, 1, mode="edge"))[1:-1, 1:-1]
        rr, cc = r - window[0].start, c - window[1].start
        depth = float(dist[rr, cc])
        sigma = reach[0] * depth + reach[1]
        yy = (np.arange(side.shape[0]) - rr)[:, None] ** 2
        xx = (np.arange(side.shape[1]) - cc)[None, :] ** 2
        flip = side & (dist <= (depth + 0.5) * np.exp(-(yy + xx) / (2 * sigma * sigma)))
        if out is mask:
            out = mask.copy()
        out[window] ^= flip
    return out


def keep_prompted_pieces(
    mask: npt.NDArray[np.bool_],
    points: npt.ArrayLike | None = None,
    labels: npt.ArrayLike | None = None,
    box: npt.ArrayLike | None = None,
    follow: bool = True,
) -> npt.NDArray[np.bool_]:
    """What the prompt asked for of ``mask``: its prompted connected pieces (8-connected).

    With a box, the mask is first cut to the box (:func:`clip_to_box`). Unless ``follow`` is
    false, its edge is then moved to the right side of the corrective clicks
    (:func:`follow_clicks`). Then, with positive
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
    follow : bool
        Follow the corrective clicks (:func:`follow_clicks`).
    """
    has_box = box is not None and np.size(box) > 0
    if has_box:
        mask = clip_to_box(mask, box, points, labels)
    if follow:
        mask = follow_clicks(mask, points, labels, box)
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


FOCUS_RADIUS = 1.0
"""How far from a corrective click its new mask replaces the previous one, in equivalent radii
of the object (the radius of a disc of its area). See :func:`after_click`."""


SAME_OBJECT_IOU = 0.5
"""A new mask that overlaps the previous one less than this (IoU) after a click is another
object (the click chose it): it is taken whole. See :func:`after_click`."""

EDGE_CLICK = 4.0
"""A corrective click at most this many pixels from the previous mask's edge, on its wrong
side, moves that edge only (:func:`follow_clicks`): SAM's redraw for it is not taken. See
:func:`after_click`."""


def after_click(
    previous: npt.NDArray[np.bool_],
    mask: npt.NDArray[np.bool_],
    points: npt.ArrayLike,
    labels: npt.ArrayLike | None = None,
    box: npt.ArrayLike | None = None,
    radius: float = FOCUS_RADIUS,
    edge: float = EDGE_CLICK,
) -> npt.NDArray[np.bool_]:
    """An object's mask after a corrective click: the new mask near the click, the previous
    one elsewhere; for a click at the mask's edge, the previous one with that edge moved.

    SAM redraws the whole object at every click, and a click meant to fix one side of it
    often moves the other sides too, parts that were right (on the real validation split a
    second click made isolated nuclei worse on average). A user's click says "fix it here":
    within ``radius`` equivalent radii of the newest click (the radius of a disc of the larger
    mask's area) the new mask is taken, elsewhere the previous one is kept (unless the two
    masks overlap less than :data:`SAME_OBJECT_IOU`: the click chose another object, whose new
    mask is taken whole); the result is then
    what the prompt asks for (:func:`keep_prompted_pieces`, which also moves the edge to the
    right side of the clicks).

    A click on the wrong side of the previous mask within ``edge`` pixels of its edge (a
    sliver left over or missed along the outline: the mask was nearly right) asks for that
    edge to move, and SAM often answers it with a large change: a negative click at the edge
    carves a chunk out of the nucleus, a positive one adds a bulge or the neighbour (on 12
    BBBC039 training images, 4 % of second clicks lost more than 0.1 IoU that way). Such a
    click moves the previous mask's edge only (:func:`follow_clicks`, inside
    :func:`keep_prompted_pieces`) and SAM's new mask is not taken.

    Parameters
    ----------
    previous, mask : numpy.ndarray, shape (H, W), bool
        The object's mask before the click (as shown) and the one decoded with the click.
    points : array-like, shape (N, 2)
        The object's points ``(row, col)`` in the order they were placed; the last is the new
        click.
    labels : array-like, shape (N,), optional
        1 positive, 0 negative (default all positive).
    box : array-like, shape (4,), optional
        The object's box prompt.
    radius : float
        :data:`FOCUS_RADIUS`.
    edge : float
        :data:`EDGE_CLICK` (0: every click takes SAM's new mask near it).

    Returns
    -------
    numpy.ndarray, shape (H, W), bool
    """
    previous = np.asarray(previous, dtype=bool)
    mask = np.asarray(mask, dtype=bool)
    if previous.shape != mask.shape:
        raise ValueError(f"the previous mask {previous.shape} and the new one {mask.shape} differ")
    if points is None or not np.size(points):
        return keep_prompted_pieces(mask, points, labels, box)
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    r, c = pts[-1]
    label = 1 if labels is None else int(np.asarray(labels).reshape(-1)[-1])
    if edge > 0 and _edge_depth(previous, r, c, label, edge) <= edge:
        return keep_prompted_pieces(previous, points, labels, box)
    changed = bounding_box(previous ^ mask)
    both = np.count_nonzero(previous & mask)
    area = max(np.count_nonzero(previous), np.count_nonzero(mask))
    if both < SAME_OBJECT_IOU * np.count_nonzero(previous | mask):  # another object
        return keep_prompted_pieces(mask, points, labels, box)
    out = previous.copy()
    if changed is not None:
        reach = radius * np.sqrt(area / np.pi)
        r0, c0, r1, c1 = changed
        window = (slice(r0, r1 + 1), slice(c0, c1 + 1))
        yy = (np.arange(r0, r1 + 1) - r)[:, None] ** 2
        xx = (np.arange(c0, c1 + 1) - c)[None, :] ** 2
        near = yy + xx <= reach * reach
        out[window] = np.where(near, mask[window], previous[window])
    return keep_prompted_pieces(out, points, labels, box)


def _edge_depth(mask: npt.NDArray[np.bool_], r: float, c: float, label: int,
                limit: float) -> float:
    """How far a click at ``(r, c)`` lies on its wrong side of ``mask``'s edge (inside for a
    negative click, outside for a positive one), in pixels; ``inf`` if it is on its right side
    or farther than ``limit`` (only a window of ``limit`` around the click is looked at; the
    image border is not an edge)."""
    h, w = mask.shape
    r, c = int(np.clip(round(r), 0, h - 1)), int(np.clip(round(c), 0, w - 1))
    if bool(mask[r, c]) == (label == 1):
        return float("inf")
    k = int(np.ceil(limit)) + 1
    r0, c0 = max(0, r - k), max(0, c - k)
    window = mask[r0:r + k + 1, c0:c + k + 1]  # the wrong side in a window: no whole-slice op
    if label == 1:
        window = ~window
    if window.all():
        return float("inf")
    # the window's own border is no edge: pad with the wrong side
    depth = ndimage.distance_transform_edt(np.pad(window, 1, constant_values=True))
    return float(depth[r - r0 + 1, c - c0 + 1])
