"""The public generators: a 2D image, a 3D stack and a 2D time-lapse of nuclei with labels.

Each draws a scene (:mod:`.scene`), renders it (:mod:`.render`), passes it through the optics
and the camera (:mod:`.optics`) and draws the labels' outlines by the annotation convention
(:mod:`.annotation`), all from one seeded :class:`numpy.random.Generator`.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from .annotation import _label_edges
from .optics import _camera, _illumination, _optics
from .render import _assign_texture_origins, _render_objects, _texture_field
from .scene import _Blob, _inv_axes, _make_scene
from .settings import _EPS, SeedLike, SyntheticSettings


def _check_shape(shape: tuple[int, ...], ndim: int, name: str) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != ndim or any(s < 1 for s in shape):
        raise ValueError(f"{name} must be {ndim} positive sizes, got {shape!r}")
    return shape



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
    settings = SyntheticSettings() if settings is None else settings
    shape = _check_shape(shape, 2, "shape")
    rng = np.random.default_rng(seed)
    spacing = np.ones(2)
    blobs, r_med = _make_scene(rng, shape, spacing, settings)
    tex_shape = _assign_texture_origins(rng, blobs, spacing)
    texture = _texture_field(rng, tex_shape, spacing, settings)
    profile = _profile_buffer(shape, settings)
    labels, signal, _ = _render_objects(blobs, shape, spacing, settings, texture,
                                        envelope=profile)
    labels = _label_edges(labels, profile, settings, None)
    illum = _illumination(rng, shape, settings)
    clean = _optics(signal, settings, r_med, None) + np.float32(settings.background)
    image = _camera(clean * illum, settings, rng)
    return image, labels


def _profile_buffer(shape: tuple[int, ...], settings: SyntheticSettings) -> np.ndarray | None:
    """Zeros for the objects' smooth profiles if the label convention needs them, else None."""
    return None if settings.label_edge == "geometric" else np.zeros(shape, np.float32)


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
    profile = _profile_buffer(shape, settings)
    labels, signal, _ = _render_objects(blobs, shape, spacing, settings, texture,
                                        envelope=profile)
    if settings.depth_attenuation > 0 and shape[0] > 1:
        fade = 1.0 - settings.depth_attenuation * np.linspace(0, 1, shape[0], dtype=np.float32)
        signal *= fade[:, None, None]
        if profile is not None:
            profile *= fade[:, None, None]
    z_sigma = settings.psf_sigma * settings.z_blur_factor / z_anisotropy
    labels = _label_edges(labels, profile, settings, z_sigma)
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
    min_dist = _min_distances(blobs, settings)
    velocity = rng.standard_normal((n, 2)) * speed / np.sqrt(2)
    ids = np.arange(1, n + 1, dtype=np.int32)

    movie = np.empty((n_frames, *shape), np.dtype(settings.dtype))
    labels = np.empty((n_frames, *shape), np.int32)
    for t in range(n_frames):
        if t > 0 and n:
            velocity = _move(rng, blobs, velocity, min_dist, speed, deformation)
        profile = _profile_buffer(shape, settings)
        lab, signal, _ = _render_objects(blobs, shape, spacing, settings, texture, ids=ids,
                                         envelope=profile)
        signal *= np.float32((1.0 - bleaching) ** t)
        if profile is not None:
            profile *= np.float32((1.0 - bleaching) ** t)
        clean = _optics(signal, settings, r_med, None) + np.float32(settings.background)
        movie[t] = _camera(clean * illum, settings, rng)
        labels[t] = _label_edges(lab, profile, settings, None)

    return movie, _consecutive_ids(labels, n)


def _consecutive_ids(labels: np.ndarray, n: int) -> np.ndarray:
    """Renumber ids ``1..n`` so that those present become ``1..N`` (order kept)."""
    present = np.zeros(n + 1, bool)
    present[np.unique(labels)] = True
    present[0] = False
    lut = np.zeros(n + 1, np.int32)
    lut[present] = np.arange(1, present.sum() + 1)
    return lut[labels]


def _min_distances(blobs: list[_Blob], settings: SyntheticSettings) -> np.ndarray:
    """Closest allowed distance between the centres of each pair of time-lapse objects."""
    if settings.allow_touching:
        size = np.array([b.extra["radius"] for b in blobs]) * (1.0 - settings.max_overlap)
        return size[:, None] + size[None, :]
    # the largest extent an outline can reach while it deforms (harmonics sum <= 0.6)
    size = np.array([b.extra["radius"] * np.sqrt(b.extra["elong"]) * 1.6 for b in blobs])
    return size[:, None] + size[None, :] + settings.min_gap


def _move(rng: np.random.Generator, blobs: list[_Blob], velocity: np.ndarray,
          min_dist: np.ndarray, speed: float, deformation: float) -> np.ndarray:
    """One frame of motion: persistent random walk, repulsion, drifting outlines and
    orientation. Moves the blobs in place and returns the new velocities."""
    persistence = 0.8
    rho = 1.0 - deformation
    n = len(blobs)
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
        b.inv_axes = _inv_axes(b.extra["radius"], b.extra["elong"], b.extra["angle"], None)
        b.refresh()
    return velocity


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
