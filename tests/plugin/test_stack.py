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


def test_a_time_axis_keeps_the_model_masks_and_z_gets_the_outline():
    from napari_sam.plugin._stack_section import _propagation_params

    along_t, along_z = _propagation_params(True), _propagation_params(False)
    assert (along_t.outline, along_t.max_regrowth) == ("model", None)
    assert along_z.outline == "half_max" and along_z.max_regrowth is not None


def test_time_axis_is_recognised_by_its_label():
    from napari_sam.plugin._stack_section import _is_time_axis

    assert _is_time_axis(Image(np.zeros((3, 4, 5)), axis_labels=("t", "y", "x")), 0)
    assert _is_time_axis(Image(np.zeros((3, 2, 4, 5)), axis_labels=("Time", "z", "y", "x")), 0)
    assert not _is_time_axis(Image(np.zeros((3, 2, 4, 5)), axis_labels=("t", "z", "y", "x")), 1)
    assert not _is_time_axis(Image(np.zeros((3, 4, 5))), 0)  # napari's default labels


def _random_objects(rng, n_objects, slices, shape):
    """``{value: {slice: mask}}`` of overlapping boxes, values in a shuffled order."""
    values = rng.permutation(np.arange(1, n_objects + 1)) + 20
    objects = {}
    for v in values:
        masks = {}
        for i in rng.choice(slices, size=rng.integers(1, len(slices) + 1), replace=False):
            m = np.zeros(shape, dtype=bool)
            r, c = rng.integers(0, shape[0] - 2), rng.integers(0, shape[1] - 2)
            m[r : r + rng.integers(2, 7), c : c + rng.integers(2, 7)] = True
            masks[int(i)] = m
        objects[int(v)] = masks
    return objects


def _paint_one_by_one(target, image, plane, axis, objects, overwrite):
    """The reference: ``paint_mask`` per object and slice, in the mapping's order."""
    from napari_sam.plugin._layers import paint_mask

    written = {}
    for value, masks in objects.items():
        for index in sorted(masks):
            if paint_mask(
                target, image, plane_at(plane, axis, index), masks[index], value, overwrite
            ):
                written.setdefault(value, []).append(index)
    return written


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("grid", ["same", "finer"])
def test_paint_stack_equals_painting_mask_by_mask(overwrite, grid):
    rng = np.random.default_rng(1)
    shape = (5, 12, 14)
    image = Image(np.zeros(shape))
    plane = make_plane(shape, (1, 2), (0, 0, 0))
    objects = _random_objects(rng, 25, range(shape[0]), shape[1:])
    if grid == "same":
        kwargs, data_shape = {}, shape
    else:  # twice as fine in (row, col), centred on the image's pixels
        kwargs = {"scale": (1, 0.5, 0.5), "translate": (0, -0.25, -0.25)}
        data_shape = (shape[0], 2 * shape[1], 2 * shape[2])
    original = rng.choice([0, 0, 0, 3, 4], size=data_shape).astype(np.int32)
    batched = Labels(original.copy(), **kwargs)
    reference = Labels(original.copy(), **kwargs)

    written = paint_stack(batched, image, plane, 0, objects, overwrite)
    expected = _paint_one_by_one(reference, image, plane, 0, objects, overwrite)
    assert written == expected
    np.testing.assert_array_equal(batched.data, reference.data)
    assert not np.array_equal(batched.data, original)
    if not overwrite:  # existing objects are never touched
        kept = original != 0
        np.testing.assert_array_equal(batched.data[kept], original[kept])
    batched.undo()
    np.testing.assert_array_equal(batched.data, original)


def test_paint_stack_overlapping_new_objects_first_wins_unless_overwrite():
    shape = (2, 6, 6)
    image = Image(np.zeros(shape))
    plane = make_plane(shape, (1, 2), (0, 0, 0))
    left = np.zeros((6, 6), dtype=bool)
    left[:, :4] = True
    right = np.zeros((6, 6), dtype=bool)
    right[:, 2:] = True
    objects = {5: {1: left}, 6: {1: right}}
    keep = Labels(np.zeros(shape, dtype=np.int32))
    assert paint_stack(keep, image, plane, 0, objects) == {5: [1], 6: [1]}
    assert (keep.data[1, :, 2:4] == 5).all() and (keep.data[1, :, 4:] == 6).all()
    take = Labels(np.zeros(shape, dtype=np.int32))
    assert paint_stack(take, image, plane, 0, objects, overwrite=True) == {5: [1], 6: [1]}
    assert (take.data[1, :, :2] == 5).all() and (take.data[1, :, 2:] == 6).all()
    # an object fully inside an earlier one writes nothing (and is not reported) when keeping
    inner = np.zeros((6, 6), dtype=bool)
    inner[1:3, 1:3] = True
    fresh = Labels(np.zeros(shape, dtype=np.int32))
    assert paint_stack(fresh, image, plane, 0, {5: {0: left}, 8: {0: inner}}) == {5: [0]}


