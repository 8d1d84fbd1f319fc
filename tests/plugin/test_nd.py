"""Slices of nD images: z-stacks, time series, 4D, RGB, world transforms, lazy cached embeddings."""

from __future__ import annotations

import numpy as np
from conftest import SegmentSpy, nuclei_2d, nuclei_3d, object_centre, reference_mask

from napari_sam.plugin._widget import LABELS_NAME
from napari_sam.engine.preprocess import estimate_intensity_range


def go_to(viewer, **steps):
    """Move the sliders: ``go_to(viewer, axis0=5)`` sets world axis 0 to step 5."""
    current = list(viewer.dims.current_step)
    for name, value in steps.items():
        current[int(name.removeprefix("axis"))] = value
    viewer.dims.current_step = tuple(current)


def test_prompts_on_z5_do_not_affect_z3(sam, idle, tiny_model):
    image, gt = nuclei_3d()
    viewer, widget, layer = sam(image, scale=(2.0, 1.0, 1.0), translate=(4.0, 0.0, 0.0))
    go_to(viewer, axis0=5)
    idle(widget)
    assert layer.world_to_data(viewer.dims.point)[0] == 5
    rc = object_centre(gt[5])
    widget.points_layer.add([5, *rc])
    idle(widget)
    expected = reference_mask(
        tiny_model, image[5], estimate_intensity_range(image), points=[rc], labels=[1]
    )
    assert expected.any()
    np.testing.assert_array_equal(widget.preview.mask, expected)
    # the preview layer holds one plane, placed at the world position of z=5
    preview = widget.preview_layer
    assert preview.data.shape == (1, *image.shape[1:])
    np.testing.assert_allclose(preview.data_to_world([0, 0, 0]), layer.data_to_world([5, 0, 0]))

    go_to(viewer, axis0=3)
    idle(widget)
    assert widget.preview is None  # the z=5 point is not a prompt on z=3
    assert widget.commit() == []
    assert LABELS_NAME not in viewer.layers

    go_to(viewer, axis0=5)
    idle(widget)
    assert widget.commit() == [1]
    labels = viewer.layers[LABELS_NAME].data
    assert labels.shape == image.shape
    written = np.nonzero(labels.any(axis=(1, 2)))[0].tolist()
    assert written == [5]
    np.testing.assert_array_equal(labels[5] > 0, expected)


def test_cached_embedding_is_reused(sam, idle, encoder_calls):
    image, gt = nuclei_3d()
    viewer, widget, layer = sam(image)
    go_to(viewer, axis0=5)
    idle(widget)
    n5 = encoder_calls.calls
    go_to(viewer, axis0=3)
    idle(widget)
    assert encoder_calls.calls == n5 + 1
    go_to(viewer, axis0=5)
    idle(widget)
    widget.points_layer.add([5, *object_centre(gt[5])])
    idle(widget)
    before = widget.preview.mask.copy()
    widget.points_layer.add([5, 2, 2])
    idle(widget)
    assert widget.preview is not None
    assert encoder_calls.calls == n5 + 1  # back on z=5: from the cache, for every click

    # the contrast limits are display only: no new embedding, the same mask
    layer.contrast_limits = (float(image.min()), float(image.min()) + 10.0)
    widget.points_layer.remove([1])
    idle(widget)
    assert encoder_calls.calls == n5 + 1
    np.testing.assert_array_equal(widget.preview.mask, before)


def test_moving_during_computation_computes_the_current_slice_next(sam, idle, gate, encoder_calls):
    image, gt = nuclei_3d()
    viewer, widget, _ = sam(image)
    go_to(viewer, axis0=1)
    idle(widget)
    n0, cached0 = encoder_calls.calls, len(widget.cache)
    g = gate(widget.predictor)
    go_to(viewer, axis0=2)
    widget.refresh()
    assert g.entered.wait(5)
    # the user scrolls on while z=2 is computing, and clicks on z=6
    for z in (3, 4, 5, 6):
        go_to(viewer, axis0=z)
        widget.refresh()
    widget.points_layer.add([6, *object_centre(gt[6])])
    assert widget.preview is None
    g.open()
    idle(widget)
    # z=2 (kept in the cache) and then only the current slice: no worker per slider step
    assert encoder_calls.calls == n0 + 2
    assert len(widget.cache) == cached0 + 2  # z=2 and z=6
    assert widget.preview is not None  # the click made while computing is decoded now
    assert widget.preview.plane.index[0] == 6


def test_scale_and_translate_map_prompts_to_the_right_pixels(sam, idle, tiny_model):
    image, gt = nuclei_2d((48, 64))
    scale, translate = np.array([2.0, 0.5]), np.array([10.0, -4.0])
    # the widget adopts an existing "SAM points" layer, here in world units (scale 1)
    viewer, widget, _layer = sam(
        image,
        scale=scale,
        translate=translate,
        setup=lambda v: v.add_points(ndim=2, name="SAM points"),
    )
    points = widget.points_layer
    np.testing.assert_allclose(points.scale, [1, 1])

    rc = np.array(object_centre(gt))
    world = rc * scale + translate
    spy = SegmentSpy(widget.predictor)
    points.add(world)
    idle(widget)
    np.testing.assert_allclose(spy.calls[-1]["points"], [rc])

    expected = reference_mask(
        tiny_model, image, estimate_intensity_range(image), points=[rc], labels=[1]
    )
    assert widget.commit() == [1]
    labels = viewer.layers[LABELS_NAME]
    np.testing.assert_allclose(labels.scale, scale)
    np.testing.assert_allclose(labels.translate, translate)
    np.testing.assert_array_equal(labels.data > 0, expected)


