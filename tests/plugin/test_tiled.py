"""Planes much larger than the model input are decoded in tiles, in a worker."""

from __future__ import annotations

import numpy as np

from napari_sam.engine.tiling import TiledPredictor


def test_large_plane_is_decoded_in_tiles(sam, idle, tiny_model, encoder_calls, notes):
    from napari_sam.data.synthetic import make_nuclei_2d

    image, gt = make_nuclei_2d((1100, 1200), seed=4)
    viewer, widget, layer = sam(image)
    ids, counts = np.unique(gt[gt > 0], return_counts=True)
    target = ids[np.argmax(counts)]
    rr, cc = np.nonzero(gt == target)
    rc = [float(np.median(rr)), float(np.median(cc))]
    widget.points_layer.add(rc)
    idle(widget, 60_000)
    assert widget.preview is not None
    assert "tiles" in widget.status_label.value
    # the whole 1100 x 1200 plane was never embedded at once: only tiles of the model input
    assert widget.predictor.embedding is None
    n_tiles = len(list(TiledPredictor(tiny_model, image).grid.tiles()))
    assert n_tiles > 100
    assert 1 <= encoder_calls.calls <= 16  # the tiles around the object, not the image
    reference = TiledPredictor(tiny_model, image, intensity_range=widget.session.intensity_range(layer.unique_id))
    expected, _ = reference.segment(points=[rc], labels=[1])
    np.testing.assert_array_equal(widget.preview.mask, expected)
    n = encoder_calls.calls
    widget.refresh()  # decoded again: the widget keeps the tiles it embedded
    idle(widget, 60_000)
    assert encoder_calls.calls == n
    np.testing.assert_array_equal(widget.preview.mask, expected)
    ids = widget.commit()
    assert ids == [1]
    assert not [m for m in notes if "failed" in m]


def test_small_objects_are_decoded_in_magnified_crops(sam, idle):
    from scipy import ndimage

    from napari_sam import build_model

    yy, xx = np.mgrid[:512, :512]
    gt = np.zeros((512, 512), np.int32)
    k = 0
    for cy in range(10, 500, 20):
        for cx in range(10, 500, 20):
            k += 1
            gt[(yy - cy) ** 2 + (xx - cx) ** 2 <= 16] = k
    image = ndimage.gaussian_filter((gt > 0) * 1.0, 1.0) + np.random.default_rng(0).normal(
        0, 0.03, gt.shape)
    viewer, widget, layer = sam(image.astype(np.float32), model=False)
    widget.set_model(build_model("default"), "default")
    widget.zoom_small.value = True
    target = gt[130, 130]
    widget.points_layer.add([130.0, 130.0])
    idle(widget, 60_000)
    assert widget.preview is not None and "zoomed in" in widget.status_label.value
    tiled = next(t for t in widget.session.tiled_predictors() if hasattr(t, "grid"))
    assert max(tiled.grid.tile_shape) < 512  # crops smaller than the plane: magnified
    mask, truth = widget.preview.mask, gt == target
    assert (mask & truth).sum() / (mask | truth).sum() > 0.5
    # off again: the whole plane's embedding is used
    widget.zoom_small.value = False
    idle(widget, 60_000)
    assert widget.predictor.embedding is not None and widget.preview is not None
