"""Synthetic fluorescence microscopy of nuclei with exact instance labels.

The generator draws a scene of nucleus-like objects (ellipses or ellipsoids deformed by smooth
radial harmonics), partitions the pixels between them, renders each object's fluorescence
(thickness dome, chromatin texture, nucleoli or chromocenters) and passes the result through
the optics (PSF blur, out-of-focus haze, uneven illumination) and a camera (Poisson photon noise,
Gaussian read noise, optional column fixed-pattern noise, black level, saturation).

Everything is driven by one seeded :class:`numpy.random.Generator`, so the same seed and settings
give identical arrays. Images are in napari's axis order: ``(Y, X)`` for 2D, ``(Z, Y, X)`` for a
stack and ``(T, Y, X)`` for a time-lapse. Label images are ``int32`` with 0 for background and
one id per object; objects never overlap in the labels. A label is drawn where a person would
draw it (``settings.label_edge="half_max"``, the default): where the object's blurred signal is
half of its peak above the background, so blurred and dim-rimmed objects mostly get labels
inside their nominal outline (:mod:`.annotation`). ``label_edge="geometric"`` gives the nominal
outlines, as before: where two objects touch, the boundary is where their normalised distances
from their centres are equal (the images are the same either way).

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
generator (many small bright speckles and chromocenters on a smoother base), either very small
dense nuclei (4..10 px) or large ones (20..80 px), more irregular shapes, low light (15..60 photons per unit), column fixed-pattern
noise (sCMOS) and strong vignetting. A model trained on the first should be evaluated on the
second to measure generalisation rather than memorisation of the generator.

Modules: :mod:`.settings` (settings and their random draws), :mod:`.scene` (object shapes and
placement), :mod:`.render` (pixel partition and fluorescence), :mod:`.optics` (blur, haze,
illumination, camera), :mod:`.annotation` (label outlines), :mod:`.generators` (the public
generators). This package re-exports their names, private helpers included.
"""

# ruff: noqa: F401  (re-exports: the private helpers stay reachable as before the split)

from .annotation import _half_max_labels, _label_edges
from .generators import (
    _check_shape,
    _consecutive_ids,
    _min_distances,
    _move,
    _profile_buffer,
    _repel,
    make_nuclei_2d,
    make_nuclei_3d,
    make_timelapse,
)
from .optics import _blur, _blur_reach, _camera, _disk_kernel, _illumination, _optics, _wide_blur
from .render import (
    _assign_texture_origins,
    _blob_crop,
    _keep_largest_piece,
    _partition,
    _render_objects,
    _texture_and_spots,
    _texture_field,
)
from .scene import (
    _Blob,
    _build_blobs,
    _draw_brightness,
    _draw_candidates,
    _draw_harmonics,
    _inv_axes,
    _make_scene,
    _object_count,
    _place_centres,
    _rotation_2d,
)
from .settings import (
    _DTYPE_LEVELS,
    _EPS,
    TRAINING_RANGES,
    SeedLike,
    SyntheticSettings,
    random_settings,
)

__all__ = [
    "TRAINING_RANGES",
    "SyntheticSettings",
    "make_nuclei_2d",
    "make_nuclei_3d",
    "make_timelapse",
    "random_settings",
]
