"""Image evidence for propagation: contrast and the half-maximum outline of a propagated object.

People outline a nucleus where its visible edge is, about half of its brightness above the
background (the annotation convention of issue 19). Along z the model's own masks of small or
blurred nuclei miss that edge: they take in part of the blur halo on some slices and stop a
slice or two early or late at the object's dim ends; on tiny dim nuclei the model may find
nothing at the click at all. :func:`half_max_outlines` redraws every propagated object from the
slices themselves, with the model's masks and the user's click as its support:

1. the object's *level* lies a fraction ``level`` of the way from its local background (the
   30th percentile of a band 6-12 px around its mask on its reference slice, other objects
   left out) to its brightness (the 80th percentile inside that mask's core, its pixels at
   least a quarter of its largest depth inside), on the stack smoothed by a Gaussian of
   ``SMOOTH`` = (1, 2, 2) (slices, rows, columns) against the noise. By default the fraction
   follows the object's size (:data:`LEVEL_BY_RADIUS`): 0.56 up to a radius of 8 px, 0.44
   from 16 px, linear between (the 80th percentile of a small blurred nucleus lies further
   below its peak than a large flat one's). When that mask has at most :data:`SMALL_MASK`
   pixels (the model found little or nothing), the object is measured on a disc of
   :data:`CLICK_RADIUS` px at its click instead, against a band 2-8 px away, at
   :data:`CLICK_LEVEL`;
2. touching objects are split by a watershed of the smoothed crop, flooded from each nearby
   object's marker (the inner half of its reference mask by depth, or the brightest voxel
   near its click), so that the boundary between two nuclei follows the darkest path between
   them;
3. its new region is the 3D connected piece, of its own basin above its level, that holds the
   brightest voxel near its click (else the one that overlaps the model's masks most), inside
   its support: the masks grown by ``GROW_PX`` = 3 px in each slice and ``GROW_SLICES`` = 4
   slices along the axis (the half-maximum of a small nucleus under an axial blur several times
   the lateral one reaches several slices past where the model stops), and a box of
   ``CLICK_REACH_PX`` = 12 px and ``CLICK_REACH_SLICES`` = 8 slices around the click;
4. holes inside each slice's mask are filled (a textured nucleus is one object).

An object whose mask is not brighter than its background (dark objects on a bright background)
or whose region would be empty keeps the model's masks. Measured on held-out synthetic
stacks (docs/propagation.md, "v0.22"): mean 3D IoU on the tuning stacks (held-out / crowded
/ small-dense) 0.707 / 0.574 / 0.309 with v0.21's outline, 0.751 / 0.606 / 0.381 now; about
0.8 s for a 24 x 512 x 512 stack of 35 nuclei.

Slices are ``(H, W)`` or ``(H, W, 3)`` (RGB is averaged to gray); slice indices count along
the propagation axis.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from scipy import ndimage
from skimage.segmentation import watershed

from ..engine.masks import bounding_box
from .mask_stack import Propagation

if TYPE_CHECKING:  # pragma: no cover
    from .propagation import Seed

__all__ = ["half_max_outlines"]

#: Gaussian sigma of the smoothing, (slices, rows, columns).
SMOOTH = (1.0, 2.0, 2.0)
#: Pixels and slices the model's masks grow by to make an object's support.
GROW_PX, GROW_SLICES = 3, 4
#: The background band around the reference mask, (from, to] pixels (clear of the blur of its
#: edge), and the percentile of its smoothed intensities taken as the background (below the
#: median: in crowded tissue the band takes in the blur of neighbours).
BAND = (6.0, 12.0)
BACKGROUND_PERCENTILE = 30.0
#: The reference mask's pixels at least ``CORE`` of its largest depth (distance to its edge)
#: inside are the object's watershed marker; the ``BRIGHTNESS_PERCENTILE`` of the smoothed
#: intensities of those at least ``BRIGHT_CORE`` of it inside is its brightness (the core of
#: a mask that took in the halo or a piece of background still lies on the nucleus).
CORE, BRIGHT_CORE, BRIGHTNESS_PERCENTILE = 0.5, 0.25, 80.0
#: The default level: ``(radius from, radius to, level from, level to)``, radii in pixels of
#: the reference mask's equivalent disc, linear between them.
LEVEL_BY_RADIUS = (8.0, 16.0, 0.56, 0.44)
#: A reference mask of at most this many pixels (the model found little or nothing at the
#: click) is not trusted: the object is measured on a disc of ``CLICK_RADIUS`` px at its click.
SMALL_MASK, CLICK_RADIUS = 20, 2
#: The background band around that disc, (from, to] pixels, and the level there.
CLICK_BAND, CLICK_LEVEL = (2.0, 8.0), 0.45
#: The support around a click: this many pixels and slices either side of it.
CLICK_REACH_PX, CLICK_REACH_SLICES = 12, 8
_PAD_PX = int(max(BAND[1], CLICK_BAND[1])) + 4  # a crop's margin: band and smoothing fit
_PAD_SLICES = GROW_SLICES + 2


def gray(image: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """One slice as float32 ``(H, W)``: RGB(A) is averaged over its first three channels."""
    arr = np.asarray(image, dtype=np.float32)
    return arr[..., :3].mean(axis=-1) if arr.ndim == 3 else arr


def contrast(image: np.ndarray, mask: np.ndarray, ring: int = 3) -> float:
    """Mean intensity inside ``mask`` minus the mean in a ``ring`` px band around it."""
    box = bounding_box(mask)
    if box is None:
        return 0.0
    h, w = mask.shape
    r0, r1 = max(box[0] - ring, 0), min(box[2] + ring + 1, h)
    c0, c1 = max(box[1] - ring, 0), min(box[3] + ring + 1, w)
    m = mask[r0:r1, c0:c1]
    band = ndimage.binary_dilation(m, iterations=ring) & ~m
    if not band.any():
        return 0.0
    crop = image[r0:r1, c0:c1]
    return float(np.nanmean(crop[m]) - np.nanmean(crop[band]))


def half_max_outlines(
    result: Propagation,
    slice_image: Callable[[int], npt.NDArray],
    n_slices: int,
    seeds: Mapping[int, Sequence[Seed]],
    *,
    level: float | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> Propagation:
    """Redraw each propagated object at ``level`` of its brightness above its background.

    Parameters
    ----------
    result : Propagation
        Changed in place: each object's masks, and scores of the slices it gains (those of its
        nearest slice, or 0 for an object the model did not find; slices it loses lose their
        score).
    slice_image : callable
        ``slice_image(i)`` returns slice ``i``, ``(H, W)`` or ``(H, W, 3)``; each slice is read
        once.
    n_slices : int
        Length of the propagation axis.
    seeds : mapping
        ``object_id -> its seeds`` (:class:`~napari_sam.workflows.propagation.Seed`). Its
        brightness and background are measured on the seed slice where its mask is largest (on
        its largest mask if it has none), or at its first positive click when that mask has at
        most :data:`SMALL_MASK` pixels; a mask given as it is (score ``inf``: a user's
        annotation) is not redrawn. An object without any mask (the model found nothing at its
        click) is drawn from its click alone; without a click, it stays as it is.
    level : float, optional
        In (0, 1): the fraction of the brightness above the background where the outline
        lies; None (default): by the object's size (:data:`LEVEL_BY_RADIUS`).
    cancelled : callable, optional
        Polled before every slice read and every object; once it returns True the function
        returns at once and ``result`` is left as it was (nothing is written until the end).

    Returns
    -------
    Propagation
        ``result``.
    """
    if level is not None and not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    hw = next((stack.slice_shape(i) for stack in result.masks.values() for i in stack), None)
    if hw is None:
        return result
    objects = {}
    for oid in result.masks:
        click = _click(seeds.get(oid, ()), n_slices, hw)
        if (box := _object_box(result, oid, n_slices, hw, click)) is not None:
            objects[oid] = (box, click)
    stop = (lambda: False) if cancelled is None else cancelled
    crops = _read_crops({oid: box for oid, (box, _) in objects.items()}, slice_image, n_slices,
                        stop)
    measured = {}
    for oid, (box, click) in objects.items():
        if oid not in crops or stop():
            return result
        at = [int(s.index) for s in seeds.get(oid, ()) if int(s.index) in result.masks[oid]]
        ref = max(at, key=lambda i: np.count_nonzero(result.masks[oid].crop(i)[2]), default=None)
        near = [o for o, (b, _) in objects.items() if all(  # objects whose crops meet this one's
            p.start < q.stop and q.start < p.stop for p, q in zip(b, box))]
        # the raw crop is not needed once smoothed: dropped as we go
        measured[oid] = _measure(result, oid, near, box, crops.pop(oid), ref, click, level)
    new = {}
    for oid, m in measured.items():
        if stop():
            return result
        if m is None:
            continue
        box, click = objects[oid]
        markers = {o: measured[o].marker for o in m.near if measured.get(o) is not None}
        region = _outline(oid, m, box, markers, click)
        if region is not None:
            new[oid] = (box, region)
    for oid, (box, region) in new.items():  # written after all are computed: same inputs
        given = {i for i, v in result.scores.get(oid, {}).items() if v == np.inf}
        _store(result, oid, box, region, given, hw)
    return result


def _click(seeds: Sequence[Seed], n_slices: int, hw) -> tuple[int, int, int] | None:
    """The first positive point of an object's seeds, ``(slice, row, col)`` in the stack."""
    for s in seeds:
        if s.points is None or np.size(s.points) == 0 or not 0 <= s.index < n_slices:
            continue
        points = np.asarray(s.points, float).reshape(-1, 2)
        labels = np.ones(len(points)) if s.labels is None else np.asarray(s.labels).reshape(-1)
        positive = points[labels == 1]
        if len(positive):
            r, c = positive[0]
            return (int(s.index), int(np.clip(round(r), 0, hw[0] - 1)),
                    int(np.clip(round(c), 0, hw[1] - 1)))
    return None


