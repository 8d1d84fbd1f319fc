"""Synthetic fluorescence microscopy of nuclei with exact instance labels.

The generator draws a scene of nucleus-like objects (ellipses or ellipsoids deformed by smooth
radial harmonics), partitions the pixels between them, renders each object's fluorescence
(thickness dome, chromatin texture, nucleoli or chromocenters) and passes the result through
the optics (PSF blur, out-of-focus haze, uneven illumination) and a camera (Poisson photon noise,
Gaussian read noise, optional column fixed-pattern noise, black level, saturation).

Everything is driven by one seeded :class:`numpy.random.Generator`, so the same seed and settings
give identical arrays. Images are in napari's axis order: ``(Y, X)`` for 2D, ``(Z, Y, X)`` for a
stack and ``(T, Y, X)`` for a time-lapse. Label images are ``int32`` with 0 for background and
one id per object; objects never overlap in the labels (where two objects touch, the boundary is
where their normalised distances from their centres are equal).

Intensities are computed in *normalised units*, where 1.0 is a typical bright nucleus, and mapped
to the output dtype at the end: ``settings.saturation`` (normalised) maps to the white level and
0 to the black level (``uint8``: 0..255, ``uint16``: 100..4095 like a 12-bit camera with an
offset, ``float32``: 0..1). Values beyond the white level clip, which is how a fraction of the
objects ends up saturated.

Training vs held-out settings (:func:`random_settings`)
-------------------------------------------------------
``held_out=False`` (training) draws Gaussian PSFs, smooth chromatin texture with dark
nucleoli (human-cell DAPI) or, in half of the draws, bright round chromocenters (mouse-cell
DAPI; added in v0.3 after the v0.2 model failed on them), nucleus radii of 3.5..40 px,
coverage 5..55 %, 12..3000 photons per unit, PSF sigma 0.5..2.8 px, illumination gradients and
vignetting and no fixed-pattern noise. (The ranges were widened in v0.5 to cover the held-out
ranges, which the v0.4 model met only outside its training ranges: radius 5, 30 photons, sigma
2.0 at the least; the generator *choices* below stay held-out only. ``ranges="v0.4"`` draws
the older ranges the shipped default model was trained on.)
``held_out=True`` changes the generator choices, not only the ranges: a defocus PSF (a disk
convolved with a Gaussian, as in widefield images slightly out of focus), the speckled texture
generator (many small bright speckles and chromocenters on a smoother base), either very small dense nuclei (4..10 px) or large ones
(20..80 px), more irregular shapes, low light (15..60 photons per unit), column fixed-pattern
noise (sCMOS) and strong vignetting. A model trained on the first should be evaluated on the
second to measure generalisation rather than memorisation of the generator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy import ndimage
from scipy.signal import fftconvolve
from scipy.spatial import cKDTree

__all__ = [
    "SyntheticSettings",
    "make_nuclei_2d",
    "make_nuclei_3d",
    "make_timelapse",
    "random_settings",
    "TRAINING_RANGES",
]

SeedLike = int | np.random.SeedSequence | np.random.Generator | None

#: Default ``(black, white)`` output levels per dtype.
_DTYPE_LEVELS: dict[str, tuple[float, float]] = {
    "uint8": (0.0, 255.0),
    "uint16": (100.0, 4095.0),
    "float32": (0.0, 1.0),
}
_EPS = 1e-6


@dataclass(frozen=True)
class SyntheticSettings:
    """What a synthetic image looks like. All lengths are in (lateral) pixels.

    Use :func:`dataclasses.replace` to derive variants, and :func:`random_settings` to draw
    settings from a wide distribution.

    Attributes
    ----------
    n_objects : (int, int) or None
        If set, the number of objects is drawn uniformly from this inclusive range (at most this
        many fit; dense scenes may hold fewer). Overrides ``coverage``.
    coverage : (float, float)
        Range of the fraction of the image area (volume in 3D) covered by objects; the object
        count follows from it and the image's median radius.
    radius_range : (float, float)
        Smallest and largest equivalent radius ``sqrt(area / pi)`` of an object. Each image draws
        a median radius log-uniformly from this range; objects scatter around it.
    radius_spread : float
        Log-standard deviation of the radii around the image's median (0 = all the same size).
    elongation : (float, float)
        Range of the major/minor axis ratio (1 = round).
    irregularity : float
        Amplitude of the random radial harmonics (0 = convex ellipses, 0.1 = lobed blobs,
        0.2 = very irregular).
    n_harmonics : int
        Highest harmonic order of the outline (2D) or number of harmonic terms (3D).
    allow_touching : bool
        Whether objects may touch (their nominal outlines may then overlap by up to
        ``max_overlap``, and the pixels are shared out between them). Otherwise objects keep at
        least ``min_gap`` pixels apart.
    max_overlap : float
        Allowed overlap of touching objects as a fraction of the sum of their radii.
    min_gap : float
        Smallest gap in pixels between non-touching objects.
    clustering : float
        Fraction of objects placed in clusters (colonies) rather than uniformly.
    mitotic_fraction : float
        Fraction of objects drawn as mitotic figures: small, elongated, condensed and bright.
    brightness_spread : float
        Log-standard deviation of the object brightness (dim nuclei next to bright ones).
    min_brightness : float
        Floor of the object brightness in normalised units, so that every labelled object is
        visible above the background.
    saturated_fraction : float
        Fraction of objects bright enough to clip at the white level.
    dome : float
        Weight of the thickness profile ``sqrt(1 - d**2)``: 0 = flat objects, 1 = bright centre
        and dim rim (projected spheres).
    texture_kind : {"smooth", "speckled"}
        Chromatin texture: smooth multi-scale noise, or bright speckles on a smoother base.
    texture_strength : float
        Relative amplitude of the chromatin texture.
    texture_scale : float
        Correlation length of the texture in pixels.
    spot_count : (int, int)
        Inclusive range of the number of spots (nucleoli or chromocenters) per object.
    spot_size : (float, float)
        Range of the spot standard deviation as a fraction of the object radius.
    spot_contrast : float
        Relative intensity change at a spot's centre: negative for dark nucleoli (DAPI in human
        cells), positive for bright chromocenters (mouse cells).
    psf_kind : {"gaussian", "defocus"}
        Optical blur: a Gaussian of ``psf_sigma``, or a disk of radius ``1.5 * psf_sigma``
        convolved with a Gaussian of ``psf_sigma / 2`` (slightly out of focus).
    psf_sigma : float
        Lateral PSF size in pixels (0 = no blur).
    z_blur_factor : float
        Ratio of the axial to the lateral PSF size in physical units (3D only); the z blur in
        slices is ``psf_sigma * z_blur_factor / z_anisotropy``.
    haze : float
        Out-of-focus light: this fraction of the signal, blurred over a few object radii, is
        added to the image (2D and time-lapse).
    background : float
        Background level in normalised units.
    illumination_gradient : float
        Relative amplitude of a linear illumination ramp across the image.
    vignette : float
        Relative illumination loss at the image corners.
    depth_attenuation : float
        Fraction of the signal lost from the first to the last slice of a stack (3D only).
    photons : float
        Expected photon count of a pixel at intensity 1.0; lower is noisier (Poisson noise).
    read_noise : float
        Standard deviation of the Gaussian camera read noise in normalised units.
    fixed_pattern_noise : float
        Standard deviation of a per-column offset in normalised units (sCMOS column noise).
    dtype : {"uint8", "uint16", "float32"}
        Output image dtype.
    saturation : float
        Normalised intensity mapped to the white level; brighter values clip.
    black_level, white_level : float or None
        Output values of intensity 0 and ``saturation``; None uses the dtype's defaults
        (uint8: 0, 255; uint16: 100, 4095; float32: 0, 1).
    axial_ratio : (float, float)
        Range of the z semi-axis as a fraction of the lateral radius (3D only; < 1 for the
        flattened nuclei of adherent cells).
    min_visible_area : int
        Objects with fewer visible pixels (voxels) than this, e.g. slivers at the image border,
        are dropped from both the labels and the image.
    """

    n_objects: tuple[int, int] | None = None
    coverage: tuple[float, float] = (0.12, 0.35)
    radius_range: tuple[float, float] = (6.0, 20.0)
    radius_spread: float = 0.2
    elongation: tuple[float, float] = (1.0, 1.6)
    irregularity: float = 0.06
    n_harmonics: int = 5
    allow_touching: bool = True
    max_overlap: float = 0.15
    min_gap: float = 2.0
    clustering: float = 0.3
    mitotic_fraction: float = 0.03
    brightness_spread: float = 0.4
    min_brightness: float = 0.15
    saturated_fraction: float = 0.03
    dome: float = 0.4
    texture_kind: Literal["smooth", "speckled"] = "smooth"
    texture_strength: float = 0.2
    texture_scale: float = 1.5
    spot_count: tuple[int, int] = (0, 3)
    spot_size: tuple[float, float] = (0.12, 0.25)
    spot_contrast: float = -0.35
    psf_kind: Literal["gaussian", "defocus"] = "gaussian"
    psf_sigma: float = 1.2
    z_blur_factor: float = 3.0
    haze: float = 0.1
    background: float = 0.05
    illumination_gradient: float = 0.15
    vignette: float = 0.15
    depth_attenuation: float = 0.15
    photons: float = 300.0
    read_noise: float = 0.01
    fixed_pattern_noise: float = 0.0
    dtype: str = "uint16"
    saturation: float = 1.25
    black_level: float | None = None
    white_level: float | None = None
    axial_ratio: tuple[float, float] = (0.6, 1.0)
    min_visible_area: int = 12

    def __post_init__(self) -> None:
        dtype = np.dtype(self.dtype).name
        if dtype not in _DTYPE_LEVELS:
            raise ValueError(f"dtype must be one of {sorted(_DTYPE_LEVELS)}, got {self.dtype!r}")
        object.__setattr__(self, "dtype", dtype)
        for name in ("coverage", "radius_range", "elongation", "spot_count", "spot_size",
                     "axial_ratio") + (("n_objects",) if self.n_objects is not None else ()):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise ValueError(f"{name} must be a (low, high) range with 0 <= low <= high, "
                                 f"got {getattr(self, name)!r}")
        if self.radius_range[0] < 1:
            raise ValueError(f"radius_range must start at >= 1 px, got {self.radius_range!r}")
        if self.elongation[0] < 1:
            raise ValueError(f"elongation must be >= 1, got {self.elongation!r}")
        if self.axial_ratio[0] <= 0:
            raise ValueError(f"axial_ratio must be > 0, got {self.axial_ratio!r}")
        for name in ("clustering", "mitotic_fraction", "saturated_fraction", "dome",
                     "max_overlap", "depth_attenuation"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")
        for name in ("radius_spread", "irregularity", "brightness_spread", "texture_strength",
                     "psf_sigma", "haze", "background", "illumination_gradient", "vignette",
                     "read_noise", "fixed_pattern_noise", "min_gap", "min_brightness"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("photons", "saturation", "texture_scale", "z_blur_factor"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.texture_kind not in ("smooth", "speckled"):
            raise ValueError(f"texture_kind must be 'smooth' or 'speckled', "
                             f"got {self.texture_kind!r}")
        if self.psf_kind not in ("gaussian", "defocus"):
            raise ValueError(f"psf_kind must be 'gaussian' or 'defocus', got {self.psf_kind!r}")
        if self.n_harmonics < 0:
            raise ValueError(f"n_harmonics must be >= 0, got {self.n_harmonics!r}")

    @property
    def levels(self) -> tuple[float, float]:
        """``(black, white)`` output levels, with the dtype's defaults filled in."""
        black, white = _DTYPE_LEVELS[self.dtype]
        black = black if self.black_level is None else float(self.black_level)
        white = white if self.white_level is None else float(self.white_level)
        return black, white


