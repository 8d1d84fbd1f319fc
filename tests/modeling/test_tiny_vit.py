"""MobileSAM's TinyViT encoder (``vit_t``): checkpoint layout, loading, and outputs.

The expected key layout (tests/data/mobile_sam_keys.txt) and the reference embedding
(tests/data/mobile_sam_tiny_vit_reference.npz) were produced with MobileSAM's own code
(``mobile_sam.build_sam.build_sam_vit_t``), see tests/data/README.md.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_sam import SamPredictor, build_model
from napari_sam.models.build import MODEL_CONFIGS, SamConfig, build_sam
from napari_sam.models.checkpoint import infer_model_type
from napari_sam.modeling import TinyViT

DATA = Path(__file__).parent.parent / "data"


def _mobile_sam_layout() -> dict[str, tuple[int, ...]]:
    layout = {}
    for line in (DATA / "mobile_sam_keys.txt").read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        key, shape = line.split("\t")
        layout[key] = tuple(int(s) for s in shape.split(",")) if shape else ()
    return layout


def _seeded_state(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Weights that depend only on each key's name (the recipe used to make the reference)."""
    out = {}
    for key, shape in shapes.items():
        g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
        if key.endswith("num_batches_tracked"):
            out[key] = torch.zeros((), dtype=torch.long)
        elif key.endswith("running_var"):
            out[key] = 0.5 + torch.rand(shape, generator=g)
        else:
            t = torch.randn(shape, generator=g)
            if len(shape) >= 2 and "attention_biases" not in key:
                t = t / float(np.prod(shape[1:])) ** 0.5
            elif key.endswith("weight") and len(shape) == 1:
                t = 1 + 0.1 * t
            else:
                t = 0.1 * t
            out[key] = t
    return out


def _small_config(img_size: int = 96) -> SamConfig:
    """A toy TinyViT SAM: 96 px input -> 6 x 6 embedding; windows that need padding."""
    return SamConfig(
        img_size=img_size,
        encoder_type="tiny_vit",
        stage_dims=(8, 16, 24, 32),
        stage_depths=(1, 1, 2, 1),
        stage_num_heads=(1, 2, 3, 4),
        stage_window_sizes=(4, 4, 4, 5),
        encoder_embed_dim=32,
        encoder_depth=5,
        encoder_num_heads=4,
        encoder_global_attn_indexes=(),
        prompt_embed_dim=32,
        mask_in_chans=8,
        decoder_mlp_dim=64,
        decoder_num_heads=2,
        iou_head_hidden_dim=32,
    )


@pytest.fixture(scope="module")
def vit_t() -> torch.nn.Module:
    return build_sam(MODEL_CONFIGS["vit_t"])


def test_key_layout_matches_mobile_sam(vit_t):
    ours = {k: tuple(v.shape) for k, v in vit_t.state_dict().items()}
    expected = _mobile_sam_layout()
    assert len(expected) == 439
    assert sorted(set(expected) - set(ours)) == []
    assert sorted(set(ours) - set(expected)) == []
    wrong = {k: (ours[k], expected[k]) for k in expected if ours[k] != expected[k]}
    assert wrong == {}
    assert sum(p.numel() for p in vit_t.image_encoder.parameters()) == 6_065_532


def test_mobile_sam_layout_is_recognised_as_vit_t():
    shapes = _mobile_sam_layout()
    with torch.device("meta"):
        state = {k: torch.empty(s) for k, s in shapes.items()}
    assert infer_model_type(state) == "vit_t"


def test_matches_mobile_sam_reference_embedding(vit_t):
    """Same weights as MobileSAM's reference run -> same embedding, to float32 rounding."""
    layout = _mobile_sam_layout()
    encoder_state = _seeded_state(
        {k.removeprefix("image_encoder."): s for k, s in layout.items() if k.startswith("image_")}
    )
    encoder = TinyViT()
    encoder.load_state_dict(encoder_state)
    encoder.eval()
    x = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        emb = encoder(x)
    assert emb.shape == (1, 256, 64, 64)
    reference = np.load(DATA / "mobile_sam_tiny_vit_reference.npz")["embedding_subsampled"]
    got = emb[0, :, ::8, ::8].numpy()
    rel = np.linalg.norm(got - reference) / np.linalg.norm(reference)
    assert rel < 1e-4


def test_checkpoint_round_trip(tmp_path, vit_t):
    state = _seeded_state({k: tuple(v.shape) for k, v in vit_t.state_dict().items()})
    path = tmp_path / "mobile_sam_like.pt"
    torch.save(state, path)
    for model in (build_model("vit_t", checkpoint=path, device="cpu"), build_model(path)):
        assert isinstance(model.image_encoder, TinyViT)
        loaded = model.state_dict()
        assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_wrong_checkpoint_for_vit_t_names_the_fitting_type(tmp_path):
    from napari_sam.models.checkpoint import CheckpointError

    path = tmp_path / "vit_b_like.pt"
    with torch.device("meta"):
        shapes = build_sam(MODEL_CONFIGS["vit_b"]).state_dict()
    small = {k: v for k, v in shapes.items() if not k.startswith("image_encoder.")}
    small = {k: torch.zeros(v.shape) for k, v in small.items()}
    torch.save(small, path)
    with pytest.raises(CheckpointError, match="does not fit a 'vit_t' model.*missing"):
        build_model("vit_t", checkpoint=path)


def test_small_tiny_vit_runs_with_padded_windows():
    torch.manual_seed(0)
    model = build_sam(_small_config())
    encoder = model.image_encoder
    x = torch.randn(2, 3, 96, 96)
    with torch.inference_mode():
        both = encoder(x)
        first = encoder(x[:1])
    assert both.shape == (2, 32, 6, 6)
    assert torch.isfinite(both).all()
    torch.testing.assert_close(both[:1], first, rtol=1e-4, atol=1e-5)
    # the image content matters (the network is not degenerate)
    assert (both[0] - both[1]).abs().max() > 1e-3
    # gradients flow to every stage (the encoder is trainable like the ViT)
    encoder.train()
    encoder(x).square().mean().backward()
    for i in range(4):
        grads = [p.grad for p in encoder.layers[i].parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_predictor_with_tiny_vit():
    torch.manual_seed(0)
    predictor = SamPredictor(build_sam(_small_config()))
    image = np.zeros((70, 90), np.float32)
    image[20:40, 30:60] = 1.0
    embedding = predictor.compute_embedding(image)
    assert embedding.features.shape == (1, 32, 6, 6)
    predictor.set_embedding(embedding)
    masks, scores, low = predictor.predict(points=[[30, 45]], labels=[1])
    assert masks.shape == (3, 70, 90) and scores.shape == (3,) and low.shape == (3, 24, 24)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(encoder_embed_dim=64), "encoder_embed_dim=32"),
        (dict(encoder_depth=4), "encoder_depth=5"),
        (dict(stage_dims=(8, 16, 24)), "4 values"),
        (dict(stage_num_heads=(1, 3, 3, 4)), "must divide"),
        (dict(encoder_global_attn_indexes=(1,)), "no global attention"),
        (dict(encoder_type="swin"), "encoder_type"),
    ],
)
def test_tiny_vit_config_errors(change, message):
    import dataclasses

    with pytest.raises(ValueError, match=message):
        dataclasses.replace(_small_config(), **change)


def test_tiny_vit_rejects_wrong_input():
    encoder = TinyViT(
        img_size=64, embed_dims=(8, 16, 24, 32), depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1)
    )
    with pytest.raises(ValueError, match="resize and pad"):
        encoder(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="multiple of 16"):
        TinyViT(img_size=100)
