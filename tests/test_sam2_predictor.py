"""Sam2Predictor (clicks on a 2D slice with SAM 2) against Meta's SAM2ImagePredictor."""

import numpy as np
import pytest
import torch

from napari_sam.engine.predictor import SamPredictor
from napari_sam.engine.sam2_predictor import Sam2Predictor, predictor_for
from napari_sam.models.configs import build_sam, tiny_config
from napari_sam.models.sam2_configs import build_sam2, tiny_sam2_config


@pytest.fixture(scope="module")
def pair():
    pytest.importorskip("sam2")
    from _sam2_reference import reference_sam2

    torch.manual_seed(0)
    config = tiny_sam2_config()
    ref = reference_sam2(config)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ours = build_sam2(config)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def _image(size=128):
    rng = np.random.default_rng(1)
    img = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
    img[30:80, 40:100] = 200
    return img


@pytest.mark.parametrize("prompt", ["point", "box", "points+box"])
def test_matches_meta_image_predictor(pair, prompt):
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    ref, ours = pair
    img = _image()
    theirs = SAM2ImagePredictor(ref)
    s = ref.image_size  # Meta's predictor hard-codes the 1024 px feature sizes
    theirs._bb_feat_sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]
    theirs.set_image(img)
    mine = Sam2Predictor(ours)
    mine.set_image(img)
    rc = np.array([[50.0, 60.0], [20.0, 110.0]])
    box_rc = np.array([28.0, 38.0, 82.0, 102.0])
    kw_ref, kw_our = {}, {}
    if prompt in ("point", "points+box"):
        n = 1 if prompt == "point" else 2
        kw_ref.update(point_coords=rc[:n, ::-1].copy(), point_labels=np.array([1, 0][:n]))
        kw_our.update(points=rc[:n], labels=np.array([1, 0][:n]))
    if prompt in ("box", "points+box"):
        kw_ref["box"] = box_rc[[1, 0, 3, 2]]
        kw_our["box"] = box_rc
    multimask = prompt == "point"
    m_ref, s_ref, low_ref = theirs.predict(**kw_ref, multimask_output=multimask)
    m_our, s_our, low_our = mine.predict(**kw_our, multimask=multimask)
    np.testing.assert_allclose(s_our, s_ref, atol=1e-4)
    np.testing.assert_allclose(low_our, low_ref, atol=1e-3)
    assert (m_our == m_ref).mean() > 0.999
    assert m_our.any() and not m_our.all()


def test_segment_and_batches():
    torch.manual_seed(0)
    pred = Sam2Predictor(build_sam2(tiny_sam2_config()))
    with pytest.raises(RuntimeError, match="set_image"):
        pred.predict(points=[[3, 3]])
    img = _image()[:100, :120, 0]  # grayscale, not square
    pred.set_image(img)
    mask, score, low = pred.segment(points=[[50, 60]])
    assert mask.shape == (100, 120) and mask.dtype == bool and 0 <= score <= 1
    assert low.shape == (1, 32, 32)
    masks, scores, lows = pred.predict(box=[[10, 10, 50, 50], [40, 40, 90, 110]], multimask=False)
    assert masks.shape == (2, 1, 100, 120) and scores.shape == (2, 1) and lows.shape == (2, 1, 32, 32)
    again, _, _ = pred.predict(points=[[50, 60]], mask_input=low, multimask=False)
    assert again.shape == (1, 100, 120)
    assert pred.mask_to_logits(mask).shape == (1, 32, 32)


def test_predictor_for_picks_by_model():
    assert isinstance(predictor_for(build_sam2(tiny_sam2_config())), Sam2Predictor)
    assert isinstance(predictor_for(build_sam(tiny_config())), SamPredictor)
