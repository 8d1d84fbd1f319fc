"""Bad input gives one clear notification: no traceback, no lost label."""

from __future__ import annotations

import numpy as np
from conftest import nuclei_2d, nuclei_3d, object_centre

from napari_sam.plugin._widget import LABELS_NAME


def test_point_outside_the_image(sam, idle, notes):
    image, _ = nuclei_2d()
    _viewer, widget, _ = sam(image)
    widget.points_layer.add([-20, 30])
    widget.points_layer.add([30, 500])
    idle(widget)
    outside = [m for m in notes if "outside" in m]
    assert len(outside) == 1, notes
    assert widget.preview is None


def test_model_problems(sam, idle, notes, monkeypatch, tmp_path):
    import pooch
    import requests

    image, gt = nuclei_2d()
    viewer, widget, _ = sam(image, model=False)

    # no model yet: one notification however many clicks
    widget.points_layer.add(object_centre(gt))
    widget.points_layer.add([3, 3])
    idle(widget)
    assert sum("No SAM model" in m for m in notes) == 1, notes
    assert widget.commit() == []
    assert LABELS_NAME not in viewer.layers

    # an unknown name
    widget.load_model("not-a-model")
    idle(widget)
    assert widget.predictor is None
    assert widget.load_button.enabled
    assert any("not-a-model" in m and "unknown model" in m for m in notes), notes

    # offline, weights not cached: the weights module's message, with its offline hint
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path))

    def offline(*args, **kwargs):
        raise requests.exceptions.ConnectionError("Network is unreachable")

    monkeypatch.setattr(pooch, "retrieve", offline)
    widget.model_combo.value = "vit_b"
    widget.device_combo.value = "cpu"
    widget.load_model()
    idle(widget)
    assert widget.predictor is None
    from napari.utils.notifications import notification_manager

    from napari_sam.plugin._notify import TOAST_CHARS

    # the toast holds the first sentence; the whole message is one click away (Details)
    message = next(m for m in notes if "Could not load model 'vit_b'" in m)
    assert len(message) <= TOAST_CHARS
    record = next(r for r in reversed(notification_manager.records) if r.message == message)
    assert [name for name, _ in record.actions] == ["Details"]
    assert "Network is unreachable" in record.details
    assert "To work offline" in record.details
    assert str(tmp_path) in record.details
    assert len(widget.points_layer.data) == 2  # the prompts wait for a model


def test_3d_display_asks_for_2d(sam, idle, notes):
    image, gt = nuclei_3d()
    viewer, widget, _ = sam(image)
    viewer.dims.ndisplay = 3
    idle(widget)
    assert not notes  # switching alone is fine
    widget.points_layer.add([5, *object_centre(gt[5])])
    idle(widget)
    assert sum("2D display" in m for m in notes) == 1, notes
    assert widget.commit() == []
    viewer.dims.ndisplay = 2
    idle(widget)
    viewer.dims.current_step = (5, 0, 0)
    idle(widget)
    assert widget.preview is not None  # the prompt placed in 3D counts once back in 2D


def test_one_pixel_image(sam, idle, notes):
    _viewer, widget, _ = sam(np.ones((1, 1), dtype=np.uint16))
    widget.points_layer.add([0, 0])
    idle(widget)
    assert sum("too small" in m for m in notes) == 1, notes
    assert widget.preview is None


def test_huge_image(sam, idle, notes, monkeypatch):
    from napari_sam.plugin import _layers

    monkeypatch.setattr(_layers, "MAX_PLANE_PIXELS", 32 * 32)  # stands in for a gigapixel plane
    image, gt = nuclei_2d()
    _viewer, widget, _ = sam(image)
    widget.points_layer.add(object_centre(gt))
    idle(widget)
    assert sum("megapixels" in m for m in notes) == 1, notes
    assert widget.preview is None
    assert len(widget.cache) == 0


