"""micro-sam as the oracle: its instance decoder, watershed, checkpoint layout and model registry.

micro-sam (and torch_em, python-elf, bioimage-cpp) are test dependencies only (the ``testing``
extra); nothing under src/napari_sam imports them. Random weights, small inputs, no downloads.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch

pytest.importorskip("micro_sam")  # the guard: the testing extra installs it

from micro_sam import util as ms_util
from micro_sam.instance_segmentation import (
    DecoderAdapter,
    InstanceSegmentationWithDecoder,
    get_unetr,
)
from segment_anything.modeling import ImageEncoderViT

from napari_sam.engine.predictor import ImageEmbedding
from napari_sam.modeling.instance_decoder import InstanceDecoder
from napari_sam.models import weights
from napari_sam.models.build import MODEL_CONFIGS, build_model, build_sam, tiny_config
from napari_sam.models.configs import MICROSAM_MODELS
from napari_sam.workflows.instance_decoder import (
    DecoderParams,
    decoder_outputs,
    instances_from_outputs,
)

EMBED = 32  # the tiny config's embedding width


def _microsam_decoder(transposed: bool, seed: int = 0):
    """micro-sam's decoder (torch_em's UNETR, as micro-sam builds it) on a tiny SAM encoder
    (64 px input, 8 px patches: an 8 x 8 x 32 embedding), with random weights and batch-norm
    statistics; returns (DecoderAdapter, its decoder_state)."""
    torch.manual_seed(seed)
    encoder = ImageEncoderViT(img_size=64, patch_size=8, embed_dim=32, depth=1, num_heads=2,
                              out_chans=EMBED, window_size=0, qkv_bias=True, use_rel_pos=True,
                              norm_layer=partial(torch.nn.LayerNorm, eps=1e-6))
    if transposed:
        from torch_em.model import UNETR

        unetr = UNETR(backbone="sam", encoder=encoder, out_channels=3, use_sam_stats=True,
                      final_activation="Sigmoid", use_skip_connection=False,
                      resize_input=True, use_conv_transpose=True)
    else:
        unetr = get_unetr(encoder, None, device="cpu")
    state = {k: v for k, v in unetr.state_dict().items() if not k.startswith("encoder")}
    with torch.no_grad():
        for k, v in state.items():
            if "running_var" in k:
                v.uniform_(0.5, 1.5)
            elif v.is_floating_point():
                v.normal_(0, 0.1)
    # micro-sam's own loader (it detects transposed convolutions from the keys)
    unetr = get_unetr(encoder, state, device="cpu")
    return DecoderAdapter(unetr), state


@pytest.mark.parametrize("transposed", [False, True])
def test_decoder_keys_shapes_and_outputs_match(transposed):
    theirs, state = _microsam_decoder(transposed)
    ours = InstanceDecoder.from_state_dict(state)
    assert ours.transposed is transposed
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in theirs.state_dict().items()}
    x = torch.randn(1, EMBED, 8, 8)
    with torch.no_grad():
        # micro-sam runs its decoder in training mode (never .eval()): per-image batch norm
        expected = theirs._forward_impl(x)
        got = ours(x)
        assert got.shape == (1, 3, 128, 128)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # with the stored running statistics instead (an eval-mode torch_em model); a fresh copy,
    # since the training-mode pass above moved micro-sam's running statistics
    fresh, state = _microsam_decoder(transposed)
    fresh.eval()
    ours = InstanceDecoder.from_state_dict(state, per_image_norm=False)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), fresh._forward_impl(x), rtol=1e-5, atol=1e-5)


def test_outputs_resized_to_the_slice_like_microsam():
    theirs, state = _microsam_decoder(False, seed=1)
    model = build_sam(tiny_config())
    model.instance_decoder = InstanceDecoder.from_state_dict(state)
    x = torch.randn(1, EMBED, 8, 8)
    emb = ImageEmbedding(x, original_size=(50, 37), img_size=64)
    with torch.no_grad():
        expected = theirs(x, emb.geometry.input_size, (50, 37))[0].numpy()
    got = decoder_outputs(model, emb)
    assert got.shape == (3, 50, 37)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def _synthetic_maps(seed, h=96, w=112):
    """Decoder-like maps of a few (touching) ellipses: foreground, centre and boundary
    distances, with noise."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    lab = np.zeros((h, w), int)
    yy, xx = np.mgrid[:h, :w]
    for k in range(1, 9):
        cy, cx, r = rng.uniform(10, h - 10), rng.uniform(10, w - 10), rng.uniform(5, 12)
        lab[(yy - cy) ** 2 + ((xx - cx) * rng.uniform(0.7, 1.3)) ** 2 < r * r] = k
    center, boundary = np.ones((h, w)), np.ones((h, w))
    for k in np.unique(lab)[1:]:
        m = lab == k
        inside = ndimage.distance_transform_edt(m)
        cy, cx = ndimage.center_of_mass(m)
        dc = np.hypot(yy - cy, xx - cx)
        center[m] = (dc / max(dc[m].max(), 1))[m]
        boundary[m] = (1 - inside / inside.max())[m]
    return [np.clip(a + rng.normal(0, 0.05, (h, w)), 0, 1).astype(np.float32)
            for a in ((lab > 0) * 1.0, center, boundary)]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("settings", [
    {},  # micro-sam's defaults
    {"center_distance_threshold": 0.4, "distance_smoothing": 2.0, "min_size": 30},  # vit_b_lm's
])
def test_watershed_gives_microsam_instances(seed, settings):
    fg, center, boundary = _synthetic_maps(seed)
    segmenter = InstanceSegmentationWithDecoder(None, None)
    segmenter.set_state({"foreground": fg, "center_distances": center,
                         "boundary_distances": boundary})
    expected = segmenter.generate(**settings)
    got = instances_from_outputs(fg, center, boundary, DecoderParams(**settings))
    assert expected.max() >= 5  # several objects, some touching
    np.testing.assert_array_equal(got, expected.astype(np.int32))


