"""The whole interactive path on a 2D image: point -> preview -> commit -> undo."""

from __future__ import annotations

import numpy as np
from conftest import SegmentSpy, nuclei_2d, object_centre, reference_mask
from napari.utils.key_bindings import coerce_keybinding

from napari_sam.plugin._widget import (
    KEY_CLEAR,
    KEY_COMMIT,
    KEY_TOGGLE,
    LABELS_NAME,
    NEGATIVE_COLOR,
    POSITIVE_COLOR,
)
from napari_sam.engine.preprocess import estimate_intensity_range


def press(viewer, key):
    """Run what the viewer's key binding for ``key`` runs (as napari does on a key press)."""
    viewer.keymap[coerce_keybinding(key)](viewer)


def test_point_preview_commit_undo(sam, idle, tiny_model):
    image, gt = nuclei_2d()
    viewer, widget, layer = sam(image)
    rc = object_centre(gt)

    widget.points_layer.add(rc)
    idle(widget)

    # the preview is SAM's mask for that point, computed with one intensity range for the image
    expected = reference_mask(
        tiny_model, image, estimate_intensity_range(image), points=[rc], labels=[1]
    )
    assert expected.any()
    assert widget.preview is not None
    np.testing.assert_array_equal(widget.preview.mask, expected)
    np.testing.assert_array_equal(widget.preview_layer.data > 0, expected)
    # nothing is written before the commit
    assert LABELS_NAME not in viewer.layers

    ids = widget.commit()
    labels = viewer.layers[LABELS_NAME]
    assert ids == [1]
    assert labels.data.shape == image.shape
    np.testing.assert_array_equal(labels.data, expected.astype(labels.data.dtype))
    np.testing.assert_allclose(labels.scale, layer.scale)
    # the slice's prompts and the preview are gone
    assert len(widget.points_layer.data) == 0
    assert widget.preview is None
    assert not widget.preview_layer.data.any()

    labels.undo()
    assert not labels.data.any()
    labels.redo()
    np.testing.assert_array_equal(labels.data > 0, expected)

    # the next object gets the next id, one undo step per commit
    widget.shapes_layer.add_rectangles(np.array([[5, 5], [30, 30]]))
    idle(widget)
    assert widget.commit() == [2]
    assert set(np.unique(labels.data)) == {0, 1, 2}
    labels.undo()
    assert not (labels.data == 2).any()
    np.testing.assert_array_equal(labels.data > 0, expected)


def test_commit_ids_follow_hand_painting_undo_and_replaced_data(sam, idle):
    image, _ = nuclei_2d()
    viewer, widget, _ = sam(image)
    widget.overwrite_checkbox.value = True  # every commit writes, on the same box

    def commit_box():
        widget.shapes_layer.add_rectangles(np.array([[5, 5], [30, 30]]))
        idle(widget)
        return widget.commit()

    assert commit_box() == [1]
    labels = viewer.layers[LABELS_NAME]
    labels.paint((60, 60), 7)  # by hand, with the brush
    assert commit_box() == [8]
    labels.undo()  # the commit
    labels.undo()  # the brush stroke
    assert labels.data.max() == 1
    assert commit_box() == [2]
    replaced = np.zeros_like(labels.data)
    replaced[0, 0] = 20
    labels.data = replaced
    assert commit_box() == [21]


def test_keys_and_buttons(sam, idle):
    image, gt = nuclei_2d()
    viewer, widget, _ = sam(image)
    rc = object_centre(gt)

    # N toggles the sign of the *next* points
    widget.points_layer.add(rc)
    press(viewer, KEY_TOGGLE)
    assert widget.point_mode.value == "negative"
    widget.points_layer.selected_data = set()
    widget.points_layer.add([2, 2])
    positive = widget.points_layer.features["positive"].tolist()
    assert positive == [True, False]
    colors = widget.points_layer.face_color
    np.testing.assert_allclose(colors[0][:3], [0, 1, 0])  # POSITIVE_COLOR
    np.testing.assert_allclose(colors[1][:3], [1, 0, 1])  # NEGATIVE_COLOR
    assert (POSITIVE_COLOR, NEGATIVE_COLOR) == ("#00ff00", "#ff00ff")
    press(viewer, KEY_TOGGLE)
    assert widget.point_mode.value == "positive"

    # the negative point reaches SAM with label 0
    spy = SegmentSpy(widget.predictor)
    widget.refresh()
    assert spy.calls[-1]["labels"].tolist() == [1, 0]

    # Q clears the slice's prompts, K commits (nothing to commit then)
    press(viewer, KEY_CLEAR)
    assert len(widget.points_layer.data) == 0
    idle(widget)
    assert widget.preview is None

    widget.points_layer.add(rc)
    idle(widget)
    press(viewer, KEY_COMMIT)
    assert (viewer.layers[LABELS_NAME].data == 1).any()

    # the buttons do the same
    widget.points_layer.add(rc)
    idle(widget)
    widget.clear_button.native.click()
    assert len(widget.points_layer.data) == 0
    widget.shapes_layer.add_rectangles(np.array([[30, 30], [60, 60]]))
    idle(widget)
    widget.commit_button.native.click()
    assert (viewer.layers[LABELS_NAME].data == 2).any()