# --------------------------------------------------------------------------------------------
# Scene: objects in physical coordinates (lateral pixels; z is scaled by the voxel anisotropy)


@dataclass
class _Blob:
    center: np.ndarray  # (ndim,) physical
    inv_axes: np.ndarray  # (ndim, ndim): physical offset -> normalised coordinates
    harm_dirs: np.ndarray  # (J, ndim) unit vectors
    harm_orders: np.ndarray  # (J,) int >= 2
    harm_amps: np.ndarray  # (J,)
    brightness: float
    dome: float
    texture_gain: float
    spots: np.ndarray  # (S, ndim) spot centres in normalised coordinates
    spot_sigmas: np.ndarray  # (S,)
    tex_origin: np.ndarray  # (ndim,) int, the object's anchor in the texture field
    extra: dict = field(default_factory=dict)
    extent: np.ndarray = field(init=False)  # physical half-size of the bounding box per axis
    harm_psi: np.ndarray = field(init=False)  # 2D: angle of each harmonic's direction

    def __post_init__(self) -> None:
        self.refresh()

    def refresh(self) -> None:
        """Recompute the cached geometry after ``inv_axes`` or the harmonics changed."""
        axes = np.linalg.inv(self.inv_axes)  # normalised -> physical
        self.extent = np.linalg.norm(axes, axis=1) * (1.0 + np.abs(self.harm_amps).sum())
        # in 2D, T_k(u . n) = cos(k (theta - psi)): one arctan2 instead of k recurrences
        self.harm_psi = np.arctan2(self.harm_dirs[:, 0], self.harm_dirs[:, -1])


