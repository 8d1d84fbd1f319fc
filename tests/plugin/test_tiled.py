"""Planes much larger than the model input are decoded in tiles, in a worker."""

from __future__ import annotations

import numpy as np

from napari_sam.tiling import TiledPredictor


def test_large_plane_is_decoded_in_tiles(sam, idle, tiny_model, encoder_calls, notes):
    from napari_sam.synthetic import make_nuclei_2d

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
    reference = TiledPredictor(tiny_model, image, intensity_range=widget._ranges.get(layer.unique_id))
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
