"""The viewer's worker bodies (napari_sam.plugin._workers), without a viewer."""

import numpy as np

from napari_sam.engine.click_memory import ClickMemory
from napari_sam.plugin import _workers


def _disc(centre, radius, shape=(100, 100)):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2


def _obj(points, labels):
    return {"points": np.asarray(points, float), "labels": np.asarray(labels), "box": None,
            "mask_input": None}


def test_a_small_objects_clicks_follow_its_shown_mask_in_the_viewer(monkeypatch):
    """The viewer's worker: a small object decoded in its magnified crop gets the mask shown
    after its previous click as the mask prompt of the next (before v0.20: from nothing)."""
    class Zoomer:
        def __init__(self):
            self.prompts = []

        def zooms(self, predictor, points=None, labels=None, box=None):
            return True

        def segment(self, predictor, points=None, labels=None, box=None, mask_input=None):
            self.prompts.append(None if mask_input is None else np.array(mask_input))
            return _disc((50, 50), 5 + len(points)), 0.9, np.zeros((1, 8, 8), np.float32)

    class Predictor:
        embedding = object()

    zoomer, memory = Zoomer(), ClickMemory()
    one = _obj([[50, 50]], [1])
    two = _obj([[50, 50], [50, 57]], [1, 1])
    masks1, _, err = _workers.segment_objects(Predictor, [one], zoomer=zoomer, memory=memory)
    _, _, err2 = _workers.segment_objects(Predictor, [two], zoomer=zoomer, memory=memory)
    assert err is None and err2 is None
    assert zoomer.prompts[0] is None
    np.testing.assert_array_equal(zoomer.prompts[1], masks1[0])  # the shown mask, whole slice
