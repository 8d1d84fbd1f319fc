"""Layer <-> prompt conversion without a viewer (napari layers, no Qt)."""

from __future__ import annotations

import numpy as np
import pytest
from napari.components import Dims
from napari.layers import Image, Labels, Points, Shapes

from napari_sam.plugin._layers import (
    PlanePrompts,
    PromptError,
    ShapePrompt,
    affine_between,
    assemble_objects,
    current_plane,
    paint_mask,
    points_on_plane,
    shapes_on_plane,
)


def dims_at(ndim, point, ndisplay=2, order=None):
    dims = Dims(ndim=ndim, ndisplay=ndisplay)
    dims.range = [(-1000, 1000, 0.5)] * ndim
    if order is not None:
        dims.order = order
    for axis, value in enumerate(point):
        dims.set_point(axis, value)
    return dims


def test_plane_follows_world_position_through_scale_and_translate():
    image = Image(np.zeros((10, 20, 30)), scale=(2.0, 1.0, 1.0), translate=(5.0, 0, 0))
    plane = current_plane(image, dims_at(3, (13.0, 0, 0)))  # world z 13 -> data z 4
    assert plane.axes == (1, 2)
    assert plane.index[0] == 4
    assert plane.shape == (20, 30)
    with pytest.raises(PromptError, match="outside image"):
        current_plane(image, dims_at(3, (100.0, 0, 0)))
    with pytest.raises(PromptError, match="2D display"):
        current_plane(image, dims_at(3, (13.0, 0, 0), ndisplay=3))


def test_affine_between_layers():
    a = Image(np.zeros((10, 10)), scale=(2.0, 0.5), translate=(10.0, -4.0))
    b = Points(ndim=2)  # world units
    A, t = affine_between(a, b, (0.0, 0.0))
    np.testing.assert_allclose(A, np.diag([2.0, 0.5]))
    np.testing.assert_allclose(t, [10.0, -4.0])


def test_points_on_plane_only_counts_the_current_slice():
    image = Image(np.zeros((10, 20, 30)), scale=(2.0, 1.0, 1.0))
    points = Points(
        np.array([[8.0, 5, 6], [8.2, 7, 7], [10.0, 5, 5], [8.0, 50, 5]]),  # world units
        features={"positive": [True, False, True, True]},
    )
    plane = current_plane(image, dims_at(3, (8.0, 0, 0)))
    rc, labels, idx, problems = points_on_plane(points, image, plane)
    np.testing.assert_allclose(rc, [[5, 6], [7, 7]])
    assert labels.tolist() == [1, 0]
    assert idx.tolist() == [0, 1]
    assert len(problems) == 1 and "outside" in problems[0]


def test_shapes_on_plane():
    image = Image(np.zeros((40, 50)))
    shapes = Shapes(ndim=2)
    shapes.add_rectangles(np.array([[35, 40], [60, 70]], dtype=float))  # partly outside: clipped
    shapes.add_lines(np.array([[1, 1], [5, 5]], dtype=float))
    shapes.add_rectangles(np.array([[100, 100], [120, 120]], dtype=float))  # outside
    plane = current_plane(image, dims_at(2, (0, 0)))
    found, problems = shapes_on_plane(shapes, image, plane)
    assert [s.kind for s in found] == ["rectangle"]
    np.testing.assert_allclose(found[0].box, [35, 40, 39, 49])
    assert len(problems) == 2


def test_assemble_objects_groups_points_with_the_smallest_enclosing_box():
    big = ShapePrompt(0, "rectangle", np.array([0.0, 0, 50, 50]))
    small = ShapePrompt(1, "rectangle", np.array([10.0, 10, 20, 20]))
    prompts = PlanePrompts(
        points=np.array([[15.0, 15], [40, 40], [80, 80], [90, 90]]),
        labels=np.array([1, 1, 0, 1]),
        shapes=[big, small],
    )
    objects = assemble_objects(prompts)
    assert len(objects) == 3
    np.testing.assert_allclose(objects[0]["points"], [[40, 40]])
    np.testing.assert_allclose(objects[1]["points"], [[15, 15]])
    np.testing.assert_allclose(objects[2]["points"], [[80, 80], [90, 90]])
    assert objects[2]["box"] is None
    # only negative points outside boxes: no object
    only_negative = PlanePrompts(points=np.array([[1.0, 1]]), labels=np.array([0]))
    assert assemble_objects(only_negative) == []


