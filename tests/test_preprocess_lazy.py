"""The intensity range of a lazy stack is estimated from a few planes, never by loading it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_sam.engine.preprocess import estimate_intensity_range


class LazyStack:
    """A (Z, Y, X) array-like that counts the planes read and refuses to be loaded whole."""

    def __init__(self, data):
        self.data = data
        self.shape, self.dtype, self.ndim = data.shape, data.dtype, data.ndim
        self.reads = 0

    def __getitem__(self, key):
        if not (isinstance(key, tuple) and len(key) == 1 and np.isscalar(key[0])):
            raise AssertionError(f"loaded more than one plane: {key!r}")
        self.reads += 1
        return self.data[key]

    def __array__(self, *args, **kwargs):
        raise AssertionError("the whole stack was loaded")


def test_lazy_stack_range_from_a_few_planes():
    rng = np.random.default_rng(0)
    data = rng.normal(1000, 50, (200, 32, 32)).astype(np.float32)
    lazy = LazyStack(data)
    low, high = estimate_intensity_range(lazy)
    full = estimate_intensity_range(data)
    assert lazy.reads <= 16
    assert abs(low - full[0]) < 10 and abs(high - full[1]) < 10


def test_bright_background_tells_brightfield_from_fluorescence():
    import tifffile

    from napari_sam.engine.preprocess import bright_background

    real = tifffile.imread(Path(__file__).parent / "data" / "bbbc039_val_image.tif")
    assert not bright_background(real)  # fluorescence: mostly dark background
    inverted = real.max() - real.astype(np.float64)
    assert bright_background(inverted)
    rgb = np.repeat((255 * inverted / inverted.max()).astype(np.uint8)[..., None], 3, axis=-1)
    assert bright_background(rgb) and not bright_background(255 - rgb)
    assert not bright_background(np.full((8, 8), 7.0))  # constant: nothing to tell
