"""Propagation and segment everything in the viewer: background jobs, one undo step, anchors,
cancel keeping partial work, nothing of the user's labels lost."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from conftest import wait_idle
from test_nd import go_to

from napari_sam.plugin._widget import AUTOMATIC_NAME, LABELS_NAME


@pytest.fixture(scope="module")
def default_model():
    from napari_sam import build_model

    return build_model("default")


@pytest.fixture(scope="module")
def stack():
    from napari_sam.data.synthetic import SyntheticSettings, make_nuclei_3d

    # the labels the default model was trained on (before the half-maximum convention, which
    # stretches 3D labels along z with the axial blur)
    return make_nuclei_3d((12, 96, 96), seed=3, settings=SyntheticSettings(label_edge="geometric"))


def two_objects(gt, z):
    """The two largest objects of slice ``z`` that span at least 4 slices."""
    ids, counts = np.unique(gt[z][gt[z] > 0], return_counts=True)
    keep = [i for i in ids[np.argsort(counts)[::-1]] if (gt == i).any(axis=(1, 2)).sum() >= 4]
    return keep[:2]


def box_of(mask, z):
    """A rectangle (4 corners, (z, row, col)) around ``mask`` on slice ``z``."""
    rr, cc = np.nonzero(mask)
    r0, c0, r1, c1 = rr.min() - 1, cc.min() - 1, rr.max() + 1, cc.max() + 1
    return np.array([[z, r0, c0], [z, r0, c1], [z, r1, c1], [z, r1, c0]], dtype=float)


@pytest.fixture
def stack_widget(sam, default_model, stack):
    image, gt = stack
    viewer, widget, layer = sam(image, model=False)
    widget.set_model(default_model, "default")
    return viewer, widget, layer, image, gt


def test_two_objects_propagate_in_one_undoable_run(stack_widget, qtbot, notes):
    viewer, widget, layer, image, gt = stack_widget
    widget.snap_objects.value = False  # SAM's masks: the refiner's part is checked below
    z = 6
    go_to(viewer, axis0=z)
    a, b = two_objects(gt, z)
    for obj in (a, b):
        widget.shapes_layer.add_rectangles(box_of(gt[z] == obj, z))
    wait_idle(qtbot, widget, 20_000)
    assert widget.preview is not None and len(widget.preview.masks) == 2
    assert widget.predictor.refines  # the preview's masks were redrawn from the plane's pixels
    refined = [m.copy() for m in widget.preview.masks]
    widget.refine_masks.value = False  # the user switches the refiner off: decoded again
    wait_idle(qtbot, widget, 20_000)
    assert not widget.predictor.refines and len(widget.preview.masks) == 2
    assert any((a != b).any() for a, b in zip(refined, widget.preview.masks))
    widget.refine_masks.value = True
    wait_idle(qtbot, widget, 20_000)
    assert all((a == b).all() for a, b in zip(refined, widget.preview.masks))

    target = viewer.add_labels(np.zeros(gt.shape, dtype=np.int32), name="mine")
    target.data[0, :5, :5] = 9  # the user's own object: must survive
    widget.target_combo.value = target
    assert widget.propagate()
    assert widget.tasks.busy  # runs in the background
    widget.tasks.wait(60)
    ids = sorted(int(v) for v in np.unique(target.data) if v not in (0, 9))
    assert ids == [10, 11]  # fresh ids after the existing 9
    for new_id, obj in zip(ids, (a, b)):
        pred = target.data == new_id
        slices = np.nonzero(pred.any(axis=(1, 2)))[0]
        assert len(slices) >= 3  # more than the prompted slice
        truth = gt == obj
        iou = (pred & truth).sum() / (pred | truth).sum()
        assert iou > 0.4, iou
    assert (target.data[0, :5, :5] == 9).all()
    assert len(widget.shapes_layer.data) == 0  # the propagated prompts are consumed
    assert "Ctrl+Z" in widget.status_label.value
    target.undo()  # one step takes the whole propagation back
    assert set(np.unique(target.data)) == {0, 9}
    assert not [m for m in notes if "failed" in m]


def test_selected_label_is_filled_between_anchor_slices(stack_widget, qtbot):
    viewer, widget, layer, image, gt = stack_widget
    obj = two_objects(gt, 6)[0]
    span = np.nonzero((gt == obj).any(axis=(1, 2)))[0]
    lo, hi = int(span[0]) + 1, int(span[-1]) - 1
    assert hi - lo >= 2
    target = viewer.add_labels(np.zeros(gt.shape, dtype=np.int32), name="anchors")
    target.data[lo][gt[lo] == obj] = 4
    target.data[hi][gt[hi] == obj] = 4
    widget.target_combo.value = target
    target.selected_label = 4
    go_to(viewer, axis0=lo)
    wait_idle(qtbot, widget, 20_000)
    assert widget.preview is None
    assert widget.propagate()
    widget.tasks.wait(60)
    filled = np.nonzero((target.data == 4).any(axis=(1, 2)))[0]
    assert set(range(lo, hi + 1)) <= set(filled.tolist())  # every slice between the anchors
    # between the anchors the object is known to continue: filled well there (beyond them the
    # fronts follow the stopping tests; on this 96 px stack the v0.3 model follows the out-of-
    # focus light of the object below too far: docs/propagation.md)
    truth = (gt == obj)[lo : hi + 1]
    pred = (target.data == 4)[lo : hi + 1]
    assert (pred & truth).sum() / (pred | truth).sum() > 0.8


def test_cancel_keeps_the_slices_done(stack_widget, qtbot):
    viewer, widget, layer, image, gt = stack_widget
    z = 6
    go_to(viewer, axis0=z)
    obj = two_objects(gt, z)[0]
    widget.shapes_layer.add_rectangles(box_of(gt[z] == obj, z))
    wait_idle(qtbot, widget, 20_000)
    embedder = widget.embedder(layer, widget.preview.plane)
    original = embedder.get
    calls = []
    slow = threading.Event()

    def get(index):
        calls.append(index)
        if len(calls) == 3:
            slow.set()
            threading.Event().wait(0.3)
        return original(index)

    embedder.get = get
    assert widget.propagate()
    assert slow.wait(20)
    widget.tasks.cancel()
    widget.tasks.wait(60)
    target = viewer.layers[LABELS_NAME]
    slices = np.nonzero(target.data.any(axis=(1, 2)))[0]
    assert z in slices  # the prompted slice at least
    assert len(slices) < (gt == obj).any(axis=(1, 2)).sum()  # stopped early
    assert "cancelled" in widget.status_label.value


def test_propagate_without_objects_or_on_2d_says_why(sam, notes):
    image = np.random.default_rng(0).random((40, 40))
    viewer, widget, _ = sam(image)
    assert not widget.propagate()
    assert any("2D image" in m for m in notes), notes


def test_segment_everything_all_slices_result_is_written_as_label_planes(sam):
    from napari_sam.plugin._layers import current_plane

    image = np.zeros((5, 16, 16), dtype=np.float32)
    viewer, widget, layer = sam(image, model=False)
    plane = current_plane(layer, viewer.dims)
    found = np.zeros((5, 16, 16), dtype=np.int32)  # as the engine returns it: ids per run
    found[1, 2:6, 2:6] = 1
    found[1, 8:12, 8:12] = 4
    found[3, 2:6, 2:6] = 4
    widget.stack.write_automatic(layer, plane, 0, "all slices", found, False)
    auto = viewer.layers[AUTOMATIC_NAME]
    first = np.where(found == 4, 2, found)  # ids 1, 4 -> fresh 1, 2
    np.testing.assert_array_equal(auto.data, first)
    found2 = np.zeros_like(found)
    found2[1, 0:4, 0:4] = 7  # overlaps object 1: existing pixels are kept
    found2[4, 0:2, 0:2] = 7
    widget.stack.write_automatic(layer, plane, 0, "all slices", found2, False)
    assert (auto.data[1, 2:4, 2:4] == 1).all() and (auto.data[1, 0:2, 0:4] == 3).all()
    assert (auto.data[4, 0:2, 0:2] == 3).all()
    auto.undo()  # one step per run
    np.testing.assert_array_equal(auto.data, first)


def test_segment_everything_writes_a_new_layer_without_overlap(stack_widget, qtbot):
    viewer, widget, layer, image, gt = stack_widget
    go_to(viewer, axis0=6)
    wait_idle(qtbot, widget, 20_000)
    assert widget.segment_everything("this slice")
    widget.tasks.wait(120)
    auto = viewer.layers[AUTOMATIC_NAME]
    assert auto.data.shape == gt.shape
    written = np.nonzero(auto.data.any(axis=(1, 2)))[0].tolist()
    assert written == [6]
    n = len(np.unique(auto.data[6])) - 1
    assert n >= 3
    # a second run on another slice adds objects with fresh ids, keeps the first ones
    first = auto.data[6].copy()
    go_to(viewer, axis0=3)
    assert widget.segment_everything("this slice")
    widget.tasks.wait(120)
    np.testing.assert_array_equal(auto.data[6], first)
    new = set(np.unique(auto.data[3])) - {0}
    assert new and not new & set(np.unique(first))
    auto.undo()
    assert not auto.data[3].any()


def test_segment_everything_prompts_choice_reaches_the_engine(stack_widget, qtbot, monkeypatch,
                                                             notes):
    import napari_sam.workflows.automatic as automatic
    import napari_sam.workflows.instance_decoder as decoder_mode

    viewer, widget, layer, image, gt = stack_widget
    go_to(viewer, axis0=6)
    wait_idle(qtbot, widget, 20_000)
    seen = []
    real, real_decoder = automatic.segment_everything, decoder_mode.segment_everything

    def spy(*args, params=None, **kwargs):
        seen.append(params.point_source)
        return real(*args, params=params, **kwargs)

    def decoder_spy(*args, **kwargs):
        seen.append("decoder")
        return real_decoder(*args, **kwargs)

    monkeypatch.setattr(automatic, "segment_everything", spy)
    monkeypatch.setattr(decoder_mode, "segment_everything", decoder_spy)
    assert widget.auto_prompts.value == "instance decoder"  # the default
    assert decoder_mode.has_instance_decoder(widget.predictor.model)  # the default model's
    for choice, source in (("instance decoder", "decoder"), ("regular grid", "grid"),
                           ("bright blobs", "blobs")):
        widget.auto_prompts.value = choice
        assert widget.segment_everything("this slice")
        widget.tasks.wait(120)
        assert seen[-1] == source
        assert viewer.layers[AUTOMATIC_NAME].data[6].any()
    # a model without an instance decoder: bright blobs instead, and the user is told
    monkeypatch.setattr(widget.predictor.model, "instance_decoder", None)
    widget.auto_prompts.value = "instance decoder"
    assert widget.segment_everything("this slice")
    widget.tasks.wait(120)
    assert seen[-1] == "blobs"
    assert any("no instance decoder" in n for n in notes)
