"""Zoomed decoding: small objects segmented in a magnified crop of the slice.

SAM's masks come out at a quarter of the model's input resolution (256 x 256 for the default
model's 512 px input), so an object a few pixels across in the input is drawn with a handful of
mask pixels, and the encoder sees it in a single patch. Microscopy at low magnification is full
of such objects (nuclei of 4-10 px radius). :class:`ZoomPredictor` segments them the way a
user would zoom in: the slice is cut into overlapping crops ``zoom`` times smaller than the
slice, each embedded on its own (the model resizes the crop to its input, so the crop is seen
``zoom`` times larger), and a prompt is decoded in the crop where it is most central.

With ``zoom="auto"`` the magnification comes from the slice itself: the median radius of its
bright objects (:func:`typical_radius`) at the model's input scale; slices whose objects are
already large enough are decoded as a whole, exactly as by :class:`SamPredictor`.

An object that is small even at the slice's zoom (a speck or micronucleus beside large nuclei)
is decoded in a crop magnified for it alone (``small_objects``, on by default): its size is
read from its prompt (:func:`napari_sam.engine.scale.object_zoom`: a box's side, or the bright
blob under the clicks), so the decision costs no decoding. :class:`SliceZoomer` does the same
on whatever slice a :class:`SamPredictor` holds (the viewer's clicks).

The class offers :class:`SamPredictor`'s ``set_image`` / ``predict`` / ``segment`` interface
(masks and logits in slice coordinates; the low-resolution logits it returns are in the frame
of the crop the prompt was decoded in, and passing them back as ``mask_input`` decodes in that
crop again), so the evaluation protocol (:func:`napari_sam.evaluation.interactive.evaluate_image`) and
scripts can use it in place of a :class:`SamPredictor`.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from .every_output import predict_every_output
from .lru import LRUCache
from .predictor import ImageEmbedding, SamPredictor, keep_prompted_pieces
from .prompts import check_boxes, check_points, mask_logits
from .scale import (  # noqa: F401  (re-exported: they lived here until v0.18)
    MAX_OBJECT_ZOOM,
    MAX_ZOOM,
    OBJECT_RADIUS,
    SMALL_OBJECT_RADIUS,
    SMALL_RADIUS,
    TARGET_RADIUS,
    auto_zoom,
    blob_radius,
    object_zoom,
    typical_radius,
)

if TYPE_CHECKING:  # pragma: no cover
    from ..modeling import Sam

__all__ = ["SliceZoomer", "ZoomPredictor", "auto_zoom", "blob_radius", "crop_origin",
           "prompt_centre", "typical_radius", "zoomed_crop_shape"]

#: Fill value of the logits outside the crop a prompt was decoded in.
OUTSIDE = -20.0
def zoomed_crop_shape(shape_hw: tuple[int, int], zoom: float) -> tuple[int, int]:
    """``(h, w)`` of the crops of a ``shape_hw`` slice magnified ``zoom`` times: squares with
    the slice's longer side divided by ``zoom``, cut to the slice."""
    h, w = (int(v) for v in shape_hw)
    side = max(1, int(np.ceil(max(h, w) / float(zoom))))
    return min(h, side), min(w, side)


def _crop_starts(size: int, crop: int, overlap: float) -> list[int]:
    if crop >= size:
        return [0]
    stride = max(1, int(crop * (1 - overlap)))
    return sorted(set(range(0, size - crop, stride)) | {size - crop})


def prompt_centre(points=None, labels=None, box=None, mask=None) -> npt.NDArray[np.float64]:
    """``(row, col)`` centre of a prompt: its box's centre, else the mean of its positive
    points (all points if none is positive), else its mask's centroid."""
    if box is not None:
        box = np.asarray(box, dtype=np.float64).reshape(4)
        return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
    pts = None if points is None else np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if pts is not None and len(pts):
        lab = np.ones(len(pts)) if labels is None else np.asarray(labels).reshape(-1)
        pos = pts[lab == 1] if np.any(lab == 1) else pts
        return pos.mean(axis=0)
    if mask is not None and np.asarray(mask).any():
        rr, cc = np.nonzero(np.asarray(mask))
        return np.array([rr.mean(), cc.mean()])
    raise ValueError("no prompt: give points, a box or a mask")


