"""Shapes and behaviour of the model's parts, on toy-sized configurations (no reference needed)."""

import math

import pytest
import torch
import torch.nn.functional as F

from napari_sam.models.build import build_sam, tiny_config
from napari_sam.modeling import Sam
from napari_sam.modeling import image_encoder as image_encoder_module
from napari_sam.modeling.image_encoder import (
    RelPosAttention,
    decomposed_rel_pos_bias,
    relative_position_table,
    window_merge,
    window_split,
)
from napari_sam.modeling.prompt_encoder import PositionEmbeddingRandom

CONFIGS = {
    "tiny": tiny_config(),
    # a window that does not divide the 12 x 12 grid: exercises the padding
    "padded-windows": tiny_config(img_size=96, window_size=5),
    "patch-16": tiny_config(
        img_size=128,
        patch_size=16,
        window_size=3,
        encoder_depth=3,
        encoder_global_attn_indexes=(0, 2),
    ),
    "all-global": tiny_config(window_size=0, encoder_global_attn_indexes=()),
}


def _randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give the zero/one-initialised tensors (positions, norms) random values, so they matter."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.state_dict().items():
            if "rel_pos" in name or "pos_embed" in name or torch.all(p == p.flatten()[0]):
                p.add_(torch.randn(p.shape, generator=gen) * 0.3)
    return model


@pytest.fixture(params=list(CONFIGS), scope="module")
def config(request):
    return CONFIGS[request.param]


@pytest.fixture(scope="module")
def model(config) -> Sam:
    torch.manual_seed(0)
    return _randomize(build_sam(config))


