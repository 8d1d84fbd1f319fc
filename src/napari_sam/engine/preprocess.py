"""Image preparation for SAM: intensity normalisation and the resize-longest-side geometry.

All functions here take and return numpy arrays in napari's axis order: a 2D slice is ``(H, W)``
(grayscale) or ``(H, W, 3)`` (RGB), points are ``(row, col)``. The model itself works in SAM's
``(x, y)`` pixel convention on a square input of side ``img_size``; :class:`ResizeGeometry` maps
between the two.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "ImageEmbedding",
    "ResizeGeometry",
    "bright_background",
    "denoise_input",
    "estimate_intensity_range",
    "input_noise",
    "pixel_noise",
    "resize_to_input",
    "stack_intensity_range",
    "to_rgb_uint8_range",
]

#: Percentiles used for the robust intensity range of non-uint8 images.
DEFAULT_PERCENTILES = (0.5, 99.8)


def stack_intensity_range(image: npt.ArrayLike, rgb: bool) -> tuple[float, float] | None:
    """The normalisation range of a whole stack: ``None`` for uint8 RGB (used as is), else
    :func:`estimate_intensity_range`."""
    if rgb and np.dtype(image.dtype) == np.uint8:
        return None
    return estimate_intensity_range(image)


def estimate_intensity_range(
    data: npt.ArrayLike,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    max_samples: int = 2_000_000,
    seed: int = 0,
) -> tuple[float, float]:
    """Robust intensity range of an image of any dimensionality.

    Computing the range once per image (not per slice) keeps the normalisation identical across
    the slices of a stack, so dim slices at the ends of a z-stack are not amplified into noise.

    Parameters
    ----------
    data : array-like
        Image data of any shape (a dask or zarr array is sampled, not loaded whole).
    percentiles : (float, float)
        Lower and upper percentile.
    max_samples : int
        At most this many values are used (a random subset of flat indices for large arrays).
    seed : int
        Seed of the subsampling, so the range is reproducible.

    Returns
    -------
    (float, float)
        ``(low, high)`` with ``high > low`` whenever the finite values are not all equal; for an
        image without any finite value ``(0.0, 1.0)``.
    """
    size = int(np.prod(np.shape(data)))
    if size == 0:
        return (0.0, 1.0)
    if not isinstance(data, np.ndarray) and len(np.shape(data)) > 2:
        # a lazy stack (dask, zarr, memory-mapped file): read a few whole planes, not the array
        data = _sample_planes(data, _MAX_LAZY_PLANES)
        size = data.size
    if size > max_samples:
        rng = np.random.default_rng(seed)
        flat_idx = np.sort(rng.choice(size, size=max_samples, replace=False))
        idx = np.unravel_index(flat_idx, np.shape(data))
        values = np.asarray(_take_points(data, idx), dtype=np.float64)
    else:
        values = np.asarray(data, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return (0.0, 1.0)
    low, high = np.percentile(values, percentiles)
    if not high > low:
        low, high = float(values.min()), float(values.max())
    return (float(low), float(high))


#: :func:`bright_background`: the median pixel above this fraction of the robust range.
BRIGHT_BACKGROUND = 0.6


def bright_background(image: npt.ArrayLike) -> bool:
    """Whether a slice looks like dark objects on a bright background (brightfield, H&E).

    Most pixels of a fluorescence image are dark background: its median lies low in its
    robust intensity range (BBBC039: 0.02-0.04 of it; the synthetic training images up to
    0.23). A brightfield or H&E image is mostly bright background: the median of its gray
    values (the mean of RGB channels) lies above :data:`BRIGHT_BACKGROUND` of the range.

    Parameters
    ----------
    image : array-like, shape (H, W) or (H, W, C)
        One 2D slice (C = 3 or 4 is colour).
    """
    arr = np.asarray(image)
    step = max(1, int(np.ceil(np.sqrt(arr.shape[0] * arr.shape[1] / 1e6))))
    arr = arr[::step, ::step]  # about a million pixels at most: a large plane stays cheap
    gray = arr[..., :3].mean(axis=-1) if arr.ndim == 3 and arr.shape[-1] in (3, 4) else arr
    gray = np.asarray(gray, dtype=np.float64)
    low, high = estimate_intensity_range(gray)
    finite = gray[np.isfinite(gray)]
    if not high > low or finite.size == 0:
        return False
    return bool((np.median(finite) - low) / (high - low) > BRIGHT_BACKGROUND)


#: Planes read from a lazy stack to estimate its intensity range.
_MAX_LAZY_PLANES = 16


def _sample_planes(data, max_planes: int) -> np.ndarray:
    """Up to ``max_planes`` evenly spaced 2D planes (RGB planes kept whole) of a lazy array."""
    shape = tuple(np.shape(data))
    plane_ndim = 3 if shape[-1] in (3, 4) and len(shape) > 3 else 2
    lead = shape[:-plane_ndim]
    n = int(np.prod(lead))
    picks = np.unique(np.linspace(0, n - 1, min(n, max_planes)).round().astype(np.int64))
    planes = [np.asarray(data[np.unravel_index(int(i), lead)]) for i in picks]
    return np.stack(planes)


def _take_points(data, idx):
    try:
        return np.asarray(data)[idx]
    except Exception:  # pragma: no cover - lazy arrays that do not support fancy indexing
        return np.asarray(data[...])[idx]


def resize_to_input(
    image: npt.ArrayLike,
    intensity_range: tuple[float, float] | None,
    size: tuple[int, int],
) -> torch.Tensor:
    """One slice as a float ``(1, 3, h, w)`` tensor in ``[0, 255]``, resized to ``size``.

    8-bit RGB(A) slices used as they are (no ``intensity_range``) are SAM's own input: they are
    resized as Meta's ``ResizeLongestSide`` does (PIL's antialiased bilinear filter on the
    8-bit image, rounded to 8 bits), so embeddings match the reference at any image size. Other
    slices are scaled to ``[0, 255]`` (:func:`to_rgb_uint8_range`) and resized in float with
    antialiasing.
    """
    import torch  # torch stays out of this module's import (numpy-only users)
    import torch.nn.functional as F

    arr = np.asarray(image)
    plain_rgb8 = arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[-1] in (3, 4)
    if plain_rgb8 and intensity_range is None:
        from PIL import Image

        pil = Image.fromarray(np.ascontiguousarray(arr[..., :3]))
        rgb = np.asarray(pil.resize((size[1], size[0]), Image.BILINEAR), dtype=np.float32)
        return torch.from_numpy(rgb).permute(2, 0, 1)[None]
    rgb = torch.from_numpy(np.ascontiguousarray(to_rgb_uint8_range(arr, intensity_range)))
    return F.interpolate(rgb.permute(2, 0, 1)[None], size=size, mode="bilinear",
                         align_corners=False, antialias=True)


def to_rgb_uint8_range(
    image: npt.ArrayLike,
    intensity_range: tuple[float, float] | None = None,
) -> npt.NDArray[np.float32]:
    """Convert a 2D slice to a float32 ``(H, W, 3)`` RGB image with values in ``[0, 255]``.

    ``uint8`` RGB input is used as is (so results match SAM's reference pipeline). Anything else
    (grayscale, 16-bit, float, with NaN or inf) is rescaled from ``intensity_range`` (default: a
    robust percentile range of this slice) to ``[0, 255]``; a constant image becomes all zeros.

    Parameters
    ----------
    image : array-like, shape (H, W) or (H, W, 3) or (H, W, 4)
        One 2D slice. RGBA drops its alpha channel.
    intensity_range : (float, float), optional
        Values mapped to 0 and 255. Pass the range of the whole stack for consistent slices.

    Returns
    -------
    numpy.ndarray, shape (H, W, 3), float32
    """
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] != 3):
        raise ValueError(
            f"expected a 2D slice of shape (H, W) or (H, W, 3), got an array of shape {arr.shape}"
        )
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"the image slice is empty (shape {arr.shape})")
    if arr.dtype == np.uint8 and arr.ndim == 3 and intensity_range is None:
        return arr.astype(np.float32)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    if intensity_range is None:
        intensity_range = estimate_intensity_range(arr)
    low, high = (float(v) for v in intensity_range)
    work = arr.astype(np.float32)
    work = np.nan_to_num(work, nan=low, posinf=high, neginf=low)
    if not high > low:
        out = np.zeros(work.shape, dtype=np.float32)
    else:
        out = (work - low) * np.float32(255.0 / (high - low))
        np.clip(out, 0.0, 255.0, out=out)
    if out.ndim == 2:
        out = np.repeat(out[..., None], 3, axis=-1)
    return out


def pixel_noise(gray: npt.ArrayLike) -> float:
    """Standard deviation of the pixel noise of a 2D image, in its own units.

    Immerkaer's (1996) estimate made robust: the median absolute response of the
    second-difference filter ``[[1, -2, 1], [-2, 4, -2], [1, -2, 1]]``, which gives white noise
    of standard deviation ``s`` a standard deviation of ``6 s`` and cancels smooth structure
    (edges are few, so the median ignores them). 0 for images smaller than 3 x 3.
    """
    from scipy import ndimage

    g = np.asarray(gray, dtype=np.float32)
    if min(g.shape) < 3:
        return 0.0
    second = ndimage.convolve(g, np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32))
    return float(np.median(np.abs(second[1:-1, 1:-1]))) / (0.6745 * 6.0)


def input_noise(x: torch.Tensor) -> float:
    """Pixel noise (:func:`pixel_noise`) of a ``(1, C, h, w)`` 0..255 image's channel mean, as
    a fraction of 255."""
    return pixel_noise(x[0].float().mean(dim=0).cpu().numpy()) / 255.0


def denoise_input(x: torch.Tensor, max_noise: float | None) -> tuple[torch.Tensor, float]:
    """Smooth a model input whose pixel noise exceeds what the model was trained on.

    Parameters
    ----------
    x : torch.Tensor, shape (B, C, h, w)
        Images on the 0..255 scale, at the model's input scale (after resizing).
    max_noise : float or None
        Noise (fraction of 255, :func:`input_noise` of the first image) up to which ``x`` is
        returned unchanged; above it, a Gaussian of ``sigma = noise / max_noise`` pixels (at
        most 2) is applied to every channel. None: never.

    Returns
    -------
    torch.Tensor, same shape
    float
        The ``sigma`` used (0 when unchanged).
    """
    import torch
    import torch.nn.functional as F

    if max_noise is None:
        return x, 0.0
    noise = input_noise(x)
    if noise <= max_noise:
        return x, 0.0
    sigma = min(noise / max_noise, 2.0)
    radius = int(np.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    g = g / g.sum()
    c = x.shape[1]
    pad = min(radius, x.shape[-2] - 1, x.shape[-1] - 1)
    if pad < radius:  # tiny image: reflect padding needs radius < side
        return x, 0.0
    y = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    y = F.conv2d(y, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return y, sigma


@dataclass(frozen=True)
class ResizeGeometry:
    """How a slice of ``original_size`` is resized and padded to the square model input.

    The longest side is scaled to ``img_size`` (but magnified at most ``max_upscale`` times);
    the result (``input_size``) sits in the top-left corner of the ``img_size`` x ``img_size``
    input and the rest is zero padding.

    Attributes
    ----------
    original_size : (int, int)
        ``(H, W)`` of the slice.
    img_size : int
        Side of the model's square input (1024 for the official SAM models).
    max_upscale : float or None
        The model's ``max_input_upscale`` (:class:`napari_sam.models.build.SamConfig`): a slice
        smaller than ``img_size / max_upscale`` is magnified by ``max_upscale`` only. None:
        SAM's rule, the longest side always fills the input.
    """

    original_size: tuple[int, int]
    img_size: int
    max_upscale: float | None = None

    @property
    def scale(self) -> float:
        """Factor from original pixels to model-input pixels."""
        fill = self.img_size / max(self.original_size)
        return fill if self.max_upscale is None else min(fill, float(self.max_upscale))

    @property
    def input_size(self) -> tuple[int, int]:
        """``(h, w)`` of the resized slice before padding."""
        h, w = self.original_size
        s = self.scale
        return (int(h * s + 0.5), int(w * s + 0.5))

    def points_to_xy(self, points_rc: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Map ``(..., 2)`` ``(row, col)`` original coordinates to model-input ``(x, y)``."""
        pts = np.asarray(points_rc, dtype=np.float64)
        if pts.shape[-1] != 2:
            raise ValueError(f"points must have shape (..., 2) as (row, col), got {pts.shape}")
        h, w = self.original_size
        new_h, new_w = self.input_size
        xy = np.empty_like(pts)
        xy[..., 0] = pts[..., 1] * (new_w / w)
        xy[..., 1] = pts[..., 0] * (new_h / h)
        return xy.astype(np.float32)

    def boxes_to_xyxy(self, boxes_rc: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Map ``(..., 4)`` boxes ``(row0, col0, row1, col1)`` to model-input ``(x0, y0, x1, y1)``.

        Corners may come in any order; they are sorted so that ``x0 <= x1`` and ``y0 <= y1``.
        """
        b = np.asarray(boxes_rc, dtype=np.float64)
        if b.shape[-1] != 4:
            raise ValueError(
                f"boxes must have shape (..., 4) as (row0, col0, row1, col1), got {b.shape}"
            )
        r = np.sort(b[..., [0, 2]], axis=-1)
        c = np.sort(b[..., [1, 3]], axis=-1)
        corners = np.stack([r[..., 0], c[..., 0], r[..., 1], c[..., 1]], axis=-1)
        xy0 = self.points_to_xy(corners[..., :2])
        xy1 = self.points_to_xy(corners[..., 2:])
        return np.concatenate([xy0, xy1], axis=-1)


@dataclass(frozen=True)
class ImageEmbedding:
    """The image-encoder output of one 2D slice, with the geometry needed to decode against it.

    Attributes
    ----------
    features : torch.Tensor, shape (1, C, h, w)
        Image embedding (``C = 256``, ``h = w = 64`` for the official models).
    original_size : (int, int)
        ``(H, W)`` of the slice that was embedded.
    img_size : int
        Side of the model's square input.
    max_upscale : float or None
        The model's largest magnification of a slice (``max_input_upscale``, see
        :class:`ResizeGeometry`).
    """

    features: torch.Tensor
    original_size: tuple[int, int]
    img_size: int
    max_upscale: float | None = None

    @property
    def geometry(self) -> ResizeGeometry:
        return ResizeGeometry(self.original_size, self.img_size, self.max_upscale)

    @property
    def nbytes(self) -> int:
        return self.features.element_size() * self.features.nelement()