def test_paint_stack_many_objects_is_a_few_setitem_calls_and_one_undo_step(monkeypatch):
    from napari_sam.plugin import _stack

    rng = np.random.default_rng(2)
    shape = (6, 16, 16)
    image = Image(np.zeros(shape))
    plane = make_plane(shape, (1, 2), (0, 0, 0))
    objects = _random_objects(rng, 200, range(shape[0]), shape[1:])
    original = np.zeros(shape, dtype=np.int32)
    original[:, :4, :4] = 2
    target = Labels(original.copy())
    calls = []
    real = Labels.data_setitem
    monkeypatch.setattr(
        Labels, "data_setitem", lambda self, *a, **k: (calls.append(k), real(self, *a, **k))[1]
    )
    steps = []
    target.events.paint.connect(lambda event: steps.append(event))
    reported = []
    paint_stack(target, image, plane, 0, objects, progress=lambda d, t: reported.append((d, t)))
    assert len(calls) == 1 and calls[0]["refresh"] is True
    assert len(steps) == 1  # one undo step
    total = sum(len(v) for v in objects.values())
    assert reported[-1] == (total, total) and len(reported) == total
    painted = target.data.copy()
    target.undo()
    np.testing.assert_array_equal(target.data, original)
    target.redo()
    np.testing.assert_array_equal(target.data, painted)

    # large writes are split into chunks; only the last one refreshes the view
    monkeypatch.setattr(_stack, "_WRITE_CHUNK", 16 * 16 // 2)
    calls.clear()
    target.undo()
    paint_stack(target, image, plane, 0, objects)
    assert 1 < len(calls) <= shape[0]
    assert [c["refresh"] for c in calls] == [False] * (len(calls) - 1) + [True]
    np.testing.assert_array_equal(target.data, painted)
    target.undo()
    np.testing.assert_array_equal(target.data, original)


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("grid", ["same", "finer"])
def test_paint_label_stack_equals_one_mask_per_value(overwrite, grid, monkeypatch):
    from napari_sam.plugin._stack import paint_label_stack

    rng = np.random.default_rng(3)
    shape = (4, 10, 12)
    image = Image(np.zeros(shape))
    plane = make_plane(shape, (1, 2), (0, 0, 0))
    planes = {i: rng.choice([0, 0, 11, 12, 500], size=shape[1:]) for i in (0, 2, 3)}
    planes[3][:] = 0  # an empty slice writes nothing
    if grid == "same":
        kwargs, data_shape = {}, shape
    else:
        kwargs = {"scale": (1, 0.5, 0.5), "translate": (0, -0.25, -0.25)}
        data_shape = (shape[0], 2 * shape[1], 2 * shape[2])
    original = rng.choice([0, 0, 0, 3], size=data_shape).astype(np.int32)
    labels = Labels(original.copy(), **kwargs)
    reference = Labels(original.copy(), **kwargs)
    calls = []
    real = Labels.data_setitem
    monkeypatch.setattr(
        Labels, "data_setitem", lambda self, *a, **k: (calls.append(1), real(self, *a, **k))[1]
    )
    reported = []
    written = paint_label_stack(
        labels, image, plane, 0, planes, overwrite, lambda d, t: reported.append((d, t))
    )
    assert reported == [(1, 3), (2, 3), (3, 3)]
    if grid == "same":
        assert len(calls) == 1
    objects = {}
    for i, p in planes.items():
        for v in np.unique(p):
            if v:
                objects.setdefault(int(v), {})[i] = p == v
    expected = paint_stack(reference, image, plane, 0, objects, overwrite)
    assert written == {v: expected[v] for v in sorted(expected)}
    assert list(written) == sorted(written)
    np.testing.assert_array_equal(labels.data, reference.data)
    labels.undo()
    np.testing.assert_array_equal(labels.data, original)


def test_paint_label_stack_rejects_bad_planes():
    from napari_sam.plugin._stack import paint_label_stack

    image = Image(np.zeros((2, 4, 4)))
    target = Labels(np.zeros((2, 4, 4), dtype=np.int32))
    plane = make_plane((2, 4, 4), (1, 2), (0, 0, 0))
    for bad in (np.ones((4, 5), dtype=int), np.ones((4, 4), dtype=bool)):
        with pytest.raises(ValueError, match="integer labels"):
            paint_label_stack(target, image, plane, 0, {0: bad})
    assert not target.data.any()


def test_present_values_match_unique():
    from napari_sam.plugin._stack import _present

    rng = np.random.default_rng(4)
    for values in (
        rng.integers(-5, 40, 1000),
        np.array([3, 2**40, 3, 7], dtype=np.int64),  # wide range: sorted instead
        np.zeros(0, dtype=np.int32),
    ):
        np.testing.assert_array_equal(_present(values), np.unique(values))


def test_mask_pixels_match_flatnonzero():
    from napari_sam.plugin._stack import _mask_pixels

    rng = np.random.default_rng(5)
    for mask in (
        rng.random((9, 7)) > 0.8,
        np.zeros((5, 6), dtype=bool),
        np.ones((3, 4), dtype=bool),
        np.asfortranarray(rng.random((8, 8)) > 0.5),
        (rng.random((12, 10)) > 0.5)[::2, 1::3],  # a strided view
    ):
        np.testing.assert_array_equal(_mask_pixels(mask), np.flatnonzero(mask))


def test_values_the_target_cannot_hold_are_refused_before_writing():
    from napari_sam.plugin._stack import paint_label_stack

    image = Image(np.zeros((2, 4, 4)))
    plane = make_plane((2, 4, 4), (1, 2), (0, 0, 0))
    target = Labels(np.zeros((2, 4, 4), dtype=np.uint8))
    full = np.ones((4, 4), dtype=bool)
    with pytest.raises(ValueError, match="300 does not fit"):
        paint_stack(target, image, plane, 0, {5: {0: full}, 300: {1: full}})
    with pytest.raises(ValueError, match="300 does not fit"):
        paint_label_stack(target, image, plane, 0, {0: np.full((4, 4), 300)})
    assert not target.data.any()
