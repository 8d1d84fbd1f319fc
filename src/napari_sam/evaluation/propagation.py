"""The propagation protocol: one click per object on its largest slice, propagated through the
stack, scored by the 3D IoU of every object.

Stacks are moved so that the propagation axis comes first: ``(N, H, W)``; points ``(row, col)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from ..engine.masks import farthest_point
from ..workflows.propagation import PropagationParams, Seed
from ..workflows.propagation_volume import propagate_volume
from .interactive import check_image_matches, check_labels

if TYPE_CHECKING:  # pragma: no cover
    from ..modeling import Sam

__all__ = [
    "evaluate_propagation",
    "propagation_ground_truth",
    "propagation_seed_points",
    "score_object_3d",
]


def propagation_ground_truth(
    image_shape: tuple[int, ...], labels: npt.ArrayLike, axis: int, min_area: int = 1
) -> tuple[npt.NDArray[np.integer], npt.NDArray[np.integer], int]:
    """Check the ground truth of a propagation evaluation and list its objects.

    Parameters
    ----------
    image_shape : tuple of int
        ``(Z, Y, X)`` or ``(Z, Y, X, 3)``: must match the labels.
    labels : array-like of int, shape (Z, Y, X)
    axis : int
        The propagation axis.
    min_area : int
        Objects with fewer voxels are left out.

    Returns
    -------
    moved : numpy.ndarray, shape (N, H, W)
        The labels with ``axis`` first.
    ids : numpy.ndarray of int
        The objects to score.
    axis : int
        Non-negative.

    Raises
    ------
    ValueError
        Labels that are not 3D, do not match the image or hold no object.
    """
    lab, axis = check_labels(labels, axis)
    if lab.ndim != 3:
        raise ValueError(f"propagation is evaluated on 3D labels, got shape {lab.shape}")
    check_image_matches(tuple(image_shape), lab.shape)
    moved = np.moveaxis(lab, axis, 0)
    ids, counts = np.unique(moved[moved > 0], return_counts=True)
    ids = ids[counts >= min_area]
    if ids.size == 0:
        raise ValueError("the labels contain no objects (every voxel is 0 or below min_area)")
    return moved, ids, int(axis)


def propagation_seed_points(
    labels: npt.NDArray[np.integer], ids: npt.ArrayLike
) -> list[tuple[int, int, tuple[int, int]]]:
    """The one-click seeds of the propagation protocol, one per object.

    For each object: the slice (along axis 0) where its area is largest, and on it the pixel of
    its largest 2D piece farthest from the boundary (:func:`farthest_point`).

    Parameters
    ----------
    labels : numpy.ndarray of int, shape (Z, Y, X)
        Ground truth with the propagation axis first.
    ids : array-like of int
        The objects to seed (each present in ``labels``).

    Returns
    -------
    list of (id, slice index, (row, col))
    """
    windows = ndimage.find_objects(labels)
    out = []
    for oid in np.asarray(ids).reshape(-1):
        window = windows[int(oid) - 1]
        sub = labels[window] == oid
        k = int(np.argmax(sub.sum(axis=(1, 2))))
        plane = sub[k]
        comp, n = ndimage.label(plane, structure=np.ones((3, 3), bool))
        if n > 1:
            plane = comp == (1 + int(np.argmax(np.bincount(comp.ravel())[1:])))
        full = np.zeros(labels.shape[1:], bool)
        full[window[1:]] = plane
        out.append((int(oid), int(window[0].start) + k, farthest_point(full)))
    return out


def score_object_3d(
    gt: npt.NDArray[np.bool_],
    pred: npt.NDArray[np.bool_],
    oid: int,
    index: int,
    point: tuple[int, int],
) -> dict[str, Any]:
    """One object's entry of a propagation result: 3D IoU and the slice ranges.

    Parameters
    ----------
    gt, pred : numpy.ndarray of bool, shape (Z, Y, X)
        The object's ground truth and prediction, propagation axis first.
    oid, index, point
        The object's id and its seed (slice index, ``(row, col)``).

    Returns
    -------
    dict
        ``id``, ``iou_3d``, ``seed_slice``, ``seed_point``, ``slices_true`` and ``slices_pred``
        (first and last slice holding the object; None for an empty prediction).
    """
    inter = int(np.count_nonzero(gt & pred))
    union = int(np.count_nonzero(gt | pred))

    def extent(m: npt.NDArray[np.bool_]) -> list[int] | None:
        z = np.flatnonzero(m.any(axis=(1, 2)))
        return [int(z[0]), int(z[-1])] if z.size else None

    return {
        "id": int(oid),
        "iou_3d": inter / union if union else 1.0,
        "seed_slice": int(index),
        "seed_point": [int(point[0]), int(point[1])],
        "slices_true": extent(gt),
        "slices_pred": extent(pred),
    }


def evaluate_propagation(
    model: Sam,
    image: npt.ArrayLike,
    labels: npt.ArrayLike,
    *,
    axis: int = 0,
    params: PropagationParams | None = None,
    intensity_range: tuple[float, float] | None = None,
    model_name: str | None = None,
    min_area: int = 1,
    progress: Callable[[int, int], None] | None = None,
    zoom: float | str = 1.0,
) -> dict[str, Any]:
    """Score propagation from one click per object against ground-truth 3D labels.

    For every ground-truth object (label id): the slice along ``axis`` where its area is
    largest, and on it the pixel of its largest 2D piece farthest from the boundary
    (:func:`napari_sam.engine.masks.farthest_point`), is a one-point seed. All objects are
    propagated together in one run; the result, painted without overlaps, is compared with the
    ground truth object by object.

    Parameters
    ----------
    model : Sam
    image : array-like, shape (Z, Y, X) or (Z, Y, X, 3)
    labels : array-like of int, shape (Z, Y, X)
    axis : int
        Propagation axis.
    params : PropagationParams, optional
    intensity_range : (float, float), optional
    model_name : str, optional
        Recorded as ``"model"``.
    min_area : int
        Objects with fewer voxels are skipped.
    progress : callable, optional
        ``progress(done, total)`` of the propagation run.
    zoom : float or "auto"
        As in :func:`propagate_volume` (recorded in the protocol).

    Returns
    -------
    dict
        JSON-serialisable: ``miou_3d`` (mean over objects of the 3D IoU), ``n_objects``,
        ``per_object`` (``id``, ``iou_3d``, ``seed_slice``, ``seed_point``, ``slices_true``,
        ``slices_pred``), ``protocol``, ``params`` and ``model``.
    """
    if not hasattr(image, "shape"):
        image = np.asarray(image)
    moved, ids, axis = propagation_ground_truth(image.shape, labels, axis, min_area)
    params = PropagationParams() if params is None else params
    info = propagation_seed_points(moved, ids)
    seeds = [Seed(oid, index, points=np.array([point], float), labels=np.array([1]))
             for oid, index, point in info]
    pred = propagate_volume(model, image, seeds, axis=axis, intensity_range=intensity_range,
                            params=params, progress=progress, zoom=zoom)
    pred_m = np.moveaxis(pred, axis, 0)
    per_object = [score_object_3d(moved == oid, pred_m == oid, oid, index, point)
                  for oid, index, point in info]
    p = asdict(params)
    p["prompt"] = list(params.prompt)
    return {
        "miou_3d": float(np.mean([o["iou_3d"] for o in per_object])),
        "n_objects": len(per_object),
        "per_object": per_object,
        "protocol": {
            "seed": "one positive point per object at the farthest-from-boundary pixel of its "
                    "largest piece on the slice where the object's area is largest",
            "axis": int(axis),
            "all_objects_in_one_run": True,
            "zoom": zoom,
        },
        "params": p,
        "model": model_name,
    }