def test_paint_mask_same_grid_and_other_grid():
    image = Image(np.zeros((4, 6, 8)))
    plane = current_plane(image, dims_at(3, (2, 0, 0)))
    mask = np.zeros((6, 8), dtype=bool)
    mask[1:3, 2:5] = True

    same = Labels(np.zeros((4, 6, 8), dtype=np.int32))
    same.data[2, 1, 2] = 9
    assert paint_mask(same, image, plane, mask, 3) == 5  # one pixel belongs to object 9
    assert same.data[2, 1, 2] == 9
    assert (same.data == 3).sum() == 5 and (same.data[2] == 3).sum() == 5
    same.undo()
    assert (same.data == 3).sum() == 0

    fine = Labels(
        np.zeros((4, 12, 16), dtype=np.int32), scale=(1, 0.5, 0.5), translate=(0, -0.25, -0.25)
    )
    written = paint_mask(fine, image, plane, mask, 1)
    assert written == 4 * mask.sum()
    np.testing.assert_array_equal(fine.data[2].reshape(6, 2, 8, 2).max(axis=(1, 3)) > 0, mask)


@pytest.fixture
def scans(monkeypatch):
    """Count the full scans ``max_label`` makes."""
    from napari_sam.plugin import _label_ids

    count = []
    real = _label_ids._scan_max
    monkeypatch.setattr(_label_ids, "_scan_max", lambda data: (count.append(1), real(data))[1])
    return count


def test_max_label_follows_edits_without_rescanning(scans):
    from napari_sam.plugin._label_ids import max_label

    data = np.zeros((3, 8, 8), dtype=np.int32)
    data[0, :2, :2] = 4
    layer = Labels(data)
    assert max_label(layer) == 4 and len(scans) == 1
    assert max_label(layer) == 4 and len(scans) == 1

    layer.data_setitem((np.array([1, 1]), np.array([2, 3]), np.array([2, 2])), np.array([9, 6]))
    assert max_label(layer) == 9
    layer.selected_label = 12
    layer.paint((2, 5, 5), 12)  # the brush, as by hand
    assert max_label(layer) == 12 and len(scans) == 1  # both edits seen by the paint event

    layer.undo()  # the brush stroke is gone: rescanned
    assert max_label(layer) == 9 and len(scans) == 2
    layer.undo()
    assert max_label(layer) == 4 and len(scans) == 3
    layer.redo()
    assert max_label(layer) == 9 and len(scans) == 4

    with layer.block_history():  # erasing the top object keeps its id reserved: only skips ids
        layer.data_setitem(np.nonzero(layer.data == 9), 0)
    assert max_label(layer) == 9 >= layer.data.max() and len(scans) == 4

    layer.data = np.full((3, 8, 8), 2, dtype=np.int32)  # replaced data: rescanned
    assert max_label(layer) == 2 and len(scans) == 5
    layer.data[...] = 0  # in place behind napari's back (same array): not seen
    assert max_label(layer) == 2 and len(scans) == 5


def test_max_label_after_undoing_past_its_first_scan():
    """An id erased before the first scan and brought back by undo never gets reused."""
    from napari_sam.plugin._label_ids import max_label

    layer = Labels(np.zeros((8, 8), dtype=np.int32))
    layer.data_setitem((np.array([1]), np.array([1])), 50)  # the user paints object 50...
    layer.data_setitem((np.array([1]), np.array([1])), 0)  # ...and erases it
    free = max_label(layer) + 1  # the first scan sees no 50
    layer.data_setitem((np.array([5]), np.array([5])), free)  # a commit with that id
    layer.undo()  # the commit goes first (last in, first out)...
    layer.undo()  # ...then the erase: 50 is back
    assert max_label(layer) >= layer.data.max() == 50


def test_max_label_of_a_lazy_layer_reads_slabs(monkeypatch):
    da = pytest.importorskip("dask.array")
    from napari_sam.plugin import _label_ids

    data = np.zeros((6, 5, 7), dtype=np.uint16)
    data[4, 3, 2] = 321
    reads = []

    class Recording(np.lib.mixins.NDArrayOperatorsMixin):
        shape, dtype, ndim = data.shape, data.dtype, data.ndim

        def __getitem__(self, key):
            reads.append(np.asarray(data[key]).size)
            return data[key]

        def __array__(self, dtype=None, copy=None):
            raise AssertionError("read whole")

    monkeypatch.setattr(_label_ids, "_SCAN_VOXELS", 2 * 5 * 7)
    assert _label_ids._scan_max(Recording()) == 321
    assert reads == [70, 70, 70]
    layer = Labels(da.from_array(data, chunks=(2, 5, 7)))
    assert _label_ids.max_label(layer) == 321
    assert _label_ids._scan_max(np.zeros((0, 3), dtype=np.int32)) == 0
