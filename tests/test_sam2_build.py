"""build_model for SAM 2.1: names, checkpoint files in Meta's format, strict loading."""

import pytest
import torch

from napari_sam.modeling.sam2 import Sam2
from napari_sam.models.build import build_model
from napari_sam.models.checkpoint import CheckpointError
from napari_sam.models.sam2_build import SAM2_DOWNLOADS, build_sam2_model, infer_sam2_type
from napari_sam.models.sam2_configs import SAM2_CONFIGS, build_sam2, tiny_sam2_config


def test_every_released_size_has_a_download():
    assert set(SAM2_DOWNLOADS) == set(SAM2_CONFIGS)
    for url, filename, _ in SAM2_DOWNLOADS.values():
        assert url.endswith("/" + filename)


def test_random_weights_by_name():
    model = build_model("sam2.1_hiera_tiny", pretrained=False, device="cpu")
    assert isinstance(model, Sam2) and not model.training
    assert model.image_size == 1024
    assert infer_sam2_type(model.state_dict()) == "sam2.1_hiera_tiny"


def test_missing_weights_say_where_to_get_them(monkeypatch, tmp_path):
    """Not cached and not downloadable (a closed local port: no test reaches the network): the
    message names the URL and where to save the file (downloads: tests/test_sam2_download.py)."""
    import socket

    from napari_sam.models.weights import WeightsDownloadError

    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/sam2.1_hiera_small.pt"
    monkeypatch.setitem(SAM2_DOWNLOADS, "sam2.1_hiera_small", (url, "sam2.1_hiera_small.pt", 184.0))
    with pytest.raises(WeightsDownloadError) as info:
        build_model("sam2.1_hiera_small", device="cpu")
    assert url in str(info.value)
    assert str(tmp_path / "weights" / "sam2.1_hiera_small.pt") in str(info.value)


def test_meta_checkpoint_file_loads_strictly(tmp_path, monkeypatch):
    """A file in Meta's format ({"model": state}) loads by path and by name from the cache."""
    # a smaller trunk under the tiny's name keeps the test fast; the keys are the same kind
    monkeypatch.setitem(SAM2_CONFIGS, "sam2.1_hiera_tiny", tiny_sam2_config())
    torch.manual_seed(0)
    ref = build_sam2(SAM2_CONFIGS["sam2.1_hiera_tiny"])
    path = tmp_path / "weights" / "sam2.1_hiera_tiny.pt"
    path.parent.mkdir()
    torch.save({"model": ref.state_dict()}, path)
    by_path = build_model(path, device="cpu")
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path))
    by_name = build_model("sam2.1_hiera_tiny", device="cpu")
    for model in (by_path, by_name):
        for k, v in ref.state_dict().items():
            assert torch.equal(model.state_dict()[k], v), k


def test_wrong_size_is_refused(tmp_path, monkeypatch):
    small = build_sam2(tiny_sam2_config())
    path = tmp_path / "toy.pt"
    torch.save({"model": small.state_dict()}, path)
    with pytest.raises(CheckpointError, match="fits none"):
        build_model(path, device="cpu")
    monkeypatch.setitem(SAM2_CONFIGS, "sam2.1_hiera_tiny", tiny_sam2_config())
    state = small.state_dict()
    del state["no_obj_ptr"]
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError, match="missing"):
        build_sam2_model("sam2.1_hiera_tiny", checkpoint=path, device="cpu")
