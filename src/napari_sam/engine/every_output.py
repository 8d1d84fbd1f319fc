"""Every mask of SAM's decoder in one pass: the single-output mask and the candidates together.

SAM's mask decoder always computes all ``K + 1`` of its masks (the single-output mask for rich
prompts and ``K = 3`` candidates for ambiguous ones) and :meth:`SamPredictor.predict` returns one
kind or the other. The click protocol of the evaluation needs both for the same prompts at every
corrective click (the single-output mask is kept, the candidates give the oracle): decoding once
for both halves its decoder work, and decoding all objects of a slice at once saves the
per-call overhead. The masks are the ones ``predict`` returns (the same decoder, upsampling and
refiner), up to float rounding of batched arithmetic.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch

from .predictor import SamPredictor

__all__ = ["DECODE_OBJECTS", "predict_every_output"]

#: Objects per decoder call. Each object brings its own copy of the image tokens (its mask
#: prompt differs): beyond a few, a call's activations leave the CPU caches and an object costs
#: more (measured on 416 px crops, one thread: 25 ms per object at 2-4, 35 at 8, 63 at 16).
DECODE_OBJECTS = 4


def predict_every_output(
    predictor: SamPredictor,
    points: npt.ArrayLike | None,
    labels: npt.ArrayLike | None,
    boxes: npt.ArrayLike | None,
    mask_input: npt.ArrayLike | None,
    single_output: bool = True,
    candidates: bool = True,
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Decode ``B`` objects on the predictor's current slice, with every output at once.

    Parameters
    ----------
    predictor : SamPredictor
        With a slice set (:meth:`SamPredictor.set_image` or ``set_embedding``).
    points : array-like, shape (B, N, 2), optional
        ``(row, col)`` in slice pixels, ``N`` points per object.
    labels : array-like, shape (B, N), optional
        1 positive, 0 negative (default all positive).
    boxes : array-like, shape (B, 4), optional
        ``(row0, col0, row1, col1)``, one per object.
    mask_input : array-like, shape (B, 1, 4h, 4w), optional
        Low-resolution logits of an earlier decoding of each object.
    single_output : bool
        Also return the single-output mask (first); else only the ``K`` candidates.
    candidates : bool
        Return the ``K`` candidates; False (with ``single_output``) returns only the
        single-output mask, and skips upsampling and refining the candidates (the decoder pass
        is the same).

    Returns
    -------
    masks : numpy.ndarray, shape (B, M, H, W), bool
        The single-output mask (index 0, with ``single_output``), then the ``K`` candidates
        (with ``candidates``), as :meth:`SamPredictor.predict` returns them with
        ``multimask=False`` and ``True``: ``M`` is ``K + 1``, ``K`` or 1.
    scores : numpy.ndarray, shape (B, M), float32
        Predicted IoU of each mask.
    low_res_logits : numpy.ndarray, shape (B, M, 4h, 4w), float32

    Raises
    ------
    ValueError
        For prompts :meth:`SamPredictor.predict` rejects, for no output asked for (neither
        ``single_output`` nor ``candidates``), or a model whose decoder does not give all its
        outputs (``predict_masks``).
    """
    if not (single_output or candidates):
        raise ValueError("no output asked for: single_output and candidates are both False")
    decoder = predictor.model.mask_decoder
    if not hasattr(decoder, "predict_masks"):
        raise ValueError(f"{type(decoder).__name__} does not give every output (predict_masks)")
    n = _n_objects(points, boxes, mask_input)
    # written into arrays allocated once: concatenating the chunks' whole-slice masks copied
    # them all again (~13 % of an evaluation's time at 125 objects)
    result: tuple[np.ndarray, ...] = ()
    for i in range(0, n, DECODE_OBJECTS):
        part = _decode(predictor, *(None if x is None else np.asarray(x)[i:i + DECODE_OBJECTS]
                                    for x in (points, labels, boxes, mask_input)),
                       single_output, candidates)
        if not result:
            result = tuple(np.empty((n, *p.shape[1:]), dtype=p.dtype) for p in part)
        if len(part[0]) != min(DECODE_OBJECTS, n - i):
            raise ValueError(f"{len(part[0])} objects decoded for {min(DECODE_OBJECTS, n - i)} "
                             "prompts")
        for out, p in zip(result, part, strict=True):
            out[i:i + len(p)] = p
    masks, scores, logits = result
    return masks, scores, logits


def _decode(predictor, points, labels, boxes, mask_input, single_output, candidates):
    """:func:`predict_every_output` of one decoder call."""
    with predictor._lock:
        predictor._check_thread()
        emb = predictor._require_embedding()
        geometry = emb.geometry
        _, point_prompts, box_t, masks_t = predictor._prepare_prompts(
            geometry, points, labels, boxes, mask_input)
        with torch.inference_mode():
            sparse, dense = predictor.model.prompt_encoder(
                points=point_prompts, boxes=box_t, masks=masks_t)
            # as predict() decodes: the image-only work of a slice shared by prompts without a
            # mask prompt, and the masks upsampled (and refined) where they can be
            prepared = getattr(predictor, "_prepared_image", None)
            prepared = prepared(emb) if prepared is not None and masks_t is None else None
            extra = {} if prepared is None else {"prepared": prepared}
            low_res, iou = predictor.model.mask_decoder.predict_masks(
                emb.features, predictor._get_dense_pe(), sparse, dense, **extra)
            if not single_output:
                low_res, iou = low_res[:, 1:], iou[:, 1:]
            elif not candidates:
                low_res, iou = low_res[:, :1], iou[:, :1]
            full_masks = getattr(predictor, "full_masks", None)
            if full_masks is not None:
                masks = full_masks(low_res, geometry)
            else:
                masks = (predictor.full_logits(low_res, geometry) > 0.0).cpu().numpy()
    return masks, iou.float().cpu().numpy(), low_res.float().cpu().numpy()


def _n_objects(points, boxes, mask_input) -> int:
    """``B``, checking the batched shapes (prepare_prompts broadcasts unbatched ones)."""
    sizes = {}
    if points is not None and np.size(points) > 0:
        if np.ndim(points) != 3 or np.shape(points)[-1] != 2:
            raise ValueError(f"points must have shape (B, N, 2), got {np.shape(points)}")
        sizes["points"] = np.shape(points)[0]
    if boxes is not None and np.size(boxes) > 0:
        if np.ndim(boxes) != 2 or np.shape(boxes)[-1] != 4:
            raise ValueError(f"boxes must have shape (B, 4), got {np.shape(boxes)}")
        sizes["boxes"] = np.shape(boxes)[0]
    if mask_input is not None:
        if np.ndim(mask_input) != 4:
            raise ValueError(f"mask_input must have shape (B, 1, 4h, 4w), got "
                             f"{np.shape(mask_input)}")
        sizes["mask_input"] = np.shape(mask_input)[0]
    if not sizes:
        raise ValueError("no prompt given: pass points, boxes or a mask_input")
    if len(set(sizes.values())) > 1:
        raise ValueError(f"the prompts give different numbers of objects: {sizes}")
    return next(iter(sizes.values()))
