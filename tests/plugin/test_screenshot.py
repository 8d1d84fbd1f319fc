"""What the user sees: a committed object is drawn in its label colour on the canvas."""

from __future__ import annotations

import numpy as np
from conftest import nuclei_2d, object_centre

from napari_sam.plugin._widget import LABELS_NAME


def test_committed_object_is_visible_on_the_canvas(sam, idle):
    image, _gt = nuclei_2d((96, 96))
    viewer, widget, _layer = sam(image, scale=(1.5, 1.5), show=True)
    widget.shapes_layer.add_rectangles(np.array([[20, 20], [70, 70]], dtype=float))
    idle(widget)
    [object_id] = widget.commit()
    labels = viewer.layers[LABELS_NAME]
    labels.opacity = 1.0
    obj = labels.data == object_id
    assert obj.sum() > 30
    r, c = object_centre(np.where(obj, 1, 0))
    for other in (widget.points_layer, widget.shapes_layer, widget.preview_layer):
        other.visible = False

    # centre the camera on a pixel deep inside the object, a few screen pixels per image pixel
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera  # napari >= 0.9
    camera.center = tuple(labels.data_to_world([r, c]))
    camera.zoom = 4.0

    def centre_patch(shot):
        h, w = shot.shape[:2]
        return shot[h // 2 - 1 : h // 2 + 2, w // 2 - 1 : w // 2 + 2, :3].reshape(-1, 3)

    expected = np.asarray(labels.get_color(object_id))[:3] * 255
    shot = viewer.screenshot(canvas_only=True, flash=False)
    assert shot.ndim == 3 and shot.shape[0] > 50
    np.testing.assert_allclose(centre_patch(shot), np.tile(expected, (9, 1)), atol=12)

    labels.visible = False  # the colour came from the label, not from the image
    shot = viewer.screenshot(canvas_only=True, flash=False)
    assert np.abs(centre_patch(shot).astype(float) - expected).max() > 30
