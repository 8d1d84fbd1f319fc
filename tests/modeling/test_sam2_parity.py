"""SAM 2.1 against Meta's ``sam2`` on the same random weights: keys, features, masks, scores."""

import numpy as np
import pytest
import torch

pytest.importorskip("sam2")

from _sam2_reference import reference_sam2

from napari_sam.models.sam2_configs import SAM2_CONFIGS, build_sam2, tiny_sam2_config


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    config = tiny_sam2_config()
    ref = reference_sam2(config)
    ours = build_sam2(config)
    # the random init is small; widen it so every path (object score, stability) matters
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ours.load_state_dict(ref.state_dict(), strict=True)
    return config, ref, ours


@pytest.mark.parametrize("name", ["sam2.1_hiera_tiny", "sam2.1_hiera_base_plus"])
def test_released_layouts_have_meta_keys_and_shapes(name):
    """The released sizes: our state dict is Meta's, key for key and shape for shape."""
    config = SAM2_CONFIGS[name]
    # Meta's yaml differs between sizes only in the trunk; building b+ checks the defaults.
    ref = reference_sam2(config)  # (Meta's Hiera cannot be built on the meta device)
    ours = build_sam2(config)
    ref_shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    our_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert our_shapes == ref_shapes


def _image(seed, size):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, size, size, generator=g) * 4 - 2


def test_image_features_equal_at_every_scale(pair):
    config, ref, ours = pair
    x = _image(1, config.image_size)
    with torch.no_grad():
        theirs = ref.forward_image(x)
        mine = ours.forward_image(x)
    fpn, pos = theirs["backbone_fpn"], theirs["vision_pos_enc"]
    assert len(fpn) == 3
    torch.testing.assert_close(mine.high_res[0], fpn[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(mine.high_res[1], fpn[1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(mine.embed, fpn[2], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(mine.pos, pos[2], atol=1e-5, rtol=1e-5)
    assert mine.embed.abs().mean() > 0.1  # not a degenerate comparison


def _meta_image_predict(ref, feats, coords, labels, multimask):
    """Meta's SAM2ImagePredictor._predict on already-transformed prompts."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    pred = SAM2ImagePredictor(ref)
    _, vision_feats, _, sizes = ref._prepare_backbone_features(feats)
    vision_feats[-1] = vision_feats[-1] + ref.no_mem_embed
    maps = [f.permute(1, 2, 0).view(1, -1, *s) for f, s in zip(vision_feats, sizes)]
    pred._features = {"image_embed": maps[-1], "high_res_feats": maps[:-1]}
    pred._is_image_set = True
    pred._orig_hw = [(ref.image_size, ref.image_size)]
    _masks, ious, low = pred._predict(coords, labels, None, None, multimask, return_logits=True)
    # the object score: Meta's predictor drops it, take it from the decoder directly
    sparse, dense = ref.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=None)
    *_, obj = ref.sam_mask_decoder(maps[-1], ref.sam_prompt_encoder.get_dense_pe(), sparse,
                                   dense, multimask, False, maps[:-1])
    return low, ious, obj


@pytest.mark.parametrize("prompt", ["point", "box", "box+point"])
@pytest.mark.parametrize("multimask", [True, False])
def test_masks_scores_and_object_score_equal(pair, prompt, multimask):
    config, ref, ours = pair
    s = config.image_size
    x = _image(2, s)
    point = torch.tensor([[[0.4 * s, 0.55 * s]]])
    box = torch.tensor([[0.2 * s, 0.25 * s, 0.7 * s, 0.8 * s]])
    with torch.no_grad():
        feats = ours.forward_image(x)
        if prompt == "point":
            coords, labels = ours.prompt_points(point, torch.ones(1, 1), None)
        elif prompt == "box":
            coords, labels = ours.prompt_points(None, None, box)
        else:
            coords, labels = ours.prompt_points(point, torch.zeros(1, 1), box)
        embed = feats.embed + ours.no_mem_embed.view(1, -1, 1, 1)
        out = ours.decode(embed, feats.high_res, coords, labels, multimask_output=multimask,
                          blank_absent=False)
        low, ious, obj = _meta_image_predict(ref, ref.forward_image(x), coords, labels, multimask)
    torch.testing.assert_close(out.ious, ious, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.object_score, obj, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.multi_logits.clamp(-32, 32), low, atol=1e-3, rtol=1e-3)
    assert ((out.multi_logits > 0) == (low > 0)).float().mean().item() > 0.999


def test_object_score_blanks_the_masks(pair):
    """Where the object score is negative, every mask logit is -1024 (Meta's NO_OBJ_SCORE)."""
    config, ref, ours = pair
    feats = ours.forward_image(_image(3, config.image_size))
    with torch.no_grad():
        ours.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(-100.0)
        try:
            out = ours.decode(feats.embed, feats.high_res, torch.tensor([[[10.0, 10.0]]]),
                              torch.ones(1, 1), multimask_output=True)
        finally:
            ours.load_state_dict(ref.state_dict())
    assert (out.multi_logits == -1024.0).all()
    np.testing.assert_allclose(out.obj_ptr.detach().numpy(), ours.no_obj_ptr.detach().numpy(),
                               atol=1e-6)
