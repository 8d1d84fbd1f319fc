"""Mask refinement at the slice's resolution (:class:`napari_sam.modeling.MaskRefiner`).

The refiner works on one square crop per mask: the box of the mask's uncertain-or-inside region
(logits above :data:`CROP_LOGIT`), widened by :data:`CROP_MARGIN` of its side (at least
:data:`MIN_MARGIN` px) so that the boundary and some background are in view, resampled to the
refiner's ``crop_size``. Its correction is resampled back to the crop and added to the logits;
pixels outside the crop keep their logits.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from .preprocess import to_rgb_uint8_range

__all__ = ["CROP_LOGIT", "crop_features", "gray_features", "logit_features", "mask_crop_box",
           "refine_crops", "refine_logits", "slice_gray"]

#: Pixels with logits above this are inside or near the mask and are kept in the crop.
CROP_LOGIT = -2.0
#: The crop extends the mask's box by this fraction of its longer side on each side ...
CROP_MARGIN = 0.3
#: ... and by at least this many pixels.
MIN_MARGIN = 4
#: Crops per refiner call (the result does not depend on it). Measured on one CPU thread (AMD
#: EPYC, 64 px crops, median of 5): 2: 1.99 ms per crop, 4: 1.79, 8: 1.81, 16: 2.79 (a chunk's
#: activations, 16 channels x 64 x 64 floats per crop, stay in the CPU's caches).
REFINE_CHUNK = 4


def slice_gray(image: npt.ArrayLike, intensity_range: tuple[float, float] | None = None
               ) -> npt.NDArray[np.float32]:
    """The slice as the refiner sees it: gray values in [0, 1], shape ``(H, W)``.

    Scaled exactly as the image encoder's input (:func:`napari_sam.engine.preprocess.to_rgb_uint8_range`,
    channels averaged).
    """
    return to_rgb_uint8_range(image, intensity_range).mean(axis=-1) / np.float32(255.0)


def mask_crop_box(logits: npt.NDArray[np.float32] | torch.Tensor,
                  offset: tuple[int, int] = (0, 0), shape: tuple[int, int] | None = None
                  ) -> tuple[int, int, int, int] | None:
    """``(row0, col0, row1, col1)`` (end exclusive) of the refiner's square crop around one
    mask's logits ``(H, W)``, cut to the slice; None if no pixel is above :data:`CROP_LOGIT`.

    ``logits`` may be a window of the slice's logits holding every pixel above
    :data:`CROP_LOGIT`: ``offset`` is its corner ``(row, col)`` in the slice and ``shape`` the
    slice's ``(H, W)``; the box is then in slice pixels."""
    logits = torch.as_tensor(logits)
    # maxima along rows and columns: ~10x faster than any() of a thresholded copy
    rows = torch.nonzero(logits.amax(dim=1) > CROP_LOGIT).flatten()
    if rows.numel() == 0:
        return None
    cols = torch.nonzero(logits.amax(dim=0) > CROP_LOGIT).flatten()
    r0, r1 = int(rows[0]) + offset[0], int(rows[-1]) + 1 + offset[0]
    c0, c1 = int(cols[0]) + offset[1], int(cols[-1]) + 1 + offset[1]
    side = max(r1 - r0, c1 - c0)
    half = side / 2 + max(MIN_MARGIN, round(CROP_MARGIN * side))
    cr, cc = (r0 + r1) / 2, (c0 + c1) / 2
    h, w = logits.shape if shape is None else shape
    return (max(int(np.floor(cr - half)), 0), max(int(np.floor(cc - half)), 0),
            min(int(np.ceil(cr + half)), h), min(int(np.ceil(cc + half)), w))


def _resample(x: torch.Tensor, size: int) -> torch.Tensor:
    """(C, h, w) -> (C, size, size): area-averaged when shrinking, bilinear when enlarging."""
    if x.shape[-2] >= size and x.shape[-1] >= size:
        return F.interpolate(x[None], size=(size, size), mode="area")[0]
    return F.interpolate(x[None], size=(size, size), mode="bilinear", align_corners=False)[0]


def crop_features(gray: torch.Tensor, logits: torch.Tensor, size: int
                  ) -> tuple[torch.Tensor, float]:
    """The refiner's input for one mask.

    Parameters
    ----------
    gray : torch.Tensor, shape (h, w)
        :func:`slice_gray` of the slice, cut to the mask's :func:`mask_crop_box`.
    logits : torch.Tensor, shape (h, w)
        The mask's logits at the slice's resolution, cut to the same box.
    size : int
        The refiner's ``crop_size``.

    Returns
    -------
    crop : torch.Tensor, shape (3, size, size)
        Gray by the slice's range, gray by the crop's 1-99 % range, logits / 10 in [-2, 2].
    log_scale : float
        ``log(side / size)`` with ``side`` the crop's longer side.
    """
    image, log_scale = gray_features(gray, size)
    return torch.cat([image, logit_features(logits, size)]), log_scale


