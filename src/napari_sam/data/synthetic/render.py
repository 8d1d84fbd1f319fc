"""Rendering: each object's pixels (a partition of the image between the objects) and its
noise-free fluorescence before the optics (thickness dome, chromatin texture, spots).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .scene import _Blob
from .settings import _EPS, SyntheticSettings


def _texture_field(
    rng: np.random.Generator, shape: tuple[int, ...], spacing: np.ndarray,
    settings: SyntheticSettings,
) -> np.ndarray:
    """Zero-mean, unit-ish std texture in which every object owns a window (moves with it)."""
    sigma = settings.texture_scale / spacing
    fine = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma)
    fine /= fine.std() + _EPS
    coarse = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), 3 * sigma)
    coarse /= coarse.std() + _EPS
    if settings.texture_kind == "smooth":
        tex = 0.8 * fine + 0.6 * coarse
    else:  # bright heterochromatin speckles on a gently varying base
        speck = np.maximum(fine - 0.8, 0.0) ** 1.5
        speck /= speck.std() + _EPS
        tex = 1.2 * speck + 0.4 * coarse
    tex -= tex.mean()
    return tex.astype(np.float32)


def _assign_texture_origins(
    rng: np.random.Generator, blobs: list[_Blob], spacing: np.ndarray, slack: float = 1.0,
) -> tuple[int, ...]:
    """Give each blob a random anchor in a (wrapped) texture field; return the field's shape.

    The field is larger than any blob's box, so no texture repeats within an object.
    """
    if not blobs:
        return tuple(np.full(spacing.size, 8))
    ext = np.max([b.extent for b in blobs], axis=0) * slack / spacing
    room = np.maximum(16, np.round(64 / spacing).astype(int))
    fshape = 2 * (np.ceil(ext).astype(int) + 3) + 1 + room
    for b in blobs:
        b.tex_origin = rng.integers(0, fshape)
    return tuple(int(s) for s in fshape)


def _blob_crop(b: _Blob, shape: tuple[int, ...], spacing: np.ndarray):
    """Bounding box of a blob in the image and, inside it, its geometry.

    Returns None if the box is empty, else ``(slices, lo, q, dn)``: ``lo`` the box's first
    index, ``q`` (ndim, *box) the normalised coordinates (the nominal ellipse or ellipsoid is
    ``|q| < 1``) and ``dn`` (*box) the normalised distance (the outline is ``dn == 1``).
    """
    ext = b.extent + 0.5 * spacing
    lo = np.maximum(np.floor((b.center - ext) / spacing).astype(int), 0)
    hi = np.minimum(np.ceil((b.center + ext) / spacing).astype(int) + 1, shape)
    if np.any(hi <= lo):
        return None
    ndim = len(shape)
    grids = []
    for d in range(ndim):
        g = np.arange(lo[d], hi[d], dtype=np.float32) * np.float32(spacing[d])
        g -= np.float32(b.center[d])
        grids.append(g.reshape([-1 if k == d else 1 for k in range(ndim)]))
    inv = b.inv_axes.astype(np.float32)
    q = [sum(inv[i, d] * grids[d] for d in range(ndim) if inv[i, d] != 0) for i in range(ndim)]
    q = np.stack(np.broadcast_arrays(*q))
    rho = np.sqrt(np.einsum("i...,i...->...", q, q))
    if b.harm_amps.size == 0:
        dn = rho
    elif ndim == 2:
        theta = np.arctan2(q[0], q[1])
        h = 1.0
        for k, a, psi in zip(b.harm_orders, b.harm_amps, b.harm_psi):
            h = h + np.float32(a) * np.cos(np.float32(k) * theta - np.float32(k * psi))
        dn = rho / h
    else:
        inv_rho = 1.0 / (rho + np.float32(_EPS))
        h = 1.0
        for n_j, k, a in zip(b.harm_dirs.astype(np.float32), b.harm_orders, b.harm_amps):
            c = (n_j[0] * q[0] + n_j[1] * q[1] + n_j[2] * q[2]) * inv_rho
            t_prev, t = 1.0, c  # Chebyshev recurrence: T_k(c) = cos(k arccos c)
            for _ in range(int(k) - 1):
                t_prev, t = t, 2 * c * t - t_prev
            h = h + np.float32(a) * t
        dn = rho / h
    sl = tuple(slice(int(a), int(z)) for a, z in zip(lo, hi))
    return sl, lo, q, dn


def _render_objects(
    blobs: list[_Blob],
    shape: tuple[int, ...],
    spacing: np.ndarray,
    settings: SyntheticSettings,
    texture: np.ndarray,
    ids: np.ndarray | None = None,
    envelope: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Partition the pixels between the blobs and render their noise-free fluorescence.

    Returns ``labels`` (int32, ``shape``), ``signal`` (float32, ``shape``, normalised units
    before blur) and the indices of the blobs that are visible. Visible blobs get consecutive
    ids in blob order, or ``ids[i]`` if ``ids`` is given. If ``envelope`` (float32, ``shape``,
    zeros) is given, each object's smooth profile (brightness times thickness dome, without
    texture or spots) is written into it on the object's pixels.
    """
    n = len(blobs)
    min_area = settings.min_visible_area
    labels, crops = _partition(blobs, shape, spacing, min_area)
    areas = np.bincount(labels.ravel(), minlength=n + 1)
    visible = np.array([i for i in sorted(crops) if areas[i + 1] >= min_area], dtype=np.intp)
    lut = np.zeros(n + 1, np.int32)
    lut[visible + 1] = np.arange(1, visible.size + 1) if ids is None else ids[visible]
    labels = lut[labels]

    signal = np.zeros(shape, np.float32)
    for i in visible:
        b = blobs[i]
        sl, lo, q, dn = crops[i]
        mask = labels[sl] == lut[i + 1]
        dn_in = np.minimum(dn, 1.0)
        profile = (1.0 - b.dome) + b.dome * np.sqrt(1.0 - dn_in * dn_in)
        value = _texture_and_spots(b, profile, lo, q, spacing, settings, texture)
        signal[sl][mask] = b.brightness * value[mask]
        if envelope is not None:
            envelope[sl][mask] = b.brightness * profile[mask]
    return labels, signal, visible