def crop_origin(centre: npt.ArrayLike, shape_hw: tuple[int, int], crop: tuple[int, int],
                overlap: float = 0.5) -> tuple[int, int]:
    """Origin ``(row0, col0)`` of the crop in which ``centre`` is most central.

    Crops of shape ``crop`` tile the ``shape_hw`` slice with neighbours overlapping by
    ``overlap`` of their side (the last crop of a row or column ends at the slice's edge).
    """
    (h, w), (ch, cw) = shape_hw, crop
    centre = np.asarray(centre, dtype=np.float64).reshape(2)
    r0 = min(_crop_starts(h, ch, overlap), key=lambda s: abs(s + ch / 2 - centre[0]))
    c0 = min(_crop_starts(w, cw, overlap), key=lambda s: abs(s + cw / 2 - centre[1]))
    return int(r0), int(c0)


class ZoomPredictor:
    """:class:`SamPredictor` that decodes prompts in magnified crops of the slice.

    Parameters
    ----------
    model : Sam
    zoom : float or "auto"
        Magnification: crops are ``zoom`` times smaller than the slice's longer side (at most
        the slice itself). 1 decodes the whole slice, like :class:`SamPredictor`. ``"auto"``:
        :func:`auto_zoom` per slice.
    overlap : float
        Neighbouring crops overlap by this fraction of their side, so that an object smaller
        than the overlap is whole in at least one crop.
    max_crops : int
        Crop embeddings kept in memory (least recently used dropped).
    precision, refine
        As for :class:`SamPredictor` (the refiner sees the crop a prompt is decoded in).
    small_objects : bool
        Decode an object that is small even at the slice's zoom in a crop magnified for it
        alone: when the radius of its box, or of the bright blob under its positive points
        (:func:`blob_radius`), is below :data:`SMALL_OBJECT_RADIUS` px at the model's input
        scale, its crop is magnified to bring it to :data:`OBJECT_RADIUS` (at most
        :data:`MAX_OBJECT_ZOOM` times; zooms are rounded to powers of ``sqrt(2)`` so that
        neighbouring specks share crops). Costs one crop embedding per small object.

    Attributes
    ----------
    zoom : float
        The magnification of the current slice (after ``"auto"`` was resolved).
    """

    def __init__(self, model: Sam, zoom: float | str = "auto", *, overlap: float = 0.5,
                 max_crops: int = 64, precision: str = "float32", refine: bool = True,
                 small_objects: bool = True) -> None:
        if not (zoom == "auto" or (isinstance(zoom, (int, float)) and zoom >= 1)):
            raise ValueError(f"zoom must be 'auto' or a number >= 1, got {zoom!r}")
        if not 0 <= overlap < 1:
            raise ValueError(f"overlap must be in [0, 1), got {overlap!r}")
        self.model = model
        self.requested_zoom = zoom
        self.overlap = float(overlap)
        self.max_crops = int(max_crops)
        self.small_objects = bool(small_objects)
        self._predictor = SamPredictor(model, precision=precision, refine=refine)
        # prompts are checked against the whole slice here; in a crop's frame they may lie
        # beyond the crop (a corrective click outside it), as before the predictor checked them
        self._predictor._check_bounds = False
        self._image: np.ndarray | None = None
        self._range: tuple[float, float] | None = None
        self._crops: LRUCache[ImageEmbedding] = LRUCache(max_items=self.max_crops)
        self._last: tuple[int, int, int, int] | None = None  # frame of the last predict()
        self._current: tuple | None = None  # (frame, thread) that set _predictor's embedding
        self.zoom = 1.0
        self.crop_shape: tuple[int, int] = (0, 0)

    # -- image -------------------------------------------------------------------------------

    @property
    def is_image_set(self) -> bool:
        return self._image is not None

    def set_image(self, image: npt.ArrayLike,
                  intensity_range: tuple[float, float] | None = None) -> None:
        """Take a 2D slice (crops are embedded when a prompt first needs them).

        Parameters
        ----------
        image : array-like, shape (H, W) or (H, W, 3)
        intensity_range : (float, float), optional
            One range for all crops (default: robust percentiles of the slice; ``uint8`` RGB is
            used as is).
        """
        image = np.asarray(image)
        if intensity_range is None and not (image.ndim == 3 and image.dtype == np.uint8):
            from .preprocess import estimate_intensity_range

            intensity_range = estimate_intensity_range(image)
        self._image, self._range = image, intensity_range
        self._crops.clear()
        self._last = self._current = None
        h, w = image.shape[:2]
        zoom = self.requested_zoom
        if zoom == "auto":
            zoom = auto_zoom(image, self.model.img_size, intensity_range)
        self.zoom = float(zoom)
        self.crop_shape = zoomed_crop_shape((h, w), self.zoom)
        if self.crop_shape == (h, w):  # embedded now, as by SamPredictor.set_image
            self._predictor.set_image(image, intensity_range)
            self._current = ((0, 0, h, w), threading.get_ident())
            self._crops.put((0, 0, h, w), self._predictor.embedding)

    def set_embedding(self, embedding: ImageEmbedding, image: npt.ArrayLike,
                      intensity_range: tuple[float, float] | None = None) -> None:
        """Take a 2D slice with its whole-slice embedding computed earlier (a cache's): the
        slice is decoded whole (zoom 1), small objects in crops of their own.

        Parameters
        ----------
        embedding : ImageEmbedding
            Of ``image``, made with ``intensity_range``.
        image : array-like, shape (H, W) or (H, W, 3)
        intensity_range : (float, float), optional
        """
        image = np.asarray(image)
        h, w = image.shape[:2]
        self._predictor.set_embedding(embedding, image, intensity_range)  # checks the shape
        self._image, self._range = image, intensity_range
        self._crops.clear()
        self._last = None
        self.zoom, self.crop_shape = 1.0, (h, w)
        self._current = ((0, 0, h, w), threading.get_ident())
        self._crops.put((0, 0, h, w), self._predictor.embedding)

    # -- decoding ----------------------------------------------------------------------------

    def predict(
        self,
        points: npt.ArrayLike | None = None,
        labels: npt.ArrayLike | None = None,
        box: npt.ArrayLike | None = None,
        mask_input: npt.ArrayLike | None = None,
        multimask: bool = True,
        return_logits: bool = False,
    ) -> tuple[npt.NDArray, npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """Decode one object (see :meth:`SamPredictor.predict`).

        ``mask_input`` is the ``low_res_logits`` of an earlier call for the same object (they
        are in the frame of the crop that call used, which is used again) or a binary mask of
        the slice. Masks and full-resolution logits are returned for the whole slice.
        """
        if self._image is None:
            raise RuntimeError("no image is set: call set_image() first")
        h, w = self._image.shape[:2]
        if points is not None and np.size(points) > 0:
            check_points(points, (h, w))
        if box is not None and np.size(box) > 0:
            check_boxes(box, (h, w))
        pts = None if points is None else np.asarray(points, dtype=np.float64).reshape(-1, 2)
        bx = None if box is None else np.asarray(box, dtype=np.float64).reshape(4)
        low_res = mask_input is not None and np.ndim(mask_input) == 3
        if low_res:
            if self._last is None:
                raise ValueError(
                    "low-resolution logits as mask_input come from an earlier predict() call "
                    "on this slice; pass a binary (H, W) mask instead"
                )
            frame = self._last  # the logits are in this crop's frame
        else:
            frame = self._frame_for(pts, labels, bx, mask_input)
        self._use(frame)
        self._last = frame
        if frame == (0, 0, h, w):  # the whole slice
            return self._predictor.predict(points, labels, box, mask_input, multimask,
                                           return_logits)
        r0, c0, ch, cw = frame
        local_pts = None if pts is None else pts - [r0, c0]
        local_box = None if bx is None else bx - [r0, c0, r0, c0]
        local_mask = mask_input
        if mask_input is not None and not low_res:
            local_mask = np.asarray(mask_input)[r0:r0 + ch, c0:c0 + cw]
        masks, scores, logits = self._predictor.predict(
            local_pts, labels, local_box, local_mask, multimask, return_logits
        )
        fill = OUTSIDE if return_logits else False
        full = np.full((masks.shape[0], h, w), fill, dtype=masks.dtype)
        full[:, r0:r0 + ch, c0:c0 + cw] = masks
        return full, scores, logits

    def segment(
        self,
        points: npt.ArrayLike | None = None,
        labels: npt.ArrayLike | None = None,
        box: npt.ArrayLike | None = None,
        mask_input: npt.ArrayLike | None = None,
    ) -> tuple[npt.NDArray[np.bool_], float, npt.NDArray[np.float32]]:
        """One mask: the best of three for a lone point, else the single-output mask; pieces
        the prompt did not ask for are dropped (:func:`napari_sam.engine.predictor.keep_prompted_pieces`).
        """
        n = 0 if points is None else len(np.asarray(points).reshape(-1, 2))
        multimask = n == 1 and box is None and mask_input is None
        masks, scores, logits = self.predict(points, labels, box, mask_input, multimask)
        k = int(np.argmax(scores)) if multimask else 0
        return keep_prompted_pieces(masks[k], points, labels, box), float(scores[k]), logits[k]

    def predict_every_output(
        self,
        points: npt.ArrayLike | None,
        labels: npt.ArrayLike | None,
        boxes: npt.ArrayLike | None,
        mask_input: npt.ArrayLike | None = None,
        origins: npt.ArrayLike | None = None,
        single_output: bool = True,
        candidates: bool = True,
    ) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.float32], npt.NDArray[np.float32],
               npt.NDArray[np.int64]]:
        """Decode ``B`` objects at once with every output of the decoder (batched
        :meth:`predict`, see :func:`napari_sam.engine.every_output.predict_every_output`).

        Each object is decoded in its own crop, the one :meth:`predict` would choose for its
        prompts; objects that share a crop are decoded in one call.

        Parameters
        ----------
        points : array-like, shape (B, N, 2), optional
            ``(row, col)`` in slice pixels.
        labels : array-like, shape (B, N), optional
        boxes : array-like, shape (B, 4), optional
        mask_input : array-like, shape (B, 1, 4h, 4w), optional
            Low-resolution logits of an earlier call (in the frames of its ``origins``).
        origins : array-like of int, shape (B, 4), optional
            The crops to decode in, as an earlier call returned them; required with
            ``mask_input``. By default each object's crop is chosen from its prompts.
        single_output : bool
            Return the single-output mask before the candidates.
        candidates : bool
            Return the ``K`` candidates (False: only the single-output mask).

        Returns
        -------
        masks : numpy.ndarray, shape (B, M, H, W), bool
            In slice coordinates; index 0 the single-output mask with ``single_output``; ``M``
            is ``K + 1``, ``K`` or 1 (see
            :func:`~napari_sam.engine.every_output.predict_every_output`).
        scores : numpy.ndarray, shape (B, M)
        low_res_logits : numpy.ndarray, shape (B, M, 4h, 4w)
            In the frame of each object's crop.
        origins : numpy.ndarray of int, shape (B, 4)
            ``(row0, col0, height, width)`` of each object's crop (``(0, 0, H, W)``: the
            whole slice).
        """
        if self._image is None:
            raise RuntimeError("no image is set: call set_image() first")
        h, w = self._image.shape[:2]
        pts = None if points is None else np.asarray(points, dtype=np.float64)
        bxs = None if boxes is None else np.asarray(boxes, dtype=np.float64)
        if pts is not None and pts.size:
            check_points(pts, (h, w))
        if bxs is not None and bxs.size:
            check_boxes(bxs.reshape(-1, 4), (h, w))
        self._last = None  # batched logits are not a single predict()'s
        n = len(pts) if pts is not None and pts.size else len(bxs)
        if origins is None:
            if mask_input is not None:
                raise ValueError("low-resolution logits as mask_input need the origins of the "
                                 "call that returned them")
            labs = None if labels is None else np.asarray(labels)
            origins = [self._frame_for(None if pts is None or not pts.size else pts[i],
                                       None if labs is None else labs[i],
                                       None if bxs is None else bxs[i], None) for i in range(n)]
        origins = np.asarray(origins, dtype=np.int64).reshape(n, 4)
        if (origins == [0, 0, h, w]).all():  # the whole slice for all
            self._use((0, 0, h, w))
            masks, scores, logits = predict_every_output(self._predictor, pts, labels, bxs,
                                                         mask_input, single_output, candidates)
            return masks, scores, logits, origins
        masks = scores = logits = None
        for frame in np.unique(origins, axis=0):
            idx = np.flatnonzero((origins == frame).all(axis=1))
            r0, c0, ch, cw = (int(v) for v in frame)
            self._use((r0, c0, ch, cw))
            m, s, lg = predict_every_output(
                self._predictor,
                None if pts is None or not pts.size else pts[idx] - [r0, c0],
                None if labels is None else np.asarray(labels)[idx],
                None if bxs is None else bxs[idx] - [r0, c0, r0, c0],
                None if mask_input is None else np.asarray(mask_input)[idx],
                single_output, candidates,
            )
            if masks is None:
                masks = np.zeros((n, m.shape[1], h, w), dtype=bool)
                scores = np.zeros((n, *s.shape[1:]), dtype=s.dtype)
                logits = np.zeros((n, *lg.shape[1:]), dtype=lg.dtype)
            masks[idx, :, r0:r0 + ch, c0:c0 + cw] = m
            scores[idx], logits[idx] = s, lg
        return masks, scores, logits, origins

    def mask_to_logits(self, mask: npt.ArrayLike, frame=None) -> npt.NDArray[np.float32]:
        """Turn a binary mask of the slice into a mask prompt in a crop's frame.

        Parameters
        ----------
        mask : array-like, shape (H, W)
            Nonzero inside the object, in the slice's pixel grid.
        frame : array-like of int, shape (4,) or (2,), optional
            ``(row0, col0, height, width)`` of the crop the logits are for, as
            :meth:`predict_every_output` returned it (two values: the whole slice, as a plain
            predictor's batched decoding gives); by default the crop of the last
            :meth:`predict`.

        Returns
        -------
        numpy.ndarray, shape (1, 4h, 4w), float32
            See :func:`~napari_sam.engine.prompts.mask_logits`.
        """
        if self._image is None:
            raise RuntimeError("no image is set: call set_image() first")
        h, w = self._image.shape[:2]
        m = np.asarray(mask)
        if m.shape != (h, w):
            raise ValueError(f"mask shape {m.shape} does not match the slice shape {(h, w)}")
        if frame is None:
            frame = self._last if self._last is not None else (0, 0, h, w)
        frame = [int(v) for v in np.ravel(frame)]
        r0, c0, ch, cw = frame if len(frame) == 4 else (0, 0, h, w)
        geometry = self._predictor.geometry_for((ch, cw), fill=(ch, cw) != (h, w))
        return mask_logits(m[r0:r0 + ch, c0:c0 + cw], geometry, self._predictor._low_res_size())

    # -- crops -------------------------------------------------------------------------------

    def _frame_for(self, pts, labels, box, mask) -> tuple[int, int, int, int]:
        """``(row0, col0, height, width)`` of the crop to decode a prompt in: of the slice's
        zoom, or of the object's own (:meth:`object_zoom`), the one in which the prompt's
        centre is most central."""
        centre = prompt_centre(pts, labels, box, mask)
        shape = self._image.shape[:2]
        zoom = self.object_zoom(pts, labels, box)
        crop = self.crop_shape if zoom == self.zoom else zoomed_crop_shape(shape, zoom)
        return (*crop_origin(centre, shape, crop, self.overlap), *crop)

    def object_zoom(self, points=None, labels=None, box=None) -> float:
        """The magnification to decode a prompt at: the slice's, or a larger one for a small
        object (see ``small_objects`` and :func:`~napari_sam.engine.scale.object_zoom`)."""
        if not self.small_objects or self._image is None:
            return self.zoom
        return object_zoom(self._image, self.zoom, self.model.img_size, points, labels, box)

    def _use(self, frame: tuple[int, int, int, int]) -> None:
        """Make the wrapped predictor decode in ``frame`` (its crop's embedding)."""
        current = (tuple(int(v) for v in frame), threading.get_ident())
        if current != self._current:  # (a SamPredictor is set again in another thread)
            r0, c0, ch, cw = current[0]
            self._predictor.set_embedding(self._embedding(current[0]),
                                          self._image[r0:r0 + ch, c0:c0 + cw], self._range)
            self._current = current

    def _embedding(self, frame: tuple[int, int, int, int]) -> ImageEmbedding:
        emb = self._crops.get(frame)
        if emb is None:
            r0, c0, ch, cw = frame
            # a crop is magnified on purpose (to the objects' size): the model's cap on
            # magnifying small slices is for whole slices
            whole = (ch, cw) == self._image.shape[:2]
            emb = self._predictor.compute_embedding(
                self._image[r0:r0 + ch, c0:c0 + cw], self._range, fill=not whole
            )
            self._crops.put(frame, emb)
        return emb


