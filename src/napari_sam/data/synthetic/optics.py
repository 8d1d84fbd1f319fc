"""Optics and camera: PSF blur, out-of-focus haze, uneven illumination, then photon, read and
column noise, the black level and clipping at the white level (saturation).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.signal import fftconvolve

from .settings import SyntheticSettings


def _disk_kernel(radius: float) -> np.ndarray:
    """A normalised 2D disk of ``radius`` pixels (the defocus part of the PSF)."""
    r = int(np.ceil(radius))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    disk = (yy**2 + xx**2 <= radius**2 + 0.5).astype(np.float32)
    return disk / disk.sum()


def _blur(signal: np.ndarray, settings: SyntheticSettings, z_sigma: float | None) -> np.ndarray:
    """PSF blur; ``z_sigma`` (slices) for a ``(Z, Y, X)`` stack, None for 2D."""
    s = settings.psf_sigma
    if s <= 0 and not z_sigma:
        return signal
    lateral = s if settings.psf_kind == "gaussian" else 0.5 * s
    sigma = (lateral, lateral) if z_sigma is None else (z_sigma, lateral, lateral)
    out = ndimage.gaussian_filter(signal, sigma, mode="nearest")
    if settings.psf_kind == "defocus" and s > 0:
        k = _disk_kernel(1.5 * s)
        if z_sigma is not None:
            k = k[None]
        out = fftconvolve(out, k, mode="same").astype(np.float32)
    return out


def _blur_reach(settings: SyntheticSettings, z_sigma: float | None, ndim: int) -> np.ndarray:
    """Per-axis distance (pixels) beyond which :func:`_blur` moves no signal, plus one.

    A crop of an isolated object padded by this much blurs exactly as the whole image does.
    """
    s = settings.psf_sigma
    if s <= 0 and not z_sigma:
        return np.zeros(ndim, int)
    lateral = s if settings.psf_kind == "gaussian" else 0.5 * s
    reach = np.full(ndim, int(4.0 * lateral + 0.5) + 1)  # scipy's truncate=4.0 radius
    if settings.psf_kind == "defocus" and s > 0:
        reach += int(np.ceil(1.5 * s))
    if ndim == 3:
        reach[0] = int(4.0 * (z_sigma or 0.0) + 0.5) + 1
    return reach


def _wide_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of a 2D image with a large sigma, computed on a downsampled copy."""
    f = max(1, int(sigma // 3))
    if f == 1:
        return ndimage.gaussian_filter(image, sigma, mode="nearest")
    h, w = image.shape
    ph, pw = -h % f, -w % f
    padded = np.pad(image, ((0, ph), (0, pw)), mode="edge")
    small = padded.reshape(padded.shape[0] // f, f, padded.shape[1] // f, f).mean(axis=(1, 3))
    small = ndimage.gaussian_filter(small, sigma / f, mode="nearest")
    big = ndimage.zoom(small, f, order=1, mode="nearest", grid_mode=True)
    return big[:h, :w]


def _optics(signal: np.ndarray, settings: SyntheticSettings, r_med: float,
            z_sigma: float | None) -> np.ndarray:
    """PSF blur plus, in 2D, out-of-focus haze (the signal blurred over a few object radii)."""
    out = _blur(signal, settings, z_sigma)
    if settings.haze > 0 and z_sigma is None:
        out = out + np.float32(settings.haze) * _wide_blur(signal, 2.5 * r_med)
    return out


def _illumination(
    rng: np.random.Generator, shape: tuple[int, int], settings: SyntheticSettings
) -> np.ndarray:
    """Multiplicative illumination field ``(Y, X)``: a linear ramp times a vignette, max ~1."""
    h, w = shape
    yy = (np.arange(h, dtype=np.float32) - (h - 1) / 2)[:, None] / max(h, w)
    xx = (np.arange(w, dtype=np.float32) - (w - 1) / 2)[None, :] / max(h, w)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * yy + np.sin(angle) * xx  # in [-0.5, 0.5]
    cy, cx = rng.uniform(-0.15, 0.15, 2)
    r2 = ((yy - cy) ** 2 + (xx - cx) ** 2) / 0.5  # ~1 at the corners
    field_ = (1.0 + settings.illumination_gradient * ramp) * (1.0 - settings.vignette * r2)
    return np.maximum(field_, 0.05).astype(np.float32)


def _camera(clean: np.ndarray, settings: SyntheticSettings, rng: np.random.Generator) -> np.ndarray:
    """Photon noise, read noise, column noise, then the output dtype (clipping = saturation)."""
    photons = settings.photons
    value = rng.poisson(np.maximum(clean, 0.0) * photons).astype(np.float32) / np.float32(photons)
    if settings.read_noise > 0:
        value += np.float32(settings.read_noise) * rng.standard_normal(clean.shape, np.float32)
    if settings.fixed_pattern_noise > 0:
        cols = rng.standard_normal(clean.shape[-1]).astype(np.float32)
        value += np.float32(settings.fixed_pattern_noise) * cols
    black, white = settings.levels
    out = black + value * np.float32((white - black) / settings.saturation)
    out = np.clip(out, 0.0, white)
    dtype = np.dtype(settings.dtype)
    if dtype.kind == "u":
        return np.rint(out).astype(dtype)
    return out.astype(dtype)

