"""Masks at the slice's resolution from low-resolution logits, computed only where they can be.

SAM's upsampling of mask logits (bilinear to the padded model input, crop, bilinear to the
slice) is linear and separable, with non-negative weights that sum to one: a slice pixel can
exceed a threshold only where some low-resolution logit it reads does. So a mask of a nucleus on
a 1024 px slice needs the upsampled logits of a window of a few dozen pixels, not of the whole
slice, and the mask refiner's crop (:mod:`napari_sam.engine.refine`) needs only the logits
inside it. :func:`window_masks` gives the masks of :meth:`SamPredictor.full_logits` ``> 0``
(refined or not) that way.
"""

from __future__ import annotations

import functools

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from .preprocess import ResizeGeometry
from .refine import CROP_LOGIT, gray_features, mask_crop_box, refine_crops

__all__ = ["positive_window", "upsample_weights", "upscale_full", "upscale_window",
           "window_masks"]

#: A window ``((row0, row1), (col0, col1))`` of slice pixels, end-exclusive.
Window = tuple[tuple[int, int], tuple[int, int]]


def upsample_weights(geometry: ResizeGeometry, low_n: int, axis: int) -> tuple:
    """SAM's mask upsampling along one axis, as a matrix.

    What :meth:`SamPredictor.full_logits` does without the refiner: bilinear from the low-res
    frame to the model input, the padding cropped, bilinear to the slice (``align_corners=
    False``, as ``torch.nn.functional.interpolate``). Both steps are linear and separable, so
    a window of the slice's logits is ``w_rows[window] @ low_res @ w_cols[window].T``.

    Parameters
    ----------
    geometry : ResizeGeometry
        Of the slice.
    low_n : int
        Low-res side (256 for the official models).
    axis : {0, 1}
        Rows or columns.

    Returns
    -------
    w : torch.Tensor, shape (N, n), float32
        Weights from the first ``n`` low-res pixels (those that show the slice) to the ``N``
        slice pixels; cached per geometry.
    lo, hi : numpy.ndarray, shape (N,)
        Slice pixel ``o`` reads low-res pixels ``lo[o]:hi[o]``.
    out_lo, out_hi : numpy.ndarray, shape (n,)
        Low-res pixel ``l`` reaches slice pixels ``out_lo[l]:out_hi[l]`` (the empty ``N:0``
        for a pixel no slice pixel reads).
    """
    return _upsample_weights(
        geometry.input_size[axis], geometry.original_size[axis], geometry.img_size, low_n)


