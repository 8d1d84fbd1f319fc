"""Blurred bright balls in a stack (z step 2x the pixel) with their half-maximum truth: the
annotation convention the propagation outline follows (tests of workflows.outline)."""

import numpy as np
from scipy import ndimage

Z, S = 16, 64


def _ball(centre, radius, shape=(Z, S, S), z_scale=2.0):
    zz, yy, xx = np.mgrid[:shape[0], :shape[1], :shape[2]]
    cz, cy, cx = centre
    return ((zz - cz) * z_scale) ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2


def _stack(objects, background=100.0, peak=400.0, noise=5.0, seed=0):
    """A blurred stack of bright balls and each ball's half-maximum truth."""
    rng = np.random.default_rng(seed)
    img = np.full((Z, S, S), background, np.float32)
    truths = []
    for centre, radius in objects:
        own = ndimage.gaussian_filter(_ball(centre, radius).astype(np.float32), (1.5, 2.0, 2.0))
        img += (peak - background) * own / own.max()
        truths.append(own >= 0.5 * own.max())
    img += rng.normal(0, noise, img.shape).astype(np.float32)
    return img, truths


def _iou(a, b):
    return np.count_nonzero(a & b) / np.count_nonzero(a | b)


