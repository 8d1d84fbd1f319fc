"""Reading checkpoints safely, unwrapping them, and clear errors when they do not fit."""

import os
import pickle

import pytest
import torch

from napari_sam.models.build import MODEL_CONFIGS, build_sam, tiny_config
from napari_sam.models.checkpoint import (
    CheckpointError,
    infer_model_type,
    load_state_dict,
    load_weights,
    require_model_type,
    state_dict_shapes,
)


@pytest.fixture(scope="module")
def tiny_state():
    torch.manual_seed(0)
    return build_sam(tiny_config()).state_dict()


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _meta_state(name: str) -> dict[str, torch.Tensor]:
    """A registry model's state dict with the right shapes and no memory."""
    with torch.device("meta"):
        return build_sam(MODEL_CONFIGS[name]).state_dict()


# -- load_state_dict ---------------------------------------------------------------------------


def test_bare_state_dict(tmp_path, tiny_state):
    path = tmp_path / "bare.pth"
    torch.save(tiny_state, path)
    loaded = load_state_dict(path)
    _assert_same(loaded, tiny_state)
    assert all(t.device.type == "cpu" for t in loaded.values())
    _assert_same(load_state_dict(str(path)), tiny_state)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: {"model": sd},
        lambda sd: {"model_state": sd, "optimizer_state": {"lr": 1e-4}, "epoch": 7},
        lambda sd: {"state_dict": {"model": sd}, "config": {"name": "x", "sizes": [1, 2]}},
        lambda sd: {f"module.{k}": v for k, v in sd.items()},
        lambda sd: {"state_dict": {f"model.sam.{k}": v for k, v in sd.items()}},
        lambda sd: {f"_orig_mod.{k}": v for k, v in sd.items()} | {"step": 3, "note": "hi"},
    ],
    ids=["model", "model_state", "nested", "ddp-prefix", "lightning-prefix", "compiled"],
)
def test_wrapped_and_prefixed_checkpoints(tmp_path, tiny_state, wrap):
    path = tmp_path / "wrapped.pth"
    torch.save(wrap(tiny_state), path)
    _assert_same(load_state_dict(path), tiny_state)


def test_legacy_format_checkpoint(tmp_path, tiny_state):
    path = tmp_path / "legacy.pth"
    torch.save(tiny_state, path, _use_new_zipfile_serialization=False)
    _assert_same(load_state_dict(path), tiny_state)


