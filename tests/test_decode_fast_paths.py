"""Issue 22's fast paths give the results of the plain computations they replace.

A click: masks upsampled and refined in windows (engine.upsample.window_masks) against the
whole-slice ``full_logits > 0``; the decoder's folded attention, its per-slice preparation and
the fused LayerNorm2d against their textbook forms; the refiner's channels-last convolutions.
Segment everything: windowed logits (engine.decoding.WindowedLogits) against the whole frame.
Tiny random-weight models only.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_sam.engine.decoding import decode_low_res_windowed, decode_windows, stability_scores
from napari_sam.engine.predictor import SamPredictor
from napari_sam.engine.preprocess import ResizeGeometry
from napari_sam.engine.refine import mask_crop_box, refine_logits, slice_gray
from napari_sam.engine.upsample import window_masks
from napari_sam.modeling import LayerNorm2d, MaskRefiner
from napari_sam.modeling.transformer import Attention
from napari_sam.models.build import build_sam, tiny_config


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_sam(tiny_config()).eval()


def _refiner(seed: int = 3) -> MaskRefiner:
    """A refiner that changes masks: random weights, its last layer too."""
    torch.manual_seed(seed)
    ref = MaskRefiner(width=8, dilations=(1, 2), crop_size=16).eval()
    with torch.no_grad():
        ref.out.weight.normal_(0.0, 0.5)
        ref.out.bias.fill_(0.3)
    return ref


def _low_res(shape: tuple[int, int], n: int = 4) -> torch.Tensor:
    """``(1, n, 32, 32)`` logits: blobs of various sizes, one covering the whole frame (the
    "background" candidate of a click), one that never exceeds 0 but reaches above -2."""
    gen = torch.Generator().manual_seed(sum(shape))
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    out = []
    for k in range(n):
        cy, cx = (torch.rand(2, generator=gen) * 20 + 4).tolist()
        r = 2.0 + 3 * k
        out.append(6.0 * (1 - ((yy - cy) ** 2 + (xx - cx) ** 2) / r**2))
    out[-1] = 3.0 + torch.randn(32, 32, generator=gen)  # the whole slice
    out[-2] = out[-2].clamp(max=-0.5)  # nothing positive, a halo above CROP_LOGIT
    return torch.stack(out)[None]


@pytest.mark.parametrize("shape", [(64, 64), (150, 90), (37, 200)])
@pytest.mark.parametrize("refine", [False, True])
def test_window_masks_equal_whole_slice_masks(model, shape, refine):
    predictor = SamPredictor(model)
    image = np.random.default_rng(1).random(shape).astype(np.float32)
    if refine:
        model.mask_refiner = _refiner()
    try:
        predictor.set_image(image, (0.0, 1.0))
        geometry = ResizeGeometry(shape, model.img_size)
        low = _low_res(shape)
        whole = (predictor.full_logits(low, geometry) > 0).numpy()
        fast = predictor.full_masks(low, geometry)
        assert predictor.refines == refine
        assert fast.shape == whole.shape == (1, 4, *shape)
        assert fast[0, -1].mean() > 0.5  # the whole-slice candidate
        # the same masks up to float rounding of the two upsamplings (a pixel or two at most)
        assert np.count_nonzero(fast != whole) <= 2
        # predict() takes the windowed path; return_logits the whole slice
        masks, _, _ = predictor.predict(points=[[shape[0] / 2, shape[1] / 2]], labels=[1])
        logits, _, _ = predictor.predict(points=[[shape[0] / 2, shape[1] / 2]], labels=[1],
                                         return_logits=True)
        assert np.count_nonzero(masks != (logits > 0)) <= 2
    finally:
        model.mask_refiner = None


def test_window_masks_refine_like_refine_logits():
    shape = (90, 120)
    geometry = ResizeGeometry(shape, 128)
    refiner = _refiner(5)
    gray = torch.from_numpy(slice_gray(np.random.default_rng(2).random(shape), (0.0, 1.0)))
    low = _low_res(shape)
    full = F.interpolate(low, (128, 128), mode="bilinear", align_corners=False)
    h, w = geometry.input_size
    full = F.interpolate(full[..., :h, :w], shape, mode="bilinear", align_corners=False)[0]
    expected = (refine_logits(refiner, gray, full) > 0).numpy()
    cache: dict = {}
    got = window_masks(low, geometry, refiner, gray, cache)[0]
    assert np.count_nonzero(got != expected) <= 2
    assert cache  # the image features of each crop box, kept for the next click
    again = window_masks(low, geometry, refiner, gray, cache)[0]
    np.testing.assert_array_equal(again, got)


def test_crop_box_of_a_window_is_the_whole_slice_box():
    logits = torch.full((80, 100), -5.0)
    logits[30:41, 50:58] = 1.0
    logits[29, 52] = -1.5
    whole = mask_crop_box(logits)
    window = mask_crop_box(logits[20:60, 40:90], offset=(20, 40), shape=(80, 100))
    assert window == whole
    assert mask_crop_box(torch.full((5, 5), -3.0)) is None


def _plain_attention(attn, q, k, v):
    qh, kh, vh = (attn._split_heads(p(x)) for p, x in
                  ((attn.q_proj, q), (attn.k_proj, k), (attn.v_proj, v)))
    b = max(qh.shape[0], kh.shape[0])
    qh, kh, vh = qh.expand(b, -1, -1, -1), kh.expand(b, -1, -1, -1), vh.expand(b, -1, -1, -1)
    out = F.scaled_dot_product_attention(qh, kh, vh)
    return attn.out_proj(out.transpose(1, 2).reshape(b, -1, attn.internal_dim))


@pytest.mark.parametrize(("bq", "nq", "bk", "nk"),
                         [(1, 7, 1, 300), (5, 7, 1, 300), (3, 6, 3, 200), (1, 300, 4, 7),
                          (4, 300, 4, 7), (2, 9, 2, 9)])
def test_folded_attention_equals_projected_attention(bq, nq, bk, nk):
    torch.manual_seed(1)
    attn = Attention(32, 4, downsample_rate=2).eval()
    q, k, v = torch.randn(bq, nq, 32), torch.randn(bk, nk, 32), torch.randn(bk, nk, 32)
    with torch.inference_mode():
        fast = attn(q, k, v)
        plain = _plain_attention(attn, q, k, v)
        folded = attn._few_queries(q, k, v) if nq < nk else attn._few_keys(q, k, v)
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(folded, plain, rtol=1e-4, atol=1e-5)


def test_prepared_decoder_equals_the_plain_decoder(model):
    torch.manual_seed(2)
    pe = model.prompt_encoder.get_dense_pe()
    h, w = model.prompt_encoder.image_embedding_size
    emb = torch.randn(1, model.prompt_encoder.embed_dim, h, w)
    points = (torch.rand(3, 2, 2) * model.img_size, torch.tensor([[1, 0], [1, 1], [1, -1]]))
    with torch.inference_mode():
        sparse, dense = model.prompt_encoder(points=points, boxes=None, masks=None)
        prepared = model.mask_decoder.prepare(emb, pe, dense)
        plain = model.mask_decoder(emb, pe, sparse, dense, True)
        fast = model.mask_decoder(emb, pe, sparse, dense, True, prepared=prepared)
    torch.testing.assert_close(fast[0], plain[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fast[1], plain[1], rtol=1e-4, atol=1e-5)


def test_predictor_prepares_each_slice_once(model):
    predictor = SamPredictor(model)
    predictor.set_image(np.random.default_rng(0).random((40, 40)), (0.0, 1.0))
    predictor.predict(points=[[10, 10]], labels=[1])
    first = predictor._prepared
    predictor.predict(points=[[20, 30]], labels=[1])
    assert predictor._prepared is first
    predictor.set_image(np.random.default_rng(1).random((40, 40)), (0.0, 1.0))
    assert predictor._prepared is None


@pytest.mark.parametrize("channels_last", [False, True])
def test_layernorm2d_equals_the_textbook_form(channels_last):
    torch.manual_seed(0)
    norm = LayerNorm2d(12)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(2, 12, 9, 7) * 3 + 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    mean = x.mean(1, keepdim=True)
    var = (x - mean).pow(2).mean(1, keepdim=True)
    plain = norm.weight[:, None, None] * (x - mean) / torch.sqrt(var + norm.eps) \
        + norm.bias[:, None, None]
    out = norm(x)
    torch.testing.assert_close(out, plain, rtol=1e-5, atol=1e-5)
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last


def test_refiner_channels_last_equals_plain_convolutions():
    ref = _refiner(7)
    crops, scales = torch.randn(3, 3, 16, 16), torch.randn(3)
    x = torch.cat([crops, scales.view(3, 1, 1, 1).expand(3, 1, 16, 16)], dim=1)
    x = F.relu(ref.inp(x))
    for conv in ref.body:
        x = F.relu(x + conv(x))
    with torch.inference_mode():
        out = ref(crops, scales)
    torch.testing.assert_close(out, ref.out(x).detach(), rtol=1e-5, atol=1e-5)
    assert out.is_contiguous()


def test_windowed_logits_equal_the_whole_frame(model):
    predictor = SamPredictor(model)
    image = np.random.default_rng(3).random((64, 64))
    emb = predictor.compute_embedding(image, (0.0, 1.0))
    points = np.array([[[10.0, 12.0]], [[40.0, 50.0]], [[60.0, 3.0]]])
    labels = np.ones((3, 1), dtype=np.int64)
    found = decode_windows(predictor, emb, points, labels, None, None, True, points[:, 0], 4,
                           min_iou=0.0)
    full, iou = decode_low_res_windowed(predictor, emb, points, labels, None, None, True,
                                        points[:, 0], 4, min_iou=0.0)
    torch.testing.assert_close(found.full(), full)
    torch.testing.assert_close(found.iou, iou)
    torch.testing.assert_close(found.stability(1.0), stability_scores(full, 1.0))
    torch.testing.assert_close(found.area(), (full > 0).flatten(-2).sum(-1).float())
    for i in range(3):
        torch.testing.assert_close(found.logits(i), full[i])


def test_low_scores_are_confirmed_on_the_whole_grid(model):
    # a decision taken on a low score (propagation's stop) rests on the exact decode
    predictor = SamPredictor(model)
    image = np.random.default_rng(5).random((64, 64))
    emb = predictor.compute_embedding(image, (0.0, 1.0))
    points = np.array([[[10.0, 12.0]], [[40.0, 50.0]], [[60.0, 3.0]]])
    labels = np.ones((3, 1), dtype=np.int64)
    full, full_iou = decode_low_res_windowed(predictor, emb, points, labels, None, None, True,
                                             points[:, 0], 0)
    win, win_iou = decode_low_res_windowed(predictor, emb, points, labels, None, None, True,
                                           points[:, 0], 4, min_iou=2.0)
    assert not torch.allclose(win, full, atol=1e-3)  # the window is an approximation
    best = win_iou.max(dim=1).values
    threshold = float(best.median())  # one object below, one at, one above: only one confirmed
    conf, conf_iou = decode_low_res_windowed(predictor, emb, points, labels, None, None, True,
                                             points[:, 0], 4, min_iou=2.0,
                                             confirm_below=threshold)
    low = best < threshold
    assert low.sum() == 1
    torch.testing.assert_close(conf[low], full[low])
    torch.testing.assert_close(conf_iou[low], full_iou[low].to(conf_iou.dtype))
    torch.testing.assert_close(conf[~low], win[~low])
