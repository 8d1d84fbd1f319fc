"""How large objects are (napari_sam.engine.scale): one blob at a prompt, and its zoom."""

import numpy as np
import pytest
from scipy import ndimage

from napari_sam.engine.scale import MAX_OBJECT_ZOOM, blob_radius, object_zoom


def _disc(r, size=128, centre=(64, 64), blur=0.7):
    yy, xx = np.mgrid[:size, :size]
    disc = ((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= r * r).astype(np.float64)
    return ndimage.gaussian_filter(disc, blur)


@pytest.mark.parametrize("r", [2, 4, 8, 16])
def test_the_radius_of_a_disc(r):
    assert blob_radius(_disc(r), (64, 64), max_radius=40) == pytest.approx(r, rel=0.35)


def test_contrast_and_offset_do_not_matter_and_dark_spots_are_no_blob():
    img = _disc(5)
    base = blob_radius(img, (64, 64), 40)
    assert blob_radius(300 * img + 1000, (64, 64), 40) == pytest.approx(base)
    assert blob_radius(1 - img, (64, 64), 40) is None  # a dark spot: no bright blob
    assert blob_radius(_disc(30), (64, 64), 10) == pytest.approx(10, rel=0.2)  # capped


def test_a_speck_beside_a_brighter_nucleus_has_its_own_size():
    img = 3 * _disc(14, centre=(64, 50)) + _disc(2, centre=(64, 68))  # touching, 3x brighter
    assert blob_radius(img, (64, 68), 40) < 4
    assert blob_radius(img, (64, 50), 40) > 10
    # near the edge of the slice the edge is extended, not zero
    assert blob_radius(_disc(3, centre=(1, 64)), (1, 64), 40) < 5


def test_object_zoom():
    img = _disc(2) + _disc(16, centre=(30, 30))
    # at zoom 1 a 128 px slice is magnified 4x by a 512 px model: the speck is 8 px there
    assert object_zoom(img, 1.0, 512, [[64, 64]], [1]) == 1.0
    # a 1024 px slice: 1 px at the model's input, zoomed to the limit (a power of sqrt(2))
    big = np.zeros((1024, 1024))
    big[:128, :128] = img
    zoom = object_zoom(big, 1.0, 512, [[64, 64]], [1])
    assert zoom == MAX_OBJECT_ZOOM and np.log2(zoom) * 2 == round(np.log2(zoom) * 2)
    assert object_zoom(big, 1.0, 512, [[30, 30]], [1]) == 1.0  # the large disc
    assert object_zoom(big, 1.0, 512, [[64, 64]], [0]) == 1.0  # negative points only
    assert object_zoom(big, 1.0, 512, [[64, 64], [30, 30]], [1, 1]) == 1.0  # wide apart
    assert object_zoom(big, 1.0, 512, box=[60, 60, 68, 68]) > 4  # a small box
    assert object_zoom(big, 1.0, 512, box=[0, 0, 60, 60]) == 1.0
    assert object_zoom(big, 1.0, 512) == 1.0  # a mask alone: no size to read
    assert object_zoom(big, 2.0, 512, [[64, 64]], [1]) >= 2.0  # never below the slice's