def _rotation_2d(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])


def _inv_axes(radius: float, elong: float, angle: float, axial: float | None) -> np.ndarray:
    """Map from a physical offset ``(y, x)`` (or ``(z, y, x)``) to normalised coordinates."""
    a, b = radius * np.sqrt(elong), radius / np.sqrt(elong)
    inv2 = np.diag([1.0 / a, 1.0 / b]) @ _rotation_2d(-angle)
    if axial is None:
        return inv2
    inv3 = np.zeros((3, 3))
    inv3[0, 0] = 1.0 / (axial * radius)
    inv3[1:, 1:] = inv2
    return inv3


def _draw_harmonics(
    rng: np.random.Generator, n: int, ndim: int, settings: SyntheticSettings,
    irregularity: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random smooth outline perturbations ``h(u) = sum_j a_j T_kj(u . n_j)`` of ``n`` objects.

    ``T_k`` is the Chebyshev polynomial, so in 2D each term is exactly the radial harmonic
    ``cos(k (theta - psi_j))``, and in 3D a smooth zonal harmonic around a random axis. Returns
    directions (n, J, ndim), orders (n, J) and amplitudes (n, J).
    """
    if settings.n_harmonics < 2:
        return np.zeros((n, 0, ndim)), np.zeros((n, 0), int), np.zeros((n, 0))
    if ndim == 2:
        orders = np.broadcast_to(np.arange(2, settings.n_harmonics + 1),
                                 (n, settings.n_harmonics - 1))
        psi = rng.uniform(0, 2 * np.pi, orders.shape)
        dirs = np.stack([np.sin(psi), np.cos(psi)], axis=-1)
    else:
        orders = rng.integers(2, 5, (n, settings.n_harmonics))
        dirs = rng.standard_normal((n, settings.n_harmonics, 3))
        dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True) + _EPS
    # higher orders are weaker, so outlines are lobed at most, never star-shaped
    amps = irregularity[:, None] * rng.standard_normal(orders.shape) * (2.0 / orders) ** 2
    total = np.abs(amps).sum(axis=1, keepdims=True)
    amps *= np.minimum(1.0, 0.6 / np.maximum(total, _EPS))  # keep the radius positive
    return dirs, np.array(orders), amps


def _draw_brightness(rng: np.random.Generator, n: int, settings: SyntheticSettings) -> np.ndarray:
    median = rng.uniform(0.45, 0.75)
    bright = median * np.exp(settings.brightness_spread * rng.standard_normal(n))
    # the dimmest object still stands out from the background it sits on
    floor = max(settings.min_brightness, 1.5 * settings.background)
    bright = np.clip(bright, floor, max(floor, 0.95 * settings.saturation))
    saturated = rng.random(n) < settings.saturated_fraction
    bright[saturated] = settings.saturation * rng.uniform(1.1, 1.8, saturated.sum())
    return bright


def _place_centres(
    rng: np.random.Generator,
    n_target: int,
    domain: np.ndarray,
    radii: np.ndarray,
    extents: np.ndarray,
    metric: np.ndarray,
    settings: SyntheticSettings,
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy random placement; returns the indices of the accepted candidates and positions.

    ``domain`` is ``(ndim, 2)`` physical bounds of the centres, ``radii``/``extents`` the
    candidates' equivalent radii and outer extents, ``metric`` a per-axis scale applied to
    distances (to compare flattened 3D objects by their lateral radius).
    """
    n_cand = radii.size
    ndim = domain.shape[0]
    lo, hi = domain[:, 0], domain[:, 1]
    pos = lo + rng.random((n_cand, ndim)) * (hi - lo)
    n_clustered = int(round(settings.clustering * n_cand))
    if n_clustered:
        n_clusters = max(1, int(round(n_target / rng.uniform(6, 20))))
        centres = lo + rng.random((n_clusters, ndim)) * (hi - lo)
        spread = np.median(radii) * np.sqrt(max(n_target / n_clusters, 1.0)) * 1.2 / metric
        which = rng.integers(0, n_clusters, n_clustered)
        clustered = centres[which] + rng.standard_normal((n_clustered, ndim)) * spread
        pos[:n_clustered] = np.clip(clustered, lo, hi)
        order = rng.permutation(n_cand)
        pos, radii, extents = pos[order], radii[order], extents[order]
    else:
        order = np.arange(n_cand)
    scaled = pos * metric
    if settings.allow_touching:
        size = radii * (1.0 - settings.max_overlap)
        reach = 2 * size.max()
    else:
        size = extents
        reach = 2 * size.max() + settings.min_gap
    gap = 0.0 if settings.allow_touching else settings.min_gap
    tree = cKDTree(scaled)
    neighbours = tree.query_ball_point(scaled, r=reach)
    accepted = np.zeros(n_cand, bool)
    n_acc = 0
    for i in range(n_cand):
        nb = np.asarray(neighbours[i], dtype=np.intp)
        nb = nb[accepted[nb]]
        if nb.size:
            dist = np.linalg.norm(scaled[nb] - scaled[i], axis=1)
            if np.any(dist < size[nb] + size[i] + gap):
                continue
        accepted[i] = True
        n_acc += 1
        if n_acc >= n_target:
            break
    keep = np.flatnonzero(accepted)
    return order[keep], pos[keep]


def _make_scene(
    rng: np.random.Generator,
    shape: tuple[int, ...],
    spacing: np.ndarray,
    settings: SyntheticSettings,
    margin: float = 0.0,
) -> tuple[list[_Blob], float]:
    """Draw the objects of one image; returns the blobs and the median lateral radius.

    ``margin`` widens the domain of the centres (time-lapses place objects that drift in).
    """
    ndim = len(shape)
    is3d = ndim == 3
    extent_phys = np.asarray(shape, float) * spacing
    r_lo, r_hi = settings.radius_range
    r_med = float(np.exp(rng.uniform(np.log(r_lo), np.log(r_hi))))
    axial_mean = float(np.mean(settings.axial_ratio)) if is3d else 1.0
    if settings.n_objects is not None:
        n_target = int(rng.integers(settings.n_objects[0], settings.n_objects[1] + 1))
    else:
        cov = rng.uniform(*settings.coverage)
        if is3d:
            obj_size = 4.0 / 3.0 * np.pi * axial_mean * r_med**3
        else:
            obj_size = np.pi * r_med**2
        expected = cov * np.prod(extent_phys + 2 * margin) / obj_size
        n_target = int(expected + rng.random())  # unbiased rounding: small images get objects
    if n_target <= 0:
        return [], r_med

    # Draw every candidate's shape first, so that placement knows its true outer extent.
    n = 4 * n_target + 20
    radius = np.clip(r_med * np.exp(settings.radius_spread * rng.standard_normal(n)), r_lo, r_hi)
    elong = rng.uniform(*settings.elongation, n)
    axial = rng.uniform(*settings.axial_ratio, n) if is3d else np.ones(n)
    brightness = _draw_brightness(rng, n, settings)
    dome = np.full(n, settings.dome)
    tex_gain = np.full(n, settings.texture_strength)
    irregularity = np.full(n, settings.irregularity)
    # mitotic figures: condensed, elongated, bright, no nucleoli
    mitotic = rng.random(n) < settings.mitotic_fraction
    n_mit = int(mitotic.sum())
    radius[mitotic] = np.maximum(r_lo, radius[mitotic] * rng.uniform(0.45, 0.7, n_mit))
    elong[mitotic] = rng.uniform(1.8, 3.2, n_mit)
    dome[mitotic] = 0.2
    tex_gain[mitotic] = np.maximum(0.4, 2 * tex_gain[mitotic])
    irregularity[mitotic] = np.maximum(irregularity[mitotic], 0.1)
    brightness[mitotic] = np.maximum(brightness[mitotic] * rng.uniform(1.8, 2.8, n_mit), 1.0)
    angle = rng.uniform(0, np.pi, n)
    dirs, orders, amps = _draw_harmonics(rng, n, ndim, settings, irregularity)
    s_lo, s_hi = settings.spot_count
    n_spots = np.where(mitotic, 0, rng.integers(s_lo, s_hi + 1, n))
    # spots sit inside the nucleus, away from the rim (normalised radius < 0.55)
    spot_dir = rng.standard_normal((n, s_hi, ndim))
    spot_dir /= np.linalg.norm(spot_dir, axis=-1, keepdims=True) + _EPS
    spots = spot_dir * 0.55 * rng.random((n, s_hi, 1)) ** (1.0 / ndim)
    if is3d:
        spots[..., 0] *= 0.6
    spot_sigmas = rng.uniform(*settings.spot_size, (n, s_hi))

    # Placement compares 3D objects in coordinates where z is rescaled by the mean axial ratio.
    metric = np.ones(ndim)
    typical = np.full(ndim, r_med)
    if is3d:
        metric[0] = 1.0 / axial_mean
        typical[0] *= axial_mean
    outer = np.maximum(np.sqrt(elong), axial / axial_mean) * radius
    outer *= 1.0 + np.abs(amps).sum(axis=1)
    # centres may lie a little outside, so objects are cut by the image border
    pad = 0.4 * typical + margin
    domain = np.stack([-0.5 * spacing - pad, extent_phys - 0.5 * spacing + pad], axis=1)
    idx, centres = _place_centres(rng, n_target, domain, radius, outer, metric, settings)

    blobs = [
        _Blob(
            center=centre.copy(),
            inv_axes=_inv_axes(radius[j], elong[j], angle[j], axial[j] if is3d else None),
            harm_dirs=dirs[j],
            harm_orders=orders[j],
            harm_amps=amps[j],
            brightness=float(brightness[j]),
            dome=float(dome[j]),
            texture_gain=float(tex_gain[j]),
            spots=spots[j, : n_spots[j]],
            spot_sigmas=spot_sigmas[j, : n_spots[j]],
            tex_origin=np.zeros(ndim, int),
            extra={"radius": radius[j], "elong": elong[j], "angle": angle[j],
                   "base_amps": amps[j].copy()},
        )
        for j, centre in zip(idx, centres)
    ]
    return blobs, r_med


# --------------------------------------------------------------------------------------------
# Rendering


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
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Partition the pixels between the blobs and render their noise-free fluorescence.

    Returns ``labels`` (int32, ``shape``), ``signal`` (float32, ``shape``, normalised units
    before blur) and the indices of the blobs that are visible. Visible blobs get consecutive
    ids in blob order, or ``ids[i]`` if ``ids`` is given.
    """
    n = len(blobs)
    labels = np.zeros(shape, np.int32)
    zbuf = np.zeros(shape, np.float32)
    crops: dict[int, tuple] = {}
    conflicted: set[int] = set()
    min_area = settings.min_visible_area
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
        sl = crops[i][0]
        lab = labels[sl]
        mask = lab == i + 1
        comp, n_comp = ndimage.label(mask)
        if n_comp > 1:
            sizes = np.bincount(comp.ravel())
            sizes[0] = 0
            lab[mask & (comp != sizes.argmax())] = 0

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
        value = (1.0 - b.dome) + b.dome * np.sqrt(1.0 - dn_in * dn_in)
        if b.texture_gain > 0:
            # the window moves with the object; wrapping only matters if a time-lapse object
            # outgrows the field, and then costs a seam, not an error
            anchor = np.round(b.center / spacing).astype(int)
            start = b.tex_origin + lo - anchor
            idx = np.ix_(*(np.arange(s, s + n_) % f for s, n_, f in
                           zip(start, dn.shape, texture.shape)))
            value = value * np.maximum(1.0 + b.texture_gain * texture[idx], 0.05)
        if b.spots.shape[0]:
            ndim = q.shape[0]
            p = b.spots.T.astype(np.float32).reshape(ndim, -1, *([1] * ndim))
            d2 = ((q[:, None] - p) ** 2).sum(axis=0)  # (S, *box)
            coef = (-0.5 / b.spot_sigmas**2).astype(np.float32).reshape(-1, *([1] * ndim))
            spot = np.exp(d2 * coef).sum(axis=0)
            value = value * np.maximum(1.0 + np.float32(settings.spot_contrast) * spot, 0.05)
        signal[sl][mask] = b.brightness * value[mask]
    return labels, signal, visible


def _disk_kernel(radius: float) -> np.ndarray:
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


def _check_shape(shape: tuple[int, ...], ndim: int, name: str) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != ndim or any(s < 1 for s in shape):
        raise ValueError(f"{name} must be {ndim} positive sizes, got {shape!r}")
    return shape


# --------------------------------------------------------------------------------------------
# Public generators


def make_nuclei_2d(
    shape: tuple[int, int] = (256, 256),
    *,
    seed: SeedLike = 0,
    settings: SyntheticSettings | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A 2D fluorescence image of nuclei and its instance labels.

    Parameters
    ----------
    shape : (int, int)
        ``(H, W)`` of the image.
    seed : int, SeedSequence or Generator
        Seed of the random generator; the same seed and settings give identical arrays.
    settings : SyntheticSettings, optional
        What the image looks like; defaults to ``SyntheticSettings()`` (cultured-cell nuclei,
        radii 6..20 px, uint16).

    Returns
    -------
    image : ndarray, shape (H, W), dtype ``settings.dtype``
        The noisy, blurred image.
    labels : ndarray, shape (H, W), int32
        0 for background and consecutive ids ``1..N`` for the objects, one id per pixel (touching
        objects partition their pixels). Objects outside the image or with fewer than
        ``settings.min_visible_area`` visible pixels are in neither array.

    Examples
    --------
    >>> image, labels = make_nuclei_2d((128, 128), seed=1)
    >>> image.shape, image.dtype, labels.dtype
    ((128, 128), dtype('uint16'), dtype('int32'))
    >>> bool(labels.max() > 0)
    True
    """
    settings = SyntheticSettings() if settings is None else settings
    shape = _check_shape(shape, 2, "shape")
    rng = np.random.default_rng(seed)
    spacing = np.ones(2)
    blobs, r_med = _make_scene(rng, shape, spacing, settings)
    tex_shape = _assign_texture_origins(rng, blobs, spacing)
    texture = _texture_field(rng, tex_shape, spacing, settings)
    labels, signal, _ = _render_objects(blobs, shape, spacing, settings, texture)
    illum = _illumination(rng, shape, settings)
    clean = _optics(signal, settings, r_med, None) + np.float32(settings.background)
    image = _camera(clean * illum, settings, rng)
    return image, labels


def _optics(signal: np.ndarray, settings: SyntheticSettings, r_med: float,
            z_sigma: float | None) -> np.ndarray:
    out = _blur(signal, settings, z_sigma)
    if settings.haze > 0 and z_sigma is None:
        out = out + np.float32(settings.haze) * _wide_blur(signal, 2.5 * r_med)
    return out


def make_nuclei_3d(
    shape: tuple[int, int, int] = (16, 128, 128),
    *,
    seed: SeedLike = 0,
    settings: SyntheticSettings | None = None,
    z_anisotropy: float = 2.0,
) -> tuple[np.ndarray, np.ndarray]:
    """A 3D fluorescence stack of nuclei and its instance labels.

    Objects are ellipsoids (flattened by ``settings.axial_ratio``) deformed by smooth harmonics,
    placed in 3D so that they may overlap in a z projection. The axial PSF is
    ``settings.z_blur_factor`` times longer than the lateral one, and the signal fades with
    depth by ``settings.depth_attenuation``.

    Parameters
    ----------
    shape : (int, int, int)
        ``(Z, Y, X)`` of the stack.
    seed : int, SeedSequence or Generator
        Seed of the random generator.
    settings : SyntheticSettings, optional
        What the stack looks like; radii are lateral, in pixels.
    z_anisotropy : float
        Z step divided by the lateral pixel size (e.g. 2.0 for 0.5 um steps at 0.25 um pixels).

    Returns
    -------
    image : ndarray, shape (Z, Y, X), dtype ``settings.dtype``
    labels : ndarray, shape (Z, Y, X), int32
        0 for background, consecutive ids ``1..N``; one id per voxel.
    """
    settings = SyntheticSettings() if settings is None else settings
    shape = _check_shape(shape, 3, "shape")
    if not z_anisotropy > 0:
        raise ValueError(f"z_anisotropy must be > 0, got {z_anisotropy!r}")
    rng = np.random.default_rng(seed)
    spacing = np.array([float(z_anisotropy), 1.0, 1.0])
    blobs, r_med = _make_scene(rng, shape, spacing, settings)
    tex_shape = _assign_texture_origins(rng, blobs, spacing)
    texture = _texture_field(rng, tex_shape, spacing, settings)
    labels, signal, _ = _render_objects(blobs, shape, spacing, settings, texture)
    if settings.depth_attenuation > 0 and shape[0] > 1:
        fade = 1.0 - settings.depth_attenuation * np.linspace(0, 1, shape[0], dtype=np.float32)
        signal *= fade[:, None, None]
    z_sigma = settings.psf_sigma * settings.z_blur_factor / z_anisotropy
    illum = _illumination(rng, shape[1:], settings)
    clean = _optics(signal, settings, r_med, z_sigma) + np.float32(settings.background)
    image = _camera(clean * illum[None], settings, rng)
    return image, labels


def make_timelapse(
    n_frames: int = 8,
    shape: tuple[int, int] = (128, 128),
    *,
    seed: SeedLike = 0,
    settings: SyntheticSettings | None = None,
    speed: float = 1.0,
    deformation: float = 0.1,
    bleaching: float = 0.01,
) -> tuple[np.ndarray, np.ndarray]:
    """A 2D time-lapse of drifting, slowly deforming nuclei with tracked labels.

    Each object moves by a persistent random walk, and objects that come closer than the
    settings allow (``max_overlap`` or ``min_gap``) are pushed apart. Outline harmonics and
    orientation drift slowly, the texture moves with its object, and all signal bleaches a
    little per frame. Objects may enter or leave through the image border. The illumination is
    the same in every frame; the noise is drawn anew.

    Parameters
    ----------
    n_frames : int
        Number of frames ``T``.
    shape : (int, int)
        ``(H, W)`` of a frame.
    seed : int, SeedSequence or Generator
        Seed of the random generator.
    settings : SyntheticSettings, optional
        What a frame looks like.
    speed : float
        Root-mean-square displacement of an object per frame, in pixels.
    deformation : float
        Per-frame rate (0..1) at which the outline harmonics renew (0 = rigid shapes).
    bleaching : float
        Fraction of the signal lost per frame.

    Returns
    -------
    movie : ndarray, shape (T, H, W), dtype ``settings.dtype``
    labels : ndarray, shape (T, H, W), int32
        An object keeps its id in every frame where it is visible; ids are consecutive
        ``1..N`` over the whole movie (so a single frame may miss some).
    """
    settings = SyntheticSettings() if settings is None else settings
    shape = _check_shape(shape, 2, "shape")
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames!r}")
    if speed < 0 or not 0 <= deformation <= 1 or not 0 <= bleaching < 1:
        raise ValueError("speed must be >= 0, deformation in [0, 1] and bleaching in [0, 1)")
    rng = np.random.default_rng(seed)
    spacing = np.ones(2)
    margin = min(speed * n_frames, 3 * settings.radius_range[1])
    blobs, r_med = _make_scene(rng, shape, spacing, settings, margin=margin)
    tex_shape = _assign_texture_origins(rng, blobs, spacing, slack=1.4)
    texture = _texture_field(rng, tex_shape, spacing, settings)
    illum = _illumination(rng, shape, settings)
    n = len(blobs)
    if settings.allow_touching:
        size = np.array([b.extra["radius"] for b in blobs]) * (1.0 - settings.max_overlap)
        min_dist = size[:, None] + size[None, :]
    else:  # the largest extent an outline can reach while it deforms (harmonics sum <= 0.6)
        size = np.array([b.extra["radius"] * np.sqrt(b.extra["elong"]) * 1.6 for b in blobs])
        min_dist = size[:, None] + size[None, :] + settings.min_gap
    persistence = 0.8
    velocity = rng.standard_normal((n, 2)) * speed / np.sqrt(2)
    rho = 1.0 - deformation
    ids = np.arange(1, n + 1, dtype=np.int32)

    movie = np.empty((n_frames, *shape), np.dtype(settings.dtype))
    labels = np.empty((n_frames, *shape), np.int32)
    for t in range(n_frames):
        if t > 0 and n:
            velocity = (persistence * velocity
                        + np.sqrt(1 - persistence**2) * speed / np.sqrt(2)
                        * rng.standard_normal((n, 2)))
            centres = np.array([b.center for b in blobs]) + velocity
            centres = _repel(centres, min_dist)
            for b, c in zip(blobs, centres):
                b.center = c
                amps0 = b.extra["base_amps"]
                amps = rho * b.harm_amps + np.sqrt(1 - rho**2) * amps0 * (
                    rng.standard_normal(amps0.size))
                total = np.abs(amps).sum()
                b.harm_amps = amps * (0.6 / total) if total > 0.6 else amps
                b.extra["angle"] += 0.03 * rng.standard_normal()
                b.inv_axes = _inv_axes(b.extra["radius"], b.extra["elong"], b.extra["angle"],
                                       None)
                b.refresh()
        lab, signal, _ = _render_objects(blobs, shape, spacing, settings, texture, ids=ids)
        signal *= np.float32((1.0 - bleaching) ** t)
        clean = _optics(signal, settings, r_med, None) + np.float32(settings.background)
        movie[t] = _camera(clean * illum, settings, rng)
        labels[t] = lab

    present = np.zeros(n + 1, bool)
    present[np.unique(labels)] = True
    present[0] = False
    lut = np.zeros(n + 1, np.int32)
    lut[present] = np.arange(1, present.sum() + 1)
    return movie, lut[labels]


