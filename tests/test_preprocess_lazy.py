"""The intensity range of a lazy stack is estimated from a few planes, never by loading it."""

from __future__ import annotations

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
