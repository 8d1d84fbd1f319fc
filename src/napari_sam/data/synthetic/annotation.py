"""Where a label's outline is drawn: the annotation convention of real data.

People outline a nucleus where its visible edge is, about half of its brightness above the
background, not where the blurred halo ends nor where the (invisible) nominal outline is. With
``settings.label_edge == "half_max"`` (the default) the generator's geometric labels, a
partition of the pixels between the objects' nominal outlines, are redrawn that way:

* each object's *profile* is its noise-free fluorescence without the chromatin texture and the
  spots (brightness times thickness dome, and the depth fading of a stack): people outline the
  nucleus, not its chromatin, and a texture-driven threshold would fray the outline and follow
  a bright chromocenter's peak instead of the nucleus';
* the profile is blurred by the PSF alone (haze, illumination and noise are part of what a
  person sees as the background); the object's *level* is half the peak of its own blurred
  profile, or half the white level if it clips (a saturated nucleus looks as bright as white);
* a pixel (voxel) of the object's geometric region stays in its label where the blurred
  profile of all objects there reaches the level (where two objects touch, the contact stays
  bright and the boundary between them stays where it was); a background pixel joins the
  label where the object's own blurred profile reaches the level and no other object claims
  it more strongly (relative to its own level). A touching neighbour keeps its own pixels;
* each object keeps one connected piece, the largest, and an object never disappears: if
  nothing reaches the level, which the blur makes unlikely, it keeps its geometric region.

So blurred or dim-rimmed (domed) objects get labels smaller than their nominal outline, and a
flat object much larger than the PSF keeps about its outline; an object not much larger than
the PSF, or a saturated one, looks larger than its outline and gets a larger label. Images do
not change; labels of objects that shrink below ``settings.min_visible_area`` stay (the image
shows them).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .optics import _blur, _blur_reach
from .render import _keep_largest_piece
from .settings import SyntheticSettings


def _label_edges(labels: np.ndarray, profile: np.ndarray, settings: SyntheticSettings,
                 z_sigma: float | None) -> np.ndarray:
    """The labels that ``settings.label_edge`` asks for, from the geometric ``labels``.

    ``profile`` holds each object's smooth noise-free signal on its geometric pixels (float32,
    normalised units above the background, before blur); ``z_sigma`` is the axial PSF sigma in
    slices for a ``(Z, Y, X)`` stack, None for 2D.
    """
    if settings.label_edge == "geometric" or not labels.any():
        return labels
    return _half_max_labels(labels, profile, settings, z_sigma)


def _half_max_labels(labels: np.ndarray, profile: np.ndarray, settings: SyntheticSettings,
                     z_sigma: float | None) -> np.ndarray:
    """Redraw each object's label at half its blurred peak (see the module docstring)."""
    total = _blur(profile, settings, z_sigma)
    reach = _blur_reach(settings, z_sigma, labels.ndim)
    white = settings.saturation - settings.background
    out = np.zeros_like(labels)
    claim = np.zeros(labels.shape, np.float32)  # the best claim on each background pixel yet
    boxes = []
    for oid, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:  # ids of a time-lapse frame need not be consecutive
            continue
        sl = tuple(slice(max(s.start - r, 0), min(s.stop + r, n))
                   for s, r, n in zip(box, reach, labels.shape))
        boxes.append((oid, sl))
        geo = labels[sl] == oid
        own = _blur(np.where(geo, profile[sl], np.float32(0)), settings, z_sigma)
        peak = float(own.max())
        level = 0.5 * (min(peak, white) if white > 0 else peak)
        if level <= 0:
            continue
        strength = own / np.float32(level)
        free = (labels[sl] == 0) & (strength >= 1.0) & (strength > claim[sl])
        out[sl][free] = oid
        claim[sl][free] = strength[free]
        out[sl][geo & (total[sl] >= level)] = oid
    for oid, sl in boxes:
        lab = out[sl]
        _keep_largest_piece(lab, oid)
        if not (lab == oid).any():
            lab[labels[sl] == oid] = oid
    return out
