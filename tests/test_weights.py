"""Checkpoint registry, cache and verified download, against a local HTTP server only."""

from __future__ import annotations

import hashlib
import http.server
import ipaddress
import os
import re
import socket
import sys
import threading
import warnings
from pathlib import Path

import pytest

from napari_sam.models import weights
from napari_sam.models.weights import (
    WEIGHTS,
    WeightsDownloadError,
    WeightsEntry,
    cache_dir,
    cache_root,
    fetch_weights,
    file_sha256,
    register_weights,
    resolve_checkpoint,
    weights_path,
)

PAYLOAD = b"not really a checkpoint\n" * 1000
PAYLOAD_SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
OFFICIAL = {
    "vit_b": "sam_vit_b_01ec64.pth",
    "vit_l": "sam_vit_l_0b3195.pth",
    "vit_h": "sam_vit_h_4b8939.pth",
}


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_internet(monkeypatch):
    """Fail any connection that is not to the loopback interface."""
    real_connect = socket.socket.connect

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            if not ipaddress.ip_address(address[0]).is_loopback:
                raise AssertionError(f"test tried to reach the network: {address!r}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """Point the cache root at a fresh folder; returns the weights folder."""
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path / "cache"))
    # requests honours proxy variables even for 127.0.0.1 unless told otherwise
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "cache" / "weights"


class _Server:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[str] = []
        self.truncate = False
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(root), **kwargs)

            def do_GET(self):
                server.requests.append(self.path)
                if server.truncate:  # promise more bytes than are sent, then hang up
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(PAYLOAD)))
                    self.end_headers()
                    self.wfile.write(PAYLOAD[:100])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, filename: str) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/{filename}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server(tmp_path, request) -> _Server:
    root = tmp_path / "served"
    root.mkdir()
    (root / "tiny.pth").write_bytes(PAYLOAD)
    srv = _Server(root)
    request.addfinalizer(srv.close)
    return srv


@pytest.fixture
def register(request):
    """Register entries for one test and remove them afterwards."""
    names: list[str] = []

    def _register(**fields) -> WeightsEntry:
        fields.setdefault("filename", "tiny.pth")
        fields.setdefault("size_mb", len(PAYLOAD) / 1e6)
        entry = register_weights(WeightsEntry(**fields))
        names.append(entry.name)
        return entry

    def _cleanup():
        for name in names:
            WEIGHTS.pop(name, None)

    request.addfinalizer(_cleanup)
    return _register


@pytest.fixture
def tiny(server, register) -> WeightsEntry:
    return register(name="tiny", url=server.url("tiny.pth"), sha256=PAYLOAD_SHA256)


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# -- registry ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_official_entries(name):
    entry = WEIGHTS[name]
    assert entry.name == name
    assert re.fullmatch(r"[0-9a-f]{64}", entry.sha256)
    assert entry.filename == OFFICIAL[name]
    assert entry.url == f"https://dl.fbaipublicfiles.com/segment_anything/{OFFICIAL[name]}"
    assert entry.size_mb > 0 and entry.description


def test_official_hashes_are_distinct():
    assert len({WEIGHTS[name].sha256 for name in OFFICIAL}) == len(OFFICIAL)


def test_entry_validation():
    good = dict(name="x", url="http://127.0.0.1/x.pth", filename="x.pth", size_mb=1.0)
    entry = WeightsEntry(sha256="sha256:" + PAYLOAD_SHA256.upper(), **good)
    assert entry.sha256 == PAYLOAD_SHA256
    with pytest.raises(ValueError, match="64 hex digits"):
        WeightsEntry(sha256="abc", **good)
    with pytest.raises(ValueError, match="64 hex digits"):
        WeightsEntry(sha256="g" * 64, **good)
    for bad in ("sub/x.pth", "..", ""):
        with pytest.raises(ValueError, match="bare file name"):
            WeightsEntry(sha256=PAYLOAD_SHA256, **{**good, "filename": bad})


def test_register_conflicts(register):
    first = register(name="tiny", url="http://127.0.0.1/a.pth", sha256=PAYLOAD_SHA256)
    assert WEIGHTS["tiny"] is first
    assert register_weights(first) is first  # identical again: fine
    other = WeightsEntry(
        name="tiny", url="http://127.0.0.1/b.pth", sha256="0" * 64, filename="b.pth", size_mb=1
    )
    with pytest.raises(ValueError, match="already registered"):
        register_weights(other)
    assert register_weights(other, overwrite=True) is other
    with pytest.raises(ValueError, match="already used by"):
        register(name="tiny2", url="http://127.0.0.1/c.pth", sha256="1" * 64, filename="b.pth")
    with pytest.raises(TypeError):
        register_weights({"name": "dict"})


# -- cache location ----------------------------------------------------------------------------


def test_cache_dir_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path / "root"))
    assert cache_root() == tmp_path / "root"
    assert cache_dir() == tmp_path / "root" / "weights"
    assert weights_path("vit_b") == tmp_path / "root" / "weights" / "sam_vit_b_01ec64.pth"
    assert not (tmp_path / "root").exists()  # computing the path creates nothing


def test_cache_dir_default(monkeypatch):
    import platformdirs

    monkeypatch.delenv("NAPARI_SAM_CACHE")
    expected = Path(platformdirs.user_cache_dir("napari-sam-nd", appauthor=False)) / "weights"
    assert cache_dir() == expected
    monkeypatch.setenv("NAPARI_SAM_CACHE", "  ")  # blank counts as unset
    assert cache_dir() == expected


def test_cache_dir_expands_user(monkeypatch):
    monkeypatch.setenv("NAPARI_SAM_CACHE", "~/sam-cache")
    assert cache_dir() == Path.home() / "sam-cache" / "weights"


# -- fetch -------------------------------------------------------------------------------------


def test_download_then_cached(tiny, server, cache):
    path = fetch_weights("tiny", progress=False)
    assert path == cache / "tiny.pth"
    assert path.read_bytes() == PAYLOAD
    assert server.requests == ["/tiny.pth"]
    assert _listing(cache) == ["tiny.pth", "tiny.pth.verified.json"]

    assert fetch_weights("tiny", progress=False) == path
    assert server.requests == ["/tiny.pth"]  # no second request


def test_cached_file_is_not_rehashed_until_it_changes(tiny, server, cache, monkeypatch):
    path = fetch_weights("tiny", progress=False)
    calls = []
    real = weights.file_sha256
    monkeypatch.setattr(weights, "file_sha256", lambda p: calls.append(p) or real(p))
    fetch_weights("tiny", progress=False)
    assert calls == []
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert fetch_weights("tiny", progress=False) == path
    assert calls == [path]
    assert server.requests == ["/tiny.pth"]


def test_hand_placed_file_is_used_without_network(tiny, server, cache):
    cache.mkdir(parents=True)
    (cache / "tiny.pth").write_bytes(PAYLOAD)
    assert fetch_weights("tiny") == cache / "tiny.pth"
    assert server.requests == []


def test_wrong_file_in_place_is_downloaded_again(tiny, server, cache):
    cache.mkdir(parents=True)
    (cache / "tiny.pth").write_bytes(PAYLOAD[:-10])  # e.g. an interrupted copy
    with pytest.warns(UserWarning, match="Downloading it again"):
        path = fetch_weights("tiny", progress=False)
    assert path.read_bytes() == PAYLOAD
    assert server.requests == ["/tiny.pth"]
    assert _listing(cache) == ["tiny.pth", "tiny.pth.verified.json"]


def test_stale_record_does_not_vouch_for_a_replaced_file(tiny, server, cache):
    path = fetch_weights("tiny", progress=False)
    path.write_bytes(b"x" * len(PAYLOAD))  # same size, new content, new mtime
    with pytest.warns(UserWarning, match="not the expected"):
        fetch_weights("tiny", progress=False)
    assert path.read_bytes() == PAYLOAD
    assert len(server.requests) == 2


def test_hash_mismatch_leaves_nothing(server, register, cache):
    wrong = "0" * 64
    register(name="tiny", url=server.url("tiny.pth"), sha256=wrong)
    with pytest.raises(WeightsDownloadError) as info:
        fetch_weights("tiny", progress=False)
    message = str(info.value)
    assert f"expected {wrong}, got {PAYLOAD_SHA256}" in message
    assert str(cache / "tiny.pth") in message
    assert server.requests == ["/tiny.pth"]
    assert _listing(cache) == []  # neither the file nor pooch's temporary file


def test_hash_mismatch_keeps_the_previous_file_untouched(server, register, cache):
    register(name="tiny", url=server.url("tiny.pth"), sha256="0" * 64)
    cache.mkdir(parents=True)
    (cache / "tiny.pth").write_bytes(b"old")
    with pytest.warns(UserWarning), pytest.raises(WeightsDownloadError, match="expected 0{64}"):
        fetch_weights("tiny", progress=False)
    assert (cache / "tiny.pth").read_bytes() == b"old"
    assert _listing(cache) == ["tiny.pth"]


def test_interrupted_download_leaves_nothing(tiny, server, cache):
    server.truncate = True
    with pytest.raises(WeightsDownloadError, match="Could not download"):
        fetch_weights("tiny", progress=False)
    assert server.requests == ["/tiny.pth"]
    assert _listing(cache) == []


def test_http_error(server, register, cache):
    register(name="gone", url=server.url("missing.pth"), sha256=PAYLOAD_SHA256, filename="g.pth")
    with pytest.raises(WeightsDownloadError, match="404"):
        fetch_weights("gone", progress=False)
    assert _listing(cache) == []


def test_unreachable_server(register, cache):
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    register(name="tiny", url=f"http://127.0.0.1:{port}/tiny.pth", sha256=PAYLOAD_SHA256)
    with pytest.raises(WeightsDownloadError) as info:
        fetch_weights("tiny", progress=False)
    message = str(info.value)
    assert "Could not download the 'tiny' weights" in message
    assert f"copy it to {cache / 'tiny.pth'}" in message
    assert "pass the path of a checkpoint file" in message
    assert isinstance(info.value, RuntimeError)
    assert _listing(cache) == []


def test_unknown_name_lists_known_names():
    with pytest.raises(ValueError, match="unknown model 'vit_x'.*vit_b, .*vit_h, .*vit_l"):
        fetch_weights("vit_x")


def test_progress_without_tqdm(tiny, server, monkeypatch):
    import pooch.downloaders

    # pooch itself refuses a progress bar when tqdm is missing ...
    monkeypatch.setattr(pooch.downloaders, "tqdm", None)
    with pytest.raises(ValueError, match="tqdm"):
        pooch.HTTPDownloader(progressbar=True)
    # ... so fetch_weights must not ask for one.
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    assert weights._tqdm_available() is False
    assert fetch_weights("tiny", progress=True).read_bytes() == PAYLOAD


def test_progress_with_tqdm(tiny, server):
    pytest.importorskip("tqdm")
    assert fetch_weights("tiny", progress=True).read_bytes() == PAYLOAD


# -- resolve_checkpoint ------------------------------------------------------------------------


def test_resolve_existing_path_as_is(tmp_path, server):
    ckpt = tmp_path / "finetuned.pt"
    ckpt.write_bytes(b"weights")
    assert resolve_checkpoint(ckpt) == ckpt
    assert resolve_checkpoint(str(ckpt)) == ckpt
    assert server.requests == []


def test_resolve_name_fetches(tiny, server, cache):
    assert resolve_checkpoint("tiny", progress=False) == cache / "tiny.pth"
    assert server.requests == ["/tiny.pth"]


def test_resolve_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        resolve_checkpoint(tmp_path / "missing.pth")
    with pytest.raises(FileNotFoundError, match="not found"):
        resolve_checkpoint("missing.pth")
    with pytest.raises(FileNotFoundError, match="directory"):
        resolve_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="known models: .*vit_b"):
        resolve_checkpoint("vit_bb")


def test_file_sha256_streams(tmp_path, monkeypatch):
    monkeypatch.setattr(weights, "_CHUNK_BYTES", 7)  # many chunks, same digest
    f = tmp_path / "f"
    f.write_bytes(PAYLOAD)
    assert file_sha256(f) == PAYLOAD_SHA256


def test_import_is_light():
    # the registry is usable without importing pooch or requests
    import subprocess

    code = (
        "import sys, napari_sam.models.weights as w; w.cache_dir(); "
        "print(sorted(m for m in ('pooch', 'requests', 'torch') if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.strip() == "[]"


def test_no_warning_for_a_good_cached_file(tiny, cache):
    fetch_weights("tiny", progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fetch_weights("tiny", progress=False)