def test_no_image_layer(make_napari_viewer, qtbot, notes, tiny_model):
    from napari_sam.plugin import SamWidget

    viewer = make_napari_viewer()
    widget = SamWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.set_model(tiny_model, "tiny")
    assert widget.commit() == []
    assert any("No image layer" in m for m in notes), notes
    # an image added later is picked up
    image, _ = nuclei_2d()
    viewer.add_image(image)
    qtbot.waitUntil(lambda: not widget.is_busy)
    assert widget.image is viewer.layers[0]
    assert widget.points_layer is not None


def test_image_removed_while_computing(sam, idle, gate, notes):
    image, gt = nuclei_3d()
    viewer, widget, layer = sam(image)
    g = gate(widget.predictor)
    viewer.dims.current_step = (2, 0, 0)
    widget.points_layer.add([2, *object_centre(gt[2])])
    widget.refresh()
    assert g.entered.wait(5)
    assert widget.is_busy
    viewer.layers.remove(layer)
    assert sum("was removed" in m for m in notes) == 1, notes
    g.open()
    idle(widget)
    assert widget.image is None
    assert widget.preview is None
    assert len(widget.cache) == 0
    assert not [m for m in notes if "failed" in m]


def test_target_that_cannot_hold_more_ids(sam, idle, notes):
    image, _ = nuclei_2d()
    viewer, widget, _ = sam(image)
    full = np.full(image.shape, 0, dtype=np.uint8)
    full[0, 0] = 255
    target = viewer.add_labels(full, name="full")
    widget.target_combo.value = target
    widget.shapes_layer.add_rectangles(np.array([[10, 10], [40, 40]], dtype=float))
    idle(widget)
    assert widget.commit() == []
    assert any("no free ids" in m for m in notes), notes
    assert target.data.sum() == 255  # untouched
    assert len(widget.shapes_layer.data) == 1  # the prompt is kept


def test_commit_onto_existing_objects_only(sam, idle, notes):
    image, _ = nuclei_2d()
    viewer, widget, _ = sam(image)
    widget.shapes_layer.add_rectangles(np.array([[10, 10], [40, 40]], dtype=float))
    idle(widget)
    existing = np.full(image.shape, 9, dtype=np.int32)
    target = viewer.add_labels(existing.copy(), name="cells")
    widget.target_combo.value = target
    assert widget.commit() == []
    assert any("existing objects" in m for m in notes), notes
    np.testing.assert_array_equal(target.data, existing)
    assert len(widget.shapes_layer.data) == 1  # the prompt is kept


def test_a_brightfield_image_is_flagged_once_for_the_default_model(sam, idle, notes,
                                                                    tiny_model):
    yy, xx = np.mgrid[:64, :64]
    nuclei = ((yy - 20) ** 2 + (xx - 20) ** 2 < 64) | ((yy - 40) ** 2 + (xx - 44) ** 2 < 100)
    noise = np.random.default_rng(0).normal(0, 5, nuclei.shape)
    fluorescence = np.clip(20 + 180 * nuclei + noise, 0, 255).astype(np.uint8)
    brightfield = np.repeat(255 - fluorescence[..., None], 3, axis=-1)  # dark nuclei, RGB
    viewer, widget, _ = sam(brightfield, model=False, rgb=True)
    widget.set_model(tiny_model, "vit_b")  # another model: nothing to say
    idle(widget)
    assert not any("bright background" in m for m in notes), notes
    widget.set_model(tiny_model, "default")  # (the name is what counts)
    widget.points_layer.add([10, 10])
    idle(widget)
    warned = [m for m in notes if "bright background" in m]
    assert len(warned) == 1 and "Invert" in warned[0], notes
    viewer.add_image(fluorescence, name="fluo")  # a fluorescence image: nothing
    widget.points_layer.add([10, 10])
    idle(widget)
    assert sum("bright background" in m for m in notes) == 1, notes
