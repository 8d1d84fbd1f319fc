"""The widget's own layers: "SAM points" and "SAM boxes" (the prompts) and "SAM preview".

:class:`PromptLayers` creates them on an image's grid (or reuses layers of those names), reads
the prompts of one plane from them, removes a plane's prompts after a commit, and shows a
:class:`~.session.Preview`. It also keeps track of the event connections the widget makes to
layers, so that they can all be undone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Labels, Points, Shapes
from napari.utils.colormaps import DirectLabelColormap

from ._colors import NEGATIVE_COLOR, POSITIVE_COLOR, PREVIEW_COLOR
from ._layers import (
    Plane,
    PlanePrompts,
    affine_between,
    image_spatial_shape,
    mask_prompts_from_labels,
    plane_layer_translate,
    points_on_plane,
    shapes_on_plane,
    transform_kwargs,
)

if TYPE_CHECKING:  # pragma: no cover
    import napari
    from napari.layers import Image

    from .session import Preview

__all__ = ["BOXES_NAME", "POINTS_NAME", "PREVIEW_NAME", "PromptLayers"]

POINTS_NAME = "SAM points"
BOXES_NAME = "SAM boxes"
PREVIEW_NAME = "SAM preview"


class PromptLayers:
    """The prompt and preview layers of one viewer.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
    on_prompts_changed : callable
        Connected to the data (and the points' features) events of the prompt layers.

    Attributes
    ----------
    points, shapes : napari.layers.Points, napari.layers.Shapes or None
    preview : napari.layers.Labels or None
        Holds only the plane of the current preview.
    """

    def __init__(self, viewer: napari.viewer.Viewer, on_prompts_changed: Callable) -> None:
        self.viewer = viewer
        self.on_prompts_changed = on_prompts_changed
        self.points: Points | None = None
        self.shapes: Shapes | None = None
        self.preview: Labels | None = None
        self._connected: dict[int, tuple] = {}

    def forget(self, layer) -> None:
        """``layer`` was removed from the viewer."""
        if layer is self.points:
            self.points = None
        elif layer is self.shapes:
            self.shapes = None
        elif layer is self.preview:
            self.preview = None
        self.disconnect(layer)

    def ensure(self, image: Image, positive: bool) -> bool:
        """Create (or reuse) the preview, boxes and points layers on ``image``'s grid; whether a
        preview layer was created (the layer lists change)."""
        kwargs = transform_kwargs(image)
        spatial = image_spatial_shape(image)
        size = float(np.clip(0.025 * max(spatial[-2:]), 3.0, 40.0))
        created = False
        if not self._usable(self.preview, image):
            self.preview = self._find(PREVIEW_NAME, Labels, image.ndim)
            if self.preview is None:
                shape = (1,) * (len(spatial) - 2) + tuple(spatial[-2:])
                self.preview = self.viewer.add_labels(
                    np.zeros(shape, dtype=np.uint8), name=PREVIEW_NAME, opacity=0.55,
                    blending="translucent",
                    # one colour for every previewed object: unmistakable for committed labels
                    colormap=DirectLabelColormap(color_dict={None: PREVIEW_COLOR,
                                                             0: "transparent"}),
                    **kwargs,
                )
            self.preview.editable = False
            created = True
        if not self._usable(self.shapes, image):
            self.shapes = self._find(BOXES_NAME, Shapes, image.ndim)
            if self.shapes is None:
                self.shapes = self.viewer.add_shapes(
                    ndim=image.ndim, name=BOXES_NAME, edge_color="yellow",
                    face_color="transparent", edge_width=max(size / 4, 0.5), **kwargs,
                )
        self.connect(self.shapes, self.shapes.events.data, self.on_prompts_changed)
        if not self._usable(self.points, image):
            self.points = self._find(POINTS_NAME, Points, image.ndim)
            if self.points is None:
                self.points = self.viewer.add_points(
                    ndim=image.ndim, name=POINTS_NAME,
                    features={"positive": np.zeros(0, dtype=bool)},
                    feature_defaults={"positive": True}, face_color="positive",
                    face_color_cycle={True: POSITIVE_COLOR, False: NEGATIVE_COLOR},
                    border_color="white", size=size, **kwargs,
                )
                self.points.mode = "add"
            elif "positive" not in self.points.features:
                n = len(self.points.data)
                self.points.features = {"positive": np.ones(n, dtype=bool)}
                self.points.face_color = "positive"
                self.points.face_color_cycle = {True: POSITIVE_COLOR, False: NEGATIVE_COLOR}
        self.points.feature_defaults = {"positive": positive}
        self.connect(self.points, self.points.events.data, self.on_prompts_changed)
        self.connect(self.points, self.points.events.features, self.on_prompts_changed)
        return created

    def activate_points(self) -> None:
        """Make the points layer the active one, in add mode: the next click is a prompt again
        (a new or written Labels layer would otherwise take the click)."""
        if self.points is not None and self.points in self.viewer.layers:
            self.viewer.layers.selection.active = self.points
            self.points.mode = "add"

    def collect(self, image: Image, plane: Plane, source: Labels | None,
                consumed: dict[int, str]) -> PlanePrompts:
        """The prompts on ``plane``: points, shapes, and the objects of the mask-prompt layer
        ``source`` not in ``consumed`` (``{value: digest}`` of objects already committed)."""
        prompts = PlanePrompts()
        if self.points is not None and self.points in self.viewer.layers:
            rc, labels, idx, problems = points_on_plane(self.points, image, plane)
            prompts.points, prompts.labels, prompts.point_indices = rc, labels, idx
            prompts.problems += problems
        if self.shapes is not None and self.shapes in self.viewer.layers:
            prompts.shapes, problems = shapes_on_plane(self.shapes, image, plane)
            prompts.problems += problems
        if source is not None:
            for value, shape, digest in mask_prompts_from_labels(source, image, plane, consumed):
                prompts.masks.append((value, shape))
                prompts.mask_digests[value] = digest
        return prompts

    def has_prompts(self) -> bool:
        return any(layer is not None and len(layer.data) > 0
                   for layer in (self.points, self.shapes))

    def remove_on(self, image: Image, plane: Plane) -> None:
        """Delete the points and shapes lying on ``plane``."""
        for layer in (self.points, self.shapes):
            if layer is None or len(layer.data) == 0:
                continue
            a, b = affine_between(layer, image, plane.world_point)
            if isinstance(layer, Points):
                coords = np.asarray(layer.data, dtype=float) @ a.T + b
                on = np.flatnonzero(plane.on_plane(coords))
            else:
                on = [i for i, verts in enumerate(layer.data)
                      if plane.on_plane(np.asarray(verts, dtype=float) @ a.T + b).all()]
            if len(on):
                layer.remove(list(map(int, on)))

    def show(self, preview: Preview | None) -> None:
        """Draw ``preview`` in the preview layer (``None``: empty it)."""
        layer = self.preview
        if layer is None or layer not in self.viewer.layers:
            return
        if preview is None:
            if np.asarray(layer.data).any():
                layer.data = np.zeros_like(np.asarray(layer.data))
            return
        plane = preview.plane
        if layer.ndim != plane.ndim:
            return
        shape = [1] * plane.ndim
        shape[plane.axes[0]], shape[plane.axes[1]] = plane.shape
        image = preview.image
        for name in ("scale", "rotate", "shear"):  # the image may have changed since creation
            if not np.allclose(getattr(layer, name), getattr(image, name)):
                setattr(layer, name, np.asarray(getattr(image, name)))
        if not np.allclose(layer.affine.affine_matrix, image.affine.affine_matrix):
            layer.affine = image.affine.affine_matrix
        translate = plane_layer_translate(image, plane)
        if not np.allclose(layer.translate, translate):
            layer.translate = translate
        layer.data = preview.label_image.reshape(shape)

    # -- event connections ---------------------------------------------------------------------

    def connect(self, layer, emitter, callback) -> None:
        """``emitter.connect(callback)`` once, remembered for :meth:`disconnect`."""
        entry = self._connected.setdefault(id(layer), (layer, []))
        if any(e is emitter for e, _ in entry[1]):
            return
        emitter.connect(callback)
        entry[1].append((emitter, callback))

    def disconnect(self, layer) -> None:
        entry = self._connected.pop(id(layer), None)
        for emitter, callback in entry[1] if entry else ():
            emitter.disconnect(callback)

    def disconnect_all(self) -> None:
        for layer, _ in list(self._connected.values()):
            self.disconnect(layer)

    def _usable(self, layer, image: Image) -> bool:
        return layer is not None and layer in self.viewer.layers and layer.ndim == image.ndim

    def _find(self, name: str, kind: type, ndim: int) -> Any:
        """An existing layer of ``kind`` called ``name`` (an empty one of another ndim is
        dropped)."""
        for layer in list(self.viewer.layers):
            if layer.name == name and isinstance(layer, kind):
                if layer.ndim == ndim:
                    return layer
                if isinstance(layer, Labels):
                    empty = not np.asarray(layer.data).any()
                else:
                    empty = len(layer.data) == 0
                if empty:
                    self.viewer.layers.remove(layer)
                    return None
                return layer
        return None
