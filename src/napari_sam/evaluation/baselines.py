"""A classical nucleus segmentation to compare SAM against, and instance-segmentation metrics.

:func:`classical_instances` is the textbook pipeline (Gaussian smoothing, a global automatic
threshold, distance-transform watershed to split touching nuclei).
:func:`evaluate_classical_interactive` scores it with the same single-click protocol and result
format as :func:`napari_sam.evaluation.interactive.evaluate_image`, so the two numbers can be put side by
side; :func:`classical_instances_3d` and :func:`evaluate_classical_propagation` do the same in
3D for :func:`napari_sam.evaluation.propagation.evaluate_propagation`.
:func:`instance_metrics` scores any automatic instance segmentation against ground truth with
F1 at IoU 0.5 and the mean segmentation accuracy of the DSB 2018 / StarDist papers.

Nothing here imports torch, Qt or napari.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage
from scipy.optimize import linear_sum_assignment
from skimage.filters import threshold_li, threshold_otsu
from skimage.morphology import h_maxima
from skimage.segmentation import watershed

from ..engine.masks import bounding_box
from .interactive import (
    FIRST_CLICK,
    _plane,
    check_image_matches,
    check_labels,
    farthest_point,
    ground_truth_objects,
    summarize,
)
from .propagation import propagation_ground_truth, propagation_seed_points, score_object_3d

__all__ = [
    "classical_instances",
    "classical_instances_3d",
    "evaluate_classical_interactive",
    "evaluate_classical_propagation",
    "instance_metrics",
]

#: Global thresholds :func:`classical_instances` can use.
THRESHOLDS = {"li": threshold_li, "otsu": threshold_otsu}

#: Recorded as ``"model"`` in the results of :func:`evaluate_classical_interactive`.
CLASSICAL_NAME = "classical: Gaussian + {threshold} threshold + distance-transform watershed"


def _to_gray(image: npt.ArrayLike) -> npt.NDArray[np.float64]:
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        arr = arr[..., :3].astype(np.float64).mean(axis=-1)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2D slice (H, W) or (H, W, 3), got shape {arr.shape}")
    return _finite(arr)


def _finite(arr: npt.NDArray) -> npt.NDArray[np.float64]:
    """``arr`` as float64 with NaN/inf replaced by the median of the finite values (0 if none)."""
    arr = arr.astype(np.float64)
    finite = np.isfinite(arr)
    if not finite.all():
        fill = float(np.median(arr[finite])) if finite.any() else 0.0
        arr = np.where(finite, arr, fill)
    return arr


def classical_instances(
    image: npt.ArrayLike,
    *,
    sigma: float = 1.0,
    threshold: str = "li",
    split_depth: float = 0.5,
    min_size: int = 20,
    dark_objects: bool = False,
) -> npt.NDArray[np.int32]:
    """Segment nuclei in a 2D slice without learning: threshold, then watershed split.

    1. Gaussian smoothing (``sigma``) against pixel noise.
    2. A global automatic threshold separates nuclei from background; holes are filled.
    3. Touching nuclei are split by a watershed of the negated distance transform of the
       foreground, seeded at its maxima (the distance transform is smoothed by 1 px and a
       maximum must rise ``split_depth`` px above the saddle to its neighbour, so a bumpy outline
       does not split one nucleus; this assumes roughly convex nuclei).
    4. Objects smaller than ``min_size`` pixels are removed.

    Parameters
    ----------
    image : array-like, shape (H, W) or (H, W, 3)
        Any dtype; RGB is averaged to gray. NaN/inf are replaced by the median.
    sigma : float
        Standard deviation of the Gaussian smoothing, in pixels (0 turns it off).
    threshold : {"li", "otsu"}
        Li's minimum cross-entropy threshold (the default of CellProfiler's
        IdentifyPrimaryObjects) or Otsu's. Otsu's sits too high when nucleus brightness varies a
        lot: it loses dim nuclei and shrinks the others (on the synthetic nuclei of
        :mod:`napari_sam.data.synthetic` its F1 at IoU 0.5 is about 0.15 lower).
    split_depth : float
        Height in pixels a maximum of the distance transform needs above the saddle to the next
        one to seed its own nucleus; larger values split less.
    min_size : int
        Smallest object kept, in pixels.
    dark_objects : bool
        Segment dark objects on a bright background (brightfield) instead of bright nuclei.

    Returns
    -------
    numpy.ndarray, shape (H, W), int32
        Instance labels 1..N, 0 is background; all 0 for a constant image.
    """
    if threshold not in THRESHOLDS:
        raise ValueError(f"threshold must be one of {sorted(THRESHOLDS)}, got {threshold!r}")
    gray = _to_gray(image)
    smooth = ndimage.gaussian_filter(gray, sigma) if sigma > 0 else gray
    return _threshold_watershed(-smooth if dark_objects else smooth, threshold, split_depth,
                                min_size, (1.0, 1.0))


def classical_instances_3d(
    volume: npt.ArrayLike,
    *,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    sigma: float = 1.0,
    threshold: str = "li",
    split_depth: float = 0.5,
    min_size: int = 20,
    dark_objects: bool = False,
) -> npt.NDArray[np.int32]:
    """:func:`classical_instances` in 3D: one threshold and one watershed for the whole stack.

    The same four steps on a volume, with the voxel ``spacing`` respected: the smoothing is
    ``sigma`` pixels of the in-plane (last) axis, as a physical length on every axis; the
    distance transform is in physical units (``split_depth`` too, in in-plane pixels); holes
    are filled slice by slice along the first axis and in 3D.

    Parameters
    ----------
    volume : array-like, shape (Z, Y, X)
        Any dtype, one channel. NaN/inf are replaced by the median.
    spacing : (float, float, float)
        Voxel size along (Z, Y, X), any unit (for example ``(2, 1, 1)``: z steps twice the
        pixel size).
    sigma, threshold, split_depth, min_size, dark_objects
        As in :func:`classical_instances` (``min_size`` in voxels).

    Returns
    -------
    numpy.ndarray, shape (Z, Y, X), int32
        Instance labels 1..N, 0 is background.
    """
    if threshold not in THRESHOLDS:
        raise ValueError(f"threshold must be one of {sorted(THRESHOLDS)}, got {threshold!r}")
    vol = np.asarray(volume)
    if vol.ndim != 3:
        raise ValueError(f"expected a volume (Z, Y, X), got shape {vol.shape}")
    spacing_arr = np.asarray(spacing, dtype=np.float64).reshape(-1)
    if spacing_arr.size != 3 or not np.all(spacing_arr > 0):
        raise ValueError(f"spacing must be three positive numbers, got {spacing!r}")
    vol = _finite(vol)
    sigmas = sigma * spacing_arr[-1] / spacing_arr
    smooth = ndimage.gaussian_filter(vol, sigmas) if sigma > 0 else vol
    return _threshold_watershed(-smooth if dark_objects else smooth, threshold, split_depth,
                                min_size, tuple(spacing_arr / spacing_arr[-1]))


def _threshold_watershed(
    smooth: npt.NDArray[np.float64],
    threshold: str,
    split_depth: float,
    min_size: int,
    spacing: tuple[float, ...],
) -> npt.NDArray[np.int32]:
    """Steps 2-4 of :func:`classical_instances` on a smoothed 2D or 3D array."""
    out = np.zeros(smooth.shape, dtype=np.int32)
    if not smooth.max() > smooth.min():
        return out
    foreground = smooth > THRESHOLDS[threshold](smooth)
    if foreground.ndim == 3:
        foreground = np.stack([ndimage.binary_fill_holes(p) for p in foreground])
    foreground = ndimage.binary_fill_holes(foreground)
    components, n = ndimage.label(foreground)
    if n == 0:
        return out
    dist = ndimage.distance_transform_edt(foreground, sampling=spacing)
    seeds = h_maxima(ndimage.gaussian_filter(dist, 1.0), split_depth).astype(bool) & foreground
    full = np.ones((3,) * smooth.ndim, dtype=bool)
    markers, n_seeds = ndimage.label(seeds, structure=full)
    # A component without a seed (too thin to have a maximum after smoothing) is one object.
    seeded = np.zeros(n + 1, dtype=bool)
    seeded[components[seeds]] = True
    unseeded = ~seeded[components] & foreground
    markers[unseeded] = components[unseeded] + n_seeds
    instances = watershed(-dist, markers, mask=foreground)

    sizes = np.bincount(instances.ravel())
    keep = sizes >= min_size
    keep[0] = False
    relabel = np.zeros(sizes.size, dtype=np.int32)
    relabel[keep] = np.arange(1, int(keep.sum()) + 1)
    return relabel[instances]


def _iou_matrix(
    pred: npt.NDArray[np.integer], gt: npt.NDArray[np.integer]
) -> tuple[npt.NDArray[np.float64], int, int]:
    """IoU of every predicted with every ground-truth object (rows: predictions)."""
    p_ids, p_dense = np.unique(pred, return_inverse=True)
    g_ids, g_dense = np.unique(gt, return_inverse=True)
    # Dense ids: index 0 is background only if 0 occurs; shift so background is always row 0.
    p_off = 0 if p_ids[0] == 0 else 1
    g_off = 0 if g_ids[0] == 0 else 1
    n_p = p_ids.size + p_off
    n_g = g_ids.size + g_off
    pairs = (p_dense.ravel() + p_off) * n_g + (g_dense.ravel() + g_off)
    inter = np.bincount(pairs, minlength=n_p * n_g).reshape(n_p, n_g).astype(np.float64)
    area_p = inter.sum(axis=1, keepdims=True)
    area_g = inter.sum(axis=0, keepdims=True)
    inter = inter[1:, 1:]
    union = area_p[1:] + area_g[:, 1:] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    return iou, n_p - 1, n_g - 1


def instance_metrics(
    pred_labels: npt.ArrayLike,
    gt_labels: npt.ArrayLike,
    thresholds: npt.ArrayLike = np.arange(0.5, 1.0, 0.05),
) -> dict[str, Any]:
    """Object-level scores of an instance segmentation against ground truth.

    For each IoU threshold, predicted and true objects are paired one-to-one by an optimal
    assignment (:func:`scipy.optimize.linear_sum_assignment`) that first maximises the number of
    pairs with IoU >= threshold and then their total IoU, as in StarDist's ``matching``. Paired
    objects are true positives, unpaired predictions false positives, unpaired ground truth false
    negatives.

    Parameters
    ----------
    pred_labels, gt_labels : array-like of int, same shape (2D or nD)
        Instance label images; 0 is background.
    thresholds : array-like of float
        IoU thresholds; the default 0.5, 0.55, ..., 0.95 is the DSB 2018 / StarDist set.

    Returns
    -------
    dict
        JSON-serialisable, with one entry per threshold in ``thresholds``, ``tp``, ``fp``,
        ``fn``, ``precision``, ``recall``, ``f1`` and ``accuracy`` (TP / (TP + FP + FN)); and
        ``f1_50`` (F1 at IoU 0.5), ``mean_accuracy`` (``accuracy`` averaged over ``thresholds``,
        the DSB 2018 score), ``mean_matched_iou`` (mean IoU of the pairs at 0.5), ``n_pred`` and
        ``n_true``. A ratio whose denominator is 0 is reported as 0.
    """
    pred, gt = np.asarray(pred_labels), np.asarray(gt_labels)
    if pred.shape != gt.shape:
        raise ValueError(
            f"pred_labels of shape {pred.shape} and gt_labels of shape {gt.shape} differ"
        )
    for name, arr in (("pred_labels", pred), ("gt_labels", gt)):
        if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
            raise ValueError(f"{name} must be an integer label image, got dtype {arr.dtype}")
    ths = np.atleast_1d(np.asarray(thresholds, dtype=np.float64))
    if ths.size == 0 or ths.min() <= 0 or ths.max() > 1:
        raise ValueError("thresholds must be IoU values in (0, 1]")
    iou, n_pred, n_true = _iou_matrix(pred.astype(np.int64), gt.astype(np.int64))

    def match(t: float) -> tuple[int, float]:
        """Number of pairs with IoU >= t in the optimal matching, and their summed IoU."""
        if n_pred == 0 or n_true == 0:
            return 0, 0.0
        hit = iou >= t
        # Each hit is worth more than any sum of IoUs (< min(n_pred, n_true)), so the number of
        # pairs is maximised first and their IoU second.
        cost = -(hit.astype(np.float64) + iou / (2 * min(n_pred, n_true)))
        rows, cols = linear_sum_assignment(cost)
        ok = hit[rows, cols]
        return int(ok.sum()), float(iou[rows, cols][ok].sum())

    def ratio(a: float, b: float) -> float:
        return float(a / b) if b > 0 else 0.0

    per = {k: [] for k in ("tp", "fp", "fn", "precision", "recall", "f1", "accuracy")}
    for t in ths:
        tp, _ = match(float(t))
        fp, fn = n_pred - tp, n_true - tp
        per["tp"].append(tp)
        per["fp"].append(fp)
        per["fn"].append(fn)
        per["precision"].append(ratio(tp, tp + fp))
        per["recall"].append(ratio(tp, tp + fn))
        per["f1"].append(ratio(2 * tp, 2 * tp + fp + fn))
        per["accuracy"].append(ratio(tp, tp + fp + fn))
    tp50, iou_sum50 = match(0.5)
    return {
        "thresholds": [float(t) for t in ths],
        **per,
        "f1_50": ratio(2 * tp50, n_pred + n_true),
        "mean_accuracy": float(np.mean(per["accuracy"])),
        "mean_matched_iou": ratio(iou_sum50, tp50),
        "n_pred": int(n_pred),
        "n_true": int(n_true),
    }


def _components_in_box(
    instances: npt.NDArray[np.integer], box: tuple[int, int, int, int]
) -> npt.NDArray[np.bool_]:
    r0, c0, r1, c1 = box
    window = (slice(r0, r1 + 1), slice(c0, c1 + 1))
    inside = np.bincount(instances[window].ravel(), minlength=int(instances.max()) + 1)
    total = np.bincount(instances.ravel(), minlength=inside.size)
    chosen = 2 * inside > total  # more than half of the component lies in the box
    chosen[0] = False
    mask = np.zeros(instances.shape, dtype=bool)
    mask[window] = chosen[instances[window]]
    return mask


def evaluate_classical_interactive(
    image: npt.ArrayLike,
    labels: npt.ArrayLike,
    *,
    prompt: str = "point",
    axis: int | None = None,
    sigma: float = 1.0,
    threshold: str = "li",
    split_depth: float = 0.5,
    min_size: int = 20,
    dark_objects: bool = False,
    min_area: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Score :func:`classical_instances` with the one-click protocol of ``evaluate_image``.

    Each slice with objects is segmented once with :func:`classical_instances`; the prompt then
    only selects from that segmentation:

    - ``"point"``: the classical instance under the click at
      :func:`~napari_sam.evaluation.interactive.farthest_point` of the ground truth (an empty mask, IoU 0,
      if the click falls on background).
    - ``"box"``: the union of the classical instances of which more than half lies inside the
      ground truth's tight box, clipped to the box (so two merged nuclei are cut at the box).

    There is no ambiguity to resolve and no correction, so only one click is scored and
    ``miou_oracle`` equals ``miou``.

    Parameters
    ----------
    image, labels, axis, min_area, progress
        As in :func:`napari_sam.evaluation.interactive.evaluate_image`.
    prompt : {"point", "box"}
    sigma, threshold, split_depth, min_size, dark_objects
        Passed to :func:`classical_instances`.

    Returns
    -------
    dict
        In the format of :func:`napari_sam.evaluation.interactive.evaluate_image`, with one click.
    """
    if prompt not in ("point", "box"):
        raise ValueError(f"prompt must be 'point' or 'box', got {prompt!r}")
    if threshold not in THRESHOLDS:
        raise ValueError(f"threshold must be one of {sorted(THRESHOLDS)}, got {threshold!r}")
    if not hasattr(image, "shape"):
        image = np.asarray(image)
    lab, axis = check_labels(labels, axis)
    check_image_matches(image.shape, lab.shape)
    objects = ground_truth_objects(lab, axis, min_area)
    if not objects:
        raise ValueError("the labels contain no objects (every pixel is 0 or below min_area)")

    per_object = []
    current = object()
    for done, obj in enumerate(objects, start=1):
        if obj.slice != current:
            current = obj.slice
            instances = classical_instances(
                _plane(image, axis, obj.slice),
                sigma=sigma,
                threshold=threshold,
                split_depth=split_depth,
                min_size=min_size,
                dark_objects=dark_objects,
            )
        gt = obj.mask(instances.shape)
        if prompt == "point":
            hit = instances[farthest_point(gt)]
            pred = (instances == hit) if hit else np.zeros_like(gt)
        else:
            pred = _components_in_box(instances, bounding_box(gt))
        inter = np.count_nonzero(pred & gt)
        iou = float(inter / np.count_nonzero(pred | gt))
        per_object.append({"id": obj.id, "slice": obj.slice, "iou": [iou], "iou_oracle": [iou]})
        if progress is not None:
            progress(done, len(objects))

    protocol = {
        "prompt": prompt,
        "clicks": 1,
        "first_click": FIRST_CLICK if prompt == "point" else "tight_box",
        "next_click": None,
        "selection": (
            "classical_instance_under_click"
            if prompt == "point"
            else "classical_instances_mostly_in_box_clipped_to_box"
        ),
        "oracle": "same_as_selection",
    }
    return summarize(per_object, protocol, CLASSICAL_NAME.format(threshold=threshold))


