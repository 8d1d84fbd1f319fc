"""The scene: nucleus-like objects (blobs) drawn at random and placed in the image.

Objects live in physical coordinates (lateral pixels; z is scaled by the voxel anisotropy). Each
is an ellipse or ellipsoid deformed by smooth radial harmonics, with its brightness, thickness
dome, texture gain and spots (nucleoli or chromocenters). :func:`_make_scene` draws every
candidate's shape first, then places them greedily (touching or keeping a gap).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree

from .settings import _EPS, SyntheticSettings


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
    n_clustered = round(settings.clustering * n_cand)
    if n_clustered:
        n_clusters = max(1, round(n_target / rng.uniform(6, 20)))
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
    r_lo, r_hi = settings.radius_range
    r_med = float(np.exp(rng.uniform(np.log(r_lo), np.log(r_hi))))
    axial_mean = float(np.mean(settings.axial_ratio)) if is3d else 1.0
    n_target = _object_count(rng, shape, spacing, settings, r_med, axial_mean, margin)
    if n_target <= 0:
        return [], r_med
    # Draw every candidate's shape first, so that placement knows its true outer extent.
    cand = _draw_candidates(rng, 4 * n_target + 20, ndim, r_med, settings)
    # Placement compares 3D objects in coordinates where z is rescaled by the mean axial ratio.
    metric = np.ones(ndim)
    typical = np.full(ndim, r_med)
    if is3d:
        metric[0] = 1.0 / axial_mean
        typical[0] *= axial_mean
    outer = np.maximum(np.sqrt(cand["elong"]), cand["axial"] / axial_mean) * cand["radius"]
    outer *= 1.0 + np.abs(cand["amps"]).sum(axis=1)
    # centres may lie a little outside, so objects are cut by the image border
    extent_phys = np.asarray(shape, float) * spacing
    pad = 0.4 * typical + margin
    domain = np.stack([-0.5 * spacing - pad, extent_phys - 0.5 * spacing + pad], axis=1)
    idx, centres = _place_centres(rng, n_target, domain, cand["radius"], outer, metric, settings)
    return _build_blobs(cand, idx, centres, is3d), r_med


def _object_count(
    rng: np.random.Generator, shape: tuple[int, ...], spacing: np.ndarray,
    settings: SyntheticSettings, r_med: float, axial_mean: float, margin: float,
) -> int:
    """How many objects the image should hold (before placement, which may fit fewer)."""
    if settings.n_objects is not None:
        return int(rng.integers(settings.n_objects[0], settings.n_objects[1] + 1))
    extent_phys = np.asarray(shape, float) * spacing
    cov = rng.uniform(*settings.coverage)
    if len(shape) == 3:
        obj_size = 4.0 / 3.0 * np.pi * axial_mean * r_med**3
    else:
        obj_size = np.pi * r_med**2
    expected = cov * np.prod(extent_phys + 2 * margin) / obj_size
    return int(expected + rng.random())  # unbiased rounding: small images get objects


def _draw_candidates(
    rng: np.random.Generator, n: int, ndim: int, r_med: float, settings: SyntheticSettings,
) -> dict[str, np.ndarray]:
    """Shapes, brightness and spots of ``n`` candidate objects (arrays with ``n`` rows)."""
    is3d = ndim == 3
    r_lo, r_hi = settings.radius_range
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
    return {"radius": radius, "elong": elong, "axial": axial, "brightness": brightness,
            "dome": dome, "tex_gain": tex_gain, "angle": angle, "dirs": dirs, "orders": orders,
            "amps": amps, "n_spots": n_spots, "spots": spots, "spot_sigmas": spot_sigmas}


def _build_blobs(cand: dict[str, np.ndarray], idx: np.ndarray, centres: np.ndarray,
                 is3d: bool) -> list[_Blob]:
    """The placed candidates ``idx`` (at ``centres``) as blobs."""
    c = cand
    ndim = 3 if is3d else 2
    return [
        _Blob(
            center=centre.copy(),
            inv_axes=_inv_axes(c["radius"][j], c["elong"][j], c["angle"][j],
                               c["axial"][j] if is3d else None),
            harm_dirs=c["dirs"][j],
            harm_orders=c["orders"][j],
            harm_amps=c["amps"][j],
            brightness=float(c["brightness"][j]),
            dome=float(c["dome"][j]),
            texture_gain=float(c["tex_gain"][j]),
            spots=c["spots"][j, : c["n_spots"][j]],
            spot_sigmas=c["spot_sigmas"][j, : c["n_spots"][j]],
            tex_origin=np.zeros(ndim, int),
            extra={"radius": c["radius"][j], "elong": c["elong"][j], "angle": c["angle"][j],
                   "base_amps": c["amps"][j].copy()},
        )
        for j, centre in zip(idx, centres)
    ]
