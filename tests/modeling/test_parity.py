"""Numerical parity with Meta's reference implementation (``segment_anything``), a test-only oracle.

Both models get the same state dict (random, with the zero/one-initialised tensors perturbed so
that position embeddings and norms matter), then must agree on the image embedding and on the
decoder outputs. ViT-B's numerics are compared at a 256 px input (:data:`VIT_B_SIZE`): the same
blocks, widths, heads, windows (padded: a 16 x 16 grid is not a multiple of 14) and global layers
as at 1024 px, with a sixteenth of the tokens (two 1024 px encoder passes took ~40 s on two CPU
cores). The 1024 px state dicts are compared shape by shape below, and the global layers'
relative-position bias is built a few query rows at a time, as it is at 1024 px
(:func:`vit_b_embeddings`).
"""

import dataclasses

import pytest
import torch

segment_anything = pytest.importorskip("segment_anything")

from segment_anything import sam_model_registry  # noqa: E402

from _reference import reference_sam  # noqa: E402
from napari_sam.models.build import MODEL_CONFIGS, build_sam, tiny_config  # noqa: E402
from napari_sam.models.checkpoint import load_weights, state_dict_shapes  # noqa: E402

#: Largest relative error ||ours - ref|| / ||ref|| accepted in float32.
REL_TOL = 1e-4


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours - ref).norm() / ref.norm())


