"""Embeddings in the viewer: kept on disk across sessions, prefetched, precomputed with cancel."""

from __future__ import annotations

import threading

import numpy as np
from conftest import nuclei_3d, object_centre
from test_nd import go_to

from napari_sam.plugin import SamWidget


def test_reopening_the_image_in_a_new_widget_needs_no_recompute(
    sam, idle, encoder_calls, make_napari_viewer, qtbot, tiny_model
):
    image, gt = nuclei_3d()
    viewer, widget, _ = sam(image)
    go_to(viewer, axis0=4)
    widget.points_layer.add([4, *object_centre(gt[4])])
    idle(widget)
    first = widget.preview.mask.copy()
    computed = encoder_calls.calls
    assert computed >= 1

    # "a new session": another viewer and widget on the same pixels (a copy of the array)
    viewer2 = make_napari_viewer()
    viewer2.add_image(image.copy())
    widget2 = SamWidget(viewer2)
    widget2.prefetch_slices = 0
    widget2.set_model(tiny_model, "tiny")
    go_to(viewer2, axis0=4)
    widget2.points_layer.add([4, *object_centre(gt[4])])
    qtbot.waitUntil(lambda: not widget2.is_busy, timeout=10_000)
    assert encoder_calls.calls == computed  # read from the store, not encoded again
    np.testing.assert_array_equal(widget2.preview.mask, first)


def test_changed_pixels_are_not_served_from_the_store(sam, idle, encoder_calls):
    image, gt = nuclei_3d()
    viewer, widget, layer = sam(image)
    go_to(viewer, axis0=3)
    idle(widget)
    n = encoder_calls.calls
    changed = image.copy()
    changed[3] = changed[3][::-1]  # the user edits the data in place of the layer
    layer.data = changed
    idle(widget)
    assert encoder_calls.calls == n + 1


def test_disk_cache_off_keeps_nothing_on_disk(sam, idle, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path))
    image, _ = nuclei_3d()
    viewer, widget, _ = sam(image, model=False)
    widget.disk_cache.value = False
    widget.set_model(widget_model(), "tiny")
    go_to(viewer, axis0=2)
    idle(widget)
    assert widget.predictor.is_image_set
    assert not list(tmp_path.rglob("*.zarr"))
    widget.disk_cache.value = True
    go_to(viewer, axis0=3)
    idle(widget)
    assert list(tmp_path.rglob("*.zarr"))


def widget_model():
    import torch

    from napari_sam.models.build import build_sam, tiny_config

    torch.manual_seed(0)
    return build_sam(tiny_config()).eval()


def test_neighbouring_slices_are_prefetched(sam, idle, encoder_calls):
    image, _ = nuclei_3d()
    viewer, widget, layer = sam(image, prefetch=True)
    go_to(viewer, axis0=5)
    idle(widget)
    embedder = widget.embedder(layer, _plane(widget))
    assert all(embedder.has((z,)) for z in (3, 4, 5, 6, 7))
    assert not embedder.has((1,)) and not embedder.has((9,))
    n = encoder_calls.calls
    go_to(viewer, axis0=6)  # already there: only the new neighbour (z=8) is encoded
    idle(widget)
    assert widget.predictor.embedding.original_size == image.shape[1:]
    assert embedder.has((8,))
    assert encoder_calls.calls == n + 1


def _plane(widget):
    from napari_sam.plugin._layers import current_plane

    return current_plane(widget.image, widget.viewer.dims)


def test_precompute_cancel_keeps_work_and_resumes(sam, idle, gate, notes):
    image, _ = nuclei_3d(shape=(12, 48, 48))
    viewer, widget, layer = sam(image)
    embedder = widget.embedder(layer, _plane(widget))
    calls = {"n": 0}
    original = embedder._compute_and_save
    third = threading.Event()

    def counting(idx):
        calls["n"] += 1
        if calls["n"] == 3:
            third.set()
            threading.Event().wait(0.3)  # leave time to press cancel
        return original(idx)

    embedder._compute_and_save = counting
    assert widget.precompute()
    assert third.wait(10)
    widget.tasks.cancel()
    widget.tasks.wait()
    stored = [z for z in range(12) if embedder.store.is_done(z)]
    assert 3 <= len(stored) < 12  # what was done before the cancel is on disk
    assert "cancelled" in widget.status_label.value
    before = calls["n"]
    assert widget.precompute()
    widget.tasks.wait()
    assert all(embedder.store.is_done(z) for z in range(12))
    assert calls["n"] - before == 12 - len(stored)  # resumed: only the rest was computed
    assert not [m for m in notes if "failed" in m]


def test_precompute_on_a_2d_image_says_why_not(sam, notes):
    image = np.random.default_rng(0).random((40, 40))
    viewer, widget, _ = sam(image)
    assert not widget.precompute()
    assert any("2D image" in m for m in notes), notes
