"""Each object's previous decode, so that a further click refines it as SAM's protocol does.

SAM was trained (and is evaluated, :mod:`napari_sam.evaluation.clicks`) with corrective clicks
that come with the previous mask's low-resolution logits as the mask prompt. A viewer that
decodes all of an object's points again from nothing loses that: on the real validation split
(BBBC039, 822 nuclei, default model, snapped) 2 and 3 clicks give 0.862 / 0.866 without the
previous logits and 0.885 / 0.896 with them. :class:`ClickMemory` keeps, per object of the
slice on screen, the prompts and logits of its last decode and gives the logits back when the
object's new points extend the old ones (a click added); the same points decode with the same
mask prompt as last time (another object's change does not redraw this one); a moved or
deleted point, another slice or a mask-layer prompt decodes from nothing, as before.

It also keeps the mask each object was shown with, so that :meth:`ClickMemory.settle` makes
of a click's new mask what the evaluation keeps
(:func:`~napari_sam.engine.postprocess.after_click`: the new mask near the click, the
previous one elsewhere), and that shown mask, not the decoder's logits, is the mask prompt of
the object's next click: the user clicked to correct what was shown (snapped, cut to the
prompted pieces, kept from the previous click away from the new one), and the decoder's own
logits may say something else (v0.20: on 12 BBBC039 training images, 3 clicks 0.906 -> 0.908).
It is kept as a binary ``(H, W)`` mask, which a predictor turns into logits in its own frame,
so a small object decoded in its magnified crop is followed too.
:func:`segment_in_click_order` does the same for ``napari-sam segment``.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import numpy.typing as npt

from .postprocess import after_click

__all__ = ["ClickMemory", "segment_in_click_order"]


class ClickMemory:
    """The last decode of each object of one slice (thread-safe)."""

    def __init__(self) -> None:
        self._embedding: Any = None
        # key -> (points, labels, the mask prompt used, the mask shown after it (settle) or
        # the logits it gave (None: a magnified crop's))
        self._last: dict[tuple, tuple] = {}
        # key -> (points, labels, the mask it was merged with or None, the mask shown)
        self._shown: dict[tuple, tuple] = {}
        self._lock = threading.Lock()

    @staticmethod
    def key(obj: dict[str, Any]) -> tuple | None:
        """An object's identity across clicks: its box, or ``("points",)`` for the points
        outside every box; None for a mask-layer prompt (not followed)."""
        if obj.get("mask_input") is not None:
            return None
        box = obj.get("box")
        if box is not None and np.size(box):
            return ("box", *np.round(np.asarray(box, dtype=np.float64).ravel(), 3).tolist())
        return ("points",)

    def mask_prompt(self, embedding: Any, obj: dict[str, Any]) -> npt.NDArray | None:
        """The mask prompt to decode the object with on this slice (``embedding``: its
        identity), if its points extend its previous decode's points: the mask shown after that
        decode (``(H, W)`` bool, :meth:`settle`), or that decode's logits ``(1, 4h, 4w)`` if it
        was not settled; the previous decode's own mask prompt if the points are the same;
        else None."""
        key = self.key(obj)
        with self._lock:
            entry = self._last.get(key) if embedding is self._embedding else None
        if entry is None:
            return None
        old_points, old_labels, used, logits = entry
        added = _added(old_points, old_labels, *_points(obj))
        if added is None:
            return None
        return used if added == 0 else logits

    def remember(self, embedding: Any, obj: dict[str, Any], used: npt.ArrayLike | None,
                 logits: npt.ArrayLike | None) -> None:
        """Keep the object's prompts, the mask prompt ``used`` and the logits ``(1, 4h, 4w)``
        of its decode (None: not usable as a prompt on the whole slice, a magnified crop's);
        another slice's decodes are forgotten."""
        key = self.key(obj)
        with self._lock:
            self._use(embedding)
            if key is None:
                return
            if logits is not None and np.ndim(logits) == 3:
                logits = np.asarray(logits, dtype=np.float32)
            else:
                logits = None
            self._last[key] = (*_points(obj), used, logits)

    def settle(self, embedding: Any, obj: dict[str, Any],
               mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
        """The mask to show for the object, decoded (and snapped) as ``mask`` on this slice.

        After a click added to the object: the new mask near the click, the previous shown
        mask elsewhere (:func:`~napari_sam.engine.postprocess.after_click`); the same points
        as last time give the same mask again; otherwise ``mask``. What is returned is kept
        as the object's shown mask and, if this decode was remembered (:meth:`remember`), as
        the mask prompt of its next click.
        """
        key = self.key(obj)
        if key is None:
            return mask
        points, labels = _points(obj)
        with self._lock:
            self._use(embedding)
            entry = self._shown.get(key)
        base = None
        if entry is not None:
            old_points, old_labels, old_base, old_shown = entry
            added = _added(old_points, old_labels, points, labels)
            if added is not None:
                base = old_base if added == 0 else old_shown
        shown = mask
        if base is not None and base.shape == np.shape(mask):
            shown = after_click(base, mask, points, labels, obj.get("box"))
        with self._lock:
            if embedding is self._embedding:
                self._shown[key] = (points, labels, base, shown)
                last = self._last.get(key)
                if last is not None and _added(*last[:2], points, labels) == 0:
                    self._last[key] = (*last[:3], np.array(shown, dtype=bool))
        return shown

    def clear(self) -> None:
        with self._lock:
            self._embedding, self._last, self._shown = None, {}, {}

    def _use(self, embedding: Any) -> None:
        """Another slice's entries are forgotten (call with the lock held)."""
        if embedding is not self._embedding:
            self._embedding, self._last, self._shown = embedding, {}, {}


def segment_in_click_order(segment, points=None, labels=None, box=None, finish=None):
    """Decode one object as the viewer does when its prompts are given one at a time: the box
    first, then each point in its order with the mask shown after the previous one as its mask
    prompt (prefixes of free points with no positive point make no object yet, as in the
    viewer), each click's mask kept near the click only
    (:func:`~napari_sam.engine.postprocess.after_click`).

    Parameters
    ----------
    segment : callable
        :meth:`SamPredictor.segment` (or one with its signature, taking an ``(H, W)`` binary
        mask as ``mask_input``) on the object's slice.
    points : array-like, shape (N, 2), optional
    labels : array-like, shape (N,), optional
    box : array-like, shape (4,), optional
    finish : callable, optional
        ``finish(mask, points=..., labels=..., box=...) -> mask``: what is made of every
        decoded mask before the next click (the viewer's snapping,
        :meth:`~napari_sam.workflows.snap.SliceSnapper.snap` with its predictor bound).

    Returns
    -------
    tuple
        ``(mask, score, low_res_logits)``: the mask shown after the last click, with the last
        ``segment`` call's score and logits.
    """
    pts, labs = _points({"points": points, "labels": labels})
    has_box = box is not None and np.size(box) > 0
    out, shown = None, None

    def decoded(result, p, lab, b):
        mask = result[0] if finish is None else finish(result[0], points=p, labels=lab, box=b)
        if shown is not None and p is not None and len(p):
            mask = after_click(shown, mask, p, lab, b)
        return mask

    if has_box:
        out = segment(box=box)
        shown = decoded(out, None, None, box)
    for k in range(1, len(pts) + 1):
        if not has_box and not np.any(labs[:k] == 1):
            continue  # no object yet
        prompt = (pts[:k], labs[:k], box if has_box else None)
        out = segment(points=prompt[0], labels=prompt[1], box=prompt[2], mask_input=shown)
        shown = decoded(out, *prompt)
    if out is None:  # negative points alone: decoded as given
        out = segment(points=points, labels=labels, box=box)
        shown = decoded(out, points, labels, box)
    return (shown, *out[1:])


def _added(old_points, old_labels, points, labels) -> int | None:
    """How many points were added to ``old_points`` to give ``points`` (0: the same), or
    None if the old ones are not where they were (moved, deleted, relabelled)."""
    n = len(old_points)
    if len(points) < n or not (np.array_equal(points[:n], old_points)
                               and np.array_equal(labels[:n], old_labels)):
        return None
    return len(points) - n


def _points(obj: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    points = obj.get("points")
    if points is None or not np.size(points):
        return np.zeros((0, 2)), np.zeros(0, dtype=np.int64)
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    labels = obj.get("labels")
    labels = (np.ones(len(points), dtype=np.int64) if labels is None
              else np.asarray(labels, dtype=np.int64).reshape(-1))
    return points.copy(), labels.copy()