def _object_box(result: Propagation, oid: int, n_slices: int, hw, click):
    """The crop an object is redrawn in: slices, rows, columns (with margins), or None.

    It holds the object's masks and, with a click, the support around the click.
    """
    stack = result.masks[oid]
    rows, cols, zs = [], [], []
    for i in stack:
        r0, c0, crop = stack.crop(i)
        if crop.any():
            zs.append(i)
            rows += [r0, r0 + crop.shape[0]]
            cols += [c0, c0 + crop.shape[1]]
    if click is not None:
        z, r, c = click
        zs += [z - CLICK_REACH_SLICES, z + CLICK_REACH_SLICES]
        rows += [r - CLICK_REACH_PX, r + CLICK_REACH_PX + 1]
        cols += [c - CLICK_REACH_PX, c + CLICK_REACH_PX + 1]
    if not zs:
        return None
    return (slice(max(min(zs) - _PAD_SLICES, 0), min(max(zs) + _PAD_SLICES + 1, n_slices)),
            slice(max(min(rows) - _PAD_PX, 0), min(max(rows) + _PAD_PX, hw[0])),
            slice(max(min(cols) - _PAD_PX, 0), min(max(cols) + _PAD_PX, hw[1])))


def _read_crops(boxes, slice_image, n_slices, stop) -> dict[int, np.ndarray]:
    """Each object's image crop ``(z, y, x)`` float32, reading every needed slice once (empty
    if ``stop()`` turned True)."""
    parts: dict[int, list[np.ndarray]] = {oid: [] for oid in boxes}
    for i in range(n_slices):
        users = [oid for oid, (zs, _, _) in boxes.items() if zs.start <= i < zs.stop]
        if users and stop():
            return {}
        if users:
            plane = gray(slice_image(i))
            for oid in users:
                parts[oid].append(plane[boxes[oid][1:]])
    return {oid: np.stack(p) for oid, p in parts.items()}