def test_target_on_another_grid(sam, idle):
    image, _gt = nuclei_2d((32, 40))
    viewer, widget, _layer = sam(image, scale=(2.0, 0.5), translate=(10.0, -4.0))
    # a target with twice the row resolution of the image
    target = viewer.add_labels(
        np.zeros((64, 40), dtype=np.int32), scale=(1.0, 0.5), translate=(10.0, -4.0)
    )
    widget.target_combo.value = target
    widget.shapes_layer.add_rectangles(np.array([[4, 4], [24, 30]]))
    idle(widget)
    mask = widget.preview.mask.copy()
    assert mask.any()
    widget.commit()
    # target row 2r is image row r
    np.testing.assert_array_equal(target.data[::2] > 0, mask)


def test_timelapse_4d(sam, idle):
    stack, gt = nuclei_3d((4, 48, 48))
    image = np.stack([stack, stack[::-1]])  # (T, Z, Y, X)
    viewer, widget, _ = sam(image)
    go_to(viewer, axis0=1, axis1=2)
    idle(widget)
    rc = object_centre(gt[1])  # stack[::-1][2] is stack[1]
    widget.points_layer.add([1, 2, *rc])
    widget.points_layer.add([0, 2, *rc])  # another time point: not a prompt here
    idle(widget)
    assert widget.preview is not None
    assert widget.commit() == [1]
    labels = viewer.layers[LABELS_NAME].data
    assert labels.shape == image.shape
    assert [tuple(i) for i in np.argwhere(labels.any(axis=(2, 3)))] == [(1, 2)]
    assert len(widget.points_layer.data) == 1  # the t=0 point is still there


def test_rgb_image(sam, idle, tiny_model):
    gray, gt = nuclei_2d()
    g8 = (gray.astype(float) / gray.max() * 255).astype(np.uint8)
    rgb = np.stack([g8, g8 // 2, np.zeros_like(g8)], axis=-1)
    viewer, widget, layer = sam(rgb)
    assert layer.rgb
    rc = object_centre(gt)
    widget.points_layer.add(rc)
    idle(widget)
    expected = reference_mask(tiny_model, rgb, None, points=[rc], labels=[1])
    np.testing.assert_array_equal(widget.preview.mask, expected)
    widget.commit()
    assert viewer.layers[LABELS_NAME].data.shape == gray.shape


def test_transposed_view_segments_that_plane(sam, idle):
    image, _ = nuclei_3d((12, 40, 48))
    viewer, widget, _ = sam(image)
    viewer.dims.order = (1, 0, 2)  # show (z, x) planes, slide along y
    go_to(viewer, axis1=20)
    idle(widget)
    spy = SegmentSpy(widget.predictor)
    corners = [[2, 20, 10], [2, 20, 40], [10, 20, 40], [10, 20, 10]]  # a (z, x) rectangle at y=20
    widget.shapes_layer.add_rectangles(np.array(corners, dtype=float))
    idle(widget)
    assert widget.preview is not None
    assert widget.preview.plane.shape == (12, 48)
    np.testing.assert_allclose(spy.calls[-1]["box"], [2, 10, 10, 40])
    widget.commit()
    labels = viewer.layers[LABELS_NAME].data
    assert np.nonzero(labels.any(axis=(0, 2)))[0].tolist() == [20]


def test_switching_to_an_image_of_another_ndim_and_scale(sam, idle):
    stack, gt3 = nuclei_3d()
    viewer, widget, _ = sam(stack, scale=(2.0, 1.0, 1.0))
    go_to(viewer, axis0=5)
    idle(widget)
    widget.points_layer.add([5, *object_centre(gt3[5])])
    idle(widget)
    assert widget.commit() == [1]

    image, _ = nuclei_2d((40, 48))
    flat = viewer.add_image(image, scale=(0.5, 0.5), translate=(3.0, 7.0))
    widget.image_combo.value = flat
    idle(widget)
    assert widget.points_layer.ndim == 2  # the empty 3D prompt layers were replaced
    widget.target_combo.value = widget.target_combo.choices[0]  # a new Labels layer
    widget.shapes_layer.add_rectangles(np.array([[5, 5], [30, 40]], dtype=float))
    idle(widget)
    assert widget.preview.plane.shape == image.shape
    preview = widget.preview_layer
    np.testing.assert_allclose(preview.data_to_world([0, 0]), flat.data_to_world([0, 0]))
    np.testing.assert_allclose(preview.data_to_world([10, 10]), flat.data_to_world([10, 10]))
    ids = widget.commit()
    assert ids == [1]
    new = widget.target_layer
    assert new.data.shape == image.shape
    np.testing.assert_allclose(new.scale, flat.scale)
    assert (viewer.layers[LABELS_NAME].data == 1).sum() > 0  # the 3D result is untouched

    # another 2D image on another grid: the preview layer is reused and follows it
    other = viewer.add_image(image[::2, ::2], scale=(3.0, 3.0), translate=(-5.0, 0.0))
    widget.image_combo.value = other
    idle(widget)
    assert widget.preview_layer is preview
    shapes = widget.shapes_layer  # still on the first 2D image's grid
    corners = [shapes.world_to_data(other.data_to_world(p)) for p in ([2, 2], [15, 20])]
    shapes.add_rectangles(np.array(corners))
    idle(widget)
    assert widget.preview.image is other
    np.testing.assert_allclose(preview.data_to_world([4, 6]), other.data_to_world([4, 6]))
