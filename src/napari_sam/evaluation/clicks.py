"""The simulated user of the click protocol: where the next click goes and what is scored.

:class:`ClickSession` follows one ground-truth object through the protocol (first prompt,
corrective clicks, the mask kept and the oracle after each): it is shared by the object-by-object
path (:func:`napari_sam.evaluation.interactive.evaluate_object`) and the batched one
(:mod:`napari_sam.evaluation.batched`), which therefore place the same clicks and score the same
masks. Coordinates are ``(row, col)``; boxes ``(row0, col0, row1, col1)`` with inclusive pixel
indices. numpy and scipy only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ..engine.masks import bounding_box, deepest_point, farthest_point
from ..engine.postprocess import after_click, keep_prompted_pieces

__all__ = ["ORACLES", "ClickSession", "ObjectEvaluation", "check_protocol", "next_click"]

PROMPTS = ("point", "box")
#: What prompts a corrective click's decoding besides the clicks: the mask kept after the
#: previous click (what the user sees and corrects) as logits, or (``raw``, or a predictor
#: without ``mask_to_logits``) the decoder's own low-resolution logits, as in SAM's paper.
MASK_PROMPT = {True: "kept_mask_as_logits", False: "previous_logits"}
#: When the oracle is scored: at the first prompt only (SAM's "oracle", the best of the three
#: candidates of an ambiguous prompt; later clicks keep the single output and need no
#: candidates), or after every click.
ORACLES = ("first", "every")


def as_2d_bool(mask: npt.ArrayLike, name: str) -> npt.NDArray[np.bool_]:
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"{name} must be a 2D (H, W) mask, got an array of shape {m.shape}")
    return m.astype(bool, copy=False)


def check_protocol(prompt: str, clicks: int, oracle: str = "first") -> None:
    """Raise :class:`ValueError` for an unknown prompt or oracle, or a click count that is not
    >= 1."""
    if prompt not in PROMPTS:
        raise ValueError(f"prompt must be one of {PROMPTS}, got {prompt!r}")
    if oracle not in ORACLES:
        raise ValueError(f"oracle must be one of {ORACLES}, got {oracle!r}")
    if isinstance(clicks, bool) or not isinstance(clicks, (int, np.integer)) or clicks < 1:
        raise ValueError(f"clicks must be a positive integer, got {clicks!r}")


def next_click(
    pred: npt.ArrayLike, gt: npt.ArrayLike
) -> tuple[tuple[int, int], int] | None:
    """The corrective click a simulated user places after seeing ``pred``.

    The error is split into the false-negative region (``gt`` missed by ``pred``) and the
    false-positive region (``pred`` outside ``gt``). The larger of the two, measured as in RITM by
    its depth (the maximum of its distance transform, so a thin sliver along the boundary loses
    against a compact blob of the same area), gets the click, at the pixel farthest from that
    region's boundary. Equal depths go to the larger area, then to the false negative.

    Parameters
    ----------
    pred, gt : array-like, shape (H, W)
        Predicted and ground-truth masks (nonzero inside).

    Returns
    -------
    ((int, int), int) or None
        ``((row, col), label)`` with label 1 (positive) in a false negative and 0 (negative) in a
        false positive; ``None`` when ``pred`` equals ``gt``.
    """
    p = as_2d_bool(pred, "pred")
    g = as_2d_bool(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred of shape {p.shape} and gt of shape {g.shape} differ")
    # both regions lie in the box around both masks: work there (a small object on a large
    # slice), which changes nothing (deepest_point crops to the region's own box anyway)
    window = _union_window(p, g)
    if window is None:
        return None
    p, g = p[window], g[window]
    candidates = []
    for region, label in ((g & ~p, 1), (p & ~g, 0)):
        area = int(np.count_nonzero(region))
        if area:
            (r, c), depth = deepest_point(region)
            point = (r + window[0].start, c + window[1].start)
            candidates.append((depth, area, label, point))
    if not candidates:
        return None
    _, _, label, point = max(candidates)
    return point, label


def _union_window(a: npt.NDArray[np.bool_], b: npt.NDArray[np.bool_]):
    """The slices of the bounding box of ``a | b``, None if both are empty."""
    rows = np.flatnonzero(a.any(axis=1) | b.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(a.any(axis=0) | b.any(axis=0))
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


@dataclass(frozen=True)
class ObjectEvaluation:
    """The outcome of the click protocol on one object.

    Attributes
    ----------
    iou : list of float
        IoU after each click (index 0 = first prompt) of the mask the protocol keeps: the
        candidate with the highest predicted IoU for a single point, the single output otherwise
        (after a corrective click: near the click only,
        :func:`~napari_sam.engine.postprocess.after_click`, as the viewer shows it).
    iou_oracle : list of float
        Best true IoU among the masks decoded for the same prompts (the three candidates and the
        kept mask), so ``iou_oracle[k] >= iou[k]``: for the first prompt only (one entry, the
        default) or after each click (``oracle="every"``). For one point this is SAM's "oracle"
        (best of three).
    points : list of (int, int)
        The clicks placed, ``(row, col)``, the first one included in point mode.
    point_labels : list of int
        1 for positive, 0 for negative clicks.
    box : (int, int, int, int) or None
        The box prompt in box mode.
    """

    iou: list[float]
    iou_oracle: list[float]
    points: list[tuple[int, int]]
    point_labels: list[int]
    box: tuple[int, int, int, int] | None = None


class ClickSession:
    """One object through the protocol: the prompts of each click and the scores of its masks.

    Call :meth:`advance` before each click after the first (it places the corrective click, or
    ends the session when the mask is exact), decode :meth:`prompts`, and :meth:`record` the
    masks; :meth:`result` when ``done``.

    Parameters
    ----------
    gt_mask : array-like, shape (H, W)
        The object's ground truth; must not be empty.
    prompt : {"point", "box"}
    clicks : int
    raw : bool
        Score masks as decoded instead of cut to the prompted pieces.
    oracle : {"first", "every"}
        Score the oracle at the first prompt only, or after every click (see :data:`ORACLES`).
    finish : callable, optional
        What is made of a decoded mask before it is scored (unless ``raw``):
        ``finish(mask, points, labels, box) -> mask``, the predictor's ``finish_mask`` if it has
        one (:class:`~napari_sam.workflows.snap.SnapPredictor`); by default
        :func:`~napari_sam.engine.postprocess.keep_prompted_pieces`.
    to_logits : callable, optional
        ``to_logits(mask, frame) -> (1, h, w)`` logits: the predictor's ``mask_to_logits``.
        Given (and not ``raw``), the next click's mask prompt is the mask kept, as the user
        sees it, turned into logits (in the ``frame`` its decoding returned), not the decoder's
        own logits, which the kept mask may have changed (see :data:`MASK_PROMPT`).
    """

    def __init__(self, gt_mask: npt.ArrayLike, prompt: str, clicks: int, raw: bool,
                 oracle: str = "first", finish: Callable | None = None,
                 to_logits: Callable | None = None) -> None:
        check_protocol(prompt, clicks, oracle)
        self.finish = keep_prompted_pieces if finish is None else finish
        self.to_logits = to_logits
        self.gt = as_2d_bool(gt_mask, "gt_mask")
        self.gt_area = int(np.count_nonzero(self.gt))
        if self.gt_area == 0:
            raise ValueError("the ground-truth mask is empty")
        gr0, gc0, gr1, gc1 = bounding_box(self.gt)
        self._gt_window = (slice(gr0, gr1 + 1), slice(gc0, gc1 + 1))
        self._gt_crop = self.gt[self._gt_window]
        self.prompt, self.clicks, self.raw = prompt, int(clicks), bool(raw)
        self.every_oracle = oracle == "every"
        self.box = (gr0, gc0, gr1, gc1) if prompt == "box" else None
        self.points: list[tuple[int, int]] = []
        self.point_labels: list[int] = []
        if prompt == "point":
            self.points.append(farthest_point(self.gt))
            self.point_labels.append(1)
        self.ious: list[float] = []
        self.oracle: list[float] = []
        self.pred: npt.NDArray[np.bool_] | None = None
        self.logits: npt.NDArray | None = None  # the kept mask's low-res logits, (1, h, w)
        self.done = False

    @property
    def first(self) -> bool:
        """Whether the next decoding is the first prompt's."""
        return not self.ious

    @property
    def ambiguous(self) -> bool:
        """Whether the next decoding keeps the best candidate (a lone first point) instead of
        the single-output mask."""
        return self.first and self.prompt == "point"

    @property
    def wants_candidates(self) -> bool:
        """Whether the next decoding needs the candidates (to keep one, or for the oracle)."""
        return self.first or self.every_oracle

    def advance(self) -> None:
        """Place the next corrective click, or end the session (last click done, or the mask
        is exact: a user would stop clicking, and the remaining entries repeat its IoU)."""
        if self.done or self.first:
            return
        k = len(self.ious)
        if k >= self.clicks:
            self.done = True
            return
        click = next_click(self.pred, self.gt)
        if click is None:
            self.ious += [self.ious[-1]] * (self.clicks - k)
            if self.every_oracle:
                self.oracle += [self.oracle[-1]] * (self.clicks - k)
            self.done = True
            return
        self.points.append(click[0])
        self.point_labels.append(click[1])

    def prompts(self):
        """``(points (N, 2) float64 or None, labels (N,) int64 or None, box or None,
        mask_input (1, h, w) or None)`` of the next decoding."""
        if not self.points:
            return None, None, self.box, self.logits
        return (np.asarray(self.points, dtype=np.float64),
                np.asarray(self.point_labels, dtype=np.int64), self.box, self.logits)

    def iou(self, mask: npt.NDArray[np.bool_]) -> float:
        if mask.shape != self.gt.shape:
            raise ValueError(
                f"the predictor returned masks of shape {mask.shape} for a ground truth of shape "
                f"{self.gt.shape}: was set_image() called with this object's slice?"
            )
        inter = int(np.count_nonzero(mask[self._gt_window] & self._gt_crop))
        return inter / (self.gt_area + int(np.count_nonzero(mask)) - inter)

    def record(self, multi, scores, multi_logits, single=None, single_logits=None,
               frame=None) -> None:
        """Score the masks decoded for :meth:`prompts`.

        Parameters
        ----------
        multi : sequence of numpy.ndarray, shape (H, W), bool
            The candidates (``K`` of them); may be empty unless :attr:`wants_candidates`.
        scores : array-like, shape (K,)
            Their predicted IoU.
        multi_logits : array-like, shape (K, h, w)
        single, single_logits : numpy.ndarray, shape (H, W) and (h, w), optional
            The single-output mask and its logits; required unless :attr:`ambiguous`.
        frame : optional
            The frame the logits are in, as the decoding returned it (passed to
            ``to_logits``).
        """
        pts, labs, box, _ = self.prompts()
        oracle = self.wants_candidates
        if oracle and not len(multi):
            raise ValueError("the candidates are needed for this decoding")
        if not self.raw:
            multi = [self.finish(m, pts, labs, box) for m in multi]
        if self.ambiguous:  # a single point is ambiguous: trust SAM's IoU head
            best = int(np.argmax(scores))
            pred, logits = multi[best], multi_logits[best]
        else:
            if single is None:
                raise ValueError("the single-output mask is needed after the first prompt")
            pred, logits = single, single_logits
            if not self.raw:
                pred = self.finish(pred, pts, labs, box)
                if self.pred is not None:  # a corrective click: it changes the mask near it
                    pred = after_click(self.pred, pred, pts, labs, box)
        self.ious.append(self.iou(pred))
        if oracle:
            self.oracle.append(max([self.ious[-1], *(self.iou(m) for m in multi)]))
        last = len(self.ious) >= self.clicks
        if self.to_logits is not None and not self.raw and not last:  # the mask as shown
            # prompts the next click
            logits = np.asarray(self.to_logits(pred, frame)).reshape(np.shape(logits))
        self.pred, self.logits = pred, np.asarray(logits)[None]
        if last:
            self.done = True

    def result(self) -> ObjectEvaluation:
        return ObjectEvaluation(self.ious, self.oracle, self.points, self.point_labels, self.box)
