"""Candidate objects cut out of a plane as square CLIP-ready crops.

Each object of a label image becomes a square crop around its bounding box, enlarged by a margin,
the pixels outside the object dimmed or blanked (as the CLIP crops of the SAM paper's appendix
D.5: enlarged box, square crop, outside of the mask zeroed), resized to the CLIP input size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ...engine.preprocess import to_rgb_uint8_range

__all__ = ["CropParams", "crop_boxes", "extract_crops"]


@dataclass(frozen=True)
class CropParams:
    """How an object is cut out of its plane for CLIP.

    The crop is square (in physical units when a pixel ``spacing`` is given), centred on the
    object's bounding box, its side the box's longer side enlarged by ``margin`` on each side.

    Attributes
    ----------
    margin : float
        Added on each side, as a fraction of the box's longer side (0.25: the crop's side is 1.5x
        the box's). Context around the object helps CLIP; too much lets neighbours dominate.
    background : {"dim", "blank", "keep"}
        What happens to crop pixels outside the object (other objects included): multiplied by
        ``dim_factor``, replaced by ``fill``, or kept as they are.
    dim_factor : float
        Brightness factor outside the object for ``"dim"``, in [0, 1].
    fill : float
        Value (0-255) of blanked pixels and of the parts of a crop outside the image.
    min_side : float
        The crop's side is at least this many pixels, so a 2-pixel speck is not blown up to the
        whole CLIP input.
    """

    margin: float = 0.25
    background: str = "dim"
    dim_factor: float = 0.3
    fill: float = 0.0
    min_side: float = 16.0

    def __post_init__(self) -> None:
        if not (np.isfinite(self.margin) and self.margin >= 0):
            raise ValueError(f"margin must be a non-negative number, got {self.margin!r}")
        if self.background not in ("dim", "blank", "keep"):
            raise ValueError(
                f"background must be 'dim', 'blank' or 'keep', got {self.background!r}"
            )
        if not 0.0 <= self.dim_factor <= 1.0:
            raise ValueError(f"dim_factor must be in [0, 1], got {self.dim_factor!r}")
        if not 0.0 <= self.fill <= 255.0:
            raise ValueError(f"fill must be in [0, 255], got {self.fill!r}")
        if not (np.isfinite(self.min_side) and self.min_side >= 1):
            raise ValueError(f"min_side must be at least 1 pixel, got {self.min_side!r}")


def _object_ids(labels: np.ndarray, ids: npt.ArrayLike | None) -> np.ndarray:
    present = np.unique(labels)
    present = present[present != 0]
    if ids is None:
        return present.astype(np.int64)
    ids = np.atleast_1d(np.asarray(ids)).astype(np.int64)
    if np.any(ids == 0):
        raise ValueError("id 0 is the background, not an object")
    missing = ids[~np.isin(ids, present)]
    if missing.size:
        raise ValueError(f"object id(s) {missing[:5].tolist()} are not in the label image")
    if len(np.unique(ids)) != len(ids):
        raise ValueError("object ids must not repeat")
    return ids


def _check_labels(labels: npt.ArrayLike) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(
            f"labels must be one 2D plane (H, W), got shape {labels.shape}; slice nD labels "
            "plane by plane"
        )
    if labels.dtype.kind not in "iub":
        raise ValueError(f"labels must be integers, got {labels.dtype}")
    return labels


def crop_boxes(
    labels: npt.ArrayLike,
    ids: npt.ArrayLike | None = None,
    *,
    params: CropParams | None = None,
    spacing: tuple[float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The pixel region each object's crop is cut from.

    Parameters
    ----------
    labels : array, shape (H, W), int
        0 is background.
    ids : array-like of int, optional
        Objects to crop, in this order (default: every object, ascending).
    params : CropParams, optional
    spacing : (float, float), optional
        Physical size of a pixel ``(row, col)`` (napari's layer scale); the crop is square in
        physical units. Default ``(1, 1)``.

    Returns
    -------
    boxes : numpy.ndarray, shape (K, 4), int64
        ``(row0, col0, row1, col1)``, end exclusive, in plane pixels; may extend past the image
        (that part of the crop is filled with ``params.fill``).
    ids : numpy.ndarray, shape (K,), int64
    """
    labels = _check_labels(labels)
    params = params or CropParams()
    sy, sx = (1.0, 1.0) if spacing is None else (float(spacing[0]), float(spacing[1]))
    if not (sy > 0 and sx > 0 and np.isfinite(sy) and np.isfinite(sx)):
        raise ValueError(f"spacing must be two positive numbers, got {spacing!r}")
    ids = _object_ids(labels, ids)
    boxes = np.zeros((len(ids), 4), dtype=np.int64)
    if not len(ids):
        return boxes, ids
    from scipy import ndimage

    # find_objects indexes by label value: map the ids to 1..K so huge ids cost nothing.
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    pos = np.minimum(np.searchsorted(sorted_ids, labels), len(ids) - 1)
    compact = np.where(sorted_ids[pos] == labels, pos + 1, 0)
    found = ndimage.find_objects(compact, max_label=len(ids))
    slices = [None] * len(ids)
    for rank, k in enumerate(order):
        slices[k] = found[rank]
    for k, sl in enumerate(slices):
        r0, r1, c0, c1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
        side_phys = max((r1 - r0) * sy, (c1 - c0) * sx) * (1.0 + 2.0 * params.margin)
        side_phys = max(side_phys, params.min_side * min(sy, sx))
        half_r, half_c = side_phys / sy / 2.0, side_phys / sx / 2.0
        cr, cc = (r0 + r1) / 2.0, (c0 + c1) / 2.0
        boxes[k] = (
            int(np.floor(cr - half_r + 1e-6)),
            int(np.floor(cc - half_c + 1e-6)),
            int(np.ceil(cr + half_r - 1e-6)),
            int(np.ceil(cc + half_c - 1e-6)),
        )
    return boxes, ids


