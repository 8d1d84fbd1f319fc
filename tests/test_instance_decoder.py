"""Automatic instance segmentation with micro-sam-style decoders, without micro-sam: the
registry's two-file, xxh128-pinned entries (offline and from a local server), the CLI's
``automatic --mode decoder`` and ``models``, and 3D linking. Oracles: tests/test_microsam.py."""

from __future__ import annotations

import http.server
import threading

import numpy as np
import pytest
import tifffile
import torch

from napari_sam import cli
from napari_sam.modeling.instance_decoder import InstanceDecoder
from napari_sam.models import weights
from napari_sam.models.build import MODEL_CONFIGS, build_model, build_sam, tiny_config
from napari_sam.models.checkpoint import CheckpointError, load_weights
from napari_sam.models.configs import MICROSAM_MODELS
from napari_sam.workflows import instance_decoder as workflow

xxhash = pytest.importorskip("xxhash")  # a dependency of the package: checks micro-sam's files


def _tiny_with_decoder(seed=0):
    torch.manual_seed(seed)
    model = build_sam(tiny_config())
    decoder = InstanceDecoder(embed_dim=32, initial_features=8)
    model.instance_decoder = decoder.eval()
    return model


def _xxh128(path):
    return xxhash.xxh128(path.read_bytes()).hexdigest()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path / "cache"))
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "cache" / "weights"


@pytest.fixture
def tiny_lm(tmp_path, monkeypatch):
    """A micro-sam-like registry model 'tiny_lm': SAM's weights and the decoder in two files,
    pinned by xxh128; returns (model whose weights they are, served folder, register)."""
    model = _tiny_with_decoder(seed=1)
    served = tmp_path / "served"
    served.mkdir()
    sam_state = {k: v for k, v in model.state_dict().items()
                 if not k.startswith("instance_decoder.")}
    torch.save(sam_state, served / "tiny_lm")
    torch.save(model.instance_decoder.state_dict(), served / "tiny_lm_decoder")
    monkeypatch.setitem(MODEL_CONFIGS, "tiny_lm", tiny_config())

    def register(url_of):
        for name, decoder in (("tiny_lm", "tiny_lm_decoder"), ("tiny_lm_decoder", "")):
            entry = weights.WeightsEntry(
                name=name, url=url_of(name), sha256="", xxh128=_xxh128(served / name),
                filename=name, size_mb=0.1, family="micro-sam LM", decoder=decoder)
            monkeypatch.setitem(weights.WEIGHTS, name, entry)

    return model, served, register


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_two_file_model_hand_placed_offline(tiny_lm, cache):
    model, served, register = tiny_lm
    register(lambda name: f"http://127.0.0.1:9/{name}")  # never contacted
    cache.mkdir(parents=True)
    for name in ("tiny_lm", "tiny_lm_decoder"):
        (cache / name).write_bytes((served / name).read_bytes())
    built = build_model("tiny_lm", device="cpu")
    assert isinstance(built.instance_decoder, InstanceDecoder)
    assert _same(built, model)


def test_two_file_model_downloaded_and_checked_by_xxh128(tiny_lm, cache, monkeypatch):
    model, served, register = tiny_lm
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(served), **kwargs)

        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        host, port = httpd.server_address[:2]
        register(lambda name: f"http://{host}:{port}/{name}")
        built = build_model("tiny_lm", device="cpu")
        assert _same(built, model)
        assert sorted(requests) == ["/tiny_lm", "/tiny_lm_decoder"]
        # a corrupt decoder file in the cache is noticed (xxh128) and downloaded again
        (cache / "tiny_lm_decoder").write_bytes(b"garbage")
        with pytest.warns(UserWarning, match="xxh128"):
            assert _same(build_model("tiny_lm", device="cpu"), model)
        # a server sending another file: refused, nothing saved
        (cache / "tiny_lm_decoder").unlink()
        (served / "tiny_lm_decoder").write_bytes(b"other")
        with pytest.raises(weights.WeightsDownloadError, match="xxh128 expected"):
            build_model("tiny_lm", device="cpu")
        assert not (cache / "tiny_lm_decoder").exists()
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_entries_need_a_hash_of_the_right_length():
    with pytest.raises(ValueError, match="sha256 must be 64 hex digits"):
        weights.WeightsEntry(name="a", url="u", sha256="", filename="a", size_mb=1)
    with pytest.raises(ValueError, match="xxh128 must be 32 hex digits"):
        weights.WeightsEntry(name="a", url="u", sha256="", xxh128="abc", filename="a", size_mb=1)
    entry = weights.WeightsEntry(name="a", url="u", sha256="", xxh128="xxh128:" + "AB" * 16,
                                 filename="a", size_mb=1)
    assert entry.digest == ("xxh128", "ab" * 16)


def test_decoder_state_errors():
    with pytest.raises(ValueError, match="not an instance-segmentation decoder"):
        InstanceDecoder.from_state_dict({"foo": torch.zeros(1)})
    state = InstanceDecoder(embed_dim=32, initial_features=8).state_dict()
    state.pop("decoder.blocks.0.block.1.bias")
    with pytest.raises(ValueError, match="missing"):
        InstanceDecoder.from_state_dict(state)
    wide = InstanceDecoder(embed_dim=64, initial_features=8).state_dict()
    model = build_sam(tiny_config())  # 32-channel embedding
    sam = {k: v for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match="64-channel"):
        load_weights(model, {**sam, **{"instance_decoder." + k: v for k, v in wide.items()}},
                     "tiny")