def evaluate_classical_propagation(
    image: npt.ArrayLike,
    labels: npt.ArrayLike,
    *,
    axis: int = 0,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    sigma: float = 1.0,
    threshold: str = "li",
    split_depth: float = 0.5,
    min_size: int = 20,
    min_area: int = 1,
) -> dict[str, Any]:
    """Score :func:`classical_instances_3d` with the protocol of ``evaluate_propagation``.

    The stack is segmented once in 3D; each ground-truth object's seed click (the protocol's,
    :func:`napari_sam.evaluation.propagation.propagation_seed_points`) selects the 3D instance under it (an
    empty prediction, IoU 0, if it falls on background). The result has the format of
    :func:`napari_sam.evaluation.propagation.evaluate_propagation`, so the two can be put side by side.

    Parameters
    ----------
    image : array-like, shape (Z, Y, X) or (Z, Y, X, 3)
    labels : array-like of int, shape (Z, Y, X)
    axis : int
        The propagation axis (it decides the seed slices, not the segmentation).
    spacing : (float, float, float)
        Voxel size along the image's three axes.
    sigma, threshold, split_depth, min_size
        Passed to :func:`classical_instances_3d`.
    min_area : int
        Objects with fewer voxels are skipped.

    Returns
    -------
    dict
        ``miou_3d``, ``n_objects``, ``per_object``, ``protocol``, ``model``.
    """
    vol = np.asarray(image)
    moved, ids, axis = propagation_ground_truth(vol.shape, labels, axis, min_area)
    if vol.ndim == 4:
        vol = vol[..., :3].astype(np.float64).mean(axis=-1)
    instances = np.moveaxis(
        classical_instances_3d(vol, spacing=spacing, sigma=sigma, threshold=threshold,
                               split_depth=split_depth, min_size=min_size), axis, 0)
    per_object = []
    for oid, index, point in propagation_seed_points(moved, ids):
        hit = instances[index, point[0], point[1]]
        pred = (instances == hit) if hit else np.zeros(moved.shape, dtype=bool)
        per_object.append(score_object_3d(moved == oid, pred, oid, index, point))
    return {
        "miou_3d": float(np.mean([o["iou_3d"] for o in per_object])),
        "n_objects": len(per_object),
        "per_object": per_object,
        "protocol": {
            "seed": "the 3D classical instance under each object's protocol seed point",
            "axis": int(axis),
            "spacing": [float(v) for v in spacing],
        },
        "model": "classical 3D: " + CLASSICAL_NAME.format(threshold=threshold),
    }
