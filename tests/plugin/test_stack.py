"""Planes along a stack axis: moving a plane, 3D views of nD images, anchors, painting a stack."""

from __future__ import annotations

import numpy as np
import pytest
from napari.layers import Image, Labels

from napari_sam.plugin._layers import Plane
from napari_sam.plugin._stack import anchor_masks, paint_stack, plane_at, volume_view


def make_plane(shape, axes, index):
    return Plane(axes, index, shape, tuple(float(i) for i in index))


def test_plane_at_moves_only_the_axis():
    plane = make_plane((4, 5, 6, 7), (2, 3), (1, 2, 0, 0))
    moved = plane_at(plane, 0, 3)
    assert moved.index == (3, 2, 0, 0) and moved.axes == (2, 3)
    with pytest.raises(ValueError, match="displayed"):
        plane_at(plane, 2, 1)


def test_volume_view_of_4d_and_transposed_axes():
    data = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    image = Image(data)
    plane = make_plane(data.shape, (2, 3), (1, 2, 0, 0))
    vol = volume_view(image, plane, axis=1)  # z through t = 1
    np.testing.assert_array_equal(vol, data[1])
    vol_t = volume_view(image, plane, axis=0)  # t through z = 2
    np.testing.assert_array_equal(vol_t, data[:, 2])
    # plane (t, x) displayed, stack along z, at y = 3: result (z, t, x)
    plane2 = make_plane(data.shape, (0, 3), (0, 0, 3, 0))
    vol2 = volume_view(image, plane2, axis=1)
    np.testing.assert_array_equal(vol2, np.transpose(data[:, :, 3, :], (1, 0, 2)))


def test_volume_view_rgb_keeps_channels_last():
    data = np.random.default_rng(0).integers(0, 255, (3, 8, 9, 3), dtype=np.uint8)
    image = Image(data, rgb=True)
    plane = make_plane((3, 8, 9), (1, 2), (1, 0, 0))
    np.testing.assert_array_equal(volume_view(image, plane, 0), data)


def test_anchor_masks_and_paint_stack_is_one_undo_step():
    shape = (6, 10, 10)
    image = Image(np.zeros(shape))
    target = Labels(np.zeros(shape, dtype=np.int32))
    target.data[1, 2:4, 2:4] = 7
    target.data[4, 5:8, 5:8] = 7
    target.data[3, 0:2, 0:2] = 2  # another object, never touched
    plane = make_plane(shape, (1, 2), (1, 0, 0))
    anchors = anchor_masks(target, image, plane, 0, 7)
    assert sorted(anchors) == [1, 4]
    assert anchors[4].sum() == 9

    full = np.ones((10, 10), dtype=bool)
    written = paint_stack(target, image, plane, 0, {7: {2: full, 3: full}, 9: {5: full}})
    assert written == {7: [2, 3], 9: [5]}
    assert (target.data[2] == 7).all()
    assert (target.data[3, 0:2, 0:2] == 2).all()  # the other object is kept
    assert (target.data[3] == 7).sum() == 100 - 4
    assert (target.data[5] == 9).all()
    target.undo()  # one step takes back everything painted
    assert not (target.data == 9).any()
    assert (target.data[2] == 0).all()
    assert (target.data[1, 2:4, 2:4] == 7).all() and (target.data[3, 0:2, 0:2] == 2).all()


def test_paint_stack_overwrite():
    shape = (2, 4, 4)
    image = Image(np.zeros(shape))
    target = Labels(np.zeros(shape, dtype=np.int32))
    target.data[0] = 3
    plane = make_plane(shape, (1, 2), (0, 0, 0))
    full = np.ones((4, 4), dtype=bool)
    assert paint_stack(target, image, plane, 0, {5: {0: full}}) == {}
    assert paint_stack(target, image, plane, 0, {5: {0: full}}, overwrite=True) == {5: [0]}
    assert (target.data[0] == 5).all()


def test_time_axis_is_recognised_by_its_label():
    from napari_sam.plugin._widget import _is_time_axis

    assert _is_time_axis(Image(np.zeros((3, 4, 5)), axis_labels=("t", "y", "x")), 0)
    assert _is_time_axis(Image(np.zeros((3, 2, 4, 5)), axis_labels=("Time", "z", "y", "x")), 0)
    assert not _is_time_axis(Image(np.zeros((3, 2, 4, 5)), axis_labels=("t", "z", "y", "x")), 1)
    assert not _is_time_axis(Image(np.zeros((3, 4, 5))), 0)  # napari's default labels