def _masks_in(result: Propagation, oid: int, near, box) -> tuple[np.ndarray, np.ndarray]:
    """The object's masks and the union of the ``near`` objects' masks in its crop."""
    zs, ys, xs = box
    own = np.zeros((zs.stop - zs.start, ys.stop - ys.start, xs.stop - xs.start), bool)
    others = np.zeros_like(own)
    for other in near:
        stack = result.masks[other]
        target = own if other == oid else others
        for i in stack:
            if not zs.start <= i < zs.stop:
                continue
            r0, c0, crop = stack.crop(i)
            r1, c1 = r0 + crop.shape[0], c0 + crop.shape[1]
            a0, a1 = max(r0, ys.start), min(r1, ys.stop)
            b0, b1 = max(c0, xs.start), min(c1, xs.stop)
            if a0 < a1 and b0 < b1:
                target[i - zs.start, a0 - ys.start:a1 - ys.start, b0 - xs.start:b1 - xs.start] |= (
                    crop[a0 - r0:a1 - r0, b0 - c0:b1 - c0])
    return own, others & ~own


@dataclass
class _Measured:
    """One object measured in its crop (``(z, y, x)`` arrays, voxels in stack coordinates)."""

    near: list[int]  # objects whose crops meet this one's (itself included)
    own: np.ndarray  # bool, its masks
    smooth: np.ndarray  # float32, the smoothed crop
    threshold: float  # the intensity of its outline
    background: float
    marker: np.ndarray  # (n, 3) int, where its watershed basin starts
    anchor: tuple[int, int, int] | None  # the brightest voxel near its click