def gray_features(gray: torch.Tensor, size: int) -> tuple[torch.Tensor, float]:
    """The image part of :func:`crop_features`: ``(2, size, size)`` and ``log_scale``.

    It depends on the crop's box only, not on the mask: a caller may keep it per box (a
    predictor does, per slice: every click's third candidate is often the whole slice).
    """
    g = gray.float()
    lo, hi = torch.quantile(g.flatten(), torch.tensor([0.01, 0.99], dtype=g.dtype))
    local = ((g - lo) / (hi - lo).clamp(min=1e-3)).clamp(0.0, 1.0)
    return _resample(torch.stack([g, local]), size), float(np.log(max(g.shape) / size))


def logit_features(logits: torch.Tensor, size: int) -> torch.Tensor:
    """The mask part of :func:`crop_features`: ``(1, size, size)``."""
    lg = (logits.float() / 10.0).clamp(-2.0, 2.0)
    return F.interpolate(lg[None, None], size=(size, size), mode="bilinear",
                         align_corners=False)[0]


def refine_crops(refiner: torch.nn.Module, grays: list, logits: list[torch.Tensor]
                 ) -> list[torch.Tensor]:
    """Refined logits of masks given as crops (each gray crop with its logits crop, any sizes),
    in one batched call of the refiner.

    An entry of ``grays`` may be the crop's :func:`gray_features` instead of its gray values.
    """
    if not logits:
        return []
    size = refiner.crop_size
    feats = []
    for g, lg in zip(grays, logits, strict=True):
        image, log_scale = gray_features(g, size) if isinstance(g, torch.Tensor) else g
        feats.append((torch.cat([image, logit_features(lg, size)]), log_scale))
    param = next(refiner.parameters())
    crops = torch.stack([f for f, _ in feats]).to(param)
    scales = torch.tensor([s for _, s in feats]).to(param)
    with torch.inference_mode():
        # in chunks: the activations of a few hundred crops at once (16 x 64 x 64 floats each)
        # leave the CPU caches, and one call took 3-4x as long as the same work in chunks
        delta = torch.cat([refiner(crops[i:i + REFINE_CHUNK], scales[i:i + REFINE_CHUNK])
                           for i in range(0, len(crops), REFINE_CHUNK)]).float()
    out = []
    for lg, d in zip(logits, delta, strict=True):
        d = F.interpolate(d[None], size=tuple(lg.shape), mode="bilinear", align_corners=False)
        out.append(lg.float() + d[0, 0].to(lg.device))
    return out


def refine_logits(refiner: torch.nn.Module, gray: npt.ArrayLike | torch.Tensor,
                  logits: torch.Tensor) -> torch.Tensor:
    """Refined logits of masks of one slice.

    Parameters
    ----------
    refiner : MaskRefiner
    gray : array-like or torch.Tensor, shape (H, W)
        :func:`slice_gray` of the slice the masks belong to.
    logits : torch.Tensor, shape (N, H, W)
        Mask logits at the slice's resolution (for example :meth:`SamPredictor.predict`'s with
        ``return_logits``).

    Returns
    -------
    torch.Tensor, shape (N, H, W), float32
        The logits with the refiner's correction added inside each mask's crop; masks with no
        pixel above :data:`CROP_LOGIT` are returned unchanged.
    """
    logits = logits.float()
    gray_t = torch.as_tensor(np.asarray(gray, dtype=np.float32) if not isinstance(
        gray, torch.Tensor) else gray).to(logits.device)
    if tuple(gray_t.shape) != tuple(logits.shape[-2:]):
        raise ValueError(f"gray image {tuple(gray_t.shape)} and logits "
                         f"{tuple(logits.shape[-2:])} differ in shape")
    out = logits.clone()
    boxes = [(i, box) for i, box in enumerate(mask_crop_box(lg) for lg in logits)
             if box is not None]
    refined = refine_crops(
        refiner, [gray_t[r0:r1, c0:c1] for _, (r0, c0, r1, c1) in boxes],
        [logits[i, r0:r1, c0:c1] for i, (r0, c0, r1, c1) in boxes])
    for (i, (r0, c0, r1, c1)), lg in zip(boxes, refined, strict=True):
        out[i, r0:r1, c0:c1] = lg
    return out
