"""Prompts checked and put in the model's frame: the one validation of points and boxes.

:class:`~napari_sam.engine.predictor.SamPredictor` (``predict``, ``segment``) checks every prompt
with :func:`check_points` and :func:`check_boxes` against the slice it decodes, and the command
line checks its ``--points`` and ``--box`` with the same functions against the image (turning the
:class:`ValueError` into its one-line error). Coordinates are napari ``(row, col)``: pixel ``i``
covers ``[i - 0.5, i + 0.5]``, so an ``H x W`` image covers rows ``-0.5 .. H - 0.5`` and columns
``-0.5 .. W - 0.5``; a point on that area (its edge included) is inside.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

__all__ = ["EDGE_TOLERANCE", "MASK_PROMPT_LOGIT", "check_boxes", "check_points", "mask_logits",
           "prepare_prompts"]

#: How far beyond the centres of the edge pixels a point may lie (their outer half).
EDGE_TOLERANCE = 0.5

#: Magnitude of the logits a binary mask prompt is turned into (SAM's own logits are of this order).
MASK_PROMPT_LOGIT = 10.0


def _text(values: npt.NDArray) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def _outside(rc: npt.NDArray, shape: tuple[int, int]) -> npt.NDArray[np.bool_]:
    """Which ``(N, 2)`` points lie outside the pixel area of an image of ``shape``."""
    h, w = shape
    t = EDGE_TOLERANCE
    return ((rc[:, 0] < -t) | (rc[:, 0] > h - 1 + t)
            | (rc[:, 1] < -t) | (rc[:, 1] > w - 1 + t))


def check_points(points: npt.ArrayLike, shape: tuple[int, ...] | None,
                 what: str = "point") -> None:
    """Raise :class:`ValueError` naming the first point that is not finite or lies outside an
    image of ``shape`` (its first two values are ``(H, W)``; None: finiteness only).

    Parameters
    ----------
    points : array-like, shape (..., 2)
        ``(row, col)``.
    shape : tuple of int
        ``(H, W)`` (more values are ignored).
    what : str
        How the message names a point (e.g. ``"--points: point"``).
    """
    rc = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    finite = np.isfinite(rc).all(axis=1)
    if not finite.all():
        raise ValueError(f"{what} {_text(rc[~finite][0])} is not finite: prompts need finite "
                         "coordinates")
    if shape is None:
        return
    h, w = int(shape[0]), int(shape[1])
    outside = _outside(rc, (h, w))
    if outside.any():
        raise ValueError(
            f"{what} {_text(rc[outside][0])} is outside the {h}x{w} image (rows and columns "
            f"run from -0.5 to {h - 0.5:g} and {w - 0.5:g})"
        )


def check_boxes(boxes: npt.ArrayLike, shape: tuple[int, ...] | None, what: str = "box",
                inside: bool = False) -> None:
    """Raise :class:`ValueError` naming the first box that is not finite or is outside an
    image of ``shape`` (None: finiteness only).

    Parameters
    ----------
    boxes : array-like, shape (..., 4)
        ``(row0, col0, row1, col1)``, corners in any order.
    shape : tuple of int
        ``(H, W)`` (more values are ignored).
    what : str
        How the message names a box.
    inside : bool
        Both corners must lie on the image (the command line's rule). By default a box only
        has to overlap the image: a box that sticks out (a loosely drawn or jittered one) is a
        valid prompt for the part of the object it holds.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    finite = np.isfinite(b).all(axis=1)
    if not finite.all():
        raise ValueError(f"{what} {_text(b[~finite][0])} is not finite: prompts need finite "
                         "coordinates")
    if shape is None:
        return
    h, w = int(shape[0]), int(shape[1])
    if inside:
        outside = _outside(b.reshape(-1, 2), (h, w)).reshape(-1, 2).any(axis=1)
    else:
        lo, hi = np.minimum(b[:, :2], b[:, 2:]), np.maximum(b[:, :2], b[:, 2:])
        t = EDGE_TOLERANCE
        outside = ((hi[:, 0] < -t) | (lo[:, 0] > h - 1 + t)
                   | (hi[:, 1] < -t) | (lo[:, 1] > w - 1 + t))
    if outside.any():
        raise ValueError(f"{what} {_text(b[outside][0])} is outside the {h}x{w} image")


def prepare_prompts(
    geometry,
    points,
    labels,
    box,
    mask_input,
    *,
    low_res_size: tuple[int, int],
    mask_to_logits: Callable[[npt.ArrayLike], npt.NDArray[np.float32]],
    device: torch.device,
    bounds: bool = True,
):
    """Check the prompts of :meth:`SamPredictor.predict` and put them in the model's frame.

    Parameters
    ----------
    geometry : ResizeGeometry
        Of the slice the prompts are on (points and boxes are checked against its shape).
    points, labels, box, mask_input
        As in :meth:`SamPredictor.predict`.
    low_res_size : (int, int)
        The mask decoder's low-resolution frame.
    mask_to_logits : callable
        Turns an ``(H, W)`` binary mask into ``(1, *low_res_size)`` logits.
    device : torch.device
    bounds : bool
        Check that points and boxes lie on the slice (else only that they are finite: for a
        caller that checked them against a larger image, like a crop's
        :class:`~napari_sam.engine.zoom.ZoomPredictor`).

    Returns
    -------
    batched : bool
        Whether several objects were given (the outputs keep their leading axis).
    points : (torch.Tensor, torch.Tensor) or None
        Model-frame ``(x, y)`` coordinates ``(B, N, 2)`` and labels ``(B, N)``.
    boxes : torch.Tensor or None
        Model-frame boxes ``(B, 4)``.
    masks : torch.Tensor or None
        Low-resolution logits ``(B, 1, h, w)``.
    """
    has_points = points is not None and np.size(points) > 0
    has_box = box is not None and np.size(box) > 0
    if not has_points and not has_box and mask_input is None:
        raise ValueError("no prompt given: pass points, a box or a mask_input")
    shape = tuple(geometry.original_size) if bounds else None

    boxes_np = None
    batched = False
    n_obj = 1
    if has_box:
        b = np.asarray(box, dtype=np.float64)
        if b.ndim not in (1, 2) or b.shape[-1] != 4:
            raise ValueError("box must have shape (4,) or (B, 4) as (row0, col0, row1, col1), "
                             f"got {np.shape(box)}")
        batched = b.ndim == 2
        b = b.reshape(-1, 4)
        check_boxes(b, shape)
        boxes_np = geometry.boxes_to_xyxy(b)
        n_obj = b.shape[0]

    coords_np = labels_np = None
    if has_points:
        p = np.asarray(points, dtype=np.float64)
        if p.ndim == 1:
            p = p[None]
        if p.ndim == 2:
            p = np.broadcast_to(p[None], (n_obj, *p.shape))
        elif p.ndim == 3:
            if has_box and p.shape[0] != n_obj:
                raise ValueError(
                    f"{p.shape[0]} point sets for {n_obj} boxes: give one per box or (N, 2)"
                )
            n_obj = p.shape[0]
            batched = True
        else:
            raise ValueError(f"points must have shape (N, 2) or (B, N, 2), got {p.shape}")
        if p.shape[-1] != 2:
            raise ValueError("points must have shape (N, 2) or (B, N, 2) as (row, col), got "
                             f"{np.shape(points)}")
        lab = np.ones(p.shape[:2]) if labels is None else np.asarray(labels, dtype=np.float64)
        if lab.ndim == 0:
            lab = lab[None]
        if lab.ndim == 1:
            lab = np.broadcast_to(lab[None], (n_obj, lab.shape[0]))
        if lab.shape != p.shape[:2]:
            raise ValueError(
                f"labels of shape {np.shape(labels)} do not match points of shape "
                f"{np.shape(points)}"
            )
        if not np.isin(lab, (0, 1)).all():
            raise ValueError("point labels must be 1 (positive) or 0 (negative)")
        check_points(p, shape)
        coords_np = geometry.points_to_xy(p)
        labels_np = lab

    masks_t = None
    if mask_input is not None:
        m = np.asarray(mask_input)
        if m.ndim == 2:
            m = mask_to_logits(m)
        m = m.astype(np.float32)
        if m.ndim == 3:
            m = m[None]
        if m.ndim != 4 or m.shape[1] != 1 or tuple(m.shape[2:]) != tuple(low_res_size):
            raise ValueError(
                f"mask_input must be (1, {low_res_size[0]}, {low_res_size[1]}) logits, "
                f"(B, 1, ...) for B objects, or an (H, W) mask; got {np.shape(mask_input)}"
            )
        if m.shape[0] > 1:
            if not batched and not has_box and not has_points:
                batched = True
                n_obj = m.shape[0]
            elif m.shape[0] != n_obj:
                raise ValueError(f"{m.shape[0]} mask prompts for {n_obj} objects")
        else:
            m = np.broadcast_to(m, (n_obj, *m.shape[1:]))
        masks_t = torch.from_numpy(np.array(m)).to(device)

    coords_t = None
    if coords_np is not None:
        coords_t = (
            torch.tensor(np.array(coords_np), dtype=torch.float32, device=device),
            torch.tensor(np.array(labels_np), dtype=torch.int64, device=device),
        )
    boxes_t = None
    if boxes_np is not None:
        boxes_t = torch.as_tensor(boxes_np, dtype=torch.float32, device=device)
    return batched, coords_t, boxes_t, masks_t


def mask_logits(mask: npt.ArrayLike, geometry, low_size: tuple[int, int]
                ) -> npt.NDArray[np.float32]:
    """Turn a binary mask into a mask prompt: logits in the decoder's low-resolution frame.

    The mask is resized and padded as the slice was for the model's input
    (:class:`~napari_sam.engine.preprocess.ResizeGeometry`), then averaged down to
    ``low_size``: ``+MASK_PROMPT_LOGIT`` inside, ``-MASK_PROMPT_LOGIT`` outside, in between
    where a low-resolution pixel straddles the edge.

    Parameters
    ----------
    mask : array-like, shape (H, W)
        Nonzero inside the object; ``(H, W)`` is ``geometry.original_size``.
    geometry : ResizeGeometry
        How the slice (or crop) the mask covers was put into the model's input.
    low_size : (int, int)
        ``(4h, 4w)`` of the decoder's low-resolution masks.

    Returns
    -------
    numpy.ndarray, shape (1, 4h, 4w), float32
    """
    m = np.asarray(mask)
    if m.shape != tuple(geometry.original_size):
        raise ValueError(
            f"mask shape {m.shape} does not match the slice shape {tuple(geometry.original_size)}"
        )
    t = torch.from_numpy((m != 0).astype(np.float32))[None, None]
    t = F.interpolate(t, size=geometry.input_size, mode="bilinear", align_corners=False)
    padded = torch.zeros((1, 1, geometry.img_size, geometry.img_size))
    padded[..., : geometry.input_size[0], : geometry.input_size[1]] = t
    small = F.interpolate(padded, size=tuple(low_size), mode="area")
    return ((small[0] * 2.0 - 1.0) * MASK_PROMPT_LOGIT).numpy().astype(np.float32)
