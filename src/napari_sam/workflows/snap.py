"""Clicks that snap to the instance decoder's objects: SAM picks the object, the decoder draws it.

A prompt's mask and the slice's automatic segmentation (the model's instance decoder,
:mod:`napari_sam.workflows.instance_decoder`) are two views of the same objects. SAM knows which
object the user means; the instance decoder, trained to split touching nuclei along their
boundaries, often draws its outline better (on the real validation split of BBBC039 the best
matching instance of an isolated nucleus scores IoU 0.944 against 0.927 for the box prompt's
mask). :func:`snap_to_instances` keeps SAM's choice and the decoder's outline:

1. the instances that the mask covers for at least ``min_cover`` of their area are the object;
   an instance under a positive point joins, one under a negative point leaves;
2. if their union differs much from the mask (IoU below ``min_agreement``: the decoder merged
   or missed objects there), the mask is kept as SAM drew it;
3. corrective clicks (every point after the first; every point with a box) still act locally:
   a positive one adds the piece of SAM's mask around it that the instances leave out, a
   negative one removes the piece of the instances around it that SAM's mask leaves out;
4. the result is cut to what the prompt asked for, as any mask is
   (:func:`~napari_sam.engine.postprocess.keep_prompted_pieces`).

:class:`SnapPredictor` wraps a :class:`~napari_sam.engine.predictor.SamPredictor` or
:class:`~napari_sam.engine.zoom.ZoomPredictor`: its :meth:`~SnapPredictor.segment` snaps, the
instances of a slice are computed once, at its first use, and everything else (``predict``,
the embeddings) is the wrapped predictor's. The evaluation uses its :meth:`finish_mask`
(``napari-sam evaluate --snap``). :class:`SliceSnapper` does the same for whatever slice a
:class:`~napari_sam.engine.predictor.SamPredictor` holds, keeping the instances of its last
few slices: the viewer's decoding worker snaps with it ("snap to objects"). Arrays are
``(H, W)``; points ``(row, col)``.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from ..engine.postprocess import keep_prompted_pieces
from .instance_decoder import DecoderParams, has_instance_decoder, segment_everything

if TYPE_CHECKING:  # pragma: no cover
    from ..engine.predictor import SamPredictor

__all__ = ["MIN_AGREEMENT", "MIN_COVER", "SliceSnapper", "SnapPredictor", "snap_to_instances"]

#: An instance belongs to the object when the mask covers at least this fraction of it.
MIN_COVER = 0.5
#: The snapped mask is used only if its IoU with SAM's mask is at least this.
MIN_AGREEMENT = 0.7


def snap_to_instances(
    mask: npt.NDArray[np.bool_],
    instances: npt.NDArray[np.integer],
    points: npt.ArrayLike | None = None,
    labels: npt.ArrayLike | None = None,
    box: npt.ArrayLike | None = None,
    min_cover: float = MIN_COVER,
    min_agreement: float = MIN_AGREEMENT,
    sizes: npt.NDArray[np.integer] | None = None,
) -> npt.NDArray[np.bool_]:
    """SAM's mask of one object, drawn with the outlines of the slice's instances.

    Parameters
    ----------
    mask : numpy.ndarray, shape (H, W), bool
        The prompt's mask (already cut to what the prompt asked for).
    instances : numpy.ndarray, shape (H, W), int
        The slice's instance labels (0 background).
    points : array-like, shape (N, 2), optional
        The prompt's points, ``(row, col)`` in slice pixels, in the order they were placed.
    labels : array-like, shape (N,), optional
        1 positive, 0 negative (default all positive).
    box : array-like, shape (4,), optional
        The box prompt ``(row0, col0, row1, col1)``.
    min_cover, min_agreement : float
        See :data:`MIN_COVER` and :data:`MIN_AGREEMENT`.
    sizes : numpy.ndarray, optional
        ``np.bincount(instances.ravel())``, if the caller keeps it.

    Returns
    -------
    numpy.ndarray, shape (H, W), bool
        The snapped mask, or ``mask`` itself where the instances do not agree with it (see the
        module's description).
    """
    mask = np.asarray(mask, dtype=bool)
    inst = np.asarray(instances)
    if inst.shape != mask.shape:
        raise ValueError(f"instances of shape {inst.shape} for a mask of shape {mask.shape}")
    if not mask.any():
        return mask
    sizes = np.bincount(inst.ravel()) if sizes is None else sizes
    ids, counts = np.unique(inst[mask], return_counts=True)
    keep = {int(j) for j, n in zip(ids, counts) if j and n >= min_cover * sizes[j]}
    pts = np.zeros((0, 2), dtype=np.int64)
    labs = np.zeros(0, dtype=np.int64)
    if points is not None and np.size(points):
        h, w = mask.shape
        pts = np.rint(np.asarray(points, dtype=np.float64).reshape(-1, 2)).astype(np.int64)
        pts = np.clip(pts, 0, [h - 1, w - 1])
        labs = (np.ones(len(pts), dtype=np.int64) if labels is None
                else np.asarray(labels, dtype=np.int64).reshape(-1))
    for (r, c), lab in zip(pts, labs):
        j = int(inst[r, c])
        if j:
            if lab == 1:
                keep.add(j)
            else:
                keep.discard(j)
    if not keep:
        return mask
    snapped = np.isin(inst, sorted(keep))
    union = np.count_nonzero(snapped | mask)
    if np.count_nonzero(snapped & mask) < min_agreement * union:
        return mask
    has_box = box is not None and np.size(box) > 0
    corrective = slice(0, None) if has_box else slice(1, None)
    for (r, c), lab in zip(pts[corrective], labs[corrective]):
        region = (mask & ~snapped) if lab == 1 else (snapped & ~mask)
        if region[r, c]:
            pieces, _ = ndimage.label(region)
            piece = pieces == pieces[r, c]
            snapped = (snapped | piece) if lab == 1 else (snapped & ~piece)
    return keep_prompted_pieces(snapped, None if not len(pts) else pts, labs if len(pts) else None,
                                box)


def _instance_map(model, image, params, intensity_range, embedding=None):
    """``(labels (H, W), np.bincount of them)``: a slice's instances, as segment everything
    makes them (``embedding``: the whole slice's, if already computed)."""
    labels = segment_everything(model, np.asarray(image), params=params,
                                intensity_range=intensity_range, embedding=embedding)
    return labels, np.bincount(labels.ravel())


class SnapPredictor:
    """A predictor whose masks snap to the instance decoder's objects (see the module).

    Parameters
    ----------
    predictor : SamPredictor or ZoomPredictor
        Its model must have an instance decoder (the default model has one).
    params : DecoderParams, optional
        How the slice's instances are made
        (:func:`~napari_sam.workflows.instance_decoder.segment_everything`).
    min_cover, min_agreement : float
        See :func:`snap_to_instances`.

    Raises
    ------
    ValueError
        If the model has no instance decoder.
    """

    def __init__(self, predictor: SamPredictor, params: DecoderParams | None = None,
                 min_cover: float = MIN_COVER, min_agreement: float = MIN_AGREEMENT) -> None:
        if not has_instance_decoder(predictor.model):
            raise ValueError("snapping to objects needs a model with an instance decoder "
                             "(the default model, or micro-sam's *_lm / *_em_organelles)")
        self.predictor = predictor
        self.params = params
        self.min_cover, self.min_agreement = float(min_cover), float(min_agreement)
        self._slice: tuple[np.ndarray, Any] | None = None
        self._instances: np.ndarray | None = None
        self._sizes: np.ndarray | None = None

    def __getattr__(self, name: str) -> Any:  # predict, model, embeddings: the wrapped one's
        if name == "predictor":  # not set yet (during unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.predictor, name)

    def set_image(self, image: npt.ArrayLike,
                  intensity_range: tuple[float, float] | None = None) -> None:
        """Set the slice (as the wrapped predictor's ``set_image``); its instances are made at
        the first :meth:`segment`."""
        self.predictor.set_image(image, intensity_range)
        self._slice = (np.asarray(image), intensity_range)
        self._instances = self._sizes = None

    def set_embedding(self, embedding: Any, image: npt.ArrayLike | None = None,
                      intensity_range: tuple[float, float] | None = None) -> None:
        """Set a slice by its embedding (the wrapped predictor's ``set_embedding``); snapping
        needs the slice's pixels, ``image``."""
        self.predictor.set_embedding(embedding, image, intensity_range)
        self._slice = None if image is None else (np.asarray(image), intensity_range)
        self._instances = self._sizes = None

    @property
    def instances(self) -> npt.NDArray[np.int32]:
        """The current slice's instance labels, ``(H, W)`` (computed once per slice)."""
        if self._slice is None:
            raise RuntimeError("no image is set: call set_image() (or set_embedding() with the "
                               "slice's pixels) first")
        if self._instances is None:
            image, intensity_range = self._slice
            self._instances, self._sizes = _instance_map(self.predictor.model, image, self.params,
                                                         intensity_range)
        return self._instances

    def finish_mask(self, mask: npt.NDArray[np.bool_], points=None, labels=None,
                    box=None) -> npt.NDArray[np.bool_]:
        """What :meth:`segment` returns for a decoded mask: its prompted pieces, snapped."""
        return self._snap(keep_prompted_pieces(mask, points, labels, box), points, labels, box)

    def segment(self, points=None, labels=None, box=None, mask_input=None):
        """The wrapped predictor's ``segment``, snapped: ``(mask (H, W) bool, score,
        low_res_logits (1, 4h, 4w))``; the logits are SAM's (pass them back as
        ``mask_input``)."""
        # the wrapped segment() already keeps the prompted pieces
        mask, score, logits = self.predictor.segment(points, labels, box, mask_input)
        return self._snap(mask, points, labels, box), score, logits

    def _snap(self, mask, points, labels, box) -> npt.NDArray[np.bool_]:
        inst = self.instances
        return snap_to_instances(mask, inst, points, labels, box, self.min_cover,
                                 self.min_agreement, sizes=self._sizes)


class SliceSnapper:
    """Snap masks decoded on whatever slice a :class:`SamPredictor` holds.

    The instances of a slice are made at its first :meth:`snap` (from the predictor's slice
    pixels, :attr:`SamPredictor.pixels`) and kept for the last ``keep`` embeddings, so going
    back to a slice does not make them again. Thread-safe: the viewer snaps in its decoding
    worker.

    Parameters
    ----------
    params : DecoderParams, optional
    keep : int
        Slices whose instances are kept.
    min_cover, min_agreement : float
        See :func:`snap_to_instances`.
    """

    def __init__(self, params: DecoderParams | None = None, keep: int = 4,
                 min_cover: float = MIN_COVER, min_agreement: float = MIN_AGREEMENT) -> None:
        self.params, self.keep = params, max(1, int(keep))
        self.min_cover, self.min_agreement = float(min_cover), float(min_agreement)
        self._maps: list[tuple[Any, np.ndarray, np.ndarray]] = []  # (embedding, labels, sizes)
        self._pending: dict[int, tuple[Any, threading.Event]] = {}  # being made, by id()
        self._lock = threading.Lock()

    def instances(self, predictor: SamPredictor) -> npt.NDArray[np.int32]:
        """The instance labels ``(H, W)`` of the predictor's current slice.

        Raises
        ------
        ValueError
            If the model has no instance decoder.
        RuntimeError
            If the predictor holds no slice, or not its pixels.
        """
        return self._entry(predictor)[1]

    def _entry(self, predictor: SamPredictor) -> tuple[Any, np.ndarray, np.ndarray]:
        emb, pixels = predictor.embedding, predictor.pixels
        if emb is None or pixels is None:
            raise RuntimeError("snapping needs the slice and its pixels: set_image() first")
        return self._made(predictor.model, emb, *pixels)

    def prepare(self, model: Any, embedding: Any, image: npt.ArrayLike,
                intensity_range: tuple[float, float] | None = None) -> None:
        """Make a slice's instances ahead of its first :meth:`snap` (the viewer does it in
        the background once the slice's embedding is ready), from its whole-slice
        ``embedding`` and its pixels. A :meth:`snap` meanwhile waits for it instead of making
        them a second time.

        Raises
        ------
        ValueError
            If the model has no instance decoder.
        """
        self._made(model, embedding, image, intensity_range)

    def _made(self, model, emb, image, intensity_range) -> tuple[Any, np.ndarray, np.ndarray]:
        """The slice's entry: kept, being made by another thread (waited for), or made."""
        if not has_instance_decoder(model):
            raise ValueError("snapping to objects needs a model with an instance decoder")
        while True:
            with self._lock:
                for entry in self._maps:
                    if entry[0] is emb:
                        return entry
                pending = self._pending.get(id(emb))
                if pending is None or pending[0] is not emb:
                    done = threading.Event()
                    self._pending[id(emb)] = (emb, done)
                    break
            pending[1].wait()  # then kept (or failed there: made here)
        try:
            entry = (emb, *_instance_map(model, image, self.params, intensity_range, emb))
            with self._lock:
                self._maps = [entry, *(e for e in self._maps if e[0] is not emb)][:self.keep]
            return entry
        finally:
            with self._lock:
                self._pending.pop(id(emb), None)
            done.set()

    def snap(self, predictor: SamPredictor, mask: npt.NDArray[np.bool_], points=None,
             labels=None, box=None, mask_input=None) -> npt.NDArray[np.bool_]:
        """:func:`snap_to_instances` of ``mask``, decoded on the predictor's slice for these
        prompts (the keyword arguments of ``segment``; ``mask_input`` plays no part)."""
        _, inst, sizes = self._entry(predictor)
        return snap_to_instances(mask, inst, points, labels, box, self.min_cover,
                                 self.min_agreement, sizes=sizes)
