"""Segment everything with a model's instance-segmentation decoder (micro-sam's models).

micro-sam's ``*_lm`` and ``*_em_organelles`` models carry a decoder
(:class:`~napari_sam.modeling.instance_decoder.InstanceDecoder`) that predicts, from the image
embedding, a foreground probability and the distances of each pixel to its object's centre and
boundary. Instances follow by a seeded watershed, as micro-sam's
``InstanceSegmentationWithDecoder.generate`` does with its default settings:

1. the foreground is smoothed (Gaussian, sigma 1.0) and both distance maps too (sigma 1.6);
2. seeds are the connected components (8-connected in 2D) where both distances are below 0.5,
   inside the foreground (foreground > 0.5);
3. the seeds are grown over the boundary distances by a watershed (4-connected) within the
   foreground; objects smaller than ``min_size`` (0: none) are removed.

With ``DecoderParams.zoom_below_radius`` set, a slice whose objects are small at the model's
input scale (:func:`~napari_sam.engine.zoom.typical_radius`) is decoded in its 2 x 2 overlapping
crops (:func:`zoom_boxes`, each embedded on its own, as the point-grid mode zooms in) and the maps
are stitched along the middle of the overlaps before the watershed.

One decoder pass per slice replaces the thousands of prompt decodes of the point grid
(:mod:`napari_sam.workflows.automatic`). Stacks are segmented slice by slice and the objects of
neighbouring slices are linked by overlap (:func:`~napari_sam.workflows.automatic.link_slices`).
The functions mirror :func:`~napari_sam.workflows.automatic.segment_everything` and
:func:`~napari_sam.workflows.automatic.segment_everything_nd` (same arguments), so a caller can
switch between the two modes. Images are ``(H, W)`` or ``(H, W, 3)``; stacks ``(Z, Y, X)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from scipy import ndimage

from ..engine.predictor import ImageEmbedding, SamPredictor
from .automatic import _crop_boxes, link_slices

if TYPE_CHECKING:  # pragma: no cover
    from ..modeling import Sam

__all__ = [
    "DecoderParams",
    "decoder_outputs",
    "has_instance_decoder",
    "instances_from_outputs",
    "segment_everything",
    "segment_everything_nd",
    "slice_outputs",
    "zoom_boxes",
]


@dataclass(frozen=True)
class DecoderParams:
    """Settings of the seeded watershed; the defaults are micro-sam's
    (``InstanceSegmentationWithDecoder.generate``).

    Attributes
    ----------
    center_distance_threshold, boundary_distance_threshold : float
        Seeds are where both predicted distances are below these.
    foreground_threshold : float
        Pixels whose smoothed foreground probability is above this belong to objects.
    foreground_smoothing, distance_smoothing : float
        Gaussian sigma (pixels) applied to the foreground and to the distance maps (0: none).
    min_size : int
        Objects with fewer pixels are removed (0: none).
    link_overlap : float
        Stacks: overlap (of the smaller object) above which objects of neighbouring slices are
        joined.
    zoom_below_radius : float or None
        When the slice is at least as large as the model input and its objects' typical radius
        scaled to the input is below this (pixels), decode its 2 x 2 overlapping crops instead
        of the whole slice (0: never, micro-sam's behaviour). None (the default): 16 for the
        project's own decoders (``upscale`` 8, trained with ``napari-sam train-decoder`` on
        whole images and their 2 x 2 crops; a 1024 px slice of 515 BBBC039 nuclei: F1@0.5
        0.791 whole, 0.925 zoomed), 0 for micro-sam's.
    """

    center_distance_threshold: float = 0.5
    boundary_distance_threshold: float = 0.5
    foreground_threshold: float = 0.5
    foreground_smoothing: float = 1.0
    distance_smoothing: float = 1.6
    min_size: int = 0
    link_overlap: float = 0.5
    zoom_below_radius: float | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.name == "zoom_below_radius":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"DecoderParams.{f.name} must be a number >= 0, got {value!r}")


def has_instance_decoder(model: Sam) -> bool:
    """Whether ``model`` carries an instance-segmentation decoder (micro-sam's models)."""
    return getattr(model, "instance_decoder", None) is not None


def _decoder(model: Sam) -> torch.nn.Module:
    decoder = getattr(model, "instance_decoder", None)
    if decoder is None:
        raise ValueError(
            "this model has no instance-segmentation decoder: use the point-grid automatic "
            "mode, or a micro-sam model (vit_b_lm, vit_b_em_organelles, ...)"
        )
    return decoder


def decoder_outputs(model: Sam, embedding: ImageEmbedding) -> npt.NDArray[np.float32]:
    """The decoder's predictions for one embedded slice, at the slice's resolution.

    As micro-sam: the outputs are resized bilinearly to the model input, cropped to the resized
    slice (without the padding) and resized to the slice's size.

    Parameters
    ----------
    model : Sam
        With an ``instance_decoder``.
    embedding : ImageEmbedding
        The slice's embedding (:meth:`SamPredictor.compute_embedding`).

    Returns
    -------
    numpy.ndarray, float32, shape (3, H, W)
        Foreground probability, centre distances, boundary distances (all in [0, 1]).
    """
    decoder = _decoder(model)
    geometry = embedding.geometry
    device = next(decoder.parameters()).device
    with torch.inference_mode():
        out = decoder(embedding.features.to(device=device, dtype=torch.float32))
        size = geometry.img_size
        if tuple(out.shape[-2:]) != (size, size):  # upscale 8 on the default model: already
            out = F.interpolate(out, (size, size), mode="bilinear", align_corners=False)
        h, w = geometry.input_size
        out = F.interpolate(out[..., :h, :w], tuple(geometry.original_size), mode="bilinear",
                            align_corners=False)
    return out[0].float().cpu().numpy()


def zoom_boxes(hw: tuple[int, int], overlap: float = 0.25) -> list[tuple[int, int, int, int]]:
    """``(r0, c0, r1, c1)`` of the 2 x 2 overlapping crops of a ``(H, W)`` slice, row by row,
    each of side ``size / (2 - overlap)``: the crops of layer 1 the point-grid mode zooms into
    (:func:`napari_sam.workflows.automatic._crop_boxes`)."""
    return [box for layer, box in _crop_boxes(tuple(hw), 1, overlap) if layer == 1]


#: ``DecoderParams.zoom_below_radius`` None: the project's own decoders (``upscale`` 8) zoom
#: below this radius, micro-sam's never.
OWN_DECODER_ZOOM = 16.0


def zoom_radius(model: Sam, params: DecoderParams) -> float:
    """The ``zoom_below_radius`` in effect for ``model`` (see :class:`DecoderParams`)."""
    if params.zoom_below_radius is not None:
        return float(params.zoom_below_radius)
    return OWN_DECODER_ZOOM if getattr(_decoder(model), "upscale", 16) == 8 else 0.0


def _zoom(model: Sam, image: np.ndarray, intensity_range, params: DecoderParams) -> bool:
    hw = image.shape[:2]
    below = zoom_radius(model, params)
    if not below or max(hw) < model.img_size:
        return False
    from skimage.transform import downscale_local_mean

    from ..engine.zoom import typical_radius

    # measured near the model's input scale, where it is compared: a slice of twice the input
    # or more is block-averaged first (a 1024 px slice: 0.24 -> 0.06 s)
    f = max(1, int(max(hw) // model.img_size))
    if f > 1:
        image = downscale_local_mean(np.asarray(image, dtype=np.float32),
                                     (f, f) + (1,) * (image.ndim - 2))
    radius = typical_radius(image, intensity_range)
    return radius is not None and radius * f * model.img_size / max(hw) < below


def slice_outputs(
    model: Sam,
    image2d: npt.ArrayLike,
    params: DecoderParams | None = None,
    intensity_range: tuple[float, float] | None = None,
    embedding: ImageEmbedding | Callable[[], ImageEmbedding] | None = None,
) -> npt.NDArray[np.float32]:
    """:func:`decoder_outputs` of a slice: of its whole embedding, or (zoom, see
    :class:`DecoderParams`) of its 2 x 2 crops stitched along the middle of their overlaps.

    Parameters
    ----------
    model : Sam
    image2d : array-like, shape (H, W) or (H, W, 3)
    params : DecoderParams, optional
    intensity_range : (float, float), optional
    embedding : ImageEmbedding or callable returning one, optional
        The whole slice's embedding (not computed when the slice is zoomed into).

    Returns
    -------
    numpy.ndarray, float32, shape (3, H, W)
    """
    params = DecoderParams() if params is None else params
    image = np.asarray(image2d)
    rgb8 = image.ndim == 3 and image.dtype == np.uint8
    if intensity_range is None and not rgb8 and zoom_radius(model, params):
        from ..engine.preprocess import estimate_intensity_range

        intensity_range = estimate_intensity_range(image)
    predictor = SamPredictor(model)
    if not _zoom(model, image, intensity_range, params):
        emb = embedding() if callable(embedding) else embedding
        if emb is None:
            emb = predictor.compute_embedding(image, intensity_range)
        return decoder_outputs(model, emb)
    h, w = image.shape[:2]
    boxes = zoom_boxes((h, w))
    rmid, cmid = (boxes[0][2] + boxes[3][0]) // 2, (boxes[0][3] + boxes[3][1]) // 2
    out = np.zeros((3, h, w), np.float32)
    for r0, c0, r1, c1 in boxes:
        maps = decoder_outputs(model, predictor.compute_embedding(image[r0:r1, c0:c1],
                                                                  intensity_range, fill=True))
        ra, rb = (0, rmid) if r0 == 0 else (rmid, h)
        ca, cb = (0, cmid) if c0 == 0 else (cmid, w)
        out[:, ra:rb, ca:cb] = maps[:, ra - r0:rb - r0, ca - c0:cb - c0]
    return out


def _smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    # mirror borders and a 3-sigma kernel: the same values as micro-sam's smoothing (vigra's)
    return ndimage.gaussian_filter(x, sigma, mode="mirror", truncate=3.0) if sigma > 0 else x


def instances_from_outputs(
    foreground: npt.ArrayLike,
    center_distances: npt.ArrayLike,
    boundary_distances: npt.ArrayLike,
    params: DecoderParams | None = None,
) -> npt.NDArray[np.int32]:
    """Instance labels from the decoder's three maps by a seeded watershed (see the module).

    Parameters
    ----------
    foreground, center_distances, boundary_distances : array-like, shape (H, W)
        :func:`decoder_outputs`' three channels.
    params : DecoderParams, optional

    Returns
    -------
    numpy.ndarray, int32, shape (H, W)
        0 for background, objects ``1..N`` numbered in row-major order of their seeds.
    """
    from skimage.measure import label
    from skimage.segmentation import relabel_sequential, watershed

    params = DecoderParams() if params is None else params
    maps = [np.asarray(m, dtype=np.float32) for m in
            (foreground, center_distances, boundary_distances)]
    if maps[0].ndim != 2 or any(m.shape != maps[0].shape for m in maps):
        raise ValueError(f"expected three (H, W) maps of one shape, got "
                         f"{[m.shape for m in maps]}")
    fg = _smooth(maps[0], params.foreground_smoothing) > params.foreground_threshold
    center = _smooth(maps[1], params.distance_smoothing)
    boundary = _smooth(maps[2], params.distance_smoothing)
    seeds = label((center < params.center_distance_threshold)
                  & (boundary < params.boundary_distance_threshold) & fg)
    labels = watershed(boundary, markers=seeds, mask=fg)
    if params.min_size > 0:
        ids, sizes = np.unique(labels, return_counts=True)
        labels[np.isin(labels, ids[(sizes < params.min_size) & (ids > 0)])] = 0
        labels = relabel_sequential(labels)[0]
    return labels.astype(np.int32)


def segment_everything(
    model: Sam,
    image2d: npt.ArrayLike,
    *,
    params: DecoderParams | None = None,
    intensity_range: tuple[float, float] | None = None,
    embedding: ImageEmbedding | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> npt.NDArray[np.int32]:
    """Segment every object of a 2D slice with the model's instance decoder.

    Parameters
    ----------
    model : Sam
        With an ``instance_decoder`` (:func:`has_instance_decoder`).
    image2d : array-like, shape (H, W) or (H, W, 3)
    params : DecoderParams, optional
    intensity_range : (float, float), optional
        Normalisation range (pass the stack's range for a slice of a stack).
    embedding : ImageEmbedding, optional
        The slice's embedding if already computed.
    progress : callable, optional
        ``progress(1, 1)`` once done.
    cancelled : callable, optional
        Accepted for symmetry with the point-grid mode; one slice is not interrupted.

    Returns
    -------
    numpy.ndarray, int32, shape (H, W)

    Raises
    ------
    ValueError
        The model has no instance decoder.
    """
    _decoder(model)
    params = DecoderParams() if params is None else params
    maps = slice_outputs(model, image2d, params, intensity_range, embedding)
    labels = instances_from_outputs(*maps, params=params)
    if progress is not None:
        progress(1, 1)
    return labels


def segment_everything_nd(
    model: Sam,
    image: npt.ArrayLike,
    *,
    axis: int | None = 0,
    indices: list[int] | range | None = None,
    params: DecoderParams | None = None,
    intensity_range: tuple[float, float] | None = None,
    embed: Callable[[int], ImageEmbedding] | None = None,
    link_3d: bool = True,
    progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> npt.NDArray[np.int32]:
    """Segment everything in a 2D image or in chosen slices of a 3D stack with the decoder.

    The arguments are those of :func:`napari_sam.workflows.automatic.segment_everything_nd`
    (``params`` a :class:`DecoderParams`); objects of neighbouring slices are linked by overlap
    (``params.link_overlap``) unless ``link_3d`` is false.

    Returns
    -------
    numpy.ndarray, int32, the image's spatial shape
        Slices not in ``indices`` (or not reached before ``cancelled``) are 0.
    """
    params = DecoderParams() if params is None else params
    _decoder(model)
    if not hasattr(image, "shape"):
        image = np.asarray(image)
    shape = tuple(image.shape)
    rgb = len(shape) in (3, 4) and shape[-1] in (3, 4) and (axis is None or len(shape) == 4)
    spatial = shape[:-1] if rgb else shape
    if axis is None:
        if len(spatial) != 2:
            raise ValueError(
                f"axis=None needs a 2D image, got shape {shape}: pass the slicing axis"
            )
        return segment_everything(model, np.asarray(image), params=params,
                                  intensity_range=intensity_range,
                                  embedding=embed(0) if embed is not None else None,
                                  progress=progress)
    if len(spatial) != 3:
        raise ValueError(f"a stack must be (Z, Y, X) or (Z, Y, X, 3), got shape {shape}")
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not -3 <= axis < 3:
        raise ValueError(f"axis must be 0, 1 or 2 (or -3..-1), got {axis!r}")
    axis = int(axis) % 3
    n = spatial[axis]
    idx = sorted({int(i) for i in (range(n) if indices is None else indices)})
    if any(not 0 <= i < n for i in idx):
        raise ValueError(f"indices must lie in 0..{n - 1}")
    if intensity_range is None and not (rgb and image.dtype == np.uint8):
        from ..engine.preprocess import estimate_intensity_range

        intensity_range = estimate_intensity_range(image)
    out = np.zeros((n, *(s for k, s in enumerate(spatial) if k != axis)), dtype=np.int32)
    offset = 0
    for done, i in enumerate(idx, start=1):
        if cancelled is not None and cancelled():
            break
        key = [slice(None)] * len(shape)
        key[axis] = i
        plane = np.asarray(image[tuple(key)])
        emb = (lambda i=i: embed(i)) if embed is not None else None
        lab = instances_from_outputs(*slice_outputs(model, plane, params, intensity_range, emb),
                                     params=params)
        out[i] = np.where(lab > 0, lab + offset, 0)
        offset += int(lab.max())
        if progress is not None:
            progress(done, len(idx))
    if link_3d:
        out = link_slices(out, params.link_overlap)
    return np.moveaxis(out, 0, axis)