class SliceZoomer:
    """Small objects magnified on whatever slice a :class:`SamPredictor` holds.

    The viewer decodes clicks with a plain :class:`SamPredictor` on a slice's cached
    embedding; :meth:`segment` decodes them as :class:`ZoomPredictor` with ``zoom=1`` would:
    an object that the model would see only a few pixels across is decoded in a magnified crop
    of its own. The crops' embeddings are kept for the last ``keep`` slices. Thread-safe (the
    viewer decodes in a worker), one decode at a time.

    Parameters
    ----------
    keep : int
        Slices whose crops are kept.
    """

    def __init__(self, keep: int = 2) -> None:
        self.keep = max(1, int(keep))
        self._zoomers: list[tuple[ImageEmbedding, ZoomPredictor]] = []
        self._lock = threading.RLock()

    def zoom_predictor(self, predictor: SamPredictor) -> ZoomPredictor | None:
        """The :class:`ZoomPredictor` of the predictor's current slice, or None when it cannot
        be made (no slice, or not its pixels)."""
        emb, pixels = predictor.embedding, predictor.pixels
        if emb is None or pixels is None:
            return None
        with self._lock:
            for entry in self._zoomers:
                if entry[0] is emb:
                    entry[1]._predictor.refine = predictor.refine
                    return entry[1]
            image, span = pixels
            if span is None and not (np.ndim(image) == 3 and np.asarray(image).dtype == np.uint8):
                from .preprocess import estimate_intensity_range

                span = estimate_intensity_range(image)  # the slice's, as it was embedded with
            zoomer = ZoomPredictor(predictor.model, zoom=1.0, precision=predictor.precision,
                                   refine=predictor.refine)
            zoomer.set_embedding(emb, image, span)
            self._zoomers = [(emb, zoomer), *self._zoomers][:self.keep]
            return zoomer

    def zooms(self, predictor: SamPredictor, points=None, labels=None, box=None) -> bool:
        """Whether :meth:`segment` decodes these prompts in a magnified crop."""
        with self._lock:
            zoomer = self.zoom_predictor(predictor)
            return zoomer is not None and zoomer.object_zoom(points, labels, box) != 1.0

    def segment(self, predictor: SamPredictor, points=None, labels=None, box=None,
                mask_input=None) -> tuple[npt.NDArray[np.bool_], float, npt.NDArray[np.float32]]:
        """:meth:`SamPredictor.segment` of the prompts on the predictor's slice, a small
        object decoded magnified (then the low-resolution logits are its crop's)."""
        with self._lock:
            zoomer = self.zoom_predictor(predictor)
            prompts = {"points": points, "labels": labels, "box": box, "mask_input": mask_input}
            if zoomer is None or zoomer.object_zoom(points, labels, box) == 1.0:
                return predictor.segment(**prompts)
            return zoomer.segment(**prompts)
