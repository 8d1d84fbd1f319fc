"""Model configurations, the registry, the builders and the device choice."""

import dataclasses

import pytest
import torch

from napari_sam.models import build
from napari_sam.models import device
from napari_sam.models.build import (
    MODEL_ALIASES,
    MODEL_CONFIGS,
    SamConfig,
    build_model,
    build_sam,
    list_models,
    resolve_model_name,
    tiny_config,
)
from napari_sam.models.checkpoint import CheckpointError
from napari_sam.models.configs import MICROSAM_MODELS
from napari_sam.modeling import Sam

# -- configurations ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, dim, depth, heads, global_blocks",
    [
        ("vit_b", 768, 12, 12, (2, 5, 8, 11)),
        ("vit_l", 1024, 24, 16, (5, 11, 17, 23)),
        ("vit_h", 1280, 32, 16, (7, 15, 23, 31)),
    ],
)
def test_published_hyperparameters(name, dim, depth, heads, global_blocks):
    c = MODEL_CONFIGS[name]
    assert (c.encoder_embed_dim, c.encoder_depth, c.encoder_num_heads) == (dim, depth, heads)
    assert c.encoder_global_attn_indexes == global_blocks
    assert (c.img_size, c.patch_size, c.window_size, c.prompt_embed_dim) == (1024, 16, 14, 256)
    assert (c.mask_in_chans, c.decoder_depth, c.decoder_mlp_dim, c.decoder_num_heads) == (
        16,
        2,
        2048,
        8,
    )
    assert (c.iou_head_depth, c.iou_head_hidden_dim) == (3, 256)
    assert c.image_embedding_size == 64 and c.low_res_mask_size == 256


def test_list_models(monkeypatch):
    assert list_models() == list(MODEL_CONFIGS)
    sam = [n for n in list_models() if n.startswith("vit_") and n not in MICROSAM_MODELS]
    assert sam == ["vit_t", "vit_b", "vit_l", "vit_h"]
    for name in MICROSAM_MODELS:  # micro-sam's models: SAM's architectures, other weights
        assert name in list_models() and MODEL_CONFIGS[name] is MODEL_CONFIGS[name[:5]]
    monkeypatch.setitem(MODEL_ALIASES, "fast", "vit_b")
    assert list_models(include_aliases=True) == [*MODEL_CONFIGS, *MODEL_ALIASES]
    assert resolve_model_name("fast") == "vit_b"
    assert resolve_model_name("vit_l") == "vit_l"
    with pytest.raises(ValueError, match="unknown model 'vit_x'.*vit_b"):
        resolve_model_name("vit_x")


def test_config_is_frozen_and_hashable():
    c = SamConfig(
        encoder_embed_dim=64, encoder_depth=2, encoder_num_heads=4, encoder_global_attn_indexes=[1]
    )
    assert c.encoder_global_attn_indexes == (1,)  # a list is stored as a tuple
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.img_size = 512
    assert hash(c) == hash(dataclasses.replace(c))
    assert dataclasses.replace(c, img_size=512).image_embedding_size == 32


def test_encoder_fields_are_required():
    with pytest.raises(TypeError):
        SamConfig()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(img_size=100), "multiple of patch_size"),
        (dict(encoder_num_heads=3), "must divide encoder_embed_dim"),
        (dict(encoder_global_attn_indexes=(0, 5)), r"\[5\] are outside"),
        (dict(prompt_embed_dim=36), "multiple of 8"),
        (dict(decoder_num_heads=3), "decoder_num_heads"),
        (dict(mask_in_chans=6), "multiple of 4"),
        (dict(encoder_depth=0), "positive int"),
        (dict(window_size=-1), "window_size"),
    ],
)
def test_config_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


def test_tiny_config():
    c = tiny_config()
    assert (c.img_size, c.patch_size, c.image_embedding_size, c.low_res_mask_size) == (64, 8, 8, 32)
    assert tiny_config(img_size=128).image_embedding_size == 16
    assert tiny_config(encoder_depth=4).encoder_depth == 4
    with pytest.raises(TypeError, match="unknown SamConfig fields"):
        tiny_config(depth=3)


# -- build_sam ---------------------------------------------------------------------------------


def test_build_sam():
    torch.manual_seed(0)
    model = build_sam(tiny_config())
    assert isinstance(model, Sam)
    assert not model.training
    assert model.img_size == 64
    assert model.image_embedding_size == (8, 8)
    assert model.prompt_encoder.mask_input_size == (32, 32)
    assert next(model.parameters()).dtype == torch.float32


def test_only_pixel_statistics_are_left_out_of_checkpoints():
    # build_model allocates a checkpoint's model uninitialised and sets these two by hand
    model = build_sam(tiny_config())
    transient = {name for name, _ in model.named_buffers()} - set(model.state_dict())
    assert transient == {"pixel_mean", "pixel_std"}


def test_build_sam_is_seeded():
    torch.manual_seed(3)
    a = build_sam(tiny_config()).state_dict()
    torch.manual_seed(3)
    b = build_sam(tiny_config()).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_build_sam_rejects_other_arguments():
    with pytest.raises(TypeError, match="SamConfig"):
        build_sam("vit_b")


# -- build_model -------------------------------------------------------------------------------


@pytest.fixture
def tiny_registry(monkeypatch):
    """Two toy model types in the registry, so checkpoints stay a few hundred kB."""
    monkeypatch.setitem(MODEL_CONFIGS, "toy", tiny_config())
    monkeypatch.setitem(MODEL_CONFIGS, "toy_wide", tiny_config(encoder_embed_dim=48))
    return MODEL_CONFIGS


