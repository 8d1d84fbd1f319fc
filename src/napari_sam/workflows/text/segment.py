"""Text prompts end to end: candidate objects (given, or SAM's automatic segmentation of the
plane) scored against the query and the matches kept; clicks that correct the selection.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
import numpy.typing as npt

from .clip_scorer import ClipScorer
from .crops import CropParams, _check_labels
from .matching import TextScores, _check_texts, score_objects, select_objects

__all__ = ["apply_clicks", "object_at", "segment_by_text"]


def object_at(labels: npt.ArrayLike, point: Sequence[float]) -> int:
    """The object id under a click, 0 for background or outside the plane.

    Parameters
    ----------
    labels : array-like, shape (H, W), int
    point : (row, col)
        In plane pixels (napari's data coordinates of the plane).
    """
    labels = np.asarray(labels)
    r, c = (int(np.floor(float(v) + 0.5)) for v in point[-2:])
    if not (0 <= r < labels.shape[0] and 0 <= c < labels.shape[1]):
        return 0
    return int(labels[r, c])


def apply_clicks(
    selected: npt.ArrayLike,
    candidates: npt.ArrayLike,
    points: npt.ArrayLike,
    point_labels: npt.ArrayLike | None = None,
) -> np.ndarray:
    """Correct a text selection with clicks: a positive click adds the candidate under it, a
    negative click removes it.

    Parameters
    ----------
    selected : array-like of int
        Ids kept by :func:`select_objects`.
    candidates : array-like, shape (H, W), int
        The candidate label image the text scored.
    points : array-like, shape (P, 2)
        ``(row, col)`` clicks, in order.
    point_labels : array-like, shape (P,), optional
        1 (add, default) or 0 (remove). Clicks on background change nothing: segment a new
        object there with SAM's point prompt instead.

    Returns
    -------
    numpy.ndarray, shape (M,), int64
        The corrected selection: the original order, added ids at the end.
    """
    out = [int(i) for i in np.atleast_1d(np.asarray(selected, dtype=np.int64))]
    pts = np.asarray(points, dtype=float).reshape(-1, 2)
    lab = np.ones(len(pts), int) if point_labels is None else np.asarray(point_labels).ravel()
    if len(lab) != len(pts):
        raise ValueError(f"{len(pts)} points but {len(lab)} point labels")
    for p, positive in zip(pts, lab):
        oid = object_at(candidates, p)
        if oid == 0:
            continue
        if positive and oid not in out:
            out.append(oid)
        elif not positive and oid in out:
            out.remove(oid)
    return np.asarray(out, dtype=np.int64)





def segment_by_text(
    scorer: ClipScorer,
    image: npt.ArrayLike,
    query: str,
    *,
    candidates: npt.ArrayLike | None = None,
    model=None,
    negatives: Iterable[str] = ("background",),
    threshold: float | None = None,
    top_k: int | None = None,
    use: str = "probability",
    crop_params: CropParams | None = None,
    template: str | None = None,
    intensity_range: tuple[float, float] | None = None,
    rgb: bool | None = None,
    spacing: tuple[float, float] | None = None,
    relabel: bool = False,
    automatic_kwargs: dict | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> tuple[np.ndarray, TextScores]:
    """Segment the objects of a 2D plane that match a text query.

    Parameters
    ----------
    scorer : ClipScorer
    image : array-like, shape (H, W) or (H, W, 3)
        One plane (slice stacks and pass the stack's ``intensity_range``).
    query : str
    candidates : array-like, shape (H, W), int, optional
        Candidate objects (e.g. a Labels layer's plane). Default: SAM's automatic segmentation
        of the plane with ``model`` (:func:`napari_sam.workflows.automatic.segment_everything`).
    model : Sam, optional
        Needed when ``candidates`` is not given.
    negatives, threshold, top_k, use
        See :func:`score_embeddings` and :func:`select_objects`.
    crop_params, template, intensity_range, rgb, spacing
        See :func:`score_objects`.
    relabel : bool
        Number the kept objects 1..M (by decreasing score) instead of keeping candidate ids.
    automatic_kwargs : dict, optional
        Extra keyword arguments of ``segment_everything``.
    progress, cancelled
        As in :func:`score_objects` (the automatic segmentation runs first, uncounted).

    Returns
    -------
    labels : numpy.ndarray, shape (H, W), int32
        The kept objects (their candidate ids unless ``relabel``), 0 elsewhere.
    scores : TextScores
        Scores of every candidate (``scores.ids`` are candidate ids); ``complete=False`` if
        cancelled, in which case only the objects scored so far can be kept.
    """
    _check_texts(query, negatives)
    arr = np.asarray(image)
    if candidates is None:
        if model is None:
            raise ValueError("give candidate labels or a SAM model for automatic segmentation")
        candidates = _automatic_candidates(model, arr, intensity_range, automatic_kwargs,
                                           cancelled)
        if cancelled is not None and cancelled():
            empty = np.zeros(np.shape(candidates), dtype=np.int32)
            return empty, TextScores(
                ids=np.zeros(0, np.int64), similarity=np.zeros(0, np.float32),
                probability=np.zeros(0, np.float32), query=query.strip(),
                negatives=_check_texts(query, negatives)[1],
                negative_similarity=np.zeros((0, 0), np.float32), complete=False,
            )
    candidates = _check_labels(candidates)
    scores = score_objects(
        scorer, arr, candidates, query, negatives, crop_params=crop_params, template=template,
        intensity_range=intensity_range, rgb=rgb, spacing=spacing, progress=progress,
        cancelled=cancelled,
    )
    keep = select_objects(scores, threshold=threshold, top_k=top_k, use=use)
    return _kept_labels(candidates, keep, relabel), scores


def _automatic_candidates(model, image: np.ndarray, intensity_range, automatic_kwargs,
                          cancelled) -> np.ndarray:
    """SAM's automatic segmentation of the plane, the candidates of :func:`segment_by_text`."""
    try:
        from ..automatic import segment_everything
    except ImportError as exc:  # pragma: no cover - until napari_sam.workflows.automatic lands
        raise RuntimeError(
            "automatic segmentation (napari_sam.workflows.automatic) is not available: pass "
            "candidate labels instead"
        ) from exc
    import inspect

    kwargs = dict(automatic_kwargs or {})
    accepted = inspect.signature(segment_everything).parameters
    for name, value in (("intensity_range", intensity_range), ("cancelled", cancelled)):
        if value is not None and name in accepted:
            kwargs.setdefault(name, value)
    return segment_everything(model, image, **kwargs)


def _kept_labels(candidates: np.ndarray, keep: np.ndarray, relabel: bool) -> np.ndarray:
    """The ``keep`` objects of ``candidates`` (numbered 1..M in ``keep``'s order if ``relabel``)."""
    out = np.zeros(candidates.shape, dtype=np.int32)
    if not len(keep):
        return out
    if relabel:
        lut_ids = np.asarray(keep)
        order = np.argsort(lut_ids)
        pos = np.searchsorted(lut_ids[order], candidates)
        pos = np.minimum(pos, len(lut_ids) - 1)
        hit = lut_ids[order][pos] == candidates
        out[hit] = (order[pos][hit] + 1).astype(np.int32)
    else:
        mask = np.isin(candidates, keep)
        out[mask] = candidates[mask]
    return out
