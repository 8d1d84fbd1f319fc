"""The predictor's fast paths give the results of the plain computation they replace."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_sam.models.build import build_sam, tiny_config
from napari_sam.modeling import MLPBlock
from napari_sam.engine.predictor import ImageEmbedding, SamPredictor, keep_prompted_pieces
from napari_sam.engine.preprocess import ResizeGeometry


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_sam(tiny_config())


def _plain_upscale(low_res: torch.Tensor, geometry: ResizeGeometry) -> torch.Tensor:
    """SAM's postprocessing: to the padded input, crop the padding, to the slice size."""
    x = F.interpolate(low_res, (geometry.img_size,) * 2, mode="bilinear", align_corners=False)
    h, w = geometry.input_size
    return F.interpolate(
        x[..., :h, :w], geometry.original_size, mode="bilinear", align_corners=False
    )


@pytest.mark.parametrize("shape", [(64, 64), (48, 64), (64, 21), (9, 64), (200, 130), (3, 5)])
def test_upscale_equals_sam_postprocessing(model, shape):
    predictor = SamPredictor(model)
    geometry = ResizeGeometry(shape, model.img_size)
    low = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    fast = predictor._upscale(low, geometry)
    plain = _plain_upscale(low, geometry)
    assert fast.shape == (2, 3, *shape)
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
    assert torch.equal(fast > 0, plain > 0)


def test_dense_positional_encoding_is_computed_once(model):
    predictor = SamPredictor(model)
    pe = predictor._get_dense_pe()
    assert predictor._get_dense_pe() is pe
    torch.testing.assert_close(pe, model.prompt_encoder.get_dense_pe())


def test_segment_upsamples_the_chosen_mask_like_predict(model):
    predictor = SamPredictor(model)
    rng = np.random.default_rng(0)
    predictor.set_image(rng.integers(0, 255, size=(50, 37)).astype(np.uint8))
    for kwargs in (
        dict(points=[[20, 10]], labels=[1]),
        dict(box=[5, 5, 30, 25]),
        dict(box=[[5, 5, 30, 25]]),
        dict(points=[[20, 10], [3, 3]], labels=[1, 0]),
    ):
        mask, score, low = predictor.segment(**kwargs)
        multimask = "box" not in kwargs and len(kwargs["points"]) == 1
        masks, scores, lows = predictor.predict(**kwargs, multimask=multimask)
        if masks.ndim == 4:
            masks, scores, lows = masks[0], scores[0], lows[0]
        best = int(np.argmax(scores))
        # segment() also drops the pieces the prompt did not ask for
        expected = keep_prompted_pieces(masks[best], kwargs.get("points"), kwargs.get("labels"),
                                        kwargs.get("box"))
        np.testing.assert_array_equal(mask, expected)
        assert score == pytest.approx(float(scores[best]))
        np.testing.assert_array_equal(low, lows[best][None])


def test_batched_embeddings_equal_single_ones(model):
    predictor = SamPredictor(model)
    rng = np.random.default_rng(0)
    images = [rng.random((40, 64)), rng.random((64, 30)), rng.random((64, 64))]
    batched = predictor.compute_embeddings(images, intensity_range=(0.0, 1.0), batch_size=2)
    assert len(batched) == 3
    for image, emb in zip(images, batched, strict=True):
        single = predictor.compute_embedding(image, intensity_range=(0.0, 1.0))
        assert emb.original_size == image.shape
        assert emb.features.shape == single.features.shape
        torch.testing.assert_close(emb.features, single.features, rtol=1e-4, atol=1e-5)
    # one slice's embedding does not keep the whole batch alive
    assert batched[0].features.untyped_storage().nbytes() == batched[0].nbytes
    with pytest.raises(ValueError, match="batch_size"):
        predictor.compute_embeddings(images, batch_size=0)


def test_bfloat16_encoder_is_close_and_returns_float32(model):
    image = np.random.default_rng(0).random((64, 64))
    full = SamPredictor(model).compute_embedding(image, (0.0, 1.0)).features
    low = SamPredictor(model, precision="bfloat16").compute_embedding(image, (0.0, 1.0))
    assert low.features.dtype == torch.float32
    rel = (low.features - full).norm() / full.norm()
    assert 0 < rel < 0.05  # bfloat16 rounds (so not equal), but stays close
    predictor = SamPredictor(model, precision="bfloat16")
    predictor.set_embedding(low)
    masks, _, _ = predictor.predict(points=[[30, 30]], labels=[1])
    assert masks.shape == (3, 64, 64)
    with pytest.raises(ValueError, match="precision must be one of"):
        SamPredictor(model, precision="int8")


def test_in_place_gelu_mlp_matches_and_still_trains():
    torch.manual_seed(0)
    mlp = MLPBlock(8, 16)
    x = torch.randn(4, 8, requires_grad=True)
    reference = mlp.lin2(torch.nn.functional.gelu(mlp.lin1(x)))
    with torch.inference_mode():
        torch.testing.assert_close(mlp(x), reference.detach())
    out = mlp(x)  # autograd on: the out-of-place path
    torch.testing.assert_close(out, reference)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_embedding_from_other_predictor_decodes_the_same(model):
    """Embeddings are plain data: one computed by a bfloat16 predictor decodes anywhere."""
    image = np.random.default_rng(1).random((30, 64))
    emb = SamPredictor(model).compute_embedding(image, (0.0, 1.0))
    a, b = SamPredictor(model), SamPredictor(model)
    a.set_embedding(emb)
    b.set_embedding(ImageEmbedding(emb.features.clone(), emb.original_size, emb.img_size))
    np.testing.assert_array_equal(a.segment([[10, 10]])[0], b.segment([[10, 10]])[0])