def _resize_weights(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` matrix resampling one axis: linear when enlarging, area when shrinking.

    Separable matrices make a crop's resize two small matrix products (scipy's spline zoom took
    ~20 ms per 224 px crop); area averaging is the anti-aliasing when shrinking.
    """
    w = np.zeros((n_out, n_in), dtype=np.float32)
    scale = n_in / n_out
    if n_out >= n_in:
        x = np.clip((np.arange(n_out) + 0.5) * scale - 0.5, 0, n_in - 1)
        i0 = np.floor(x).astype(int)
        i1 = np.minimum(i0 + 1, n_in - 1)
        frac = (x - i0).astype(np.float32)
        rows = np.arange(n_out)
        np.add.at(w, (rows, i0), 1 - frac)
        np.add.at(w, (rows, i1), frac)
        return w
    lo = np.arange(n_out) * scale
    hi = lo + scale
    j = np.arange(n_in)
    overlap = np.minimum(hi[:, None], j[None, :] + 1) - np.maximum(lo[:, None], j[None, :])
    w[:] = np.clip(overlap, 0, None) / scale
    return w


def extract_crops(
    image: npt.ArrayLike,
    labels: npt.ArrayLike,
    ids: npt.ArrayLike | None = None,
    *,
    params: CropParams | None = None,
    size: int = 224,
    intensity_range: tuple[float, float] | None = None,
    rgb: bool | None = None,
    spacing: tuple[float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Cut one square RGB crop per object out of a 2D plane, ready for CLIP.

    Parameters
    ----------
    image : array-like, shape (H, W) or (H, W, 3)
        One plane, any dtype. Normalised like SAM's input
        (:func:`napari_sam.engine.preprocess.to_rgb_uint8_range`): uint8 RGB as is, anything else
        rescaled from ``intensity_range`` to 0-255 and grayscale replicated to three channels.
    labels : array-like, shape (H, W), int
        The candidate objects; 0 is background.
    ids : array-like of int, optional
        Objects to crop, in this order (default: every object, ascending).
    params : CropParams, optional
        Margin and background handling.
    size : int
        Side of the returned crops (the CLIP model's input size).
    intensity_range : (float, float), optional
        Normalisation range; pass the whole stack's range for planes of a stack. Default: a
        robust range of this plane.
    rgb : bool, optional
        Whether the last axis of ``image`` is RGB (default: guessed, ``image.ndim == 3``).
    spacing : (float, float), optional
        Pixel size ``(row, col)``; crops are square in physical units (see :func:`crop_boxes`).

    Returns
    -------
    crops : numpy.ndarray, shape (K, size, size, 3), uint8
    ids : numpy.ndarray, shape (K,), int64
    """
    params = params or CropParams()
    labels = _check_labels(labels)
    arr = np.asarray(image)
    if rgb is None:
        rgb = arr.ndim == 3 and arr.shape[-1] in (3, 4)
    if rgb and (arr.ndim != 3 or arr.shape[-1] not in (3, 4)):
        raise ValueError(f"rgb=True needs an (H, W, 3) plane, got shape {arr.shape}")
    if not rgb and arr.ndim != 2:
        raise ValueError(
            f"image must be one 2D plane (H, W) or (H, W, 3), got shape {arr.shape}; slice nD "
            "images plane by plane"
        )
    if arr.shape[:2] != labels.shape:
        raise ValueError(f"image plane {arr.shape[:2]} and labels {labels.shape} differ in shape")
    size = int(size)
    if size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    boxes, ids = crop_boxes(labels, ids, params=params, spacing=spacing)
    crops = np.zeros((len(ids), size, size, 3), dtype=np.uint8)
    if not len(ids):
        return crops, ids
    plane = to_rgb_uint8_range(arr, intensity_range)  # (H, W, 3) float32 in [0, 255]
    for k, (oid, box) in enumerate(zip(ids, boxes)):
        crops[k] = _crop_one(plane, labels, oid, box, params, size)
    return crops, ids


def _crop_one(plane: np.ndarray, labels: np.ndarray, oid: int, box: np.ndarray,
              params: CropParams, size: int) -> np.ndarray:
    """One object's ``(size, size, 3)`` uint8 crop of ``box`` out of the RGB float ``plane``."""
    r0, c0, r1, c1 = box
    h, w = labels.shape
    region = np.full((r1 - r0, c1 - c0, 3), params.fill, dtype=np.float32)
    inside = np.zeros(region.shape[:2], dtype=bool)
    sr0, sc0, sr1, sc1 = max(r0, 0), max(c0, 0), min(r1, h), min(c1, w)
    dst = (slice(sr0 - r0, sr1 - r0), slice(sc0 - c0, sc1 - c0))
    region[dst] = plane[sr0:sr1, sc0:sc1]
    inside[dst] = labels[sr0:sr1, sc0:sc1] == oid
    # the part of the crop outside the image stays `fill` whatever the background mode
    outside = np.zeros(region.shape[:2], dtype=bool)
    outside[dst] = ~inside[dst]
    if params.background == "dim":
        region[outside] *= params.dim_factor
    elif params.background == "blank":
        region[outside] = params.fill
    rows_w = _resize_weights(region.shape[0], size)
    cols_w = _resize_weights(region.shape[1], size)
    out = np.einsum("ij,jkc,lk->ilc", rows_w, region, cols_w, optimize=True)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