class _Payload:
    """Unpickling this would create a directory: the loader must refuse it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def test_pickled_objects_are_refused(tmp_path, tiny_state):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pth"
    torch.save({"model": tiny_state, "payload": _Payload(str(marker))}, path)
    with pytest.raises(CheckpointError, match=r"Python objects \(for example os\.makedirs\)"):
        load_state_dict(path)
    assert not marker.exists()


def test_plain_pickle_is_refused(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"weights": _Payload(str(marker))}, f, protocol=2)
    with pytest.raises(CheckpointError):
        load_state_dict(path)
    assert not marker.exists()


def test_refusal_names_the_object(tmp_path, tiny_state):
    import argparse

    path = tmp_path / "with-args.pth"
    torch.save({"model": tiny_state, "args": argparse.Namespace(lr=1)}, path)
    with pytest.raises(CheckpointError, match=r"argparse\.Namespace") as info:
        load_state_dict(path)
    assert "weights_only=False" in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_state_dict(tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="not a file"):
        load_state_dict(tmp_path)


@pytest.mark.parametrize(
    "content", [b"", b"definitely not a checkpoint\n" * 20], ids=["empty", "text"]
)
def test_not_a_torch_file(tmp_path, content):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_state_dict(path)


def test_truncated_checkpoint(tmp_path, tiny_state):
    path = tmp_path / "cut.pth"
    torch.save(tiny_state, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_state_dict(path)


def test_checkpoint_without_tensors(tmp_path):
    path = tmp_path / "empty-dict.pth"
    torch.save({"epoch": 3}, path)
    with pytest.raises(CheckpointError, match="contains no tensors"):
        load_state_dict(path)
    torch.save(torch.zeros(3), path)
    with pytest.raises(CheckpointError, match="not a state dict"):
        load_state_dict(path)


def test_duplicate_keys_after_prefix_stripping(tmp_path):
    path = tmp_path / "dup.pth"
    torch.save({"a.weight": torch.zeros(1), "module.a.weight": torch.ones(1)}, path)
    with pytest.raises(CheckpointError, match="twice"):
        load_state_dict(path)


# -- infer_model_type --------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(MODEL_CONFIGS))
def test_infer_registry_types(name):
    # micro-sam's models share SAM's architectures: detected as the SAM type of the same shapes
    expected = name[:5] if MODEL_CONFIGS[name] is MODEL_CONFIGS.get(name[:5]) else name
    assert infer_model_type(_meta_state(name)) == expected


def test_infer_custom_types(tiny_state):
    configs = {"small": tiny_config(encoder_embed_dim=48), "tiny": tiny_config()}
    assert infer_model_type(tiny_state, configs) == "tiny"
    assert infer_model_type(tiny_state) is None
    partial = dict(tiny_state)
    partial.pop(next(iter(partial)))
    assert infer_model_type(partial, configs) is None


def test_state_dict_shapes_are_cached_and_copied():
    a = state_dict_shapes(MODEL_CONFIGS["vit_b"])
    a.clear()
    assert len(state_dict_shapes(MODEL_CONFIGS["vit_b"])) > 100


def test_state_dict_shapes_skip_initialisation_only_inside():
    config = tiny_config(encoder_embed_dim=40)  # not cached by another test
    torch.manual_seed(0)
    built = build_sam(config)
    assert state_dict_shapes(config) == {k: tuple(v.shape) for k, v in built.state_dict().items()}
    torch.manual_seed(0)  # initialisation works again afterwards: the same weights as before
    _assert_same(build_sam(config).state_dict(), built.state_dict())


def test_require_model_type_explains(tiny_state):
    assert require_model_type(_meta_state("vit_b")) == "vit_b"
    with pytest.raises(CheckpointError, match="any known SAM model.*Compared with the closest, '"):
        require_model_type(tiny_state, source="toy.pth")
    # a vit_l checkpoint with a key lost is reported against vit_l
    vit_l = _meta_state("vit_l")
    vit_l.pop("mask_decoder.iou_token.weight")
    with pytest.raises(CheckpointError, match="closest, 'vit_l': 1 missing key") as info:
        require_model_type(vit_l, "toy.pth")
    assert "'toy.pth'" in str(info.value)


# -- load_weights ------------------------------------------------------------------------------


def test_load_weights(tiny_state):
    model = build_sam(tiny_config())
    load_weights(model, tiny_state, "tiny")
    _assert_same(model.state_dict(), tiny_state)


def test_load_weights_casts_to_the_model_dtype(tiny_state):
    model = build_sam(tiny_config())
    load_weights(model, {k: v.half() for k, v in tiny_state.items()}, "tiny")
    assert next(model.parameters()).dtype == torch.float32
    key = "image_encoder.patch_embed.proj.weight"
    torch.testing.assert_close(model.state_dict()[key], tiny_state[key].half().float())


def test_load_weights_ignores_saved_pixel_statistics(tiny_state):
    model = build_sam(tiny_config())
    extra = dict(tiny_state, pixel_mean=torch.zeros(3, 1, 1), pixel_std=torch.ones(3, 1, 1))
    load_weights(model, extra, "tiny")
    assert model.pixel_mean.flatten()[0] == pytest.approx(123.675)


def test_wrong_type_names_the_right_one():
    with torch.device("meta"):
        model = build_sam(MODEL_CONFIGS["vit_b"])
    with pytest.raises(CheckpointError) as info:
        load_weights(model, _meta_state("vit_l"), "vit_b", source="sam_vit_l.pth")
    message = str(info.value)
    assert "'sam_vit_l.pth' does not fit a 'vit_b' model" in message
    assert "It is a 'vit_l' checkpoint" in message
    assert "missing" not in message  # vit_l has more blocks: only unexpected and reshaped keys
    assert "unexpected key(s) (image_encoder.blocks.12." in message
    assert (
        "image_encoder.pos_embed: (1, 64, 64, 1024) in the checkpoint, "
        "(1, 64, 64, 768) in the model"
    ) in message
    assert "\n" not in message


def test_missing_and_unexpected_keys_are_named(tiny_state):
    model = build_sam(tiny_config())
    broken = dict(tiny_state)
    broken.pop("mask_decoder.iou_token.weight")
    broken["mask_decoder.extra_head.weight"] = torch.zeros(2)
    with pytest.raises(CheckpointError) as info:
        load_weights(model, broken, "tiny")
    message = str(info.value)
    assert "1 missing key(s) (mask_decoder.iou_token.weight)" in message
    assert "1 unexpected key(s) (mask_decoder.extra_head.weight)" in message
    assert "fits none of the known model types" in message
