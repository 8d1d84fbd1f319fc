"""What a new user meets in the viewer: the default model is ready, clicks after a commit or a
job are prompts again, committed colours differ from the preview, removed images end jobs."""

from __future__ import annotations

import threading

import numpy as np
from conftest import nuclei_2d, object_centre, wait_idle

from napari_sam.plugin._widget import DEFAULT_MODEL, PREVIEW_COLOR, LABELS_NAME, SamWidget


def test_the_default_model_loads_when_the_widget_opens(make_napari_viewer, qtbot):
    image, gt = nuclei_2d()
    viewer = make_napari_viewer()
    viewer.add_image(image)
    widget = SamWidget(viewer)  # as napari's plugin menu creates it
    viewer.window.add_dock_widget(widget)
    qtbot.waitUntil(lambda: widget.predictor is not None, timeout=60_000)
    assert widget.model_name == DEFAULT_MODEL
    widget.points_layer.add(object_centre(gt))
    wait_idle(qtbot, widget, 60_000)
    assert widget.preview is not None and widget.preview.mask.any()


def test_a_model_set_while_the_default_loads_is_kept(make_napari_viewer, qtbot, tiny_model):
    viewer = make_napari_viewer()
    viewer.add_image(nuclei_2d()[0])
    widget = SamWidget(viewer)
    widget.set_model(tiny_model, "tiny")  # before the background load returns
    qtbot.waitUntil(lambda: not widget.session.model_loading, timeout=60_000)
    assert widget.model_name == "tiny"


def test_the_click_after_a_commit_adds_a_prompt(sam, idle):
    image, gt = nuclei_2d()
    viewer, widget, layer = sam(image)
    widget.points_layer.add(object_centre(gt))
    idle(widget)
    viewer.layers.selection.active = layer  # the user looked at another layer meanwhile
    assert widget.commit() == [1]
    assert viewer.layers.selection.active is widget.points_layer
    assert widget.points_layer.mode == "add"
    # a click on the canvas goes to the active layer: it is a prompt, not a paint stroke
    labels = viewer.layers[LABELS_NAME]
    before = labels.data.copy()
    widget.points_layer.add(object_centre(gt))
    assert len(widget.points_layer.data) == 1
    np.testing.assert_array_equal(labels.data, before)


def test_the_prompt_layer_is_active_after_a_job(sam, idle):
    image, _ = nuclei_2d()
    viewer, widget, layer = sam(image)
    viewer.layers.selection.active = layer
    assert widget.segment_everything("this slice")
    widget.tasks.wait(120)
    assert viewer.layers.selection.active is widget.points_layer


def test_committed_labels_never_take_the_preview_colour(sam, idle):
    from napari.utils.colormaps.standardize_color import transform_color

    image, gt = nuclei_2d()
    viewer, widget, layer = sam(image)
    widget.points_layer.add(object_centre(gt))
    idle(widget)
    widget.commit()
    labels = viewer.layers[LABELS_NAME]
    preview = transform_color(PREVIEW_COLOR)[0][:3]
    colours = labels.colormap.map(np.arange(1, 200))[:, :3]
    assert np.linalg.norm(colours - preview, axis=1).min() >= 0.45


def test_removing_the_image_cancels_its_job(sam, idle, monkeypatch):
    import napari_sam.workflows.automatic as automatic

    started, polled = threading.Event(), threading.Event()

    def slow(*args, cancelled, **kwargs):  # a long job that polls for cancellation
        started.set()
        while not cancelled():
            threading.Event().wait(0.02)
        polled.set()
        return np.zeros(args[1].shape[:2], np.int32)

    monkeypatch.setattr(automatic, "segment_everything", slow)
    image, _ = nuclei_2d()
    viewer, widget, layer = sam(image)
    assert widget.segment_everything("this slice")
    assert started.wait(30)
    viewer.layers.remove(layer)
    assert polled.wait(1.0), "the job went on after its image was removed"
    widget.tasks.wait(30)
    assert widget.tasks.context is None


def test_text_search_looks_among_segment_everything_once_it_exists(sam, idle):
    image, gt = nuclei_2d()
    viewer, widget, layer = sam(image)
    widget.points_layer.add(object_centre(gt))
    idle(widget)
    widget.commit()  # "SAM labels" exists first, and is the text search's choice
    assert widget.text.candidates_combo.value is viewer.layers[LABELS_NAME]
    auto = widget.stack.automatic_layer(layer)  # what segment everything writes into
    assert widget.text.candidates_combo.value is auto


def test_a_long_error_fits_the_toast_with_the_rest_one_click_away(sam, notes):
    from napari_sam.plugin._notify import TOAST_CHARS

    image, _ = nuclei_2d()
    viewer, widget, layer = sam(image)
    long = ("CLIP weights ViT-B-32:openai are not on this machine and could not be downloaded "
            "(no network). Download https://example.org/weights.bin on a machine with internet "
            "access and save it as /cache/clip/ViT-B-32-openai.bin.")
    widget.report_task_error(RuntimeError(long))
    shown = notes[-1]
    assert len(shown) <= TOAST_CHARS and shown.startswith("Segment Anything: CLIP weights")
    from napari.utils.notifications import notification_manager

    last = notification_manager.records[-1]
    assert [name for name, _ in last.actions] == ["Details"] and long in last.details


def test_a_click_never_blocks_the_gui_thread(sam, idle, qtbot, monkeypatch):
    """A heartbeat on the GUI thread keeps beating while a (slow) decoder works on a click."""
    import time

    from qtpy.QtCore import QTimer

    image, gt = nuclei_2d()
    viewer, widget, layer = sam(image)
    real = widget.predictor.segment

    def slow_segment(**kwargs):  # a decoder that takes 0.4 s, as ViT-H's can on a laptop
        time.sleep(0.4)
        return real(**kwargs)

    monkeypatch.setattr(widget.predictor, "segment", slow_segment)
    beats = []
    timer = QTimer()
    timer.setInterval(5)
    timer.timeout.connect(lambda: beats.append(time.perf_counter()))
    timer.start()
    qtbot.wait(50)
    widget.points_layer.add(object_centre(gt))  # the click
    qtbot.waitUntil(lambda: widget.preview is not None, timeout=20_000)
    timer.stop()
    gaps = np.diff(beats)
    assert widget.preview.mask.any()
    assert gaps.max() < 0.1, f"the GUI thread was blocked for {gaps.max():.3f} s"
