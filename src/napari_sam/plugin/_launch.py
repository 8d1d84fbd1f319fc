"""Open napari with an image (or a synthetic sample) and the Segment Anything widget docked."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import napari

__all__ = ["launch"]

PLUGIN_NAME = "napari-sam-nd"
WIDGET_NAME = "Segment Anything"
SAMPLES = ("nuclei_2d", "nuclei_3d")


def launch(
    image_path: str | os.PathLike[str] | None = None,
    sample: str = "nuclei_3d",
    model: str | None = None,
    *,
    show: bool = True,
) -> napari.Viewer:
    """Open a viewer with an image and the "Segment Anything" widget.

    Parameters
    ----------
    image_path : str or os.PathLike, optional
        Image file (TIFF, ``.npy``, zarr; see :func:`napari_sam.data.io.read_image`). Without it the
        synthetic ``sample`` is opened.
    sample : {"nuclei_2d", "nuclei_3d"}
        The sample to open when no image is given.
    model : str, optional
        A registry name or checkpoint file to load in the background right away.
    show : bool
        Show the window (``False`` for tests and scripts).

    Returns
    -------
    napari.Viewer
        Call ``napari.run()`` afterwards to start the event loop.
    """
    import napari

    from ..data.io import read_image
    from . import _sample_data

    if image_path is None and sample not in SAMPLES:
        raise ValueError(f"unknown sample {sample!r}; choose one of {', '.join(SAMPLES)}")
    image = read_image(image_path) if image_path is not None else None

    viewer = napari.Viewer(show=show)
    if image is not None:
        # napari guesses RGB(A) from a last axis of 3 or 4, as napari_sam.workflows.segment.is_rgb does
        viewer.add_image(image, name=os.path.splitext(os.path.basename(image_path))[0])
    else:
        for data, meta, _ in getattr(_sample_data, sample)():
            viewer.add_image(data, **meta)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN_NAME, WIDGET_NAME)
    if model is not None:
        widget.load_model(model)
    return viewer