def _measure(result, oid, near, box, image, ref, click, level) -> _Measured | None:
    """The object's outline level and watershed marker, or None to keep its masks."""
    own, others = _masks_in(result, oid, near, box)
    smooth = ndimage.gaussian_filter(image, SMOOTH)
    origin = np.array([b.start for b in box])
    areas = own.sum(axis=(1, 2))
    k = None if ref is None else int(ref) - box[0].start
    if k is None or not 0 <= k < len(areas) or areas[k] == 0:
        k = int(np.argmax(areas))
    anchor = None
    if click is not None:  # the brightest voxel within a slice and 2 px of the click
        z, r, c = np.array(click) - origin
        win = smooth[max(z - 1, 0):z + 2, max(r - 2, 0):r + 3, max(c - 2, 0):c + 3]
        anchor = tuple(int(v) for v in np.array(np.unravel_index(np.argmax(win), win.shape))
                       + np.maximum(np.array([z - 1, r - 2, c - 2]), 0))
    if areas[k] <= SMALL_MASK:  # the model found little or nothing: measure at the click
        if click is None:
            return None
        k = int(click[0] - origin[0])
        rr, cc = np.ogrid[:own.shape[1], :own.shape[2]]
        mask = (rr - (click[1] - origin[1])) ** 2 + (cc - (click[2] - origin[2])) ** 2 <= (
            CLICK_RADIUS ** 2)
        marker, core = None, mask
    else:
        mask = own[k]
        depth = ndimage.distance_transform_edt(mask)  # its core: an oversized mask's too
        marker = np.argwhere(depth >= CORE * depth.max())
        core = depth >= BRIGHT_CORE * depth.max()
        marker = np.column_stack([np.full(len(marker), k), marker])
    dist = ndimage.distance_transform_edt(~mask)
    lo, hi = CLICK_BAND if marker is None else BAND
    band = (dist > lo) & (dist <= hi)
    if np.count_nonzero(band & ~others[k]) >= 10:
        band &= ~others[k]
    if not band.any():
        return None
    background = float(np.percentile(smooth[k][band], BACKGROUND_PERCENTILE))
    brightness = float(np.percentile(smooth[k][core], BRIGHTNESS_PERCENTILE))
    if not brightness > background:  # not a bright object on a darker background
        return None
    if level is None and marker is None:
        level = CLICK_LEVEL
    elif level is None:
        r0, r1, l0, l1 = LEVEL_BY_RADIUS
        level = float(np.interp(np.sqrt(np.count_nonzero(mask) / np.pi), (r0, r1), (l0, l1)))
    return _Measured(near, own, smooth, background + level * (brightness - background), background,
                     (np.array([anchor]) if marker is None else marker) + origin, anchor)


def _outline(oid: int, m: _Measured, box, markers: Mapping[int, np.ndarray], click
             ) -> np.ndarray | None:
    """The object's new region in its crop, ``(z, y, x)`` bool, or None to keep its masks.

    ``markers``: ``object id -> (n, 3)`` voxels where each nearby object's basin starts.
    """
    support = ndimage.binary_dilation(m.own, np.ones((1, 3, 3), bool), iterations=GROW_PX)
    support = ndimage.binary_dilation(support, np.ones((3, 1, 1), bool),
                                      iterations=GROW_SLICES)
    origin = np.array([b.start for b in box])
    if click is not None:
        z, r, c = np.array(click) - origin
        support[max(z - CLICK_REACH_SLICES, 0):z + CLICK_REACH_SLICES + 1,
                max(r - CLICK_REACH_PX, 0):r + CLICK_REACH_PX + 1,
                max(c - CLICK_REACH_PX, 0):c + CLICK_REACH_PX + 1] = True
    above = (m.smooth > m.threshold) & support
    if not above.any():
        return None
    seeds = np.zeros(m.own.shape, np.int32)  # touching objects split along the darkest path
    for other in sorted(markers, key=lambda o: o == oid):  # its own marker is written last
        vox = markers[other] - origin
        vox = vox[np.all((vox >= 0) & (vox < seeds.shape), axis=1)]
        seeds[tuple(vox.T)] = other
    basins = watershed(-m.smooth, seeds, mask=m.smooth > m.background)
    pieces, n = ndimage.label(above & (basins == oid))
    if n == 0:
        return None
    if m.anchor is not None and pieces[m.anchor]:
        region = pieces == pieces[m.anchor]
    else:
        overlap = ndimage.sum_labels(m.own, pieces, index=np.arange(1, n + 1))
        if not overlap.max() > 0:
            return None
        region = pieces == 1 + int(np.argmax(overlap))
    return np.stack([ndimage.binary_fill_holes(p) for p in region])


def _store(result: Propagation, oid: int, box, region: np.ndarray, keep: set[int],
           hw) -> None:
    """Write an object's new region into ``result`` (slices in ``keep`` stay as they are)."""
    stack = result.masks[oid]
    scores = result.scores.setdefault(oid, {})
    old = [i for i in sorted(stack) if i in scores]
    before = dict(scores)
    zs, rows, cols = box
    for j in range(region.shape[0]):
        i = zs.start + j
        if i in keep:
            continue
        if not region[j].any():
            if i in stack:
                del stack[i]
                scores.pop(i, None)
            continue
        if i not in scores:
            scores[i] = before[min(old, key=lambda s: abs(s - i))] if old else 0.0
        stack.set_crop(i, rows.start, cols.start, region[j], hw)
