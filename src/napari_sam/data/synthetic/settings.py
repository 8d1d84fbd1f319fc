"""What a synthetic image looks like: :class:`SyntheticSettings`, and random draws of them.

:func:`random_settings` draws settings from the training distribution (ranges by version in
:data:`TRAINING_RANGES`) or from the held-out one; see :mod:`napari_sam.data.synthetic` for how
the two differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

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
    label_edge : {"half_max", "geometric"}
        Where a label's outline is drawn. "half_max" (the default) follows the annotation
        convention of real data: an object's label is the pixels (voxels) where its noise-free,
        PSF-blurred fluorescence is at least half of its peak above the background (the visible
        edge), so blurred or dim-rimmed objects mostly get smaller labels than their nominal
        outline (objects hardly larger than the PSF, and saturated ones, larger). "geometric" is the nominal outline, as before (the images are the same; only
        the labels differ). See :mod:`napari_sam.data.synthetic.annotation`.
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
    label_edge: Literal["half_max", "geometric"] = "half_max"

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
        if self.label_edge not in ("half_max", "geometric"):
            raise ValueError(f"label_edge must be 'half_max' or 'geometric', "
                             f"got {self.label_edge!r}")

    @property
    def levels(self) -> tuple[float, float]:
        """``(black, white)`` output levels, with the dtype's defaults filled in."""
        black, white = _DTYPE_LEVELS[self.dtype]
        black = black if self.black_level is None else float(self.black_level)
        white = white if self.white_level is None else float(self.white_level)
        return black, white



#: Training ranges by version: ``(low, high)`` of each widened draw. "v0.4" trained the
#: shipped default model (phases 4-6); "v0.5" covers the held-out ranges (see the module
#: docstring). The draws and their order are the same, only the bounds differ.
TRAINING_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "v0.4": {"radius": (5.0, 20.0), "coverage": (0.05, 0.3), "elongation": (1.1, 2.0),
             "irregularity": (0.0, 0.1), "clustering": (0.0, 0.7),
             "brightness_spread": (0.1, 0.6), "psf_sigma": (0.5, 2.0),
             "z_blur_factor": (2.0, 4.0), "haze": (0.0, 0.3), "background": (0.01, 0.15),
             "illumination_gradient": (0.0, 0.4), "vignette": (0.0, 0.3),
             "photons": (30.0, 3000.0), "read_noise": (0.002, 0.03)},
    "v0.5": {"radius": (3.5, 20.0), "coverage": (0.05, 0.4), "elongation": (1.1, 2.2),
             "irregularity": (0.0, 0.14), "clustering": (0.0, 0.9),
             "brightness_spread": (0.1, 0.8), "psf_sigma": (0.5, 2.8),
             "z_blur_factor": (2.0, 5.0), "haze": (0.0, 0.45), "background": (0.01, 0.25),
             "illumination_gradient": (0.0, 0.5), "vignette": (0.0, 0.45),
             "photons": (12.0, 3000.0), "read_noise": (0.002, 0.04)},
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
        texture (bright speckles and chromocenters), very small (4..10 px) or large
        (20..80 px) nuclei, more irregular outlines, 15..60 photons per unit, column fixed-pattern noise and strong vignetting.
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
    dtype = str(rng.choice(["uint8", "uint16", "float32"]))
    if not held_out:
        return _training_settings(rng, lim, dtype)
    return _held_out_settings(rng, dtype)


def _loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    """One log-uniform draw from ``[lo, hi)``."""
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _training_settings(rng: np.random.Generator, lim: dict[str, tuple[float, float]],
                       dtype: str) -> SyntheticSettings:
    """The training branch of :func:`random_settings` (after its dtype draw)."""
    r_lo = _loguniform(rng, *lim["radius"])
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
        photons=_loguniform(rng, *lim["photons"]),
        read_noise=rng.uniform(*lim["read_noise"]),
        fixed_pattern_noise=0.0,
        dtype=dtype,
        axial_ratio=(rng.uniform(0.4, 0.7), rng.uniform(0.7, 1.0)),
    )


def _held_out_settings(rng: np.random.Generator, dtype: str) -> SyntheticSettings:
    """The held-out branch of :func:`random_settings` (after its dtype draw)."""
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
        photons=_loguniform(rng, 15.0, 60.0),
        read_noise=rng.uniform(0.01, 0.04),
        fixed_pattern_noise=rng.uniform(0.005, 0.02),
        dtype=dtype,
        axial_ratio=(rng.uniform(0.3, 0.6), rng.uniform(0.6, 1.0)),
    )
