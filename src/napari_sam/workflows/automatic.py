"""Automatic "segment everything": instance labels of a whole slice or stack without prompts.

SAM's fully automatic data-engine stage (Kirillov et al. 2023, sec. 4 and appendix B): a regular
grid of single-point prompts is decoded with the three-mask (multimask) output; candidates are
filtered by the predicted IoU and the stability score, duplicates are removed by non-maximum
suppression, and tiny islands and holes are cleaned up. For small objects (microscopy at low
magnification) the image can also be processed in overlapping crops at finer scales.

Departures from the paper, for speed on a CPU (the decoder, not the encoder, dominates here: a
grid of 32 x 32 points is 1024 decodes) and for microscopy:

- by default the point prompts go on the image's bright blobs (:func:`blob_points`, one per
  nucleus or cell, near its centre) instead of a grid (``point_source``), and each point is
  decoded against a window of the embedding around it (``decode_window``);
- points are visited strongest blob first (grid: coarse to fine), and a point that falls on an
  object already found is not decoded (``skip_covered``); filtering happens on the
  low-resolution logits and only the survivors are upscaled;
- a candidate that is a part of a larger, convex candidate scoring nearly as well is dropped
  (``part_score_margin``): the blob points on the chromocenters of a textured nucleus are
  ambiguous prompts, and their part masks often score higher than the nucleus;
- the output is an instance label image without overlaps: masks are painted greedily by score,
  each keeping only pixels no better mask took, and dropped if too little is left; touching
  objects whose union is convex are then merged (``merge_solidity``).

Images are ``(H, W)`` or ``(H, W, 3)``; stacks ``(Z, Y, X)``. Nothing here imports Qt or napari.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from ..engine.predictor import ImageEmbedding, SamPredictor
from ..engine.preprocess import pixel_noise
from ..engine.refine import slice_gray
from .candidates import (
    _Candidate,
    _decode_crop,
    _decode_points,  # noqa: F401 (the tests import it from here)
    _refined,
)

if TYPE_CHECKING:  # pragma: no cover
    from ..modeling import Sam

__all__ = [
    "AutomaticParams",
    "blob_points",
    "link_slices",
    "segment_everything",
    "segment_everything_nd",
]

POINT_SOURCES = ("blobs", "grid", "blobs+grid")

#: point_source -> (pred_iou_thresh, stability_score_thresh) when those are not given: blob
#: points sit on objects, so their masks are kept more readily than the grid's, most of whose
#: points fall on background (measured: docs/automatic.md).
FILTER_DEFAULTS = {"blobs": (0.3, 0.75), "grid": (0.7, 0.9), "blobs+grid": (0.5, 0.9)}

#: ``part_score_margin``: a part has at least this fraction of its area inside the whole ...
PART_INSIDE = 0.9
#: ... the whole is at least this many times larger ...
PART_GROWTH = 1.2
#: ... and at least this convex (area / convex hull area): two touching nuclei together have a
#: waist and are not taken for one whole.
WHOLE_SOLIDITY = 0.9


@dataclass
class AutomaticParams:
    """Settings of :func:`segment_everything`. Defaults were chosen for fluorescent nuclei with
    the default model (see docs/automatic.md for the measurements).

    Attributes
    ----------
    points_per_side : int
        The prompt grid has ``points_per_side`` x ``points_per_side`` points over the image (or
        over each crop of layer 0).
    points_per_batch : int
        Points decoded together. Larger batches are not faster on a CPU (the decoder is
        memory-bound; 16 was 12 % faster than 64 on a 1024 x 1024 slice) and smaller ones let
        more points be skipped as covered.
    pred_iou_thresh : float or None
        Keep candidates whose predicted IoU is at least this. None: the value measured best
        for ``point_source`` (:data:`FILTER_DEFAULTS`: 0.3 with blob points, which sit on
        objects, 0.7 with the grid, most of whose points do not; docs/automatic.md).
    stability_score_thresh : float or None
        Keep candidates whose stability score is at least this. None: 0.75 with blob points,
        0.9 with the grid (:data:`FILTER_DEFAULTS`).
    stability_offset : float
        Logit offset of the stability score (IoU of the mask at ``+offset`` and ``-offset``).
    box_nms_thresh : float
        Non-maximum suppression: of two candidates whose boxes overlap by more than this IoU,
        the lower-scoring is dropped.
    min_area : int
        Objects (and islands of an object) smaller than this many pixels are removed.
    max_hole_area : int
        Holes inside an object up to this many pixels are filled.
    max_area_fraction : float
        Candidates covering more than this fraction of the image (or crop) are background
        and dropped.
    crop_n_layers : int
        0: the whole image only. ``k``: also layers 1..k of ``(2**i)**2`` overlapping crops,
        each embedded separately, so small objects are seen larger.
    crop_overlap : float
        Overlap of neighbouring crops as a fraction of the crop side.
    crop_n_points_downscale : int
        The grid of crop layer ``i`` has ``points_per_side / downscale**i`` points per side.
    point_source : {"blobs", "grid", "blobs+grid"}
        Where the point prompts go. ``"grid"`` is the paper's regular grid of
        ``points_per_side`` squared points. ``"blobs"`` puts one point on each bright blob of the
        image (:func:`blob_points`: maxima of a scale-normalised Laplacian of Gaussian), which
        is where fluorescent nuclei and cells are, near their centres (where a single point
        prompt works best), and costs one decode per blob instead of one per grid cell. For
        dark objects on a bright background or for textured images use ``"grid"``;
        ``"blobs+grid"`` decodes the blobs first, then the grid points they did not cover.
    blob_threshold : float
        A blob needs a Laplacian-of-Gaussian response this many times what the image's noise
        gives at its scale. Lower finds dimmer
        objects and more noise (rejected later by the IoU and stability filters, at the cost
        of a decode each).
    blob_min_sigma : float
        Smallest blob scale in pixels of the model's input (a nucleus of radius ``r`` responds
        most at ``r / sqrt(2)``); the largest is an eighth of the image side.
    zoom_below_radius : float
        With blob points and no crop layers: when the image is at least as large as the
        model's input and its objects' typical radius (:func:`napari_sam.engine.zoom.typical_radius`)
        at the model's input scale is below this many pixels, the image is segmented as 2 x 2
        overlapping crops (each embedded on its own, seen up to twice as large) instead of as
        a whole. 0 turns it off.
    decode_window : int
        Decode each point against only the ``decode_window`` x ``decode_window`` tokens of the
        image embedding around it (the decoder's cost is proportional to the tokens: 24 of 64
        is ~7x less); masks reaching the window's inner edge are decoded again on the whole
        grid. 0 decodes every point on the whole grid, as SAM does.
    skip_covered : bool
        Do not decode points that fall on a candidate already kept (the grid is visited coarse
        to fine, blobs strongest first), nor, with blob points, on the most likely mask of an
        earlier point that the filters rejected (the same object, prompted again, would give
        the same mask).
    skip_background : bool
        Also skip grid points that fall on a confident mask too large to be an object (the
        background found from an earlier point).
    min_free_fraction : float
        When painting the labels, a mask keeps only pixels no better mask took; it is dropped
        if less than this fraction of it is left.
    link_overlap : float
        Stacks: masks on neighbouring slices are one 3D object when their overlap, relative to
        the smaller of the two, is at least this (IoU would cut the small caps at the ends of
        an object).
    part_score_margin : float or None
        Prefer whole objects to their parts: a candidate lying (:data:`PART_INSIDE` of its
        area) inside a larger candidate (at least :data:`PART_GROWTH` times its area) that is
        convex (solidity :data:`WHOLE_SOLIDITY`) and scores at most this much below it is
        dropped before non-maximum suppression. Textured nuclei (bright chromocenters put
        several blob points on one nucleus) otherwise come out in pieces (measured: held-out
        F1@0.5 0.858 -> 0.892, docs/automatic.md). None: keep parts (the paper's behaviour).
    merge_solidity : float or None
        After painting, two touching objects whose union is convex (its area at least this
        fraction of its convex hull's) are one object the model proposed only in pieces, and
        are merged (repeatedly, most convex union first). Two touching nuclei have a waist
        where they meet (two touching discs: 0.88). Measured with the part rule: held-out
        F1@0.5 0.892 -> 0.8996 (docs/automatic.md). None: no merging.
    refine : bool
        Redraw the kept masks at the slice's resolution with the model's mask refiner, if it
        has one (:class:`napari_sam.modeling.MaskRefiner`).
    """

    points_per_side: int = 24
    points_per_batch: int = 16
    pred_iou_thresh: float | None = None
    stability_score_thresh: float | None = None
    stability_offset: float = 1.0
    box_nms_thresh: float = 0.7
    min_area: int = 12
    max_hole_area: int = 64
    max_area_fraction: float = 0.25
    crop_n_layers: int = 0
    crop_overlap: float = 0.25
    crop_n_points_downscale: int = 1
    point_source: str = "blobs"
    blob_threshold: float = 4.0
    blob_min_sigma: float = 1.5
    zoom_below_radius: float = 10.0
    decode_window: int = 24
    skip_covered: bool = True
    skip_background: bool = True
    min_free_fraction: float = 0.6
    link_overlap: float = 0.5
    part_score_margin: float | None = 0.1
    merge_solidity: float | None = 0.95
    refine: bool = True

    def __post_init__(self) -> None:
        if self.point_source not in POINT_SOURCES:
            raise ValueError(
                f"point_source must be one of {POINT_SOURCES}, got {self.point_source!r}"
            )
        iou, stability = FILTER_DEFAULTS[self.point_source]
        if self.pred_iou_thresh is None:
            self.pred_iou_thresh = iou
        if self.stability_score_thresh is None:
            self.stability_score_thresh = stability
        for name in ("points_per_side", "points_per_batch", "crop_n_points_downscale"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        for name in ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh",
                     "max_area_fraction", "min_free_fraction", "link_overlap"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")
        if not self.blob_threshold > 0 or not self.blob_min_sigma > 0:
            raise ValueError("blob_threshold and blob_min_sigma must be > 0")
        if isinstance(self.decode_window, bool) or self.decode_window < 0:
            raise ValueError(f"decode_window must be an int >= 0, got {self.decode_window!r}")
        if self.zoom_below_radius < 0:
            raise ValueError(f"zoom_below_radius must be >= 0, got {self.zoom_below_radius!r}")
        if not 0 <= self.crop_overlap < 1:
            raise ValueError(f"crop_overlap must be in [0, 1), got {self.crop_overlap!r}")
        if self.crop_n_layers < 0 or self.crop_n_layers > 3:
            raise ValueError(f"crop_n_layers must be 0..3, got {self.crop_n_layers!r}")
        if self.min_area < 0 or self.max_hole_area < 0 or self.stability_offset < 0:
            raise ValueError("min_area, max_hole_area and stability_offset must be >= 0")
        for name in ("part_score_margin", "merge_solidity"):
            v = getattr(self, name)
            if v is not None and not 0 <= v <= 1:
                raise ValueError(f"{name} must be None or in [0, 1], got {v!r}")


def _crop_boxes(hw: tuple[int, int], n_layers: int, overlap: float) -> list[tuple[int, tuple]]:
    """``(layer, (r0, c0, r1, c1))`` of the whole image and the crops of each layer."""
    h, w = hw
    boxes = [(0, (0, 0, h, w))]
    for layer in range(1, n_layers + 1):
        n = 2**layer
        out = []
        for size, n_ in ((h, n), (w, n)):
            side = int(np.ceil(size / (n_ - (n_ - 1) * overlap)))
            starts = [int(round(k * (size - side) / (n_ - 1))) for k in range(n_)]
            out.append([(s, min(s + side, size)) for s in starts])
        boxes += [(layer, (r0, c0, r1, c1)) for r0, r1 in out[0] for c0, c1 in out[1]]
    return boxes


def _grid(n: int, hw: tuple[int, int]) -> npt.NDArray[np.float64]:
    """``n * n`` points ``(row, col)`` at cell centres, ordered coarse to fine."""
    h, w = hw
    idx = np.arange(n)
    rr, cc = np.meshgrid(idx, idx, indexing="ij")
    rr, cc = rr.ravel(), cc.ravel()
    # level: the largest power of two dividing both indices (0 first, so the first points of
    # the order spread over the whole image)
    level = np.zeros(rr.size, dtype=np.int64)
    for k in range(1, int(np.log2(max(n, 1))) + 1):
        level[(rr % 2**k == 0) & (cc % 2**k == 0)] = k
    order = np.lexsort((cc, rr, -level))
    pts = np.stack([(rr[order] + 0.5) * h / n, (cc[order] + 0.5) * w / n], axis=1)
    return pts - 0.5  # pixel centres


def blob_points(
    image2d: npt.ArrayLike,
    intensity_range: tuple[float, float] | None = None,
    *,
    work_size: int = 512,
    min_sigma: float = 1.5,
    threshold: float = 4.0,
    min_contrast: float = 0.01,
) -> npt.NDArray[np.float64]:
    """Centres of bright blobs (nuclei, cells) of a 2D slice, strongest first.

    The slice is normalised to ``intensity_range``, downsampled so that its longer side is at
    most ``work_size`` (the scale at which the model sees it), and filtered with the
    scale-normalised Laplacian of Gaussian ``-sigma**2 * LoG`` at scales ``min_sigma * 1.5**k``
    up to an eighth of the side. Each scale's response is divided by what the image's pixel
    noise gives at that scale (the noise estimated robustly with Immerkaer's second-difference
    filter), or by ``min_contrast`` if that is larger, so ``threshold`` is in noise units;
    the maxima of the strongest response over scales above ``threshold`` are the blobs. A blob
    suppresses weaker ones within its own radius (``sqrt(2) * sigma``).

    Parameters
    ----------
    image2d : array-like, shape (H, W) or (H, W, 3)
        Any dtype; RGB is averaged to gray.
    intensity_range : (float, float), optional
        Normalisation range (default: the 0.5 and 99.5 percentiles of the slice).
    work_size : int
        Longest side of the image the blobs are looked for in (the model's input size).
    min_sigma : float
        Smallest scale, in pixels at the working size.
    threshold : float
        In standard deviations of the noise's response.
    min_contrast : float
        Floor of the response unit, in normalised intensity (0..1): on a nearly noise-free image
        a blob still needs this contrast times ``threshold``.

    Returns
    -------
    numpy.ndarray, shape (N, 2), float
        ``(row, col)`` in pixels of ``image2d``, by decreasing response.
    """
    from scipy.spatial import cKDTree
    from skimage.feature import peak_local_max
    from skimage.transform import downscale_local_mean, resize

    gray = np.asarray(image2d, dtype=np.float32)
    if gray.ndim == 3:
        gray = gray[..., :3].mean(axis=-1)
    gray = np.nan_to_num(gray, nan=float(np.nanmedian(gray)) if np.isfinite(gray).any() else 0.0)
    lo, hi = (
        np.percentile(gray, (0.5, 99.5)) if intensity_range is None else intensity_range
    )
    gray = np.clip((gray - lo) / max(float(hi - lo), 1e-12), 0.0, 1.0)
    scale = max(1.0, max(gray.shape) / work_size)
    if scale > 1:
        small = (max(1, round(gray.shape[0] / scale)), max(1, round(gray.shape[1] / scale)))
        gray = resize(gray, small, anti_aliasing=True)
    sigmas = [min_sigma]
    while sigmas[-1] * 1.5 <= max(gray.shape) / 8:
        sigmas.append(sigmas[-1] * 1.5)
    # pixel noise and what unit white noise gives at each scale: the threshold is in noise units
    noise = pixel_noise(gray)
    # scale-normalised LoG of unit white noise has std proportional to 1 / sigma (its kernel's
    # L2 norm): measured once at sigma 2, scaled to the others
    unit = np.random.default_rng(0).standard_normal((128, 128)).astype(np.float32)
    white2 = float(np.std((4.0 * ndimage.gaussian_laplace(unit, 2.0))[16:-16, 16:-16]))
    best = np.full(gray.shape, -np.inf, dtype=np.float32)
    best_sigma = np.zeros(gray.shape, dtype=np.float32)
    for sigma in sigmas:
        # large scales on a block-averaged image (the filter is scale-normalised, so the
        # response is the same up to the small extra blur of the blocks), then back
        f = max(1, int(sigma // 2))
        if f > 1:
            small = downscale_local_mean(gray, (f, f))
            r = -(sigma / f) ** 2 * ndimage.gaussian_laplace(small, sigma / f)
            r = resize(r, gray.shape, order=1, mode="edge", anti_aliasing=False)
        else:
            r = -(sigma**2) * ndimage.gaussian_laplace(gray, sigma)
        r = r / max(noise * white2 * 2.0 / sigma, min_contrast)
        better = r > best
        best[better] = r[better]
        best_sigma[better] = sigma
    peaks = peak_local_max(best, min_distance=1, threshold_abs=threshold, exclude_border=False)
    if len(peaks) == 0:
        return np.zeros((0, 2))
    peaks = peaks[np.argsort(-best[peaks[:, 0], peaks[:, 1]], kind="stable")]
    radius = np.sqrt(2) * best_sigma[peaks[:, 0], peaks[:, 1]]
    tree = cKDTree(peaks)
    keep = np.ones(len(peaks), dtype=bool)
    for i in range(len(peaks)):  # strongest first: a blob suppresses weaker ones inside it
        if keep[i]:
            near = np.asarray(tree.query_ball_point(peaks[i], radius[i]), dtype=np.intp)
            keep[near[near > i]] = False
    pts = (peaks[keep] + 0.5) * scale - 0.5
    h, w = np.shape(image2d)[:2]
    pts = np.clip(pts, 0, [h - 1, w - 1]).astype(np.float64)
    return pts


def _objects_too_small(image: np.ndarray, intensity_range, img_size: int,
                       params: AutomaticParams) -> bool:
    """Whether blob mode should zoom in: the image is at least as large as the model's input
    and its objects' typical radius there is below ``params.zoom_below_radius`` pixels.

    (The blobs' own radii are no measure of the objects' size: textured nuclei hold several
    small blobs each, and zooming in on large nuclei cut them into pieces.)
    """
    if (
        "blobs" not in params.point_source
        or params.crop_n_layers > 0
        or not params.zoom_below_radius
        or max(image.shape[:2]) < img_size
    ):
        return False
    from ..engine.zoom import typical_radius

    radius = typical_radius(image, intensity_range)
    if radius is None:
        return False
    return radius * img_size / max(image.shape[:2]) < params.zoom_below_radius


def _prompt_points(crop: np.ndarray, intensity_range, layer: int, img_size: int,
                   params: AutomaticParams) -> npt.NDArray[np.float64]:
    """The point prompts ``(N, 2)`` of one crop (crop coordinates), in decoding order."""
    hw = crop.shape[:2]
    parts = []
    if "blobs" in params.point_source:
        parts.append(blob_points(crop, intensity_range, work_size=img_size,
                                 min_sigma=params.blob_min_sigma,
                                 threshold=params.blob_threshold))
    if "grid" in params.point_source:
        n = max(1, params.points_per_side // params.crop_n_points_downscale**layer)
        parts.append(_grid(n, hw))
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes ``(N, 4)`` and ``(M, 4)`` as ``(r0, c0, r1, c1)`` half-open."""
    r0 = np.maximum(a[:, None, 0], b[None, :, 0])
    c0 = np.maximum(a[:, None, 1], b[None, :, 1])
    r1 = np.minimum(a[:, None, 2], b[None, :, 2])
    c1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(r1 - r0, 0, None) * np.clip(c1 - c0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def _nms(cands: list[_Candidate], thresh: float) -> list[_Candidate]:
    if not cands:
        return []
    cands = sorted(cands, key=lambda c: -c.score)
    boxes = np.array([c.box for c in cands], dtype=np.float64)
    iou = _box_iou(boxes, boxes)
    keep = np.ones(len(cands), dtype=bool)
    for i in range(len(cands)):
        if keep[i]:
            later = np.arange(i + 1, len(cands))
            keep[later[iou[i, i + 1:] > thresh]] = False
    return [c for c, k in zip(cands, keep) if k]


def _solidity(mask: np.ndarray) -> float:
    """Area of ``mask`` over the area of its convex hull (1 for a convex shape)."""
    from skimage.morphology import convex_hull_image

    return np.count_nonzero(mask) / np.count_nonzero(convex_hull_image(mask))


def _drop_parts(cands: list[_Candidate], margin: float | None) -> list[_Candidate]:
    """Drop candidates that are parts of a larger, convex candidate scoring at most ``margin``
    less (``AutomaticParams.part_score_margin``)."""
    if margin is None or len(cands) < 2:
        return cands
    boxes = np.array([c.box for c in cands], dtype=np.int64)
    area = np.array([c.area for c in cands], dtype=np.float64)
    score = np.array([c.score for c in cands], dtype=np.float64)
    solid: dict[int, bool] = {}
    drop = np.zeros(len(cands), dtype=bool)
    for j, part in enumerate(cands):
        # wholes whose box overlap can hold PART_INSIDE of the part, larger, scoring near it
        r0 = np.maximum(boxes[:, 0], boxes[j, 0])
        c0 = np.maximum(boxes[:, 1], boxes[j, 1])
        r1 = np.minimum(boxes[:, 2], boxes[j, 2])
        c1 = np.minimum(boxes[:, 3], boxes[j, 3])
        overlap = np.clip(r1 - r0, 0, None) * np.clip(c1 - c0, 0, None)
        maybe = ((overlap >= PART_INSIDE * area[j]) & (area >= PART_GROWTH * area[j])
                 & (score >= score[j] - margin))
        for i in np.flatnonzero(maybe):
            whole = cands[i]
            inside = np.count_nonzero(
                whole.mask[r0[i] - whole.r0:r1[i] - whole.r0, c0[i] - whole.c0:c1[i] - whole.c0]
                & part.mask[r0[i] - part.r0:r1[i] - part.r0, c0[i] - part.c0:c1[i] - part.c0]
            )
            if inside < PART_INSIDE * area[j]:
                continue
            if i not in solid:
                solid[i] = _solidity(whole.mask) >= WHOLE_SOLIDITY
            if solid[i]:
                drop[j] = True
                break
    return [c for c, d in zip(cands, drop) if not d]


def _touching_pairs(labels: np.ndarray) -> np.ndarray:
    """``(K, 2)`` pairs ``(a, b)``, ``a < b``, of labels that touch (4-connectivity)."""
    found = []
    for a, b in ((labels[:-1], labels[1:]), (labels[:, :-1], labels[:, 1:])):
        edge = (a != b) & (a > 0) & (b > 0)
        found.append(np.stack([np.minimum(a[edge], b[edge]), np.maximum(a[edge], b[edge])], 1))
    pairs = np.concatenate(found)
    return np.unique(pairs, axis=0) if len(pairs) else pairs


def _merge_convex_pieces(labels: np.ndarray, min_solidity: float | None) -> np.ndarray:
    """Merge touching objects whose union is convex (``AutomaticParams.merge_solidity``);
    labels stay ``1..N``."""
    if min_solidity is None:
        return labels
    from skimage.segmentation import relabel_sequential

    labels = labels.copy()
    while True:
        boxes = ndimage.find_objects(labels)
        convex = []
        for a, b in _touching_pairs(labels):
            window = tuple(slice(min(p.start, q.start), max(p.stop, q.stop))
                           for p, q in zip(boxes[a - 1], boxes[b - 1]))
            solidity = _solidity(np.isin(labels[window], (a, b)))
            if solidity >= min_solidity:
                convex.append((solidity, int(a), int(b), window))
        merged: set[int] = set()
        for _, a, b, window in sorted(convex, key=lambda t: -t[0]):
            if a in merged or b in merged:
                continue  # its union changed: tested again on the next pass
            sub = labels[window]
            sub[sub == b] = a
            merged |= {a, b}
        if not merged:
            return relabel_sequential(labels)[0]


def _clean(mask: np.ndarray, min_area: int, max_hole: int) -> np.ndarray:
    """Fill holes up to ``max_hole`` pixels, drop islands below ``min_area``."""
    if max_hole > 0:
        holes, n = ndimage.label(~mask)
        if n:
            sizes = np.bincount(holes.ravel())
            # a hole touching the box edge is outside the object
            edge = np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))
            small = sizes <= max_hole
            small[0] = False
            small[edge] = False
            mask = mask | small[holes]
    if min_area > 0:
        parts, n = ndimage.label(mask)
        if n > 1:
            sizes = np.bincount(parts.ravel())
            big = sizes >= min_area
            big[0] = False
            if not big.any():  # keep the largest island of a small object
                big[1 + int(np.argmax(sizes[1:]))] = True
            mask = big[parts]
    return mask


def _paint(cands: list[_Candidate], hw: tuple[int, int], params: AutomaticParams) -> np.ndarray:
    """Instance labels without overlaps: greedy by score, each mask keeps the free pixels."""
    out = np.zeros(hw, dtype=np.int32)
    next_id = 1
    for c in sorted(cands, key=lambda c: (-c.score, c.area)):
        m = _clean(c.mask, params.min_area, params.max_hole_area)
        area = int(np.count_nonzero(m))
        if area < max(params.min_area, 1):
            continue
        r0, c0, r1, c1 = c.box
        window = out[r0:r1, c0:c1]
        free = m & (window == 0)
        n_free = int(np.count_nonzero(free))
        if n_free < params.min_free_fraction * area or n_free < max(params.min_area, 1):
            continue
        if n_free < area:  # what is left may fall apart: keep its largest piece
            parts, n = ndimage.label(free)
            if n > 1:
                free = parts == 1 + int(np.argmax(np.bincount(parts.ravel())[1:]))
                if np.count_nonzero(free) < max(params.min_area, 1):
                    continue
        window[free] = next_id
        next_id += 1
    return out


def segment_everything(
    model: Sam,
    image2d: npt.ArrayLike,
    *,
    params: AutomaticParams | None = None,
    intensity_range: tuple[float, float] | None = None,
    embedding: ImageEmbedding | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> npt.NDArray[np.int32]:
    """Segment every object of a 2D slice from point prompts (on its blobs, or a grid).

    Parameters
    ----------
    model : Sam
    image2d : array-like, shape (H, W) or (H, W, 3)
        Any dtype.
    params : AutomaticParams, optional
    intensity_range : (float, float), optional
        Normalisation range (pass the stack's range for a slice of a stack); by default a
        robust range of this slice.
    embedding : ImageEmbedding, optional
        The slice's embedding if already computed (only the whole-image layer uses it).
    progress : callable, optional
        ``progress(done, total)`` after each decoded batch (total is an upper bound: covered
        points are skipped).
    cancelled : callable, optional
        Polled between batches; when it returns True the objects found so far are returned.

    Returns
    -------
    numpy.ndarray, shape (H, W), int32
        Instance labels ``1..N``, 0 background, no overlaps.
    """
    params = AutomaticParams() if params is None else params
    image = np.asarray(image2d)
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        hw = image.shape[:2]
    elif image.ndim == 2:
        hw = image.shape
    else:
        raise ValueError(
            f"segment_everything takes a 2D slice (H, W) or (H, W, 3), got {image.shape}"
        )
    if min(hw) < 1:
        raise ValueError(f"the image is empty (shape {image.shape})")
    if embedding is not None and tuple(embedding.original_size) != tuple(hw):
        raise ValueError(
            f"the embedding is of a {tuple(embedding.original_size)} slice, "
            f"the image is {tuple(hw)}"
        )
    if intensity_range is None and not (image.ndim == 3 and image.dtype == np.uint8):
        from ..engine.preprocess import estimate_intensity_range

        intensity_range = estimate_intensity_range(image)
    predictor = SamPredictor(model)
    refiner = getattr(model, "mask_refiner", None) if params.refine else None
    crops = _crop_boxes(tuple(hw), params.crop_n_layers, params.crop_overlap)
    if _objects_too_small(image, intensity_range, model.img_size, params):
        # small objects in a large image: segment it in 2 x 2 overlapping crops, each seen by
        # the model at up to twice the scale, instead of as a whole
        crops = [c for c in _crop_boxes(tuple(hw), max(1, params.crop_n_layers),
                                        params.crop_overlap) if c[0] > 0]
    points = [
        _prompt_points(image[r0:r1, c0:c1], intensity_range, layer, model.img_size, params)
        for layer, (r0, c0, r1, c1) in crops
    ]
    total = sum(int(np.ceil(len(p) / params.points_per_batch)) for p in points)
    state = {"done": 0}

    def tick() -> None:
        state["done"] += 1
        if progress is not None:
            progress(min(state["done"], total), total)

    cands: list[_Candidate] = []
    for (layer, (r0, c0, r1, c1)), pts in zip(crops, points):
        if cancelled is not None and cancelled():
            break
        emb = embedding if layer == 0 and embedding is not None else (
            # crops (layer > 0) are magnified on purpose: no cap on it
            predictor.compute_embedding(image[r0:r1, c0:c1], intensity_range, fill=layer > 0))
        predictor.set_embedding(emb)
        found, finished = _decode_crop(predictor, emb, (r0, c0), tuple(hw), pts, params,
                                       cancelled, tick, keep_logits=refiner is not None)
        cands += found
        if not finished:
            break
    if progress is not None:
        progress(total, total)
    cands = _nms(_drop_parts(cands, params.part_score_margin), params.box_nms_thresh)
    if refiner is not None:
        cands = _refined(cands, refiner, slice_gray(image, intensity_range))
    labels = _paint(cands, tuple(hw), params)
    return _merge_convex_pieces(labels, params.merge_solidity)


def link_slices(labels: npt.NDArray[np.integer], min_overlap: float = 0.5) -> npt.NDArray[np.int32]:
    """Join per-slice instance labels ``(Z, H, W)`` into 3D objects by overlap.

    Objects on neighbouring slices are paired one-to-one (optimal assignment of their overlap
    ``|a & b| / min(|a|, |b|)``); pairs with overlap >= ``min_overlap`` share an id. Returns
    consecutive ids ``1..N``.
    """
    lab = np.asarray(labels)
    out = np.zeros(lab.shape, dtype=np.int32)
    next_id = 1
    prev_ids = prev = None
    prev_map: dict[int, int] = {}
    for z in range(lab.shape[0]):
        cur = lab[z]
        ids = np.unique(cur[cur > 0])
        mapping: dict[int, int] = {}
        if prev is not None and ids.size and prev_ids.size:
            iou = _label_overlap(cur, ids, prev, prev_ids)
            rows, cols = linear_sum_assignment(-iou)
            for r, c in zip(rows, cols):
                if iou[r, c] >= min_overlap:
                    mapping[int(ids[r])] = prev_map[int(prev_ids[c])]
        for i in ids:
            if int(i) not in mapping:
                mapping[int(i)] = next_id
                next_id += 1
        lut = np.zeros(int(cur.max()) + 1, dtype=np.int32)
        for k, v in mapping.items():
            lut[k] = v
        out[z] = lut[cur]
        prev, prev_ids, prev_map = cur, ids, mapping
    return out


def _label_overlap(
    a: np.ndarray, a_ids: np.ndarray, b: np.ndarray, b_ids: np.ndarray
) -> np.ndarray:
    a_idx = np.searchsorted(a_ids, a.ravel())
    a_idx = np.where(a.ravel() > 0, a_idx, -1)
    b_idx = np.searchsorted(b_ids, b.ravel())
    b_idx = np.where(b.ravel() > 0, b_idx, -1)
    both = (a_idx >= 0) & (b_idx >= 0)
    inter = np.zeros((a_ids.size, b_ids.size))
    np.add.at(inter, (a_idx[both], b_idx[both]), 1)
    area_a = np.bincount(a_idx[a_idx >= 0], minlength=a_ids.size)
    area_b = np.bincount(b_idx[b_idx >= 0], minlength=b_ids.size)
    return inter / np.maximum(np.minimum(area_a[:, None], area_b[None, :]), 1)


def segment_everything_nd(
    model: Sam,
    image: npt.ArrayLike,
    *,
    axis: int | None = 0,
    indices: list[int] | range | None = None,
    params: AutomaticParams | None = None,
    intensity_range: tuple[float, float] | None = None,
    embed: Callable[[int], ImageEmbedding] | None = None,
    link_3d: bool = True,
    progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> npt.NDArray[np.int32]:
    """Segment everything in a 2D image or in chosen slices of a 3D stack.

    Parameters
    ----------
    model : Sam
    image : array-like, shape (H, W), (H, W, 3), (Z, Y, X) or (Z, Y, X, 3)
    axis : int or None
        Slicing axis of a stack; None for a 2D image.
    indices : sequence of int, optional
        The slices to segment (default: all); the others stay 0.
    params : AutomaticParams, optional
    intensity_range : (float, float), optional
        By default one robust range for the whole stack.
    embed : callable, optional
        ``embed(i)`` -> the embedding of slice ``i`` (the viewer's cache); computed here if
        omitted.
    link_3d : bool
        Join objects of neighbouring slices into 3D objects by overlap (``params.link_overlap``);
        otherwise every 2D object gets its own id.
    progress : callable, optional
        ``progress(done, total)`` after each slice.
    cancelled : callable, optional
        Polled between slices (and batches); the slices done so far are returned, the rest 0.

    Returns
    -------
    numpy.ndarray, int32, the image's spatial shape
    """
    params = AutomaticParams() if params is None else params
    if not hasattr(image, "shape"):
        image = np.asarray(image)
    shape = tuple(image.shape)
    rgb = len(shape) in (3, 4) and shape[-1] in (3, 4) and (axis is None or len(shape) == 4)
    spatial = shape[:-1] if rgb else shape
    if axis is None:
        if len(spatial) != 2:
            raise ValueError(
                f"axis=None needs a 2D image, got shape {shape}: pass the slicing axis"
            )
        emb = embed(0) if embed is not None else None
        return segment_everything(model, np.asarray(image), params=params,
                                  intensity_range=intensity_range, embedding=emb,
                                  progress=progress, cancelled=cancelled)
    if len(spatial) != 3:
        raise ValueError(f"a stack must be (Z, Y, X) or (Z, Y, X, 3), got shape {shape}")
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not -3 <= axis < 3:
        raise ValueError(f"axis must be 0, 1 or 2 (or -3..-1), got {axis!r}")
    axis = int(axis) % 3
    n = spatial[axis]
    idx = list(range(n)) if indices is None else [int(i) for i in indices]
    if any(not 0 <= i < n for i in idx):
        raise ValueError(f"indices must lie in 0..{n - 1}")
    if intensity_range is None and not (rgb and image.dtype == np.uint8):
        from ..engine.preprocess import estimate_intensity_range

        intensity_range = estimate_intensity_range(image)
    hw = tuple(s for k, s in enumerate(spatial) if k != axis)
    out = np.zeros((n, *hw), dtype=np.int32)
    offset = 0
    for done, i in enumerate(sorted(set(idx)), start=1):
        if cancelled is not None and cancelled():
            break
        key = [slice(None)] * len(shape)
        key[axis] = i
        plane = np.asarray(image[tuple(key)])
        emb = embed(i) if embed is not None else None
        lab = segment_everything(model, plane, params=params, intensity_range=intensity_range,
                                 embedding=emb, cancelled=cancelled)
        out[i] = np.where(lab > 0, lab + offset, 0)
        offset += int(lab.max())
        if progress is not None:
            progress(done, len(set(idx)))
    if link_3d:
        out = link_slices(out, params.link_overlap)
    return np.moveaxis(out, 0, axis)