def _partition(
    blobs: list[_Blob], shape: tuple[int, ...], spacing: np.ndarray, min_area: int,
) -> tuple[np.ndarray, dict[int, tuple]]:
    """Share the pixels out between the blobs; returns labels ``i + 1`` and each blob's crop.

    Blobs with fewer than ``min_area`` pixels inside their outline are skipped (no crop).
    """
    labels = np.zeros(shape, np.int32)
    zbuf = np.zeros(shape, np.float32)
    crops: dict[int, tuple] = {}
    conflicted: set[int] = set()
    for i, b in enumerate(blobs):
        crop = _blob_crop(b, shape, spacing)
        if crop is None:
            continue
        sl, _, _, dn = crop
        inside = dn < 1.0
        if np.count_nonzero(inside) < min_area:
            continue
        # Pixels go to the object whose centre is (relatively) nearest: the boundary between
        # touching objects is where their normalised distances are equal.
        score = 1.0 - dn
        lab, zb = labels[sl], zbuf[sl]
        owners = lab[inside]
        if owners.any():
            win = inside & (score > zb)
            conflicted.add(i)
            conflicted.update((np.unique(owners[owners > 0]) - 1).tolist())
        else:
            win = inside
        lab[win] = i + 1
        zb[win] = score[win]
        crops[i] = crop

    # A partitioned object can be split in pieces; keep its largest piece only.
    for i in sorted(conflicted):
        _keep_largest_piece(labels[crops[i][0]], i + 1)
    return labels, crops


def _keep_largest_piece(lab: np.ndarray, value: int) -> None:
    """Set to 0, in place, every connected piece of ``lab == value`` but the largest."""
    mask = lab == value
    comp, n_comp = ndimage.label(mask)
    if n_comp > 1:
        sizes = np.bincount(comp.ravel())
        sizes[0] = 0
        lab[mask & (comp != sizes.argmax())] = 0


def _texture_and_spots(
    b: _Blob, value: np.ndarray, lo: np.ndarray, q: np.ndarray, spacing: np.ndarray,
    settings: SyntheticSettings, texture: np.ndarray,
) -> np.ndarray:
    """The profile ``value`` (the blob's box) modulated by chromatin texture and spots."""
    if b.texture_gain > 0:
        # the window moves with the object; wrapping only matters if a time-lapse object
        # outgrows the field, and then costs a seam, not an error
        anchor = np.round(b.center / spacing).astype(int)
        start = b.tex_origin + lo - anchor
        idx = np.ix_(*(np.arange(s, s + n_) % f for s, n_, f in
                       zip(start, value.shape, texture.shape)))
        value = value * np.maximum(1.0 + b.texture_gain * texture[idx], 0.05)
    if b.spots.shape[0]:
        ndim = q.shape[0]
        p = b.spots.T.astype(np.float32).reshape(ndim, -1, *([1] * ndim))
        d2 = ((q[:, None] - p) ** 2).sum(axis=0)  # (S, *box)
        coef = (-0.5 / b.spot_sigmas**2).astype(np.float32).reshape(-1, *([1] * ndim))
        spot = np.exp(d2 * coef).sum(axis=0)
        value = value * np.maximum(1.0 + np.float32(settings.spot_contrast) * spot, 0.05)
    return value
