"""The widget's segment everything uses the model's instance decoder when it has one (issue 23)."""

from __future__ import annotations

import numpy as np
from conftest import wait_idle
from test_nd import go_to

from napari_sam.plugin._widget import AUTOMATIC_NAME


def test_segment_everything_uses_the_instance_decoder(sam, qtbot, monkeypatch):
    from napari_sam.modeling.instance_decoder import InstanceDecoder
    from napari_sam.workflows import automatic, instance_decoder

    image = np.zeros((4, 64, 64), np.float32)
    image[:, 20:40, 10:30] = 1.0
    viewer, widget, _ = sam(image)
    model = widget.predictor.model
    # through monkeypatch: the tiny model is shared by the whole session's tests
    decoder = InstanceDecoder(embed_dim=model.prompt_encoder.embed_dim, initial_features=8)
    monkeypatch.setattr(model, "instance_decoder", decoder.eval(), raising=False)
    go_to(viewer, axis0=2)
    wait_idle(qtbot, widget, 20_000)
    calls = []

    def grid(*args, **kwargs):  # the point-grid mode must not run
        raise AssertionError("the point grid ran for a model with an instance decoder")

    def fake_outputs(model_, emb):  # one square object where the image is bright
        fg = np.zeros((3, *emb.original_size), np.float32)
        fg[0, 20:40, 10:30] = 1.0
        fg[1:] = 1.0 - fg[0]
        calls.append(emb.original_size)
        return fg

    monkeypatch.setattr(automatic, "segment_everything", grid)
    monkeypatch.setattr(instance_decoder, "decoder_outputs", fake_outputs)
    assert widget.segment_everything("this slice")
    widget.tasks.wait(120)
    assert calls == [(64, 64)]
    auto = viewer.layers[AUTOMATIC_NAME].data
    ids = np.unique(auto[2][22:38, 12:28])  # the square (corners rounded by the smoothing)
    assert ids.size == 1 and ids[0] > 0 and set(np.unique(auto[2])) == {0, ids[0]}
    assert not auto[[0, 1, 3]].any()


def test_snap_to_objects_redraws_the_preview_with_the_slice_objects(sam, qtbot, monkeypatch,
                                                                     notes):
    from napari_sam.modeling.instance_decoder import InstanceDecoder
    from napari_sam.workflows import snap

    image = np.zeros((4, 64, 64), np.float32)
    image[:, 20:40, 10:30] = 1.0
    viewer, widget, _ = sam(image)
    model = widget.predictor.model
    # SAM's mask: the square minus its last row and column; the instance: the square
    square = np.zeros((64, 64), bool)
    square[20:40, 10:30] = True
    sam_mask = square.copy()
    sam_mask[39, :] = sam_mask[:, 29] = False
    monkeypatch.setattr(widget.predictor, "segment",
                        lambda **kw: (sam_mask.copy(), 0.9, np.zeros((1, 16, 16), np.float32)))
    made = []

    def fake_instances(model_, image_, params=None, intensity_range=None, embedding=None):
        made.append(image_.shape)
        return square.astype(np.int32)

    monkeypatch.setattr(snap, "segment_everything", fake_instances)
    go_to(viewer, axis0=2)
    widget.points_layer.add([2, 30, 20])
    wait_idle(qtbot, widget, 20_000)
    # on by default, but the tiny model has no instance decoder: SAM's mask, and no word
    assert widget.snap_objects.value and widget.session.snapper is None
    np.testing.assert_array_equal(widget.preview.masks[0], sam_mask)
    assert not any("instance decoder" in n for n in notes)

    widget.snap_objects.value = False
    widget.snap_objects.value = True  # ticked by the user: said once
    wait_idle(qtbot, widget, 20_000)
    assert widget.session.snapper is None and any("instance decoder" in n for n in notes)
    np.testing.assert_array_equal(widget.preview.masks[0], sam_mask)

    decoder = InstanceDecoder(embed_dim=model.prompt_encoder.embed_dim, initial_features=8)
    monkeypatch.setattr(model, "instance_decoder", decoder.eval(), raising=False)
    widget.snap_objects.value = False
    widget.snap_objects.value = True
    wait_idle(qtbot, widget, 20_000)
    qtbot.waitUntil(lambda: widget.preview is not None
                    and (widget.preview.masks[0] == square).all(), timeout=20_000)
    widget.points_layer.add([2, 25, 15])  # another click on the slice: its objects are kept
    wait_idle(qtbot, widget, 20_000)
    assert made == [(64, 64)]
    # another slice: its objects are found in the background once its embedding is ready,
    # before any click there
    go_to(viewer, axis0=0)
    qtbot.waitUntil(lambda: len(made) == 2, timeout=20_000)
    wait_idle(qtbot, widget, 20_000)
    widget.points_layer.add([0, 30, 20])
    wait_idle(qtbot, widget, 20_000)
    qtbot.waitUntil(lambda: widget.preview is not None
                    and (widget.preview.masks[0] == square).all(), timeout=20_000)
    assert len(made) == 2  # the click used them
    go_to(viewer, axis0=2)
    wait_idle(qtbot, widget, 20_000)
    widget.snap_objects.value = False  # off again: SAM's mask
    qtbot.waitUntil(lambda: (widget.preview.masks[0] == sam_mask).all(), timeout=20_000)