def perturbed_state(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for name, t in state.items():
        if "rel_pos" in name:
            t.copy_(torch.randn(t.shape, generator=gen) * 0.3)
        elif t.numel() > 1 and torch.all(t == t.flatten()[0]):
            t.add_(torch.randn(t.shape, generator=gen) * 0.1)
    return state


def shapes(state) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


# -- state dicts -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["vit_b", "vit_l", "vit_h"])
def test_state_dict_keys_and_shapes_match(name):
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        ref = sam_model_registry[name]()
        ours = build_sam(MODEL_CONFIGS[name])
    assert shapes(ours.state_dict()) == shapes(ref.state_dict())
    assert state_dict_shapes(MODEL_CONFIGS[name]) == shapes(ref.state_dict())
    assert {k for k, _ in ours.named_buffers()} == {k for k, _ in ref.named_buffers()}


# -- vit_b numerics ----------------------------------------------------------------------------

#: ViT-B's input side in the numerical comparisons (see the module's notes).
VIT_B_SIZE = 256
VIT_B = dataclasses.replace(MODEL_CONFIGS["vit_b"], img_size=VIT_B_SIZE)


@pytest.fixture(scope="module")
def vit_b_pair():
    torch.manual_seed(0)
    ref = reference_sam(VIT_B)  # Meta's modules, ViT-B's hyperparameters at VIT_B_SIZE
    state = perturbed_state(ref, seed=1)
    ref.load_state_dict(state)
    ours = build_sam(VIT_B)
    load_weights(ours, state, "vit_b")
    return ours.eval(), ref.eval()


@pytest.fixture(scope="module")
def vit_b_embeddings(vit_b_pair):
    from napari_sam.modeling import image_encoder as image_encoder_module

    ours, ref = vit_b_pair
    gen = torch.Generator().manual_seed(2)
    image = torch.rand(1, 3, VIT_B_SIZE, VIT_B_SIZE, generator=gen) * 255
    # at 1024 px a window's bias (196 x 196 floats per head) is built for whole heads and a
    # global layer's (4096 x 4096) a few query rows at a time: a budget between the two sizes
    # (here 196 and 256 tokens) takes both paths
    window, tokens = VIT_B.window_size**2, VIT_B.image_embedding_size**2
    with pytest.MonkeyPatch.context() as patch, torch.inference_mode():
        patch.setattr(image_encoder_module, "_BIAS_BUDGET_BYTES", 2 * (window**2 + tokens**2))
        x_ours, x_ref = ours.preprocess(image), ref.preprocess(image)
        torch.testing.assert_close(x_ours, x_ref)
        return ours.image_encoder(x_ours), ref.image_encoder(x_ref)


def test_image_embedding_parity(vit_b_embeddings):
    ours, ref = vit_b_embeddings
    e = VIT_B.image_embedding_size
    assert ours.shape == ref.shape == (1, 256, e, e)
    assert rel_err(ours, ref) <= REL_TOL


def _scaled(coords):
    """Nested lists of coordinates in the 1024 px frame, in the VIT_B_SIZE frame."""
    return (torch.tensor(coords, dtype=torch.float64) * (VIT_B_SIZE / 1024)).tolist()


# (x, y) in the 1024 px frame, scaled to VIT_B_SIZE
PROMPTS = {
    "point": dict(points=(_scaled([[[500.0, 300.0]]]), [[1]]), boxes=None, multimask=True),
    "points-neg": dict(
        points=(_scaled([[[500.0, 300.0], [120.5, 900.0]]]), [[1, 0]]), boxes=None,
        multimask=True
    ),
    "box": dict(points=None, boxes=_scaled([[100.0, 200.0, 600.0, 700.0]]), multimask=False),
    "point+box": dict(
        points=(_scaled([[[350.0, 450.0]]]), [[0]]),
        boxes=_scaled([[100.0, 200.0, 600.0, 700.0]]), multimask=False
    ),
    "three-boxes": dict(
        points=None,
        boxes=_scaled([[10.0, 20.0, 300.0, 400.0], [500, 500, 900, 700], [0, 0, 1023, 767]]),
        multimask=False,
    ),
}


def _decode(model, embedding, prompt, masks=None):
    points = None
    if prompt["points"] is not None:
        coords, labels = prompt["points"]
        points = (torch.tensor(coords, dtype=torch.float32), torch.tensor(labels))
    boxes = None if prompt["boxes"] is None else torch.tensor(prompt["boxes"], dtype=torch.float32)
    with torch.inference_mode():
        sparse, dense = model.prompt_encoder(points=points, boxes=boxes, masks=masks)
        return model.mask_decoder(
            image_embeddings=embedding,
            image_pe=model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=prompt["multimask"],
        )


@pytest.mark.parametrize("prompt", list(PROMPTS))
def test_decoder_parity(vit_b_pair, vit_b_embeddings, prompt):
    ours, ref = vit_b_pair
    embedding = vit_b_embeddings[1]  # the same input for both decoders
    masks, iou = _decode(ours, embedding, PROMPTS[prompt])
    ref_masks, ref_iou = _decode(ref, embedding, PROMPTS[prompt])
    assert masks.shape == ref_masks.shape
    assert masks.shape[-2:] == (VIT_B.low_res_mask_size,) * 2
    assert rel_err(masks, ref_masks) <= REL_TOL
    assert rel_err(iou, ref_iou) <= REL_TOL


def test_mask_prompt_parity(vit_b_pair, vit_b_embeddings):
    ours, ref = vit_b_pair
    gen = torch.Generator().manual_seed(3)
    mask = torch.randn(1, 1, VIT_B.low_res_mask_size, VIT_B.low_res_mask_size, generator=gen) * 10
    prompt = PROMPTS["point"]
    masks, iou = _decode(ours, vit_b_embeddings[1], prompt, masks=mask)
    ref_masks, ref_iou = _decode(ref, vit_b_embeddings[1], prompt, masks=mask)
    assert rel_err(masks, ref_masks) <= REL_TOL
    assert rel_err(iou, ref_iou) <= REL_TOL


# -- other sizes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [tiny_config(), tiny_config(img_size=96, window_size=5), tiny_config(window_size=0)],
    ids=["tiny", "padded-windows", "all-global"],
)
def test_small_config_parity(config):
    """Same numbers at non-default sizes (patch grid, windows with padding, embedding width)."""
    torch.manual_seed(0)
    ref = reference_sam(config)
    state = perturbed_state(ref, seed=4)
    ref.load_state_dict(state)
    ours = build_sam(config)
    load_weights(ours, state, "tiny")
    gen = torch.Generator().manual_seed(5)
    image = torch.rand(2, 3, config.img_size, config.img_size, generator=gen) * 255
    s = config.img_size
    prompt = dict(
        points=([[[s * 0.3, s * 0.6]], [[s * 0.5, s * 0.1]]], [[1], [0]]),
        boxes=[[2.0, 3.0, s / 2, s - 5], [s / 4, 0, s - 1, s / 3]],
        multimask=True,
    )
    with torch.inference_mode():
        emb = ours.image_encoder(ours.preprocess(image))
        ref_emb = ref.image_encoder(ref.preprocess(image))
        assert rel_err(emb, ref_emb) <= REL_TOL
        for i in range(2):
            masks, iou = _decode(ours, ref_emb[i : i + 1], prompt)
            ref_masks, ref_iou = _decode(ref, ref_emb[i : i + 1], prompt)
            assert rel_err(masks, ref_masks) <= REL_TOL
            assert rel_err(iou, ref_iou) <= REL_TOL


@pytest.mark.parametrize("shape", [(300, 420, 3), (517, 203, 3), (64, 999, 3), (1024, 1024, 4)])
def test_uint8_rgb_input_equals_meta_at_any_size(shape):
    """The encoder's input for 8-bit RGB(A) is Meta's exactly, whatever the image size (the
    encoders themselves are compared above, so the embeddings then agree too)."""
    import numpy as np
    from segment_anything.utils.transforms import ResizeLongestSide

    from napari_sam import SamPredictor
    from napari_sam.models.build import build_sam, tiny_config

    image = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    model = build_sam(tiny_config(img_size=1024)).eval()
    ours, _ = SamPredictor(model).model_input(image)
    resized = ResizeLongestSide(1024).apply_image(image[..., :3])
    ref = torch.as_tensor(resized).permute(2, 0, 1)[None].float()
    ref = (ref - model.pixel_mean) / model.pixel_std  # Sam.preprocess's normalisation
    ref = torch.nn.functional.pad(ref, (0, 1024 - ref.shape[-1], 0, 1024 - ref.shape[-2]))
    assert torch.equal(ours, ref)