def _repel(centres: np.ndarray, min_dist: np.ndarray, n_iter: int = 3) -> np.ndarray:
    """Push apart pairs of centres closer than ``min_dist[i, j]`` (half the deficit each)."""
    if len(centres) < 2:
        return centres
    reach = float(min_dist.max())
    for _ in range(n_iter):
        pairs = cKDTree(centres).query_pairs(reach, output_type="ndarray")
        if pairs.size == 0:
            break
        i, j = pairs[:, 0], pairs[:, 1]
        diff = centres[j] - centres[i]
        dist = np.linalg.norm(diff, axis=1) + _EPS
        deficit = min_dist[i, j] - dist
        close = deficit > 0
        if not close.any():
            break
        push = (0.5 * deficit[close] / dist[close])[:, None] * diff[close]
        np.add.at(centres, j[close], push)
        np.add.at(centres, i[close], -push)
    return centres


#: Training ranges by version: ``(low, high)`` of each widened draw. "v0.4" trained the
#: shipped default model (phases 4-6); "v0.5" covers the held-out ranges (see the module
#: docstring). The draws and their order are the same, only the bounds differ.
TRAINING_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "v0.4": dict(radius=(5.0, 20.0), coverage=(0.05, 0.3), elongation=(1.1, 2.0),
                 irregularity=(0.0, 0.1), clustering=(0.0, 0.7), brightness_spread=(0.1, 0.6),
                 psf_sigma=(0.5, 2.0), z_blur_factor=(2.0, 4.0), haze=(0.0, 0.3),
                 background=(0.01, 0.15), illumination_gradient=(0.0, 0.4),
                 vignette=(0.0, 0.3), photons=(30.0, 3000.0), read_noise=(0.002, 0.03)),
    "v0.5": dict(radius=(3.5, 20.0), coverage=(0.05, 0.4), elongation=(1.1, 2.2),
                 irregularity=(0.0, 0.14), clustering=(0.0, 0.9), brightness_spread=(0.1, 0.8),
                 psf_sigma=(0.5, 2.8), z_blur_factor=(2.0, 5.0), haze=(0.0, 0.45),
                 background=(0.01, 0.25), illumination_gradient=(0.0, 0.5),
                 vignette=(0.0, 0.45), photons=(12.0, 3000.0), read_noise=(0.002, 0.04)),
}