def _prompts(config, bs=2, n=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    coords = torch.rand(bs, n, 2, generator=gen) * config.img_size
    labels = torch.randint(0, 2, (bs, n), generator=gen)
    xy0 = torch.rand(bs, 2, generator=gen) * config.img_size / 2
    boxes = torch.cat([xy0, xy0 + config.img_size / 3], dim=1)
    masks = torch.randn(bs, 1, config.low_res_mask_size, config.low_res_mask_size, generator=gen)
    return coords, labels, boxes, masks


# -- image encoder -----------------------------------------------------------------------------


def test_encoder_output_shape(model, config):
    x = torch.randn(2, 3, config.img_size, config.img_size)
    with torch.inference_mode():
        out = model.image_encoder(x)
    e = config.image_embedding_size
    assert out.shape == (2, config.prompt_embed_dim, e, e)
    assert torch.isfinite(out).all()
    assert model.image_embedding_size == (e, e)


def test_encoder_rejects_unpadded_input(model, config):
    with pytest.raises(ValueError, match="preprocess"):
        model.image_encoder(torch.randn(1, 3, config.img_size - 8, config.img_size))


def test_encoder_batch_items_are_independent(model, config):
    x = torch.randn(2, 3, config.img_size, config.img_size)
    with torch.inference_mode():
        both = model.image_encoder(x)
        second = model.image_encoder(x[1:])
    torch.testing.assert_close(both[1:], second, rtol=1e-4, atol=1e-5)


def test_window_split_merge_round_trip():
    x = torch.randn(2, 10, 7, 5)
    windows, padded = window_split(x, 4)
    assert padded == (12, 8)
    assert windows.shape == (2 * 3 * 2, 4, 4, 5)
    # the first window is the top-left corner of the first image
    torch.testing.assert_close(windows[0], x[0, :4, :4])
    torch.testing.assert_close(window_merge(windows, 4, padded, (10, 7)), x)


def test_relative_position_table_offsets():
    table = torch.arange(7.0)[:, None]  # offsets -3..3 of a 4-long axis
    looked_up = relative_position_table(4, 4, table)[..., 0]
    q, k = torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij")
    torch.testing.assert_close(looked_up, (q - k + 3).float())
    # a table for another size is resampled to 2 * 6 - 1 entries
    assert relative_position_table(6, 6, torch.randn(7, 3)).shape == (6, 6, 3)


def _reference_attention(attn: RelPosAttention, x: torch.Tensor) -> torch.Tensor:
    """Explicit softmax attention with the relative-position terms, written out the long way."""
    b, h, w, c = x.shape
    n = attn.num_heads
    qkv = attn.qkv(x).reshape(b, h * w, 3, n, c // n).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # (B, heads, hw, hd)
    logits = (q / math.sqrt(c // n)) @ k.transpose(-2, -1)
    rh = relative_position_table(h, h, attn.rel_pos_h)  # (h, h, hd)
    rw = relative_position_table(w, w, attn.rel_pos_w)
    qg = q.reshape(b, n, h, w, -1)
    bias = torch.zeros(b, n, h, w, h, w)
    for ky in range(h):
        for kx in range(w):
            bias[..., ky, kx] = (qg * rh[:, ky][None, None, :, None]).sum(-1) + (
                qg * rw[:, kx][None, None, None, :]
            ).sum(-1)
    out = torch.softmax(logits + bias.reshape(b, n, h * w, h * w), dim=-1) @ v
    return attn.proj(out.transpose(1, 2).reshape(b, h, w, c))


def test_rel_pos_attention_matches_explicit_softmax():
    torch.manual_seed(0)
    attn = RelPosAttention(16, num_heads=2, use_rel_pos=True, input_size=(5, 6))
    with torch.no_grad():
        attn.rel_pos_h.normal_()
        attn.rel_pos_w.normal_()
    x = torch.randn(2, 5, 6, 16)
    with torch.inference_mode():
        torch.testing.assert_close(attn(x), _reference_attention(attn, x), rtol=1e-4, atol=1e-5)


def test_rel_pos_bias_in_head_chunks_is_the_same(monkeypatch):
    torch.manual_seed(0)
    attn = RelPosAttention(32, num_heads=4, use_rel_pos=True, input_size=(6, 6))
    with torch.no_grad():
        attn.rel_pos_h.normal_()
        attn.rel_pos_w.normal_()
    x = torch.randn(1, 6, 6, 32)
    with torch.inference_mode():
        whole = attn(x)
        monkeypatch.setattr(image_encoder_module, "_BIAS_BUDGET_BYTES", 1)  # one head at a time
        chunked = attn(x)
    torch.testing.assert_close(chunked, whole)


def test_decomposed_bias_shape():
    q = torch.randn(3, 2, 4 * 5, 8)
    bias = decomposed_rel_pos_bias(q, torch.randn(7, 8), torch.randn(9, 8), (4, 5), (4, 5))
    assert bias.shape == (3, 2, 20, 20)


def test_encoder_backward_pass(config):
    torch.manual_seed(0)
    sam = build_sam(config).train()
    x = torch.randn(1, 3, config.img_size, config.img_size)
    sam.image_encoder(x).square().mean().backward()
    grad = sam.image_encoder.blocks[0].attn.rel_pos_h.grad
    assert grad is not None and torch.isfinite(grad).all()


# -- prompt encoder ----------------------------------------------------------------------------


def test_prompt_encoder_points(model, config):
    coords, labels, _, _ = _prompts(config)
    sparse, dense = model.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
    e, c = config.image_embedding_size, config.prompt_embed_dim
    assert sparse.shape == (2, 3 + 1, c)  # plus the padding token
    assert dense.shape == (2, c, e, e)
    # the padding token is the learned not-a-point embedding, whatever its coordinates
    padding = model.prompt_encoder.not_a_point_embed.weight.expand(2, -1)
    torch.testing.assert_close(sparse[:, -1], padding)


def test_prompt_encoder_boxes(model, config):
    _, _, boxes, _ = _prompts(config)
    sparse, dense = model.prompt_encoder(points=None, boxes=boxes, masks=None)
    assert sparse.shape == (2, 2, config.prompt_embed_dim)
    assert dense.shape[0] == 2


def test_prompt_encoder_points_and_boxes(model, config):
    coords, labels, boxes, _ = _prompts(config)
    sparse, _ = model.prompt_encoder(points=(coords, labels), boxes=boxes, masks=None)
    assert sparse.shape == (2, 3 + 2, config.prompt_embed_dim)  # no padding token with a box


def test_prompt_encoder_masks(model, config):
    _, _, _, masks = _prompts(config)
    e = config.image_embedding_size
    sparse, dense = model.prompt_encoder(points=None, boxes=None, masks=masks)
    assert sparse.shape == (2, 0, config.prompt_embed_dim)
    assert dense.shape == (2, config.prompt_embed_dim, e, e)
    # the embedded mask differs from the "no mask" embedding
    _, none = model.prompt_encoder(points=None, boxes=None, masks=None)
    assert not torch.allclose(dense, none.expand_as(dense))


def test_prompt_encoder_nothing(model, config):
    sparse, dense = model.prompt_encoder(points=None, boxes=None, masks=None)
    e = config.image_embedding_size
    assert sparse.shape == (1, 0, config.prompt_embed_dim)
    assert dense.shape == (1, config.prompt_embed_dim, e, e)


def test_prompt_encoder_labels_change_embedding(model, config):
    coords, _, _, _ = _prompts(config, bs=1, n=1)
    pos, _ = model.prompt_encoder(points=(coords, torch.ones(1, 1)), boxes=None, masks=None)
    neg, _ = model.prompt_encoder(points=(coords, torch.zeros(1, 1)), boxes=None, masks=None)
    types = model.prompt_encoder.point_embeddings
    diff = types[1].weight - types[0].weight
    torch.testing.assert_close(pos[0, 0] - neg[0, 0], diff[0])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(points=(torch.zeros(2, 3), torch.ones(2, 3)), boxes=None, masks=None), "coords"),
        (dict(points=(torch.zeros(2, 3, 2), torch.ones(2, 4)), boxes=None, masks=None), "labels"),
        (dict(points=None, boxes=torch.zeros(2, 3), masks=None), "boxes"),
        (
            dict(
                points=(torch.zeros(2, 1, 2), torch.ones(2, 1)), boxes=torch.zeros(3, 4), masks=None
            ),
            "batch size",
        ),
        (dict(points=None, boxes=None, masks=torch.zeros(1, 1, 5, 5)), "masks"),
    ],
)
def test_prompt_encoder_rejects_bad_shapes(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        model.prompt_encoder(**kwargs)


def test_dense_pe_matches_point_encoding(model, config):
    """The dense PE of cell (row i, col j) is the point encoding of its centre (x=j+.5, y=i+.5)."""
    pe = model.prompt_encoder.pe_layer
    h = w = config.image_embedding_size
    dense = model.prompt_encoder.get_dense_pe()
    assert dense.shape == (1, config.prompt_embed_dim, h, w)
    i, j = 1, h - 2
    point = torch.tensor([[[j + 0.5, i + 0.5]]])
    torch.testing.assert_close(pe.forward_with_coords(point, (h, w))[0, 0], dense[0, :, i, j])


def test_position_embedding_is_bounded():
    pe = PositionEmbeddingRandom(8)
    out = pe((3, 5))
    assert out.shape == (16, 3, 5)
    assert out.abs().max() <= 1.0


# -- mask decoder ------------------------------------------------------------------------------


def _decode(model, sparse, dense, multimask, embedding=None):
    config_e = model.image_embedding_size
    if embedding is None:
        gen = torch.Generator().manual_seed(1)
        embedding = torch.randn(1, model.prompt_encoder.embed_dim, *config_e, generator=gen)
    return model.mask_decoder(
        image_embeddings=embedding,
        image_pe=model.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
    )


@pytest.mark.parametrize("multimask, k", [(True, 3), (False, 1)])
def test_decoder_output_shapes(model, config, multimask, k):
    coords, labels, _, _ = _prompts(config)
    with torch.inference_mode():
        sparse, dense = model.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        masks, iou = _decode(model, sparse, dense, multimask)
    low = config.low_res_mask_size
    assert masks.shape == (2, k, low, low)
    assert iou.shape == (2, k)


def test_batched_boxes_match_one_by_one(model, config):
    """Several boxes decode in one call against one shared image embedding."""
    _, _, boxes, _ = _prompts(config, bs=3)
    with torch.inference_mode():
        sparse, dense = model.prompt_encoder(points=None, boxes=boxes, masks=None)
        masks, iou = _decode(model, sparse, dense, False)
        assert masks.shape == (3, 1, config.low_res_mask_size, config.low_res_mask_size)
        for i in range(3):
            s, d = model.prompt_encoder(points=None, boxes=boxes[i : i + 1], masks=None)
            m, q = _decode(model, s, d, False)
            torch.testing.assert_close(m, masks[i : i + 1], rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(q, iou[i : i + 1], rtol=1e-4, atol=1e-4)


def test_decoder_one_embedding_per_prompt(model, config):
    coords, labels, boxes, masks = _prompts(config)
    e = config.image_embedding_size
    embeddings = torch.randn(2, config.prompt_embed_dim, e, e)
    with torch.inference_mode():
        sparse, dense = model.prompt_encoder(points=(coords, labels), boxes=boxes, masks=masks)
        both, _ = _decode(model, sparse, dense, True, embeddings)
        second, _ = _decode(model, sparse[1:], dense[1:], True, embeddings[1:])
    torch.testing.assert_close(both[1:], second, rtol=1e-4, atol=1e-4)


def test_decoder_rejects_mismatched_embedding_batch(model, config):
    coords, labels, _, _ = _prompts(config, bs=3)
    e = config.image_embedding_size
    sparse, dense = model.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
    with pytest.raises(ValueError, match="image embeddings for 3 prompts"):
        _decode(model, sparse, dense, True, torch.randn(2, config.prompt_embed_dim, e, e))


def test_mask_prompt_shared_by_a_batch(model, config):
    _, _, boxes, masks = _prompts(config, bs=2)
    sparse, dense = model.prompt_encoder(points=None, boxes=boxes, masks=masks[:1])
    out, _ = _decode(model, sparse, dense, True)
    assert out.shape[:2] == (2, 3)


# -- Sam ---------------------------------------------------------------------------------------


def test_sam_properties(model, config):
    assert model.img_size == config.img_size
    assert model.device == torch.device("cpu")
    assert not model.training
    assert "pixel_mean" not in model.state_dict()  # not persistent: not in checkpoints


def test_preprocess_normalises_and_pads(model, config):
    h, w = config.img_size // 2, config.img_size - 8
    x = torch.full((2, 3, h, w), 255.0)
    out = model.preprocess(x)
    assert out.shape == (2, 3, config.img_size, config.img_size)
    expected = (255.0 - model.pixel_mean) / model.pixel_std
    torch.testing.assert_close(out[:, :, :h, :w], expected.expand(2, 3, h, w))
    assert (out[:, :, h:] == 0).all() and (out[:, :, :, w:] == 0).all()
    assert model.preprocess(torch.zeros(3, h, w, dtype=torch.uint8)).shape == out.shape[1:]


def test_preprocess_rejects_bad_input(model, config):
    with pytest.raises(ValueError, match="larger than the model input"):
        model.preprocess(torch.zeros(1, 3, config.img_size + 1, 4))
    with pytest.raises(ValueError, match="batch"):
        model.preprocess(torch.zeros(1, 1, 8, 8))


def test_pixel_statistics_are_imagenet():
    sam = build_sam(tiny_config())
    torch.testing.assert_close(sam.pixel_mean.flatten(), torch.tensor([123.675, 116.28, 103.53]))
    torch.testing.assert_close(sam.pixel_std.flatten(), torch.tensor([58.395, 57.12, 57.375]))


def test_end_to_end_masks_follow_the_box(config):
    """Embed, prompt and decode at full resolution; logits upscale to the input size."""
    torch.manual_seed(0)
    sam = build_sam(config)
    image = torch.rand(1, 3, config.img_size, config.img_size) * 255
    with torch.inference_mode():
        embedding = sam.image_encoder(sam.preprocess(image))
        sparse, dense = sam.prompt_encoder(
            points=None, boxes=torch.tensor([[4.0, 4.0, 20.0, 30.0]]), masks=None
        )
        low, iou = _decode(sam, sparse, dense, True, embedding)
        full = F.interpolate(low, size=(config.img_size, config.img_size), mode="bilinear")
    assert full.shape == (1, 3, config.img_size, config.img_size)
    assert torch.isfinite(iou).all()
