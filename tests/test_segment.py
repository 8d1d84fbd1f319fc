"""Headless nD segmentation: planes, label ids, no overwriting."""

import numpy as np
import pytest
import torch

from napari_sam.models.build import build_sam, tiny_config
from napari_sam.engine.predictor import SamPredictor
from napari_sam.workflows.segment import ObjectPrompt, is_rgb, paint_mask, segment_objects, spatial_shape


class CountingPredictor(SamPredictor):
    """A real predictor that counts encoder runs."""

    def __init__(self, model):
        super().__init__(model)
        self.embedded = 0

    def compute_embedding(self, image, intensity_range=None):
        self.embedded += 1
        return super().compute_embedding(image, intensity_range)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_sam(tiny_config())


def test_rgb_guess_and_spatial_shape():
    assert is_rgb(np.zeros((10, 12, 3))) and not is_rgb(np.zeros((5, 10, 12)))
    assert spatial_shape(np.zeros((4, 10, 12, 3)), rgb=True) == (4, 10, 12)


def test_paint_mask_keeps_other_objects_unless_overwrite():
    labels = np.zeros((2, 4, 4), np.int32)
    labels[1, 0, 0] = 7
    mask = np.ones((4, 4), bool)
    assert paint_mask(labels, (1,), mask, 8) == 15
    assert labels[1, 0, 0] == 7 and (labels[0] == 0).all()
    assert paint_mask(labels, (1,), mask, 9, overwrite=True) == 16
    assert (labels[1] == 9).all()


def test_stack_objects_go_to_their_planes_one_embedding_per_plane(model):
    rng = np.random.default_rng(0)
    image = rng.random((5, 40, 50)).astype(np.float32)
    objects = [
        ObjectPrompt((1,), points=np.array([[10.0, 10.0]]), labels=np.array([1])),
        ObjectPrompt((3,), box=np.array([5.0, 5.0, 30.0, 40.0])),
        ObjectPrompt((3,), points=np.array([[20.0, 20.0]]), labels=np.array([1])),
    ]
    pred = CountingPredictor(model)
    seen = []
    labels = segment_objects(pred, image, objects, progress=lambda d, t: seen.append((d, t)))
    assert labels.shape == (5, 40, 50)
    assert pred.embedded == 2
    assert seen == [(1, 2), (2, 2)]
    assert set(np.unique(labels[[0, 2, 4]])) == {0}
    assert set(np.unique(labels[1])) <= {0, 1}
    assert set(np.unique(labels[3])) <= {0, 2, 3}


def test_existing_labels_are_kept_and_ids_continue(model):
    image = np.random.default_rng(1).random((40, 50)).astype(np.float32)
    existing = np.zeros((40, 50), np.int32)
    existing[:, :25] = 5
    out = segment_objects(
        SamPredictor(model), image, [ObjectPrompt((), box=np.array([0, 0, 39, 49.0]))],
        labels=existing.copy(),
    )
    assert (out[:, :25] == 5).all()
    assert set(np.unique(out[:, 25:])) <= {0, 6}


def test_plane_outside_the_image_is_refused(model):
    with pytest.raises(ValueError, match="outside"):
        segment_objects(SamPredictor(model), np.zeros((3, 8, 8)),
                        [ObjectPrompt((3,), points=np.array([[1.0, 1.0]]))])
