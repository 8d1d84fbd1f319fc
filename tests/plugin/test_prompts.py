"""Box and mask prompts: rectangles, several boxes, polygons, ellipses, a rough Labels layer."""

from __future__ import annotations

import numpy as np
from conftest import SegmentSpy, nuclei_2d, nuclei_3d

from napari_sam.plugin._widget import LABELS_NAME


def test_several_boxes_are_several_objects(sam, idle):
    image, _ = nuclei_2d()
    viewer, widget, _ = sam(image)
    spy = SegmentSpy(widget.predictor)
    boxes = [[[2, 2], [20, 24]], [[30, 5], [60, 25]], [[35, 35], [60, 62]]]
    widget.shapes_layer.add_rectangles(np.array(boxes, dtype=float))
    idle(widget)
    assert len(spy.calls) == 3
    got = sorted(tuple(np.round(c["box"]).astype(int)) for c in spy.calls)
    assert got == sorted((r0, c0, r1, c1) for (r0, c0), (r1, c1) in boxes)
    assert all(c["mask_input"] is None for c in spy.calls)
    assert len(widget.preview.masks) == 3

    nonempty = sum(
        bool((m & ~np.any(widget.preview.masks[:i], axis=0)).any()) if i else bool(m.any())
        for i, m in enumerate(widget.preview.masks)
    )
    ids = widget.commit()
    assert len(ids) == nonempty >= 2
    labels_layer = viewer.layers[LABELS_NAME]
    labels = labels_layer.data
    assert sorted(np.unique(labels[labels > 0]).tolist()) == ids
    assert len(widget.shapes_layer.data) == 0
    labels_layer.undo()  # all objects of a commit go in one undo step
    assert not labels_layer.data.any()

    # a point inside a box refines that box; a point outside any box is an object of its own
    spy.calls.clear()
    widget.shapes_layer.add_rectangles(np.array([[10, 10], [40, 40]], dtype=float))
    widget.points_layer.add([20, 20])
    widget.points_layer.add([55, 55])
    idle(widget)
    by_box = {c["box"] is None: c for c in spy.calls[-2:]}
    np.testing.assert_allclose(by_box[False]["points"], [[20, 20]])
    np.testing.assert_allclose(by_box[True]["points"], [[55, 55]])


def test_polygon_and_ellipse_are_box_plus_mask_prompts(sam, idle):
    image, _ = nuclei_2d()
    _viewer, widget, _ = sam(image)
    spy = SegmentSpy(widget.predictor)
    triangle = np.array([[10, 10], [10, 50], [50, 10]], dtype=float)
    widget.shapes_layer.add_polygons([triangle])
    idle(widget)
    call = spy.calls[-1]
    np.testing.assert_allclose(call["box"], [10, 10, 50, 50])
    mask = call["mask_input"]
    assert mask.shape == image.shape and mask.dtype == bool
    assert mask[15, 15] and not mask[45, 45] and not mask[5, 5]
    assert abs(int(mask.sum()) - 800) < 80  # the triangle's area, 40 * 40 / 2
    assert widget.preview is not None
    assert widget.commit() == [1]

    # an ellipse too
    widget.shapes_layer.add_ellipses(np.array([[32, 32], [10, 20]], dtype=float))  # centre, radii
    idle(widget)
    mask = spy.calls[-1]["mask_input"]
    np.testing.assert_allclose(spy.calls[-1]["box"], [22, 12, 42, 52], atol=0.5)
    assert mask[32, 32] and mask[32, 50] and not mask[24, 14]
    assert abs(mask.sum() - np.pi * 10 * 20) < 0.1 * np.pi * 10 * 20


def test_rough_labels_layer_as_mask_prompt(sam, idle):
    image, _ = nuclei_3d((6, 64, 64))
    viewer, widget, _ = sam(image)
    viewer.dims.current_step = (2, 0, 0)
    idle(widget)
    rough = np.zeros(image.shape, dtype=np.int32)
    rough[2, 10:30, 12:40] = 5
    rough[4, 10:30, 12:40] = 6  # another slice: not a prompt on z=2
    source = viewer.add_labels(rough.copy(), name="rough")
    widget.mask_combo.value = source
    spy = SegmentSpy(widget.predictor)
    widget.refresh()
    idle(widget)
    assert len(spy.calls) == 1
    call = spy.calls[0]
    np.testing.assert_array_equal(call["mask_input"], rough[2] == 5)
    np.testing.assert_allclose(call["box"], [10, 12, 29, 39])
    assert widget.preview is not None

    ids = widget.commit()
    assert ids == [1]
    np.testing.assert_array_equal(source.data, rough)  # the rough layer is never modified
    assert widget.preview is None  # the committed rough object is not proposed again
    idle(widget)
    assert widget.preview is None

    # repainting the rough object makes it a prompt again
    source.data_setitem((np.array([2]), np.array([31]), np.array([20])), 5)
    idle(widget)
    assert widget.preview is not None
    assert viewer.layers[LABELS_NAME].data[4].sum() == 0


def test_a_box_preview_stays_in_its_box(sam, idle):
    import torch

    image, _ = nuclei_2d()
    viewer, widget, _ = sam(image)
    predictor = widget.predictor
    upscale = predictor.full_logits

    def spilling(low_res, geometry):  # a model whose masks cover the whole slice
        return torch.full_like(upscale(low_res, geometry), 5.0)

    predictor.full_logits = spilling
    predictor.full_masks = lambda low_res, geometry: (spilling(low_res, geometry) > 0).numpy()
    widget.shapes_layer.add_rectangles(np.array([[20, 10], [39, 49]], dtype=float))
    idle(widget)
    (mask,) = widget.preview.masks
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    # the box (rows 20..39, cols 10..49) grown by 10 % of its side plus one pixel
    assert (rows[0], rows[-1]) == (17, 42) and (cols[0], cols[-1]) == (5, 54)
    widget.commit()
    assert np.count_nonzero(viewer.layers[LABELS_NAME].data) == mask.sum() < mask.size
