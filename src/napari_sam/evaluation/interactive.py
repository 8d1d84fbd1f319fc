"""The zero-shot interactive evaluation protocol of the SAM paper, headless.

Each ground-truth object is segmented from simulated clicks, and the IoU with the ground truth is
recorded after every click:

1. The first prompt is a positive point at the pixel farthest from the object's boundary
   (:func:`farthest_point`), or the object's tight bounding box in ``"box"`` mode. A single point is
   ambiguous, so SAM's three candidate masks are decoded and the one with the highest *predicted*
   IoU is kept (what a user sees); the *oracle* keeps the one with the highest *true* IoU
   (scored for the first prompt, as in the paper; ``oracle="every"`` scores it after every
   click too, from the candidates decoded for the same prompts).
2. Every further click corrects the previous mask (:func:`next_click`): a positive point in the
   missed part or a negative point in the spurious part, whichever error region is deeper. It is
   decoded together with all the clicks so far (and the box), by the single-output head, with
   the previous mask as the mask prompt: the mask kept (as the user saw it, below) turned into
   logits by the predictor's ``mask_to_logits``, or the decoder's own previous low-resolution
   logits with ``raw=True`` or a predictor without ``mask_to_logits`` (SAM's paper).

Each mask is scored as the viewer shows it: cut to the box, its edge moved to the right side
of the corrective clicks and kept to the prompted connected pieces
(:func:`napari_sam.engine.postprocess.keep_prompted_pieces`, what ``SamPredictor.segment``
returns), or what the predictor's own ``finish_mask`` makes of it (a
:class:`~napari_sam.workflows.snap.SnapPredictor` snaps it to the instance decoder's objects);
after a corrective click the new mask replaces the previous one only near the click, and a
click at the previous mask's edge only moves that edge
(:func:`napari_sam.engine.postprocess.after_click`). ``raw=True`` scores the model's masks
unchanged.

:func:`evaluate_image` decodes all objects of a slice together, one round per click, with one
decoder pass for a click's kept mask and candidates (:mod:`napari_sam.evaluation.batched`);
``batched=False`` runs :func:`evaluate_object` object by object (the same clicks and scores up to
float rounding; the reference the batched path is tested and benchmarked against).

This follows RITM (Sofiiuk et al., 2022) as adopted by SAM (Kirillov et al., 2023, sec. 7.1). The
code is model-agnostic: anything with SamPredictor's ``set_image`` and ``predict`` can be
evaluated, which is how the tests check the metric against predictors that are right or wrong by
construction. Coordinates are napari's ``(row, col)``; boxes ``(row0, col0, row1, col1)`` with
inclusive pixel indices, like SAM's own evaluation. Nothing here imports torch, Qt or napari.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import groupby
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from ..engine.masks import farthest_point, mask_iou
from .batched import batched_decoder, evaluate_objects
from .clicks import MASK_PROMPT, ClickSession, ObjectEvaluation, check_protocol, next_click

if TYPE_CHECKING:  # pragma: no cover
    from ..engine.predictor import SamPredictor

__all__ = [
    "GroundTruthObject",
    "ObjectEvaluation",
    "evaluate_image",
    "evaluate_object",
    "farthest_point",
    "ground_truth_objects",
    "mask_iou",
    "next_click",
]

#: Names of the protocol's choices, recorded in every result so that numbers are never read
#: without knowing how they were made.
FIRST_CLICK = "farthest_from_boundary"
NEXT_CLICK = "center_of_larger_error_region"
SELECTION = "highest_predicted_iou"
ORACLE = {"first": "best_true_iou_of_candidates_first_prompt",
          "every": "best_true_iou_of_candidates_every_click"}
MASKS = {False: "prompted_pieces+clicks_followed+changed_near_click+edge_clicks_move_edge",
         True: "raw"}


# -- one object --------------------------------------------------------------------------------


def evaluate_object(
    predictor: SamPredictor,
    gt_mask: npt.ArrayLike,
    prompt: str = "point",
    clicks: int = 1,
    raw: bool = False,
    oracle: str = "first",
) -> ObjectEvaluation:
    """Run the click protocol on one object of the slice currently set in ``predictor``.

    Parameters
    ----------
    predictor : SamPredictor
        With the object's slice already embedded (:meth:`SamPredictor.set_image`).
    gt_mask : array-like, shape (H, W)
        The object's ground truth; must not be empty.
    prompt : {"point", "box"}
        First prompt: a positive point at :func:`farthest_point` or the tight box of ``gt_mask``.
    clicks : int
        Number of interactions. In box mode the box is the first and ``clicks - 1`` corrective
        points follow (the box stays in every call).
    raw : bool
        Score the model's masks as decoded. By default each mask is first cut to what the
        prompt asked for (:func:`~napari_sam.engine.postprocess.keep_prompted_pieces`), as the viewer
        does; the next click is placed on that mask too.
    oracle : {"first", "every"}
        Score the oracle (best true IoU of the candidates) for the first prompt only, as the
        paper does, or after every click (which decodes the candidates at every click).

    Returns
    -------
    ObjectEvaluation
        ``len(iou) == clicks``; ``len(iou_oracle)`` is 1, or ``clicks`` with ``oracle="every"``.
        If the mask becomes exact before the last click, no click is left to place and the
        remaining entries repeat that IoU of 1.0.
    """
    session = ClickSession(gt_mask, prompt, clicks, raw, oracle,
                           getattr(predictor, "finish_mask", None),
                           getattr(predictor, "mask_to_logits", None))
    while not session.done:
        session.advance()
        if session.done:
            break
        pts, labs, box, mask_input = session.prompts()
        multi, scores, multi_logits = [], [], []
        if session.wants_candidates:
            multi, scores, multi_logits = predictor.predict(pts, labs, box, mask_input,
                                                            multimask=True)
        single = single_logits = None
        if not session.ambiguous:
            single, _, single_logits = predictor.predict(pts, labs, box, mask_input,
                                                         multimask=False)
            single, single_logits = single[0], single_logits[0]
        session.record(multi, scores, multi_logits, single, single_logits)
    return session.result()


# -- ground-truth objects ----------------------------------------------------------------------


@dataclass(frozen=True)
class GroundTruthObject:
    """One connected component of one label id in one 2D slice.

    Attributes
    ----------
    id : int
        Label id in the ground truth.
    slice : int or None
        Index along the slicing axis (``None`` for a 2D image).
    window : (slice, slice)
        Bounding box of the component in the slice.
    crop : numpy.ndarray of bool
        The component inside ``window``.
    """

    id: int
    slice: int | None
    window: tuple[slice, slice]
    crop: npt.NDArray[np.bool_]

    @property
    def area(self) -> int:
        return int(np.count_nonzero(self.crop))

    def mask(self, shape: tuple[int, int]) -> npt.NDArray[np.bool_]:
        """The component as a full ``(H, W)`` mask of the slice."""
        out = np.zeros(shape, dtype=bool)
        out[self.window] = self.crop
        return out


def check_labels(labels: npt.ArrayLike, axis: int | None) -> tuple[np.ndarray, int | None]:
    """Validate a ground-truth label image and the slicing axis.

    Returns the labels as an integer array and the axis as a non-negative int (``None`` for 2D).
    """
    lab = np.asarray(labels)
    if lab.dtype == np.bool_:
        lab = lab.astype(np.uint8)
    if not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(
            f"labels must be an integer label image, got dtype {lab.dtype} "
            "(if the values are whole numbers, convert with labels.astype(int))"
        )
    if lab.ndim == 2:
        if axis is not None:
            raise ValueError(f"axis={axis} was given but the labels are 2D {lab.shape}")
        return lab, None
    if lab.ndim != 3:
        raise ValueError(
            f"labels must be 2D (H, W) or a 3D volume with an axis, got shape {lab.shape}"
        )
    if axis is None:
        raise ValueError(f"the labels are 3D {lab.shape}: pass axis= to choose the slicing axis")
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not -3 <= axis < 3:
        raise ValueError(f"axis {axis!r} is out of range for 3D labels (use 0, 1, 2 or -3..-1)")
    return lab, int(axis) % 3


def check_image_matches(image_shape: tuple[int, ...], labels_shape: tuple[int, ...]) -> bool:
    """Raise unless the image goes with the labels; return whether the image is RGB(A)."""
    image_shape, labels_shape = tuple(image_shape), tuple(labels_shape)
    if image_shape == labels_shape:
        return False
    if image_shape[:-1] == labels_shape and image_shape[-1] in (3, 4):
        return True
    raise ValueError(
        f"the image of shape {image_shape} and the labels of shape {labels_shape} differ "
        "(the image may only add a trailing RGB axis of 3 or 4)"
    )


def _components(labels2d: np.ndarray, index: int | None) -> Iterator[GroundTruthObject]:
    structure = np.ones((3, 3), dtype=bool)  # 8-connectivity: a diagonal touch is one object
    ids, dense = np.unique(labels2d, return_inverse=True)  # dense ids: sparse huge ids are fine
    # from 1 (find_objects skips 0), whether or not the slice has background
    dense = dense.reshape(labels2d.shape) + 1
    windows = ndimage.find_objects(dense)
    for k, lid in enumerate(ids):
        if lid == 0:
            continue
        window = windows[k]
        comp, n = ndimage.label(dense[window] == k + 1, structure=structure)
        for j in range(1, n + 1):
            part = comp == j
            rows = np.flatnonzero(part.any(axis=1))
            cols = np.flatnonzero(part.any(axis=0))
            sub = (slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1))
            full = tuple(
                slice(int(w.start) + s.start, int(w.start) + s.stop) for w, s in zip(window, sub)
            )
            yield GroundTruthObject(int(lid), index, full, part[sub])


def ground_truth_objects(
    labels: npt.ArrayLike, axis: int | None = None, min_area: int = 1
) -> list[GroundTruthObject]:
    """The objects the protocol evaluates: 2D connected components of each label id per slice.

    Parameters
    ----------
    labels : array-like of int, shape (H, W) or a 3D volume
        0 is background. A label id that falls apart into several pieces in a slice (a cell cut
        by the slicing plane, or two pieces of annotation) gives one object per piece, since one
        click can only be expected to select one piece.
    axis : int, optional
        Slicing axis of a 3D volume; required for 3D, not allowed for 2D.
    min_area : int
        Components with fewer pixels are skipped.

    Returns
    -------
    list of GroundTruthObject
        Ordered by slice, then label id, then the raster order of the components.
    """
    lab, axis = check_labels(labels, axis)
    if lab.size and lab.min() < 0:
        raise ValueError("labels must be non-negative (0 is background)")
    if axis is None:
        planes: Iterator[tuple[int | None, np.ndarray]] = iter([(None, lab)])
    else:
        planes = ((i, np.take(lab, i, axis=axis)) for i in range(lab.shape[axis]))
    return [
        obj
        for index, plane in planes
        if plane.any()
        for obj in _components(plane, index)
        if obj.area >= min_area
    ]


# -- whole images ------------------------------------------------------------------------------


def _plane(image: Any, axis: int | None, index: int | None) -> np.ndarray:
    if axis is None:
        return np.asarray(image)
    key = [slice(None)] * len(np.shape(image))
    key[axis] = index
    return np.asarray(image[tuple(key)])


def summarize(
    per_object: list[dict[str, Any]],
    protocol: dict[str, Any],
    model_name: str | None,
) -> dict[str, Any]:
    """The result dict of :func:`evaluate_image` from its per-object entries."""
    iou = np.array([o["iou"] for o in per_object], dtype=np.float64)
    iou_oracle = np.array([o["iou_oracle"] for o in per_object], dtype=np.float64)
    return {
        "miou": [float(v) for v in iou.mean(axis=0)],
        "miou_oracle": [float(v) for v in iou_oracle.mean(axis=0)],
        "n_objects": len(per_object),
        "per_object": per_object,
        "protocol": protocol,
        "model": model_name,
    }


def evaluate_image(
    predictor: SamPredictor,
    image: npt.ArrayLike,
    labels: npt.ArrayLike,
    *,
    prompt: str = "point",
    clicks: int = 1,
    axis: int | None = None,
    intensity_range: tuple[float, float] | None = None,
    model_name: str | None = None,
    min_area: int = 1,
    progress: Callable[[int, int], None] | None = None,
    raw: bool = False,
    batched: bool = True,
    oracle: str = "first",
) -> dict[str, Any]:
    """Evaluate a predictor with the click protocol on every ground-truth object of an image.

    Parameters
    ----------
    predictor : SamPredictor
    image : array-like, shape (H, W), (H, W, 3), or a 3D volume (Z, Y, X) / (Z, Y, X, 3)
        Any dtype.
    labels : array-like of int, shape (H, W) or (Z, Y, X)
        Ground-truth instances, 0 is background. The objects are the 2D connected components of
        each label id per slice (see :func:`ground_truth_objects`).
    prompt : {"point", "box"}
        First prompt of each object.
    clicks : int
        Interactions per object (in box mode: the box and ``clicks - 1`` corrective points).
    axis : int, optional
        For 3D labels: the axis to slice along. Each slice with objects is embedded once.
    intensity_range : (float, float), optional
        Normalisation range; by default one robust range for the whole image, so all slices of a
        volume are normalised alike.
    model_name : str, optional
        Recorded as ``"model"`` in the result.
    min_area : int
        Skip ground-truth components smaller than this many pixels.
    progress : callable, optional
        Called as ``progress(done, total)`` after each object.
    raw : bool
        Score the model's masks unchanged instead of what the prompt asked for of them (see
        :func:`evaluate_object`).
    batched : bool
        Decode all objects of a slice together, round by round
        (:func:`napari_sam.evaluation.batched.evaluate_objects`: the same clicks and scores up to
        float rounding, several times faster) when the predictor can (a
        :class:`~napari_sam.engine.zoom.ZoomPredictor` or a plain ``SamPredictor``); False:
        object by object with :func:`evaluate_object`.
    oracle : {"first", "every"}
        Score the oracle for the first prompt only (the paper's), or after every click too (the
        candidates are then upsampled and refined at every click: 1.3-1.5x the time at 5 clicks).

    Returns
    -------
    dict
        JSON-serialisable: ``miou`` (mean IoU over objects after 1, 2, ... ``clicks``
        interactions) and ``miou_oracle`` (the oracle's, for the first prompt or, with
        ``oracle="every"``, after each interaction), ``per_object`` (``{"id", "slice", "iou",
        "iou_oracle"}`` each, ``slice`` is ``None`` for a 2D image), ``n_objects``,
        ``protocol`` and ``model``.

    Raises
    ------
    ValueError
        If the image and labels do not match, the labels are not integers or hold no object, or
        ``axis`` is missing, superfluous or out of range.
    """
    check_protocol(prompt, clicks, oracle)
    if not hasattr(image, "shape") or not hasattr(image, "dtype"):
        image = np.asarray(image)
    lab, axis = check_labels(labels, axis)
    rgb = check_image_matches(image.shape, lab.shape)
    objects = ground_truth_objects(lab, axis, min_area)
    if not objects:
        raise ValueError("the labels contain no objects (every pixel is 0 or below min_area)")
    if intensity_range is None and not (rgb and image.dtype == np.uint8):
        from ..engine.preprocess import estimate_intensity_range

        intensity_range = estimate_intensity_range(image)

    finish = getattr(predictor, "finish_mask", None)  # what segment() makes of a mask
    to_logits = getattr(predictor, "mask_to_logits", None)  # the kept mask as the next prompt
    per_object = []
    for index, group in groupby(objects, key=lambda o: o.slice):
        plane = _plane(image, axis, index)
        predictor.set_image(plane, intensity_range)
        shape = plane.shape[:2]
        group = list(group)

        def record(obj: GroundTruthObject, result: ObjectEvaluation) -> None:
            per_object.append({"id": obj.id, "slice": obj.slice, "iou": result.iou,
                               "iou_oracle": result.iou_oracle})
            if progress is not None:
                progress(len(per_object), len(objects))

        decode = batched_decoder(predictor) if batched else None
        if decode is None:  # object by object
            for obj in group:
                record(obj, evaluate_object(predictor, obj.mask(shape), prompt, clicks, raw,
                                            oracle))
            continue
        results = evaluate_objects(decode, (obj.mask(shape) for obj in group), prompt, clicks,
                                   raw, oracle=oracle, finish=finish, to_logits=to_logits)
        for obj, result in zip(group, results, strict=True):
            record(obj, result)

    protocol = {
        "prompt": prompt,
        "clicks": int(clicks),
        "first_click": FIRST_CLICK if prompt == "point" else "tight_box",
        "next_click": NEXT_CLICK,
        "selection": SELECTION,
        "oracle": ORACLE[oracle],
        "mask_prompt": MASK_PROMPT[to_logits is not None and not raw],
        "masks": MASKS[bool(raw)] if raw or finish is None else (
            f"{MASKS[False]}+{type(predictor).__name__}"),
    }
    return summarize(per_object, protocol, model_name)