@pytest.fixture
def toy_checkpoint(tmp_path, tiny_registry):
    torch.manual_seed(0)
    model = build_sam(MODEL_CONFIGS["toy"])
    path = tmp_path / "toy.pth"
    torch.save(model.state_dict(), path)
    return path, model


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_build_model_random_weights():
    torch.manual_seed(0)
    model = build_model("vit_b", device="cpu", pretrained=False)
    assert isinstance(model, Sam)
    assert not model.training
    assert model.device == torch.device("cpu")
    assert model.image_encoder.patch_embed.proj.out_channels == 768


def test_build_model_from_registry_name_and_checkpoint(toy_checkpoint):
    path, reference = toy_checkpoint
    model = build_model("toy", checkpoint=path, device="cpu")
    assert _same_weights(model, reference)
    assert not model.training
    # the constants that are not in the checkpoint are set
    torch.testing.assert_close(model.pixel_mean, reference.pixel_mean)
    torch.testing.assert_close(model.pixel_std, reference.pixel_std)
    x = torch.rand(1, 3, 64, 64) * 255
    with torch.inference_mode():
        torch.testing.assert_close(
            model.image_encoder(model.preprocess(x)),
            reference.image_encoder(reference.preprocess(x)),
        )


def test_build_model_from_checkpoint_path_infers_type(toy_checkpoint, tiny_registry):
    path, reference = toy_checkpoint
    model = build_model(path, device="cpu")
    assert _same_weights(model, reference)
    assert _same_weights(build_model(str(path)), reference)


def test_build_model_checkpoint_of_another_type(tmp_path, tiny_registry):
    torch.manual_seed(0)
    path = tmp_path / "wide.pth"
    torch.save(build_sam(MODEL_CONFIGS["toy_wide"]).state_dict(), path)
    with pytest.raises(CheckpointError, match="does not fit a 'toy' model.*'toy_wide' checkpoint"):
        build_model("toy", checkpoint=path)


def test_build_model_unknown_checkpoint(tmp_path):
    path = tmp_path / "odd.pth"
    torch.save(build_sam(tiny_config()).state_dict(), path)
    with pytest.raises(CheckpointError, match="does not match any known SAM model.*closest"):
        build_model(path)


def test_build_model_fetches_official_weights(monkeypatch, toy_checkpoint):
    path, reference = toy_checkpoint
    from napari_sam.models import weights

    asked = []

    def fake_fetch(name, **kwargs):
        asked.append(name)
        return path

    monkeypatch.setattr(weights, "fetch_weights", fake_fetch)
    model = build_model("toy")
    assert asked == ["toy"]
    assert _same_weights(model, reference)


def test_build_model_alias_fetches_its_target(monkeypatch):
    from napari_sam.models import weights

    monkeypatch.setitem(MODEL_ALIASES, "fast", "vit_b")

    class Fetched(Exception):
        pass

    def fake_fetch(name, **kwargs):
        raise Fetched(name)

    monkeypatch.setattr(weights, "fetch_weights", fake_fetch)
    with pytest.raises(Fetched, match="vit_b"):
        build_model("fast")


def test_build_model_without_registered_weights(monkeypatch, tiny_registry):
    from napari_sam.models import weights

    def fake_fetch(name, **kwargs):
        raise ValueError(f"unknown model {name!r}")

    monkeypatch.setattr(weights, "fetch_weights", fake_fetch)
    with pytest.raises(ValueError, match="no official weights are registered for 'toy'"):
        build_model("toy")
    assert isinstance(build_model("toy", pretrained=False), Sam)


def test_build_model_bad_names(tmp_path, toy_checkpoint):
    with pytest.raises(ValueError, match="unknown model 'vit_q'"):
        build_model("vit_q", pretrained=False)
    with pytest.raises(CheckpointError, match="does not exist"):
        build_model(str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="pass the file once"):
        build_model(toy_checkpoint[0], checkpoint=toy_checkpoint[0])


def test_build_model_bad_device():
    with pytest.raises(ValueError, match="not a device name"):
        build_model("vit_b", device="gpu7", pretrained=False)


# -- devices -----------------------------------------------------------------------------------


def _fake_hardware(monkeypatch, cuda: int = 0, mps: bool = False):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)
    monkeypatch.setattr(device, "_mps_available", lambda: mps)


@pytest.mark.parametrize(
    "cuda, mps, expected", [(0, False, "cpu"), (0, True, "mps"), (2, True, "cuda")]
)
def test_auto_device_prefers_cuda_then_mps(monkeypatch, cuda, mps, expected):
    _fake_hardware(monkeypatch, cuda, mps)
    assert device.resolve_device().type == expected
    assert device.resolve_device("auto").type == expected


def test_explicit_devices(monkeypatch):
    _fake_hardware(monkeypatch, cuda=2)
    assert device.resolve_device("cpu") == torch.device("cpu")
    assert device.resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert device.resolve_device("CUDA:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match="only 2 CUDA device"):
        device.resolve_device("cuda:2")
    with pytest.raises(ValueError, match="MPS backend is not available"):
        device.resolve_device("mps")
    assert device.available_devices() == ["cuda:0", "cuda:1", "cpu"]


def test_unavailable_and_invalid_devices(monkeypatch):
    _fake_hardware(monkeypatch)
    with pytest.raises(ValueError, match="CUDA is not available.*Available devices: cpu"):
        device.resolve_device("cuda")
    with pytest.raises(ValueError, match="not a device name"):
        device.resolve_device("tpu-ish")
    with pytest.raises(TypeError):
        device.resolve_device(0)


def test_default_dtype_is_float32():
    assert device.default_dtype() == torch.float32
    assert device.default_dtype("mps") == torch.float32
    assert device.default_dtype(torch.device("cpu")) == torch.float32


def test_build_module_has_public_api():
    assert {"build_model", "build_sam", "list_models", "tiny_config", "SamConfig"} <= set(
        build.__all__
    )
