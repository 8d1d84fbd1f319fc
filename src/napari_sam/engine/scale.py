"""How large the objects of a slice are, and how much to magnify them.

:func:`typical_radius` and :func:`auto_zoom` size a whole slice (the magnification of
:class:`~napari_sam.engine.zoom.ZoomPredictor`'s ``zoom="auto"`` and of segment everything's
crops); :func:`blob_radius` and :func:`object_zoom` size one object at its prompt, so that a
speck among large nuclei is decoded in a crop magnified for it alone.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["auto_zoom", "blob_radius", "object_zoom", "typical_radius"]

#: Objects whose median radius at the model's input scale is below this are zoomed in on.
SMALL_RADIUS = 10.0
#: ... to bring them to about this radius (px at the model's input scale).
TARGET_RADIUS = 16.0
#: Most magnification used by ``zoom="auto"``.
MAX_ZOOM = 4.0
#: An object whose radius at the model's input scale, estimated at its prompt
#: (:func:`blob_radius`), is below this (at the slice's zoom) is decoded in a crop of its own ...
SMALL_OBJECT_RADIUS = 4.0
#: ... magnified to bring it to about this radius (px at the model's input scale) ...
OBJECT_RADIUS = 24.0
#: ... at most this many times (the slice's longer side over the crop's).
MAX_OBJECT_ZOOM = 16.0
#: :func:`blob_radius` takes the finest scale whose response peaks at this fraction of the
#: strongest or more.
RELATIVE_PEAK = 0.5


def typical_radius(image: npt.ArrayLike,
                   intensity_range: tuple[float, float] | None = None) -> float | None:
    """Median radius in pixels of the bright objects of a slice, or None if it has none.

    The slice is smoothed (2 px), thresholded (Li's minimum cross-entropy) and holes are
    filled; the radius of each object is the height of a maximum of the foreground's distance
    transform (its deepest point), so touching objects still count one by one; the median is
    weighted by the radius.
    """
    from scipy import ndimage
    from skimage.feature import peak_local_max
    from skimage.filters import threshold_li

    gray = np.asarray(image, dtype=np.float32)
    if gray.ndim == 3:
        gray = gray[..., :3].mean(axis=-1)
    lo, hi = np.percentile(gray, (0.5, 99.5)) if intensity_range is None else intensity_range
    gray = np.clip((np.nan_to_num(gray) - lo) / max(float(hi - lo), 1e-12), 0, 1)
    gray = ndimage.gaussian_filter(gray, 2.0)
    if not gray.max() > gray.min():
        return None
    fg = ndimage.binary_fill_holes(gray > threshold_li(gray))
    if not fg.any() or fg.mean() > 0.9:
        return None
    dist = ndimage.distance_transform_edt(fg)
    peaks = peak_local_max(dist, min_distance=2, threshold_abs=1.0, labels=fg.astype(np.int32),
                           exclude_border=False)
    if len(peaks) == 0:
        return None
    radii = np.sort(dist[peaks[:, 0], peaks[:, 1]])
    # weighted by the radius: fragments of a textured object's foreground leave small maxima
    # but matter less; crowded small objects stay many (an area weighting let the few merged
    # clumps of a crowded image win)
    weight = np.cumsum(radii)
    return float(radii[np.searchsorted(weight, weight[-1] / 2)])


def auto_zoom(
    image: npt.ArrayLike,
    img_size: int,
    intensity_range: tuple[float, float] | None = None,
) -> float:
    """The magnification that brings a slice's objects to a size the model segments well.

    Parameters
    ----------
    image : array-like, shape (H, W) or (H, W, 3)
    img_size : int
        The model's input side.
    intensity_range : (float, float), optional

    Returns
    -------
    float
        1.0 when the objects' median radius (:func:`typical_radius`) at the model's input
        scale is at least :data:`SMALL_RADIUS` (or there are none); otherwise
        ``TARGET_RADIUS / radius``, at most :data:`MAX_ZOOM`.
    """
    r = typical_radius(image, intensity_range)
    if r is None:
        return 1.0
    r *= img_size / max(np.shape(image)[:2])  # at the model's input scale
    if r >= SMALL_RADIUS:
        return 1.0
    return float(min(MAX_ZOOM, TARGET_RADIUS / max(r, 1.0)))


def blob_radius(image: npt.ArrayLike, centre: npt.ArrayLike, max_radius: float) -> float | None:
    """Radius in pixels of the bright blob at ``centre`` (scale selection), or None.

    The scale-normalised Laplacian of Gaussian ``-sigma**2 * LoG`` is evaluated at ``centre``
    only (one zero-sum kernel per scale on the pixels within ``4 sigma``, the slice's edge
    extended) for ``sigma`` from 0.5 px up to ``max_radius / sqrt(2)`` in steps of 2**0.25;
    a disc of radius ``R`` answers most strongly at ``sigma = R / sqrt(2)``, so the radius is
    ``sqrt(2)`` times the best ``sigma``: the finest scale (above 0.5 px, too small a kernel to
    compare) whose response is a local maximum of at least :data:`RELATIVE_PEAK` of the
    strongest, else the strongest (a speck beside a brighter nucleus
    peaks at its own scale before the nucleus's). Contrast and offset do not change the
    answer; a blob larger than ``max_radius`` gives about ``max_radius``.

    Parameters
    ----------
    image : array-like, shape (H, W) or (H, W, 3)
    centre : array-like, shape (2,)
        ``(row, col)``.
    max_radius : float
        The largest radius told apart (px).

    Returns
    -------
    float or None
        None where no scale sees a bright blob (the centre is darker than its surround).
    """
    sigmas = 0.5 * 2.0 ** (np.arange(0, 60) / 4)
    sigmas = sigmas[sigmas <= max(max_radius / np.sqrt(2), 0.5)]
    h, w = np.shape(image)[:2]
    r, c = (round(float(v)) for v in np.asarray(centre, dtype=np.float64).reshape(2))
    r, c = min(max(r, 0), h - 1), min(max(c, 0), w - 1)
    half = int(np.ceil(4 * sigmas[-1]))
    rows = np.clip(np.arange(r - half, r + half + 1), 0, h - 1)
    cols = np.clip(np.arange(c - half, c + half + 1), 0, w - 1)
    patch = np.asarray(image[rows[:, None], cols[None, :]], dtype=np.float64)
    if patch.ndim == 3:
        patch = patch[..., :3].mean(axis=-1)
    patch = np.nan_to_num(patch)
    response = []
    for s in sigmas:
        k = int(np.ceil(4 * s))
        y = np.arange(-k, k + 1, dtype=np.float64)
        d2 = (y[:, None] ** 2 + y[None, :] ** 2) / (2 * s * s)
        kernel = (1 - d2) * np.exp(-d2) / (s * s)  # pi * (-sigma**2 * LoG)
        kernel -= kernel.mean()
        response.append(float((kernel * patch[half - k:half + k + 1, half - k:half + k + 1]).sum()))
    response = np.asarray(response)
    best = int(np.argmax(response))
    if not response[best] > 0:
        return None
    # the finest scale with a local maximum of at least half the strongest: a speck beside a
    # brighter nucleus answers at its own scale first, the nucleus's is larger
    # (not the finest scale itself: its kernel is too small to compare)
    peaks = [k for k in range(1, best) if response[k] >= max(response[k - 1], response[k + 1],
                                                               RELATIVE_PEAK * response[best])]
    return float(sigmas[peaks[0] if peaks else best] * np.sqrt(2))


def object_zoom(image: npt.ArrayLike, zoom: float, img_size: int, points=None, labels=None,
                box=None) -> float:
    """The magnification to decode one object at, given its prompt.

    The object's radius is half its box's longer side, or the radius of the bright blob under
    the mean of its positive points (:func:`blob_radius`; the slice's zoom if there is none,
    or if the positive points lie wider apart than it). If that radius at the model's input
    scale (at the slice's ``zoom``) is below :data:`SMALL_OBJECT_RADIUS`, the object is
    magnified to :data:`OBJECT_RADIUS`, at most :data:`MAX_OBJECT_ZOOM` times, rounded to a
    power of ``sqrt(2)`` (neighbouring specks then share crops).

    Parameters
    ----------
    image : array-like, shape (H, W) or (H, W, 3)
        The slice.
    zoom : float
        The slice's magnification (1: the whole slice is the model's input).
    img_size : int
        The model's input side.
    points : array-like, shape (N, 2), optional
        ``(row, col)`` in slice pixels.
    labels : array-like, shape (N,), optional
        1 positive, 0 negative (default all positive).
    box : array-like, shape (4,), optional
        ``(row0, col0, row1, col1)``.

    Returns
    -------
    float
        ``zoom`` itself, or a larger magnification for a small object.
    """
    h, w = np.shape(image)[:2]
    to_input = zoom * img_size / max(h, w)  # slice px -> model input px
    limit = SMALL_OBJECT_RADIUS / to_input  # the largest small radius, slice px
    if box is not None and np.size(box):
        box = np.asarray(box, dtype=np.float64).reshape(4)
        radius = max(box[2] - box[0], box[3] - box[1]) / 2
    elif points is not None and np.size(points):
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        lab = np.ones(len(pts)) if labels is None else np.asarray(labels).reshape(-1)
        if not np.any(lab == 1):
            return zoom
        pos = pts[lab == 1]
        centre = pos.mean(axis=0)
        radius = blob_radius(image, centre, 8 * limit)
        if radius is None or np.abs(pos - centre).max() > radius:
            return zoom  # no bright blob, or positive points wider apart than it
    else:
        return zoom
    if radius >= limit:
        return zoom
    magnified = zoom * OBJECT_RADIUS / max(radius * to_input, 0.5)
    magnified = 2.0 ** (np.round(2 * np.log2(magnified)) / 2)  # a power of sqrt(2)
    return float(min(max(magnified, zoom), MAX_OBJECT_ZOOM))