def random_settings(rng: np.random.Generator | SeedLike, *, held_out: bool = False,
                    ranges: str = "v0.5") -> SyntheticSettings:
    """Draw :class:`SyntheticSettings` from a wide distribution.

    Parameters
    ----------
    rng : Generator or seed
        Random generator (or a seed for one).
    held_out : bool
        Draw from the held-out distribution instead of the training one. The two differ in
        generator choices as well as ranges (see the module docstring): training uses Gaussian
        PSFs, smooth texture with dark nucleoli or bright chromocenters, radii 3.5..40 px,
        12..3000 photons per unit and no column noise; held-out uses a defocus PSF, speckled
        texture (bright speckles and chromocenters), very small (4..10 px) or large (20..80 px) nuclei, more irregular
        outlines, 15..60 photons per unit, column fixed-pattern noise and strong vignetting.
    ranges : {"v0.5", "v0.4", "mixed"}
        The training ranges (:data:`TRAINING_RANGES`); "v0.4" reproduces the data the shipped
        default model was trained on; "mixed" draws each image's ranges as v0.4 or v0.5 with
        equal probability (one more draw from ``rng``, first). Ignored with ``held_out``.

    Returns
    -------
    SyntheticSettings
    """
    if ranges not in (*TRAINING_RANGES, "mixed"):
        raise ValueError(
            f"ranges must be one of {sorted(TRAINING_RANGES) + ['mixed']}, got {ranges!r}")
    rng = np.random.default_rng(rng)
    if ranges == "mixed":  # no draw for held-out images: their draws stay the same
        ranges = "v0.5" if held_out or rng.random() >= 0.5 else "v0.4"
    lim = TRAINING_RANGES[ranges]

    def loguniform(lo: float, hi: float) -> float:
        return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))

    dtype = str(rng.choice(["uint8", "uint16", "float32"]))
    if not held_out:
        r_lo = loguniform(*lim["radius"])
        r_hi = min(r_lo * rng.uniform(1.3, 2.0), 40.0)
        cov_lo = rng.uniform(*lim["coverage"])
        # dark nucleoli (human-cell DAPI) or bright chromocenters (mouse-cell DAPI)
        bright = bool(rng.random() < 0.5)
        spots = (int(rng.integers(0, 4)), int(rng.integers(4, 10))) if bright else (
            0, int(rng.integers(0, 5)))
        return SyntheticSettings(
            coverage=(cov_lo, cov_lo + rng.uniform(0.02, 0.15)),
            radius_range=(r_lo, r_hi),
            radius_spread=rng.uniform(0.05, 0.3),
            elongation=(1.0, rng.uniform(*lim["elongation"])),
            irregularity=rng.uniform(*lim["irregularity"]),
            allow_touching=bool(rng.random() < 0.75),
            max_overlap=rng.uniform(0.03, 0.25),
            min_gap=rng.uniform(1.0, 4.0),
            clustering=rng.uniform(*lim["clustering"]),
            mitotic_fraction=rng.uniform(0.0, 0.06),
            brightness_spread=rng.uniform(*lim["brightness_spread"]),
            saturated_fraction=rng.uniform(0.0, 0.05),
            dome=rng.uniform(0.1, 0.8),
            texture_kind="smooth",
            texture_strength=rng.uniform(0.05, 0.5),
            texture_scale=rng.uniform(0.8, 2.5),
            spot_count=spots,
            spot_size=(0.06 if bright else 0.1, rng.uniform(0.1, 0.3)),
            spot_contrast=rng.uniform(0.3, 1.2) if bright else rng.uniform(-0.6, -0.1),
            psf_kind="gaussian",
            psf_sigma=rng.uniform(*lim["psf_sigma"]),
            z_blur_factor=rng.uniform(*lim["z_blur_factor"]),
            haze=rng.uniform(*lim["haze"]),
            background=rng.uniform(*lim["background"]),
            illumination_gradient=rng.uniform(*lim["illumination_gradient"]),
            vignette=rng.uniform(*lim["vignette"]),
            depth_attenuation=rng.uniform(0.0, 0.3),
            photons=loguniform(*lim["photons"]),
            read_noise=rng.uniform(*lim["read_noise"]),
            fixed_pattern_noise=0.0,
            dtype=dtype,
            axial_ratio=(rng.uniform(0.4, 0.7), rng.uniform(0.7, 1.0)),
        )
    if rng.random() < 0.5:  # small, dense nuclei (e.g. lymphocytes, low magnification)
        r_lo = rng.uniform(4.0, 6.0)
        r_hi = rng.uniform(7.0, 10.0)
        cov_lo = rng.uniform(0.25, 0.4)
    else:  # large nuclei (high magnification)
        r_lo = rng.uniform(20.0, 35.0)
        r_hi = min(r_lo * rng.uniform(1.3, 2.0), 80.0)
        cov_lo = rng.uniform(0.1, 0.3)
    return SyntheticSettings(
        coverage=(cov_lo, cov_lo + rng.uniform(0.02, 0.15)),
        radius_range=(r_lo, r_hi),
        radius_spread=rng.uniform(0.1, 0.35),
        elongation=(1.0, rng.uniform(1.3, 2.2)),
        irregularity=rng.uniform(0.07, 0.14),
        allow_touching=bool(rng.random() < 0.9),
        max_overlap=rng.uniform(0.1, 0.3),
        min_gap=rng.uniform(1.0, 3.0),
        clustering=rng.uniform(0.3, 0.9),
        mitotic_fraction=rng.uniform(0.02, 0.1),
        brightness_spread=rng.uniform(0.3, 0.8),
        saturated_fraction=rng.uniform(0.02, 0.1),
        dome=rng.uniform(0.0, 0.5),
        texture_kind="speckled",
        texture_strength=rng.uniform(0.2, 0.6),
        texture_scale=rng.uniform(0.7, 1.5),
        spot_count=(int(rng.integers(2, 5)), int(rng.integers(5, 12))),
        spot_size=(0.05, rng.uniform(0.08, 0.14)),
        spot_contrast=rng.uniform(0.4, 1.5),
        psf_kind="defocus",
        psf_sigma=rng.uniform(1.2, 2.5),
        z_blur_factor=rng.uniform(3.0, 5.0),
        haze=rng.uniform(0.2, 0.5),
        background=rng.uniform(0.05, 0.25),
        illumination_gradient=rng.uniform(0.2, 0.5),
        vignette=rng.uniform(0.3, 0.6),
        depth_attenuation=rng.uniform(0.2, 0.5),
        photons=loguniform(15.0, 60.0),
        read_noise=rng.uniform(0.01, 0.04),
        fixed_pattern_noise=rng.uniform(0.005, 0.02),
        dtype=dtype,
        axial_ratio=(rng.uniform(0.3, 0.6), rng.uniform(0.6, 1.0)),
    )
