"""The stateful SAM predictor: embed a 2D slice once, decode prompts cheaply many times.

Coordinates are napari data order throughout: points ``(row, col)``, boxes
``(row0, col0, row1, col1)``, images ``(H, W)`` or ``(H, W, 3)``. The conversion to SAM's
``(x, y)`` model-input frame happens here and nowhere else.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import threading
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import torch

from ..modeling import Sam
from .postprocess import clip_to_box, keep_prompted_pieces
from .preprocess import (  # ImageEmbedding: re-exported, it lived here until v0.23
    ImageEmbedding,
    ResizeGeometry,
    denoise_input,
    resize_to_input,
)
from .prompts import mask_logits, prepare_prompts
from .upsample import (
    positive_window,
    upsample_weights,
    upscale_full,
    upscale_window,
    window_masks,
)

__all__ = [
    "ImageEmbedding",
    "SamPredictor",
    "clip_to_box",
    "keep_prompted_pieces",
    "positive_window",
    "upsample_weights",
]

#: Numeric precisions the image encoder can run in (see :class:`SamPredictor`).
PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _exclusive(method):
    """Run a :class:`SamPredictor` method under its lock, on the image this thread set."""

    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self._lock:
            self._check_thread()
            return method(self, *args, **kwargs)

    return locked


class SamPredictor:
    """Segment objects in a 2D slice from point, box and mask prompts.

    ``set_image`` runs the (expensive) image encoder once; ``predict`` runs only the prompt encoder
    and mask decoder, so it can be called on every click.

    Parameters
    ----------
    model : Sam
        A model from :func:`napari_sam.build_model`.
    precision : {"float32", "bfloat16", "float16"}
        Arithmetic of the image encoder (the weights stay float32; lower precisions run under
        :func:`torch.autocast`). ``"bfloat16"`` is faster on CPUs with native bfloat16 support
        (AVX512-BF16, AMX) and ``"float16"`` on GPUs; both change the embedding by about 1e-2
        relative (measured in docs/performance.md). Embeddings are returned in float32 either
        way, and prompt decoding always runs in float32.
    refine : bool
        Redraw each mask's boundary at the slice's resolution with the model's mask refiner
        (:class:`napari_sam.modeling.MaskRefiner`; the default model has one, official SAM
        checkpoints have none). It needs the slice's pixels: given by :meth:`set_image`, or
        with :meth:`set_embedding`'s ``image``; without them masks are SAM's upsampled ones.

    Notes
    -----
    Not thread-safe between :meth:`set_image` and :meth:`predict`: the predictor's state is one
    image (the last one set), so threads that each set their own image and decode on it must
    each have a predictor (they can share the model). Misuse fails loudly: ``set_image``,
    ``set_embedding``, ``predict``, ``segment`` and ``mask_to_logits`` hold a lock (the image
    encoder runs outside it), and a thread whose image another thread has replaced since its
    own ``set_image`` gets a :class:`RuntimeError` from ``predict``, never masks of the other
    thread's image. Setting the image in one thread and decoding in another that sets none (a
    viewer's worker and its main thread) is fine.

    Examples
    --------
    >>> from napari_sam import build_model, SamPredictor
    >>> predictor = SamPredictor(build_model("default"))  # doctest: +SKIP
    >>> predictor.set_image(image2d)  # doctest: +SKIP
    >>> masks, scores, logits = predictor.predict(points=[[120, 80]], labels=[1])  # doctest: +SKIP
    >>> best = masks[scores.argmax()]  # doctest: +SKIP
    """

    #: Check that prompts lie on the slice (a wrapper that checked them against a larger image
    #: turns it off: :class:`~napari_sam.engine.zoom.ZoomPredictor`'s crops).
    _check_bounds = True

    def __init__(self, model: Sam, precision: str = "float32", refine: bool = True) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.model = model
        self.precision = precision
        self.refine = bool(refine)
        self._embedding: ImageEmbedding | None = None
        self._dense_pe: torch.Tensor | None = None
        self._prepared: tuple | None = None  # (features, MaskDecoder.prepare of them)
        # the slice's pixels (image, intensity range) for the refiner, and their gray cache
        self._pixels: tuple[npt.ArrayLike, tuple[float, float] | None] | None = None
        self._gray: torch.Tensor | None = None
        self._gray_features: dict = {}  # the refiner's image features per crop box
        # the image state's lock, and the number of images set (the last one each thread set in
        # its thread-local): see the class's notes on threads
        self._lock = threading.RLock()
        self._generation = 0
        self._thread_image = threading.local()

    # -- image -------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def is_image_set(self) -> bool:
        return self._embedding is not None

    @property
    def embedding(self) -> ImageEmbedding | None:
        """The current slice's embedding (``None`` before :meth:`set_image`)."""
        return self._embedding

    def compute_embedding(
        self,
        image: npt.ArrayLike,
        intensity_range: tuple[float, float] | None = None,
        *,
        fill: bool = False,
    ) -> ImageEmbedding:
        """Run the image encoder on one 2D slice without changing the predictor's state.

        Parameters
        ----------
        image : array-like, shape (H, W) or (H, W, 3)
            Any dtype. ``uint8`` RGB is used as is; anything else is rescaled from
            ``intensity_range`` (default: robust percentiles of this slice) to ``[0, 255]``.
        intensity_range : (float, float), optional
            Pass the range of the whole stack so that all slices are normalised alike.
        fill : bool
            Stretch the slice to fill the model input however small it is (SAM's rule), even if
            the model caps the magnification (``max_input_upscale``): for crops that are
            magnified on purpose (:class:`napari_sam.engine.zoom.ZoomPredictor`).

        Returns
        -------
        ImageEmbedding
        """
        return self.compute_embeddings([image], intensity_range, fill=fill)[0]

    def compute_embeddings(
        self,
        images: Sequence[npt.ArrayLike],
        intensity_range: tuple[float, float] | None = None,
        batch_size: int = 1,
        *,
        fill: bool = False,
    ) -> list[ImageEmbedding]:
        """Run the image encoder on several 2D slices, ``batch_size`` at a time.

        Parameters
        ----------
        images : sequence of array-like, each of shape (H, W) or (H, W, 3)
            As in :meth:`compute_embedding`; slices of different shapes may be mixed.
        intensity_range : (float, float), optional
            As in :meth:`compute_embedding` (pass the stack's range).
        batch_size : int
            Slices per encoder call. Larger batches help on GPUs; on CPUs they mostly cost
            memory (see docs/performance.md).
        fill : bool
            As in :meth:`compute_embedding`.

        Returns
        -------
        list of ImageEmbedding
            One per slice, in order; each independent of the others.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        images = list(images)
        embeddings = []
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                inputs, geometries = [], []
                for image in images[start : start + batch_size]:
                    x, geometry = self.model_input(image, intensity_range, fill=fill)
                    inputs.append(x)
                    geometries.append(geometry)
                with self._encoder_precision():
                    features = self.model.image_encoder(torch.cat(inputs))
                features = features.float()
                for row, geometry in zip(features, geometries, strict=True):
                    # a copy per slice, so that one slice's embedding does not pin the batch
                    row = row[None] if len(geometries) == 1 else row[None].clone()
                    embeddings.append(
                        ImageEmbedding(row, geometry.original_size, geometry.img_size,
                                       geometry.max_upscale)
                    )
        return embeddings

    def geometry_for(self, original_size: tuple[int, int], *, fill: bool = False
                     ) -> ResizeGeometry:
        """How a slice of ``original_size`` ``(H, W)`` goes into this model's input (``fill``:
        see :meth:`compute_embedding`)."""
        upscale = None if fill else getattr(self.model, "max_input_upscale", None)
        return ResizeGeometry(tuple(original_size), self.model.img_size, upscale)

    def model_input(
        self, image: npt.ArrayLike, intensity_range: tuple[float, float] | None = None,
        *, fill: bool = False,
    ) -> tuple[torch.Tensor, ResizeGeometry]:
        """The image encoder's input for one slice, ``(1, 3, S, S)`` normalised and padded
        (uint8 RGB resized exactly as Meta's SAM does: :func:`resize_to_input`; ``fill``: see
        :meth:`compute_embedding`)."""
        geometry = self.geometry_for(np.shape(image)[:2], fill=fill)
        x = resize_to_input(image, intensity_range, geometry.input_size).to(self.device)
        x, _ = denoise_input(x, getattr(self.model, "max_input_noise", None))
        return self.model.preprocess(x), geometry

    def _encoder_precision(self) -> contextlib.AbstractContextManager:
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def set_image(
        self,
        image: npt.ArrayLike,
        intensity_range: tuple[float, float] | None = None,
    ) -> None:
        """Embed a 2D slice and keep its embedding for the following :meth:`predict` calls.

        See :meth:`compute_embedding` for the parameters.
        """
        self._install(self.compute_embedding(image, intensity_range), image, intensity_range)

    def set_embedding(
        self,
        embedding: ImageEmbedding,
        image: npt.ArrayLike | None = None,
        intensity_range: tuple[float, float] | None = None,
    ) -> None:
        """Use an embedding computed earlier (for example from a cache).

        Parameters
        ----------
        embedding : ImageEmbedding
        image : array-like, shape (H, W) or (H, W, 3), optional
            The slice it was computed from, for the mask refiner (see ``refine``); without it
            masks are not refined.
        intensity_range : (float, float), optional
            The range the embedding was computed with.
        """
        if embedding.img_size != self.model.img_size:
            raise ValueError(
                f"the embedding was computed for a model input of {embedding.img_size} px, "
                f"this model takes {self.model.img_size} px"
            )
        features = embedding.features
        if features.device != self.device:
            embedding = dataclasses.replace(embedding, features=features.to(self.device))
        if image is not None and tuple(np.shape(image)[:2]) != tuple(embedding.original_size):
            raise ValueError(
                f"image of shape {np.shape(image)[:2]} given for an embedding of a "
                f"{tuple(embedding.original_size)} slice"
            )
        self._install(embedding, image, intensity_range)

    def get_image_embedding(self) -> torch.Tensor:
        """The current image embedding, shape ``(1, C, h, w)``."""
        return self._require_embedding().features

    def reset_image(self) -> None:
        self._install(None, None, None)

    def _install(self, embedding: ImageEmbedding | None, image, intensity_range) -> None:
        """Make ``embedding`` (and the slice's pixels) the current image, set by this thread."""
        with self._lock:
            self._embedding = embedding
            self._prepared = None
            self._set_pixels(image, intensity_range)
            self._generation += 1
            self._thread_image.generation = self._generation

    def _check_thread(self) -> None:
        """Raise if another thread replaced the image this thread set (see the class notes)."""
        mine = getattr(self._thread_image, "generation", None)
        if mine is not None and mine != self._generation:
            raise RuntimeError(
                "another thread set this SamPredictor's image after this thread's set_image(): "
                "a SamPredictor holds one image, so give each thread its own predictor"
            )

    def _set_pixels(self, image, intensity_range) -> None:
        self._pixels = None if image is None else (image, intensity_range)
        self._gray = None
        self._gray_features = {}

    @property
    def pixels(self) -> tuple[npt.ArrayLike, tuple[float, float] | None] | None:
        """``(image, intensity_range)`` of the current slice as given, or None."""
        return self._pixels

    @property
    def refines(self) -> bool:
        """Whether masks decoded now are refined (``refine``, a refiner, the slice's pixels)."""
        return (self.refine and getattr(self.model, "mask_refiner", None) is not None
                and self._pixels is not None)

    def _require_embedding(self) -> ImageEmbedding:
        if self._embedding is None:
            raise RuntimeError("no image is set: call set_image() (or set_embedding()) first")
        return self._embedding

    # -- prompts -----------------------------------------------------------------------------

    @_exclusive
    def mask_to_logits(self, mask: npt.ArrayLike, frame=None) -> npt.NDArray[np.float32]:
        """Turn a binary mask of the slice into a low-resolution mask prompt.

        Parameters
        ----------
        mask : array-like, shape (H, W)
            Nonzero inside the object, in the current slice's pixel grid.
        frame : ignored
            The slice is the frame (the argument lets a
            :class:`~napari_sam.engine.zoom.ZoomPredictor`, whose logits may be a crop's, be
            called alike).

        Returns
        -------
        numpy.ndarray, shape (1, 4h, 4w), float32
            Logits (``+MASK_PROMPT_LOGIT`` inside, ``-MASK_PROMPT_LOGIT`` outside) in the
            low-resolution frame the mask decoder takes as ``mask_input``
            (:func:`~napari_sam.engine.prompts.mask_logits`).
        """
        emb = self._require_embedding()
        return mask_logits(mask, emb.geometry, self._low_res_size())

    def _low_res_size(self) -> tuple[int, int]:
        h, w = self.model.prompt_encoder.image_embedding_size
        return (4 * h, 4 * w)

    @_exclusive
    def predict(
        self,
        points: npt.ArrayLike | None = None,
        labels: npt.ArrayLike | None = None,
        box: npt.ArrayLike | None = None,
        mask_input: npt.ArrayLike | None = None,
        multimask: bool = True,
        return_logits: bool = False,
    ) -> tuple[npt.NDArray, npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """Decode masks for the prompts on the current slice.

        Parameters
        ----------
        points : array-like, shape (N, 2) or (B, N, 2), optional
            Point prompts as ``(row, col)`` in slice pixels. With ``B`` boxes, ``(N, 2)`` points
            apply to every object and ``(B, N, 2)`` give each object its own.
        labels : array-like, shape (N,) or (B, N), optional
            1 for a positive (foreground) point, 0 for a negative one. Defaults to all positive.
        box : array-like, shape (4,) or (B, 4), optional
            Box prompt(s) ``(row0, col0, row1, col1)``. ``B`` boxes decode ``B`` objects at once.
        mask_input : array-like, optional
            Dense prompt: low-resolution logits ``(1, 4h, 4w)`` (for example the previous call's
            ``low_res_logits[best][None]``), ``(B, 1, 4h, 4w)`` for ``B`` objects, or a binary
            mask ``(H, W)`` of the slice (converted with :meth:`mask_to_logits`).
        multimask : bool
            Return the three candidate masks (for an ambiguous prompt such as one point) instead
            of the single-output mask.
        return_logits : bool
            Return the full-resolution logits instead of thresholded masks.

        Returns
        -------
        masks : numpy.ndarray, shape (K, H, W) or (B, K, H, W)
            ``bool`` masks (float32 logits with ``return_logits``); ``K`` is 3 with ``multimask``
            and 1 otherwise; the leading ``B`` is present when several objects were decoded.
        scores : numpy.ndarray, shape (K,) or (B, K)
            The model's predicted IoU of each mask.
        low_res_logits : numpy.ndarray, shape (K, 4h, 4w) or (B, K, 4h, 4w)
            Low-resolution logits, usable as the next call's ``mask_input``.

        Raises
        ------
        ValueError
            For a prompt that is not finite, a point off the slice (more than half a pixel
            beyond its edge pixels' centres) or a box that does not overlap it; the message
            names the prompt and the slice's shape (:mod:`napari_sam.engine.prompts`).
        RuntimeError
            Without an image, or when another thread replaced this thread's image.
        """
        emb = self._require_embedding()
        geometry = emb.geometry
        batched, point_prompts, boxes, masks = self._prepare_prompts(
            geometry, points, labels, box, mask_input
        )
        low_res, iou = self._decode(emb, point_prompts, boxes, masks, multimask)
        if return_logits:
            out_np = self.full_logits(low_res, geometry).cpu().numpy()
        else:
            out_np = self.full_masks(low_res, geometry)
        scores = iou.float().cpu().numpy()
        low_np = low_res.float().cpu().numpy()
        if not batched:
            return out_np[0], scores[0], low_np[0]
        return out_np, scores, low_np

    @_exclusive
    def segment(
        self,
        points: npt.ArrayLike | None = None,
        labels: npt.ArrayLike | None = None,
        box: npt.ArrayLike | None = None,
        mask_input: npt.ArrayLike | None = None,
        min_area: int = 0,
    ) -> tuple[npt.NDArray[np.bool_], float, npt.NDArray[np.float32]]:
        """One mask for one object, choosing the output the way SAM's paper does.

        A single point is ambiguous (part, object or group): the three candidates are decoded
        and the one with the highest predicted IoU is kept. Any richer prompt (several points, a
        box, a mask) uses the single-output head. With a box, what lies beyond the box (grown
        by :data:`~napari_sam.engine.postprocess.BOX_MARGIN`) is cut off; pieces of the mask that hold
        no positive point (or, for a box without points, lie outside the box) are dropped
        (:func:`keep_prompted_pieces`): one object is asked for. :meth:`predict` returns the
        model's masks unchanged.

        Parameters
        ----------
        points, labels, box, mask_input
            As in :meth:`predict`, for one object: points ``(N, 2)``, labels ``(N,)``, box
            ``(4,)``.
        min_area : int
            For a single point: the chosen candidate is the highest-scoring one of at least
            this many pixels, when there is one. On small, dim objects the candidate the model
            scores highest is often empty or a few pixels while the next one is the object
            (propagation's seeds use this).

        Returns
        -------
        mask : numpy.ndarray, shape (H, W), bool
        score : float
            Predicted IoU of the mask.
        low_res_logits : numpy.ndarray, shape (1, 4h, 4w)
            Usable as ``mask_input`` of a refining call.
        """
        n_points = 0 if points is None else int(np.size(points) // 2)
        if box is not None and np.ndim(box) > 1 and np.shape(box)[0] > 1:
            raise ValueError("segment() takes one object: use predict() for several boxes")
        ambiguous = n_points == 1 and (box is None or np.size(box) == 0) and mask_input is None
        emb = self._require_embedding()
        geometry = emb.geometry
        _, point_prompts, boxes, masks = self._prepare_prompts(
            geometry, points, labels, box, mask_input
        )
        low_res, iou = self._decode(emb, point_prompts, boxes, masks, ambiguous)
        # one object (a (1, 4) box is a batch of one); only the chosen mask is upsampled
        scores = iou[0].float().cpu().numpy()
        best = int(np.argmax(scores))
        if ambiguous and min_area > 0:
            masks = self.full_masks(low_res[:1], geometry)[0]
            big = [k for k in np.argsort(-scores) if np.count_nonzero(masks[k]) >= min_area]
            best = int(big[0]) if big else best
            mask = masks[best]
        else:
            mask = self.full_masks(low_res[:1, best : best + 1], geometry)[0, 0]
        chosen = low_res[:1, best : best + 1]
        mask = keep_prompted_pieces(mask, points, labels, box)
        return mask, float(scores[best]), chosen[0].float().cpu().numpy()

    def _prepare_prompts(self, geometry, points, labels, box, mask_input):
        """Checked prompts in the model's frame (:func:`~napari_sam.engine.prompts.prepare_prompts`)."""
        return prepare_prompts(geometry, points, labels, box, mask_input,
                               low_res_size=self._low_res_size(),
                               mask_to_logits=self.mask_to_logits, device=self.device,
                               bounds=self._check_bounds)

    def _decode(self, emb, points, boxes, masks, multimask):
        """Run prompt encoder + mask decoder. Returns low-res logits (B, K, 4h, 4w) and IoU (B, K)."""
        with torch.inference_mode():
            sparse, dense = self.model.prompt_encoder(points=points, boxes=boxes, masks=masks)
            low_res, iou = self.model.mask_decoder(
                image_embeddings=emb.features,
                image_pe=self._get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask,
                prepared=None if masks is not None else self._prepared_image(emb),
            )
        return low_res, iou

    def _prepared_image(self, emb: ImageEmbedding) -> dict | None:
        """The mask decoder's image-only work for ``emb`` without a mask prompt
        (:meth:`MaskDecoder.prepare`), kept for the slice's later clicks."""
        prepare = getattr(self.model.mask_decoder, "prepare", None)
        if prepare is None or emb.features.shape[0] != 1:
            return None
        cached = self._prepared
        if cached is None or cached[0] is not emb.features:
            _, no_mask = self.model.prompt_encoder(points=None, boxes=None, masks=None)
            cached = (emb.features, prepare(emb.features, self._get_dense_pe(), no_mask))
            self._prepared = cached
        return cached[1]

    def _get_dense_pe(self) -> torch.Tensor:
        """The prompt encoder's positional encoding of the embedding grid, computed once."""
        pe = self._dense_pe
        if pe is None or pe.device != self.device:
            with torch.inference_mode():
                pe = self.model.prompt_encoder.get_dense_pe()
            self._dense_pe = pe
        return pe

    def full_logits(self, low_res: torch.Tensor, geometry: ResizeGeometry) -> torch.Tensor:
        """Low-res logits ``(B, K, 4h, 4w)`` -> logits ``(B, K, H, W)`` of the current slice.

        Upsampled as SAM does, then refined when :attr:`refines`.
        """
        full = self._upscale(low_res, geometry)
        if not self.refines:
            return full
        from .refine import refine_logits

        b, k, h, w = full.shape
        refined = refine_logits(self.model.mask_refiner, self._slice_gray(),
                                full.reshape(b * k, h, w))
        return refined.reshape(b, k, h, w)

    def upscale_window(self, low_res: torch.Tensor, geometry: ResizeGeometry,
                       window: tuple[tuple[int, int], tuple[int, int]]) -> torch.Tensor:
        """:func:`~napari_sam.engine.upsample.upscale_window` (upsampled logits of a window of
        the slice, not refined)."""
        return upscale_window(low_res, geometry, window)

    def full_masks(self, low_res: torch.Tensor, geometry: ResizeGeometry
                   ) -> npt.NDArray[np.bool_]:
        """Low-res logits ``(B, K, 4h, 4w)`` -> bool masks ``(B, K, H, W)`` of the current slice.

        ``full_logits(low_res, geometry) > 0``, computed in a window around each mask
        (:func:`~napari_sam.engine.upsample.window_masks`): on a 1024 px slice a fraction of
        the work, the refiner included, when the masks are objects rather than the slice.
        """
        if not self.refines:
            return window_masks(low_res, geometry)
        if len(self._gray_features) > 256:  # per slice, a few per object: bounded all the same
            self._gray_features.clear()
        return window_masks(low_res, geometry, self.model.mask_refiner, self._slice_gray(),
                            self._gray_features)

    def _slice_gray(self) -> torch.Tensor:
        """The refiner's view of the current slice (:func:`~napari_sam.engine.refine.slice_gray`),
        computed once per slice."""
        if self._gray is None:
            from .refine import slice_gray

            image, intensity_range = self._pixels
            self._gray = torch.from_numpy(slice_gray(image, intensity_range))
        return self._gray

    def _upscale(self, low_res: torch.Tensor, geometry: ResizeGeometry) -> torch.Tensor:
        """Low-res logits (B, K, 4h, 4w) -> logits at the slice resolution (B, K, H, W)
        (:func:`~napari_sam.engine.upsample.upscale_full`)."""
        return upscale_full(low_res, geometry)