@functools.lru_cache(maxsize=16)  # thread-safe; a few kB to a few MB per slice shape
def _upsample_weights(n_in: int, n_out: int, img_size: int, low_n: int) -> tuple:
    scale = img_size // low_n
    n = min(low_n, -(-n_in // scale) + 1)

    def linear(n_src: int, n_dst: int, ratio: float) -> np.ndarray:
        # torch's bilinear, align_corners=False: source = (dst + 0.5) * ratio - 0.5, >= 0
        src = np.maximum((np.arange(n_dst) + 0.5) * ratio - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(np.int64), n_src - 1)
        i1 = np.minimum(i0 + 1, n_src - 1)
        lam = src - i0
        m = np.zeros((n_dst, n_src))
        np.add.at(m, (np.arange(n_dst), i0), 1.0 - lam)
        np.add.at(m, (np.arange(n_dst), i1), lam)
        return m

    w = linear(n, n * scale, 1.0 / scale)[:n_in]
    if n_out != n_in:
        w = linear(n_in, n_out, n_in / n_out) @ w
    nz = w > 0
    lo, hi = nz.argmax(axis=1), n - nz[:, ::-1].argmax(axis=1)
    reached = nz.any(axis=0)
    out_lo = np.where(reached, nz.argmax(axis=0), n_out)
    out_hi = np.where(reached, n_out - nz[::-1].argmax(axis=0), 0)
    return torch.from_numpy(w.astype(np.float32)), lo, hi, out_lo, out_hi


def positive_window(
    low_res: torch.Tensor, geometry: ResizeGeometry, threshold: float = 0.0
) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """The slice window where SAM's upsampled logits of one mask can exceed ``threshold``.

    Bilinear weights are non-negative and sum to one, so outside the slice pixels that
    low-res pixels above ``threshold`` reach, every upsampled logit is ``<= threshold``.

    Parameters
    ----------
    low_res : torch.Tensor, shape (K, h, w) or (h, w)
        Low-resolution logits of one object (``K`` candidates: the window covers them all).
    geometry : ResizeGeometry
        Of the slice the logits belong to.
    threshold : float

    Returns
    -------
    ((int, int), (int, int)) or None
        ``((row0, row1), (col0, col1))``, end-exclusive slice pixels; None if nothing can exceed
        ``threshold`` in the slice.
    """
    low_h, low_w = low_res.shape[-2:]
    wr, _, _, r_lo, r_hi = upsample_weights(geometry, low_h, 0)
    wc, _, _, c_lo, c_hi = upsample_weights(geometry, low_w, 1)
    above = low_res[..., : wr.shape[1], : wc.shape[1]] > threshold
    if above.ndim == 3:
        above = above.any(dim=0)
    rows = torch.nonzero(above.any(dim=1)).flatten().cpu().numpy()
    if rows.size == 0:
        return None
    cols = torch.nonzero(above.any(dim=0)).flatten().cpu().numpy()
    o0, o1 = int(r_lo[rows].min()), int(r_hi[rows].max())
    p0, p1 = int(c_lo[cols].min()), int(c_hi[cols].max())
    if o1 <= o0 or p1 <= p0:  # only padding, or pixels the resize skips
        return None
    return (o0, o1), (p0, p1)


def upscale_window(low_res: torch.Tensor, geometry: ResizeGeometry, window: Window
                   ) -> torch.Tensor:
    """Upsampled logits of a window of the slice, not refined.

    The values of :meth:`SamPredictor.full_logits` without the refiner in ``window`` (up to
    float rounding), computed from the low-res pixels the window reads only.

    Parameters
    ----------
    low_res : torch.Tensor, shape (..., h, w)
        Low-resolution logits.
    geometry : ResizeGeometry
    window : ((int, int), (int, int))
        ``((row0, row1), (col0, col1))``, end-exclusive slice pixels (e.g.
        :func:`positive_window`).

    Returns
    -------
    torch.Tensor, shape (..., row1 - row0, col1 - col0), float32
    """
    (o0, o1), (p0, p1) = window
    wr, r_lo, r_hi, _, _ = upsample_weights(geometry, low_res.shape[-2], 0)
    wc, c_lo, c_hi, _, _ = upsample_weights(geometry, low_res.shape[-1], 1)
    l0, l1 = int(r_lo[o0:o1].min()), int(r_hi[o0:o1].max())  # the low-res pixels read
    m0, m1 = int(c_lo[p0:p1].min()), int(c_hi[p0:p1].max())
    with torch.inference_mode():
        x = low_res.float()[..., l0:l1, m0:m1]
        return wr[o0:o1, l0:l1].to(x.device) @ x @ wc[p0:p1, m0:m1].T.to(x.device)


def upscale_full(low_res: torch.Tensor, geometry: ResizeGeometry) -> torch.Tensor:
    """Low-res logits ``(B, K, 4h, 4w)`` -> logits at the slice resolution ``(B, K, H, W)``.

    The same values as SAM's postprocessing (bilinear to the padded model input, crop the
    padding, bilinear to the slice size), computed with less work: only the low-res rows and
    columns that cover the image (plus one for the bilinear neighbour) are upsampled, at the
    same scale (so the kept pixels are unchanged), and the last resize is skipped when it
    would be the identity.
    """
    with torch.inference_mode():
        b, k, low_h, low_w = low_res.shape
        h, w = geometry.input_size
        scale = geometry.img_size // low_h
        rows = min(low_h, -(-h // scale) + 1)
        cols = min(low_w, -(-w // scale) + 1)
        # (B * K, 1, ., .): one channel per mask is several times faster on CPUs than K
        x = low_res.float()[..., :rows, :cols].reshape(b * k, 1, rows, cols)
        x = F.interpolate(
            x, size=(rows * scale, cols * scale), mode="bilinear", align_corners=False
        )
        x = x[..., :h, :w]
        if (h, w) != tuple(geometry.original_size):
            x = F.interpolate(x, size=geometry.original_size, mode="bilinear",
                              align_corners=False)
        return x.reshape(b, k, *x.shape[-2:])


def _upscale_region(low_res: torch.Tensor, geometry: ResizeGeometry, window: Window
                    ) -> torch.Tensor:
    """:func:`upscale_window` of one mask ``(h, w)``; a window of much of the slice (the
    background candidate of a click) is cut from :func:`upscale_full`, faster there."""
    (o0, o1), (p0, p1) = window
    h, w = geometry.original_size
    if (o1 - o0) * (p1 - p0) * 4 < h * w:
        return upscale_window(low_res, geometry, window)
    return upscale_full(low_res[None, None], geometry)[0, 0, o0:o1, p0:p1]


def window_masks(
    low_res: torch.Tensor,
    geometry: ResizeGeometry,
    refiner: torch.nn.Module | None = None,
    gray: torch.Tensor | None = None,
    gray_cache: dict | None = None,
) -> npt.NDArray[np.bool_]:
    """Masks of the slice from low-res logits: ``full_logits(low_res) > 0``, window by window.

    Without a refiner each mask is upsampled in its :func:`positive_window` only. With one,
    the window where the logits exceed :data:`~napari_sam.engine.refine.CROP_LOGIT` gives the
    refiner's crop box (:func:`~napari_sam.engine.refine.mask_crop_box`: the same box as on
    the whole slice, since no pixel outside that window is above it), the logits are upsampled
    in that box only, and all masks' crops go through the refiner in one batch. Outside its
    crop a mask's logits are at most ``CROP_LOGIT < 0``: background, as on the whole slice.

    Parameters
    ----------
    low_res : torch.Tensor, shape (B, K, 4h, 4w)
        Low-resolution logits of ``B`` objects with ``K`` candidates each.
    geometry : ResizeGeometry
        Of the slice.
    refiner : MaskRefiner, optional
    gray : torch.Tensor, shape (H, W), optional
        :func:`~napari_sam.engine.refine.slice_gray` of the slice; required with ``refiner``.
    gray_cache : dict, optional
        The refiner's image features by crop box (:func:`~napari_sam.engine.refine.gray_features`)
        of this slice, read and filled here: they do not depend on the mask.

    Returns
    -------
    numpy.ndarray, shape (B, K, H, W), bool
    """
    if refiner is not None and gray is None:
        raise ValueError("window_masks needs the slice's gray image to refine")
    b, k = low_res.shape[:2]
    hw = tuple(geometry.original_size)
    out = np.zeros((b, k, *hw), dtype=bool)
    threshold = 0.0 if refiner is None else CROP_LOGIT
    boxes, logits = [], []
    with torch.inference_mode():
        flat = low_res.reshape(b * k, *low_res.shape[-2:])
        for n, lr in enumerate(flat):
            window = positive_window(lr, geometry, threshold)
            if window is None:
                continue
            (o0, o1), (p0, p1) = window
            up = _upscale_region(lr, geometry, window)
            if refiner is None:
                out[n // k, n % k, o0:o1, p0:p1] = (up > 0).cpu().numpy()
                continue
            box = mask_crop_box(up, offset=(o0, p0), shape=hw)
            if box is None:
                continue
            r0, c0, r1, c1 = box
            boxes.append((n, box))
            logits.append(up if box == (o0, p0, o1, p1) else
                          _upscale_region(lr, geometry, ((r0, r1), (c0, c1))))
        if refiner is None or not boxes:
            return out
        grays = []
        for _, box in boxes:
            r0, c0, r1, c1 = box
            if gray_cache is None:
                grays.append(gray[r0:r1, c0:c1])
                continue
            if box not in gray_cache:
                gray_cache[box] = gray_features(gray[r0:r1, c0:c1], refiner.crop_size)
            grays.append(gray_cache[box])
        refined = refine_crops(refiner, grays, logits)
        for (n, (r0, c0, r1, c1)), lg in zip(boxes, refined, strict=True):
            out[n // k, n % k, r0:r1, c0:c1] = (lg > 0).cpu().numpy()
    return out
