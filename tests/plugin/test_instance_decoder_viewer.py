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