def test_microsam_checkpoint_loads_with_decoder(tmp_path, monkeypatch):
    """A torch_em training checkpoint exported by micro-sam's own exporter (SAM's keys prefixed
    ``sam.``, the decoder under ``decoder_state``) loads into our model, decoder included."""
    monkeypatch.setitem(MODEL_CONFIGS, "tiny", tiny_config())
    torch.manual_seed(3)
    sam = build_sam(tiny_config())
    _, decoder_state = _microsam_decoder(True, seed=3)
    trained = tmp_path / "best.pt"
    torch.save({"model_state": {"sam." + k: v for k, v in sam.state_dict().items()},
                "decoder_state": decoder_state, "epoch": 3}, trained)
    exported = tmp_path / "exported.pt"
    ms_util.export_custom_sam_model(trained, "vit_b", exported, with_segmentation_decoder=True)

    for path in (trained, exported):
        model = build_model(str(path))
        for k, v in sam.state_dict().items():
            torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=0)
        assert isinstance(model.instance_decoder, InstanceDecoder)
        assert model.instance_decoder.transposed
        for k, v in decoder_state.items():
            torch.testing.assert_close(model.instance_decoder.state_dict()[k], v, rtol=0, atol=0)


def test_registry_matches_microsams():
    """Our entries carry micro-sam 1.8.14's URLs and xxh128 hashes (its pooch registry, which
    creating does not download anything)."""
    registry = ms_util.models()
    assert set(MICROSAM_MODELS) <= set(registry.registry)
    for name in MICROSAM_MODELS:
        for key in (name, name + "_decoder"):
            entry = weights.WEIGHTS[key]
            assert registry.registry[key] == f"xxh128:{entry.xxh128}"
            assert registry.urls[key] == entry.url
            assert entry.filename == key  # micro-sam's cache file name: its files are reused
        assert weights.WEIGHTS[name].decoder == name + "_decoder"
        assert MODEL_CONFIGS[name] is MODEL_CONFIGS[name[:5]]
    # the SAM weights both pin: our SHA256 entries and micro-sam's xxh128 are for one file
    for name in ("vit_b", "vit_l", "vit_h"):
        assert registry.urls[name] == weights.WEIGHTS[name].url
