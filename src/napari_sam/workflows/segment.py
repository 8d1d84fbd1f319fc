"""Prompted segmentation of nD images, headless: group prompts by 2D plane, embed, decode, paint.

An nD image is a stack of 2D planes: the last two axes are ``(Y, X)`` (``(Y, X, 3)`` for RGB) and
every leading axis (Z, T, ...) indexes a plane. Each plane is embedded once however many objects
are prompted on it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ..engine.predictor import SamPredictor
from ..engine.preprocess import estimate_intensity_range

__all__ = ["ObjectPrompt", "is_rgb", "paint_mask", "segment_objects", "spatial_shape"]


@dataclass
class ObjectPrompt:
    """The prompts of one object on one 2D plane.

    Attributes
    ----------
    plane : tuple of int
        Index of the plane along the leading axes (``()`` for a 2D image, ``(z,)`` for a stack).
    points : array, shape (N, 2), optional
        ``(row, col)`` in plane pixels.
    labels : array, shape (N,), optional
        1 positive, 0 negative.
    box : array, shape (4,), optional
        ``(row0, col0, row1, col1)``.
    mask : array, shape (H, W), optional
        A rough mask to refine (dense prompt).
    """

    plane: tuple[int, ...] = ()
    points: npt.NDArray | None = None
    labels: npt.NDArray | None = None
    box: npt.NDArray | None = None
    mask: npt.NDArray | None = None


def is_rgb(image: npt.ArrayLike) -> bool:
    """Guess napari-style whether the last axis is RGB(A): ndim >= 3 and a last axis of 3 or 4."""
    shape = np.shape(image)
    return len(shape) >= 3 and shape[-1] in (3, 4)


def spatial_shape(image: npt.ArrayLike, rgb: bool) -> tuple[int, ...]:
    """Shape of the label image that goes with ``image`` (the image's shape without RGB)."""
    shape = tuple(np.shape(image))
    return shape[:-1] if rgb else shape


def paint_mask(
    labels: np.ndarray, plane: tuple[int, ...], mask: npt.NDArray[np.bool_], value: int,
    overwrite: bool = False,
) -> int:
    """Write ``value`` into ``labels[plane]`` where ``mask`` is set; return the pixels written.

    Without ``overwrite``, pixels that already belong to another object are kept.
    """
    target = labels[plane]
    where = mask if overwrite else mask & (target == 0)
    target[where] = value
    return int(where.sum())


def segment_objects(
    predictor: SamPredictor,
    image: npt.ArrayLike,
    objects: Sequence[ObjectPrompt],
    *,
    rgb: bool | None = None,
    labels: np.ndarray | None = None,
    overwrite: bool = False,
    intensity_range: tuple[float, float] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Segment every prompted object of an nD image into one label image.

    Parameters
    ----------
    predictor : SamPredictor
    image : array-like, shape (..., Y, X) or (..., Y, X, 3)
    objects : sequence of ObjectPrompt
        Object ``i`` gets label ``start + i`` where ``start`` is one more than the largest label
        already in ``labels``.
    rgb : bool, optional
        Whether the last axis is RGB (guessed with :func:`is_rgb` by default).
    labels : numpy.ndarray, optional
        Existing labels to add to (modified in place); a new zero array by default.
    overwrite : bool
        Let new objects take pixels of existing ones (off by default: nothing is lost).
    intensity_range : (float, float), optional
        Normalisation range; by default one robust range for the whole image.
    progress : callable, optional
        Called as ``progress(done, total)`` after each plane.

    Returns
    -------
    numpy.ndarray, shape ``spatial_shape(image, rgb)``, int32
    """
    image = np.asarray(image)
    rgb = is_rgb(image) if rgb is None else rgb
    shape = spatial_shape(image, rgb)
    if len(shape) < 2:
        raise ValueError(f"the image must have at least two spatial axes, got shape {image.shape}")
    lead = shape[:-2]
    if labels is None:
        labels = np.zeros(shape, dtype=np.int32)
    elif labels.shape != shape:
        raise ValueError(f"labels of shape {labels.shape} do not match the image ({shape})")
    if intensity_range is None and not (rgb and image.dtype == np.uint8):
        intensity_range = estimate_intensity_range(image)

    by_plane: dict[tuple[int, ...], list[tuple[int, ObjectPrompt]]] = defaultdict(list)
    for i, obj in enumerate(objects):
        plane = tuple(int(v) for v in obj.plane)
        if len(plane) != len(lead) or any(not 0 <= p < n for p, n in zip(plane, lead)):
            raise ValueError(f"object {i}: plane {plane} is outside the image's planes {lead}")
        by_plane[plane].append((i, obj))

    start = int(labels.max()) + 1 if labels.size else 1
    for done, (plane, items) in enumerate(sorted(by_plane.items()), start=1):
        predictor.set_image(image[plane], intensity_range)
        for i, obj in items:
            mask, _, _ = predictor.segment(obj.points, obj.labels, obj.box, obj.mask)
            paint_mask(labels, plane, mask, start + i, overwrite)
        if progress is not None:
            progress(done, len(by_plane))
    return labels
