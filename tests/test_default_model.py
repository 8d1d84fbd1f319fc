"""The default model ships inside the package and segments nuclei from one click, offline."""

import numpy as np
import pytest
import torch

from napari_sam import SamPredictor, build_model
from napari_sam.models.build import DEFAULT_WEIGHTS
from napari_sam.evaluation.interactive import farthest_point, mask_iou
from napari_sam.data.synthetic import make_nuclei_2d


@pytest.fixture(scope="module")
def predictor():
    return SamPredictor(build_model("default", device="cpu"))


def test_weights_are_packaged_small_and_float16():
    assert DEFAULT_WEIGHTS.exists()
    assert DEFAULT_WEIGHTS.stat().st_size < 20 * 2**20
    state = torch.load(DEFAULT_WEIGHTS, weights_only=True)
    assert {t.dtype for t in state.values() if t.is_floating_point()} == {torch.float16}


def test_loads_offline_without_network(monkeypatch, tmp_path):
    # no download code may run: the weights module is not even consulted
    import napari_sam.models.weights as weights

    monkeypatch.setattr(weights, "fetch_weights", lambda *a, **k: pytest.fail("download"))
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path))
    model = build_model("default")
    assert model.img_size == 512
    assert next(model.parameters()).dtype == torch.float32
    assert model.mask_refiner is not None  # its masks are redrawn at the image's resolution
    assert next(model.mask_refiner.parameters()).dtype == torch.float32


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_click_segments_nuclei(predictor, seed):
    """One click at each nucleus' centre: the median IoU over the image's nuclei is > 0.8."""
    image, labels = make_nuclei_2d((256, 256), seed=seed)
    predictor.set_image(image)
    ious = []
    for i in np.unique(labels[labels > 0]):
        gt = labels == i
        mask, _, _ = predictor.segment(points=[farthest_point(gt)], labels=[1])
        ious.append(mask_iou(mask, gt))
    assert len(ious) > 10
    assert np.median(ious) > 0.8
    # a click on the background, as far as possible from any nucleus, does not return one
    bg = farthest_point(labels == 0)
    mask_bg, _, _ = predictor.segment(points=[bg], labels=[1])
    assert (mask_bg & (labels > 0)).sum() < 0.5 * max(1, mask_bg.sum())
