"""Segment everything's candidate masks: point prompts of one crop decoded in windows, filtered.

:func:`_decode_crop` decodes the points of one crop (a crop of the image, or the whole image)
in batches, each against a window of the embedding around it
(:func:`napari_sam.engine.decoding.decode_windows`), keeps the candidates that pass the
predicted-IoU, stability and area filters (computed on the windows: nothing of a mask lies
beyond its window), marks what they cover so that later points on it are skipped, and
upsamples only the kept masks, each in its own window. :func:`_refined` redraws the masks left
after non-maximum suppression with the mask refiner. Split from :mod:`.automatic`, which
holds the parameters, the prompt points, the filters between candidates and the painting.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import torch

from ..engine.decoding import WindowedLogits, decode_low_res, decode_windows
from ..engine.predictor import ImageEmbedding, SamPredictor
from ..engine.refine import mask_crop_box, refine_crops
from ..engine.upsample import positive_window, upscale_window

if TYPE_CHECKING:  # pragma: no cover
    from .automatic import AutomaticParams

__all__: list[str] = []


@dataclass
class _Candidate:
    """A kept mask, stored as its bounding box and the mask inside it (global coordinates)."""

    r0: int
    c0: int
    mask: npt.NDArray[np.bool_]
    score: float
    #: With refinement: the full-resolution logits in the refiner's crop box, and its corner.
    logits: torch.Tensor | None = None
    logits_origin: tuple[int, int] = (0, 0)

    @property
    def box(self) -> tuple[int, int, int, int]:
        return self.r0, self.c0, self.r0 + self.mask.shape[0], self.c0 + self.mask.shape[1]

    @property
    def area(self) -> int:
        return int(np.count_nonzero(self.mask))


def _decode_points(
    predictor: SamPredictor, emb: ImageEmbedding, points: npt.NDArray, window: int,
    min_iou: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Three candidate masks ``(B, 3, 4h, 4w)`` and IoUs ``(B, 3)`` for each of ``B`` single
    positive points ``(B, 1, 2)`` (slice pixels), each decoded in a ``window`` of the embedding
    centred on it (:func:`_point_windows`)."""
    found = _point_windows(predictor, emb, points, window, min_iou)
    return found.full(), found.iou


def _point_windows(
    predictor: SamPredictor, emb: ImageEmbedding, points: npt.NDArray, window: int,
    min_iou: float = 0.0,
) -> WindowedLogits:
    """:func:`_decode_points` as :class:`~napari_sam.engine.decoding.WindowedLogits`
    (:func:`~napari_sam.engine.decoding.decode_windows`; with ``window`` 0 or at least the
    grid, every point on the whole grid)."""
    labels = np.ones(points.shape[:2], dtype=np.int64)
    h, w = emb.features.shape[-2:]
    if window and (window < h or window < w):
        return decode_windows(predictor, emb, points, labels, None, None, True, points[:, 0],
                              window, min_iou)
    low, iou = decode_low_res(predictor, emb, points, labels, None, None, True)
    return WindowedLogits(low, iou, np.zeros((len(points), 2), dtype=np.int64),
                          tuple(low.shape[-2:]), {})


def _cover(covered: np.ndarray, masks) -> None:
    """Mark the pixels of masks in ``covered``, in place: ``masks`` holds ``(window, mask)``
    pairs (:func:`_upscaled`), None for masks with no positive pixel."""
    for found in masks:
        if found is not None:
            ((o0, o1), (p0, p1)), m = found
            covered[o0:o1, p0:p1] |= m


def _upscaled(lr: torch.Tensor, geometry) -> tuple | None:
    """``(window, mask)`` of one mask's low-res logits ``(h, w)``: the slice window where it
    can be positive (:func:`~napari_sam.engine.upsample.positive_window`) and the mask there,
    ``(rows, cols)`` bool; None if it has no positive pixel in the slice."""
    window = positive_window(lr, geometry)
    if window is None:
        return None
    return window, (upscale_window(lr, geometry, window) > 0).cpu().numpy()