def test_single_point_best_of_three_moves_and_deletes_redecode(sam, idle):
    image, gt = nuclei_2d()
    _viewer, widget, _ = sam(image)
    calls = []  # the multimask flag of every decoder pass
    original = widget.predictor._decode

    def decode(emb, points, boxes, masks, multimask):
        calls.append(bool(multimask))
        return original(emb, points, boxes, masks, multimask)

    widget.predictor._decode = decode
    rc = object_centre(gt)
    widget.points_layer.add(rc)
    idle(widget)
    assert calls[-1] is True
    widget.points_layer.add([rc[0] + 1, rc[1] + 1])
    idle(widget)
    assert calls[-1] is False

    # moving a point re-decodes at once with the new position
    spy = SegmentSpy(widget.predictor)
    moved = widget.points_layer.data.copy()
    moved[1] = [10, 12]
    widget.points_layer.data = moved
    idle(widget)
    np.testing.assert_allclose(spy.calls[-1]["points"], [rc, [10, 12]])
    # deleting one leaves the single-point (best of three) case again
    widget.points_layer.remove([1])
    idle(widget)
    assert calls[-1] is True


def test_overwrite_off_keeps_existing_objects(sam, idle):
    image, _gt = nuclei_2d()
    viewer, widget, _ = sam(image)
    widget.shapes_layer.add_rectangles(np.array([[10, 10], [50, 50]]))
    idle(widget)
    mask = widget.preview.mask.copy()
    assert mask.sum() > 20

    # an existing object 7 holds half of the previewed pixels
    existing = np.zeros(image.shape, dtype=np.int32)
    rows = np.nonzero(mask.any(axis=1))[0]
    split = rows[len(rows) // 2]
    existing[:split][mask[:split]] = 7
    cells = viewer.add_labels(existing.copy(), name="cells")
    widget.target_combo.value = cells
    widget.overwrite_checkbox.value = False

    assert widget.commit() == [8]
    assert (cells.data[existing == 7] == 7).all()  # kept
    np.testing.assert_array_equal(cells.data == 8, mask & (existing == 0))
    cells.undo()
    np.testing.assert_array_equal(cells.data, existing)


def test_overwrite_on_replaces_existing_objects(sam, idle):
    image, _ = nuclei_2d()
    viewer, widget, _ = sam(image)
    widget.shapes_layer.add_rectangles(np.array([[10, 10], [50, 50]]))
    idle(widget)
    mask = widget.preview.mask.copy()
    assert mask.any() and not mask.all()
    existing = np.where(mask, 3, 0).astype(np.int32)
    outside = tuple(np.argwhere(~mask)[0])
    existing[outside] = 3  # a pixel of object 3 outside the preview stays
    cells = viewer.add_labels(existing.copy(), name="cells")
    widget.target_combo.value = cells
    widget.overwrite_checkbox.value = True
    assert widget.commit() == [4]
    np.testing.assert_array_equal(cells.data == 4, mask)
    assert cells.data[outside] == 3


def test_model_change_keeps_labels_and_prompts(sam, idle, tiny_model):
    image, gt = nuclei_2d()
    viewer, widget, _ = sam(image)
    widget.points_layer.add(object_centre(gt))
    idle(widget)
    widget.commit()
    before = viewer.layers[LABELS_NAME].data.copy()
    widget.points_layer.add(object_centre(gt))
    idle(widget)
    widget.set_model(tiny_model, "tiny again")
    idle(widget)
    np.testing.assert_array_equal(viewer.layers[LABELS_NAME].data, before)
    assert len(widget.points_layer.data) == 1
    assert widget.preview is not None  # re-decoded with the new model's embedding
