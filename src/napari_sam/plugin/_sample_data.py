"""Sample data for napari's File > Open Sample menu: synthetic nuclei, generated in code.

Nothing is downloaded; the images come from :mod:`napari_sam.data.synthetic` with a fixed seed, so
every user sees the same sample.
"""

from __future__ import annotations

from typing import Any

__all__ = ["nuclei_2d", "nuclei_3d"]

#: Z step / lateral pixel size of the 3D sample (the stack is shown with this z scale).
Z_ANISOTROPY = 2.0


def nuclei_2d() -> list[tuple[Any, dict, str]]:
    """A 256 x 256 uint16 fluorescence image of nuclei."""
    from ..data.synthetic import make_nuclei_2d

    image, _ = make_nuclei_2d((256, 256), seed=0)
    return [(image, {"name": "nuclei 2D", "colormap": "gray"}, "image")]


def nuclei_3d() -> list[tuple[Any, dict, str]]:
    """A 24 x 192 x 192 uint16 z-stack of nuclei, z step twice the pixel size."""
    from ..data.synthetic import make_nuclei_3d

    image, _ = make_nuclei_3d((24, 192, 192), seed=0, z_anisotropy=Z_ANISOTROPY)
    meta = {"name": "nuclei 3D", "colormap": "gray", "scale": (Z_ANISOTROPY, 1.0, 1.0)}
    return [(image, meta, "image")]
