"""Downloading SAM 2.1 checkpoints by name: size, structure and trust-on-first-use SHA256.

Everything is served by a local HTTP server on 127.0.0.1 (any other connection fails the test):
the entry of ``sam2.1_hiera_tiny`` in ``SAM2_DOWNLOADS`` points at it, with the size of the
served file, and ``SAM2_CONFIGS`` gives that name the small test configuration, as
tests/test_sam2_build.py does.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
from pathlib import Path

import pytest
import torch
from test_weights import _no_internet, _Server  # noqa: F401 (autouse: no connection but to 127.0.0.1)

from napari_sam.models import sam2_build
from napari_sam.models.build import build_model
from napari_sam.models.checkpoint import CheckpointError
from napari_sam.models.sam2_build import SAM2_DOWNLOADS, fetch_sam2_weights
from napari_sam.models.sam2_configs import SAM2_CONFIGS, build_sam2, tiny_sam2_config
from napari_sam.models.weights import WeightsDownloadError

NAME = "sam2.1_hiera_tiny"
FILENAME = "sam2.1_hiera_tiny.pt"


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """A fresh cache; the tiny test layout under the released name. Returns the weights folder."""
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path / "cache"))
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setitem(SAM2_CONFIGS, NAME, tiny_sam2_config())
    return tmp_path / "cache" / "weights"


@pytest.fixture(scope="module")
def reference() -> tuple[dict[str, torch.Tensor], bytes]:
    """Random SAM 2 weights of the test layout and the bytes of their checkpoint in Meta's
    format (``{"model": state_dict}``)."""
    torch.manual_seed(0)
    state = build_sam2(tiny_sam2_config()).state_dict()
    return state, _saved({"model": state})


def _saved(obj) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


@pytest.fixture
def serve(tmp_path, monkeypatch, request):
    """``serve(data, size_bytes=None)``: serve ``data`` as the tiny model's download, with
    ``size_bytes`` (default: the data's length) as its published size; returns the server."""
    root = tmp_path / "served"
    root.mkdir()
    srv = _Server(root)
    request.addfinalizer(srv.close)

    def _serve(data: bytes, size_bytes: int | None = None) -> _Server:
        (root / FILENAME).write_bytes(data)
        size = len(data) if size_bytes is None else size_bytes
        monkeypatch.setitem(SAM2_DOWNLOADS, NAME, (srv.url(FILENAME), FILENAME, size / 1e6))
        return srv

    return _serve


def _assert_nothing_kept(cache: Path) -> None:
    left = sorted(p.name for p in cache.iterdir()) if cache.exists() else []
    assert left == [], left


# -- a good download ---------------------------------------------------------------------------


def test_download_loads_and_records_its_sha256(reference, serve, cache, caplog):
    state, data = reference
    server = serve(data)
    with caplog.at_level(logging.INFO, logger=sam2_build.__name__):
        model = build_model(NAME, device="cpu")
    assert server.requests == ["/" + FILENAME]
    for k, v in state.items():
        assert torch.equal(model.state_dict()[k], v), k
    digest = hashlib.sha256(data).hexdigest()
    assert (cache / FILENAME).read_bytes() == data
    record = json.loads((cache / (FILENAME + ".verified.json")).read_text())
    assert record["sha256"] == digest and record["size"] == len(data)
    assert any(digest in r.getMessage() and "trust on first use" in r.getMessage()
               for r in caplog.records)
    assert not (cache / (FILENAME + ".download")).exists()


def test_second_build_uses_the_cache_without_network(reference, serve, cache, monkeypatch):
    state, data = reference
    server = serve(data)
    fetch_sam2_weights(NAME, progress=False)
    server.close()  # nothing to reach any more

    def no_rehash(path):
        raise AssertionError("an unchanged recorded file is not hashed again")

    monkeypatch.setattr("napari_sam.models.weights.file_sha256", no_rehash)
    model = build_model(NAME, device="cpu")
    assert server.requests == ["/" + FILENAME]
    assert torch.equal(model.state_dict()["no_obj_ptr"], state["no_obj_ptr"])


def test_the_cli_and_the_models_listing_see_it(reference, serve, cache):
    from napari_sam.cli.models import model_rows

    _, data = reference
    serve(data)
    rows = {row[0]: row for row in model_rows()}
    assert rows[NAME][1] == "SAM 2.1" and rows[NAME][3] == "no"
    assert "downloaded on first use" in rows[NAME][4]
    fetch_sam2_weights(NAME, progress=False)
    assert {row[0]: row for row in model_rows()}[NAME][3] == "yes"


# -- downloads that are refused ----------------------------------------------------------------


def test_a_sam_checkpoint_is_refused_and_not_kept(serve, cache):
    from napari_sam.models.build import build_sam, tiny_config

    sam = _saved({"model": build_sam(tiny_config()).state_dict()})
    serve(sam)
    with pytest.raises(WeightsDownloadError) as info:
        build_model(NAME, device="cpu")
    message = str(info.value)
    assert f"is not the {NAME} checkpoint" in message
    assert "not a SAM 2 checkpoint" in message and "deleted" in message
    _assert_nothing_kept(cache)


def test_other_shapes_are_refused_and_not_kept(serve, cache):
    other = _saved({"model": build_sam2(tiny_sam2_config(embed_dim=48)).state_dict()})
    serve(other)
    with pytest.raises(WeightsDownloadError, match=r"wrong shapes: image_encoder\."):
        fetch_sam2_weights(NAME, progress=False)
    _assert_nothing_kept(cache)


def test_a_truncated_file_is_refused_by_its_size(reference, serve, cache):
    _, data = reference
    serve(data[: len(data) // 2], size_bytes=len(data))
    with pytest.raises(WeightsDownloadError, match=rf"{len(data) // 2} bytes, expected"):
        fetch_sam2_weights(NAME, progress=False)
    _assert_nothing_kept(cache)


def test_a_truncated_file_within_the_size_range_is_refused_by_its_structure(
        reference, serve, cache):
    _, data = reference
    serve(data[:-1000], size_bytes=len(data))
    with pytest.raises(WeightsDownloadError, match="not a readable PyTorch checkpoint"):
        fetch_sam2_weights(NAME, progress=False)
    _assert_nothing_kept(cache)


def test_unreachable_server_says_what_to_do(cache, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/{FILENAME}"
    monkeypatch.setitem(SAM2_DOWNLOADS, NAME, (url, FILENAME, 40.0))
    with pytest.raises(WeightsDownloadError) as info:
        build_model(NAME, device="cpu")
    message = str(info.value)
    assert url in message and str(cache / FILENAME) in message
    _assert_nothing_kept(cache)


# -- the cached file and its record ------------------------------------------------------------


def test_a_file_changed_after_its_record_is_an_error(reference, serve, cache):
    _, data = reference
    serve(data)
    path = fetch_sam2_weights(NAME, progress=False)
    changed = bytearray(data)
    changed[len(changed) // 2] ^= 0xFF
    path.write_bytes(bytes(changed))
    with pytest.raises(CheckpointError) as info:
        build_model(NAME, device="cpu")
    message = str(info.value)
    assert str(path) in message and "has changed" in message
    assert "download" in message and FILENAME + ".verified.json" in message
    assert path.read_bytes() == bytes(changed)  # the user's file is left for them to look at


def test_a_touched_but_equal_file_is_accepted(reference, serve, cache):
    _, data = reference
    serve(data)
    path = fetch_sam2_weights(NAME, progress=False)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert fetch_sam2_weights(NAME, progress=False) == path
    record = json.loads((cache / (FILENAME + ".verified.json")).read_text())
    assert record["mtime_ns"] == path.stat().st_mtime_ns


def test_a_hand_placed_file_is_checked_and_recorded(reference, serve, cache):
    state, data = reference
    server = serve(b"never served")
    cache.mkdir(parents=True)
    (cache / FILENAME).write_bytes(data)
    model = build_model(NAME, device="cpu")
    assert server.requests == []
    assert torch.equal(model.state_dict()["no_obj_ptr"], state["no_obj_ptr"])
    record = json.loads((cache / (FILENAME + ".verified.json")).read_text())
    assert record["sha256"] == hashlib.sha256(data).hexdigest()


def test_a_hand_placed_file_of_another_model_is_refused(serve, cache):
    cache.mkdir(parents=True)
    other = _saved({"model": build_sam2(tiny_sam2_config(embed_dim=48)).state_dict()})
    (cache / FILENAME).write_bytes(other)
    with pytest.raises(CheckpointError, match="wrong shapes"):
        fetch_sam2_weights(NAME, progress=False)
    assert not (cache / (FILENAME + ".verified.json")).exists()


def test_unknown_name():
    with pytest.raises(ValueError, match="unknown SAM 2.1 model"):
        fetch_sam2_weights("sam2.1_hiera_huge")


# -- the viewer's loader -----------------------------------------------------------------------


def test_the_viewer_downloads_in_its_background_worker(reference, serve, cache, monkeypatch):
    """The widget's *Load model* goes through ``SamSession.load_model``: the download runs in
    the worker thread and ``load_model`` returns while it is still going (the GUI stays live)."""
    from napari_sam.engine.sam2_predictor import Sam2Predictor
    from napari_sam.models import weights
    from napari_sam.plugin.session import SamSession

    _, data = reference
    serve(data)
    started, release, threads = threading.Event(), threading.Event(), []
    real_download = weights.download_file

    def held_download(*args, **kwargs):
        threads.append(threading.current_thread())
        started.set()
        assert release.wait(30)
        return real_download(*args, **kwargs)

    monkeypatch.setattr(weights, "download_file", held_download)
    session, done = SamSession(), []
    session.load_model(NAME, None, "cpu", lambda *result: done.append(result))
    assert started.wait(30) and not done  # load_model returned with the download under way
    assert threads[0] is not threading.main_thread()
    release.set()
    for _ in range(3000):
        if done:
            break
        session.runner.process_events(0.01)
    assert done == [(NAME, None, True)], done
    assert isinstance(session.predictor, Sam2Predictor)
    assert (cache / (FILENAME + ".verified.json")).exists()
    session.close()


def test_the_cli_model_option_downloads_it(reference, serve, cache):
    import argparse

    from napari_sam.cli import _common
    from napari_sam.modeling.sam2 import Sam2

    _, data = reference
    server = serve(data)
    args = argparse.Namespace(model=NAME, checkpoint=None, device="cpu")
    assert isinstance(_common.load_model(args), Sam2)
    assert server.requests == ["/" + FILENAME] and (cache / FILENAME).is_file()