def test_automatic_decoder_mode_cli(tmp_path, monkeypatch, capsys):
    from napari_sam.cli import _common

    image = np.random.default_rng(0).integers(0, 4000, (3, 40, 50), dtype=np.uint16)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, image)
    out = tmp_path / "labels.tif"
    plain = build_sam(tiny_config())
    monkeypatch.setattr(_common, "load_model", lambda args: plain)
    assert cli.main(["automatic", str(path), "--axis", "0", "--out", str(out),
                     "--mode", "decoder"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no instance-segmentation decoder" in err and "\n" not in err
    assert not out.exists()

    model = _tiny_with_decoder()
    seen = []
    real = workflow.instances_from_outputs
    monkeypatch.setattr(_common, "load_model", lambda args: model)
    monkeypatch.setattr(workflow, "instances_from_outputs",
                        lambda *maps, params: seen.append(params) or real(*maps, params=params))
    assert cli.main(["automatic", str(path), "--axis", "0", "--out", str(out), "--mode",
                     "decoder", "--center-distance-threshold", "0.4", "--min-size", "5"]) == 0
    assert tifffile.imread(out).shape == (3, 40, 50)
    assert len(seen) == 3 and seen[0].center_distance_threshold == 0.4
    assert seen[0].min_size == 5 and seen[0].boundary_distance_threshold == 0.5


def _cylinders(n=5, size=48):
    """Two objects through all slices, and a third only on slice 2."""
    lab = np.zeros((n, size, size), np.int32)
    yy, xx = np.mgrid[:size, :size]
    for z in range(n):
        lab[z][(yy - 14) ** 2 + (xx - 14 - z) ** 2 < 64] = 1
        lab[z][(yy - 34) ** 2 + (xx - 32) ** 2 < 49] = 2
    lab[2][(yy - 40) ** 2 + (xx - 8) ** 2 < 16] = 3
    return lab


def _maps_of(lab2d):
    from scipy import ndimage

    inside = np.zeros(lab2d.shape)
    for k in np.unique(lab2d)[1:]:
        d = ndimage.distance_transform_edt(lab2d == k)
        inside[lab2d == k] = (d / d.max())[lab2d == k]
    fg = (lab2d > 0) * 1.0
    return np.stack([fg, np.where(fg > 0, 1 - inside, 1), np.where(fg > 0, 1 - inside, 1)])


@pytest.mark.parametrize("axis", [0, 2])
def test_stack_objects_linked_across_slices(monkeypatch, axis):
    truth = _cylinders()
    model = _tiny_with_decoder()
    monkeypatch.setattr(workflow, "decoder_outputs", lambda model, emb: _maps_of(emb))
    stack = np.moveaxis(truth, 0, axis)
    labels = workflow.segment_everything_nd(
        model, stack.astype(np.float32), axis=axis,
        embed=lambda i: truth[i], params=workflow.DecoderParams(distance_smoothing=0))
    labels = np.moveaxis(labels, axis, 0)
    assert labels.max() == 3  # one id per object through the stack
    for k in (1, 2, 3):  # each true object is one label, the same on every slice
        ids = np.unique(labels[truth == k])
        assert ids.size == 1 and ids[0] > 0
    unlinked = workflow.segment_everything_nd(
        model, stack.astype(np.float32), axis=axis, embed=lambda i: truth[i], link_3d=False)
    assert unlinked.max() == 11  # 2 per slice and one more


def test_segment_everything_runs_the_decoder_once_per_slice():
    model = _tiny_with_decoder()
    calls = []
    model.instance_decoder.register_forward_hook(lambda *a: calls.append(1))
    image = np.random.default_rng(1).random((30, 44)).astype(np.float32)
    labels = workflow.segment_everything(model, image)
    assert labels.shape == (30, 44) and labels.dtype == np.int32 and len(calls) == 1
    with pytest.raises(ValueError, match="no instance-segmentation decoder"):
        workflow.segment_everything(build_sam(tiny_config()), image)


def test_models_command_lists_family_size_cache_and_use(cache, capsys):
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    for name in MICROSAM_MODELS:
        assert name in rows and " no " in rows[name] and "[decoder]" in rows[name]
    assert "micro-sam LM" in rows["vit_b_lm"] and "micro-sam EM" in rows["vit_b_em_organelles"]
    assert "415 MB" in rows["vit_b_lm"]  # SAM's part and the decoder
    assert "SAM " in rows["vit_b"] and "MobileSAM" in rows["vit_t"]
    assert "built in" in rows["default"]
    assert "vit_b_lm_decoder" not in rows  # a part of vit_b_lm, not a model
    cache.mkdir(parents=True)
    (cache / "vit_b_lm").write_bytes(b"x")
    cli.main(["models"])
    row = next(r for r in capsys.readouterr().out.splitlines() if r.startswith("vit_b_lm "))
    assert " partly " in row
    (cache / "vit_b_lm_decoder").write_bytes(b"x")
    cli.main(["models", "--names"])
    names = capsys.readouterr().out.split()
    assert names[0] == "default" and set(MICROSAM_MODELS) <= set(names)


def test_models_command_lists_sam2_with_its_file_and_cache_state(cache, capsys):
    assert cli.main(["models"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()
            if line.strip()}
    row = rows["sam2.1_hiera_tiny"]
    assert "SAM 2.1" in row and " no " in row and "sam2.1_hiera_tiny.pt" in row
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "sam2.1_hiera_tiny.pt").write_bytes(b"x")
    cli.main(["models"])
    row = next(r for r in capsys.readouterr().out.splitlines()
               if r.startswith("sam2.1_hiera_tiny "))
    assert " yes " in row