def _decode_crop(
    predictor: SamPredictor,
    emb: ImageEmbedding,
    offset: tuple[int, int],
    full_hw: tuple[int, int],
    points: npt.NDArray[np.float64],
    params: AutomaticParams,
    cancelled: Callable[[], bool] | None,
    tick: Callable[[], None],
    keep_logits: bool = False,
) -> tuple[list[_Candidate], bool]:
    """The filtered candidates of one crop in global coordinates; False if cancelled. With
    ``keep_logits`` each keeps its logits around it, for the refiner."""
    hw = tuple(emb.original_size)
    geometry = emb.geometry
    covered = np.zeros(hw, dtype=bool)
    cands: list[_Candidate] = []
    low_h, low_w = predictor._low_res_size()
    in_h, in_w = geometry.input_size
    # the part of the low-res frame that shows the crop (the rest is padding)
    valid = (
        int(np.ceil(in_h * low_h / geometry.img_size)),
        int(np.ceil(in_w * low_w / geometry.img_size)),
    )
    max_low_area = params.max_area_fraction * valid[0] * valid[1]
    r_off, c_off = offset
    at_edge = (r_off > 0, c_off > 0, r_off + hw[0] < full_hw[0], c_off + hw[1] < full_hw[1])
    pos = 0
    while pos < len(points):
        if cancelled is not None and cancelled():
            return cands, False
        batch = []
        while pos < len(points) and len(batch) < params.points_per_batch:
            p = points[pos]
            pos += 1
            r, c = int(round(p[0])), int(round(p[1]))
            r, c = min(max(r, 0), hw[0] - 1), min(max(c, 0), hw[1] - 1)
            if covered[r, c]:
                continue
            batch.append(p)
        if not batch:
            break
        pts = np.asarray(batch)[:, None, :]
        found = _point_windows(predictor, emb, pts, params.decode_window,
                               params.pred_iou_thresh)
        # candidate j is mask j % 3 of point j // 3; filters on the windows, logits in the
        # whole frame only for the masks used (one frame per point at most)
        iou = found.iou.flatten()
        stab = found.stability(params.stability_offset).flatten()
        area = found.area().flatten()
        frames: dict[int, torch.Tensor] = {}
        upscaled: dict[int, tuple | None] = {}

        def mask(j: int, found=found, frames=frames) -> torch.Tensor:
            if j // 3 not in frames:
                frames[j // 3] = found.logits(j // 3)
            return frames[j // 3][j % 3]

        def slice_mask(j: int, upscaled=upscaled) -> tuple | None:
            # a point's best mask is often kept too: upsampled once for both
            if j not in upscaled:
                upscaled[j] = _upscaled(mask(j), geometry)
            return upscaled[j]
        ok = (
            (iou >= params.pred_iou_thresh)
            & (stab >= params.stability_score_thresh)
            & (area > 0)
            & (area <= max_low_area)
        )
        if params.skip_covered and "blobs" in params.point_source:
            best = iou.view(-1, 3).argmax(dim=1) + 3 * torch.arange(len(batch))
            best = best[(area[best] > 0) & (area[best] <= max_low_area)]
            _cover(covered, map(slice_mask, best.tolist()))
        if params.skip_background:
            # a confident mask too large to be an object is background: its grid points need
            # no decoding (objects it does not cover keep theirs)
            bg = (
                (iou >= params.pred_iou_thresh)
                & (stab >= params.stability_score_thresh)
                & (area > max_low_area)
            )
            _cover(covered, map(slice_mask, torch.nonzero(bg).flatten().tolist()))
        idx = torch.nonzero(ok).flatten()
        for j, score in zip(idx.tolist(), iou[idx].tolist(), strict=True):
            # each mask upsampled only where it can be positive (the same mask as upsampling
            # the whole crop: a few per cent of the work for a nucleus)
            lr = mask(j)
            up = slice_mask(j)
            if up is None:
                continue
            ((w0, _), (v0, _)), m = up
            if not m.any():
                continue
            rows = np.flatnonzero(m.any(axis=1))
            cols = np.flatnonzero(m.any(axis=0))
            sub = m[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
            r0, r1 = w0 + int(rows[0]), w0 + int(rows[-1]) + 1
            c0, c1 = v0 + int(cols[0]), v0 + int(cols[-1]) + 1
            # masks cut by a crop edge that is not the image's edge belong to another crop
            if (at_edge[0] and r0 == 0) or (at_edge[1] and c0 == 0) or (
                at_edge[2] and r1 == hw[0]) or (at_edge[3] and c1 == hw[1]):
                continue
            if params.skip_covered:
                covered[r0:r1, c0:c1] |= sub
            cand = _Candidate(r0 + r_off, c0 + c_off, sub.copy(), score)
            if keep_logits:
                # the refiner's crop, looked for in a window around the mask (a scan of
                # the whole slice per candidate cost more than the refiner itself)
                pad = max(8, max(r1 - r0, c1 - c0))
                wr, wc = max(r0 - pad, 0), max(c0 - pad, 0)
                near = ((wr, min(r1 + pad, hw[0])), (wc, min(c1 + pad, hw[1])))
                logits = upscale_window(lr, geometry, near)
                lr0, lc0, lr1, lc1 = mask_crop_box(logits)
                cand.logits = logits[lr0:lr1, lc0:lc1].to(torch.float16).cpu()
                cand.logits_origin = (wr + lr0 + r_off, wc + lc0 + c_off)
            cands.append(cand)
        tick()
    return cands, True


def _refined(cands: list[_Candidate], refiner, gray: npt.NDArray[np.float32]
             ) -> list[_Candidate]:
    """The candidates' masks redrawn by the mask refiner (only those left after NMS: one
    refiner call per object, not per prompt); masks the refiner empties are dropped."""
    gray_t = torch.from_numpy(gray)
    grays = []
    for c in cands:
        r0, c0 = c.logits_origin
        grays.append(gray_t[r0:r0 + c.logits.shape[0], c0:c0 + c.logits.shape[1]])
    out = []
    for c, logits in zip(cands, refine_crops(refiner, grays, [c.logits for c in cands]),
                         strict=True):
        m = (logits > 0).numpy()
        if not m.any():
            continue
        rows = np.flatnonzero(m.any(axis=1))
        cols = np.flatnonzero(m.any(axis=0))
        r0, c0 = c.logits_origin
        out.append(_Candidate(r0 + int(rows[0]), c0 + int(cols[0]),
                              m[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1], c.score))
    return out
