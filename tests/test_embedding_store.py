import dataclasses
import json
import threading
import time

import numpy as np
import pytest
import torch

from napari_sam.models.build import build_sam, tiny_config
from napari_sam.engine.embedding_store import (
    EmbeddingStore,
    StackEmbedder,
    StaleStoreError,
    default_store_dir,
    image_fingerprint,
    model_fingerprint,
)
from napari_sam.engine.predictor import SamPredictor


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_sam(tiny_config())


def _stack(seed=0, shape=(6, 40, 48)):
    return np.random.default_rng(seed).normal(100, 20, shape).astype(np.float32)


def _count_computes(embedder):
    calls = []
    original = embedder._predictor.compute_embedding

    def counting(image, intensity_range=None):
        calls.append(image.shape)
        return original(image, intensity_range)

    embedder._predictor.compute_embedding = counting
    return calls


def test_hit_miss_and_reuse_across_sessions(model, tmp_path):
    image = _stack()
    path = tmp_path / "s.zarr"
    emb = StackEmbedder(model, image, store=path)
    calls = _count_computes(emb)
    first = emb.get((2,))
    assert len(calls) == 1 and first.features.dtype == torch.float32
    assert first.original_size == (40, 48) and first.features.shape == (1, 32, 8, 8)
    assert torch.equal(emb.get((2,)).features, first.features) and len(calls) == 1
    assert emb.has((2,)) and not emb.has((3,))
    assert emb.store.status == "created" and emb.store.n_done == 1

    again = StackEmbedder(model, image, store=path)  # a new session
    calls2 = _count_computes(again)
    assert again.has((2,)) and again.store.status == "reused"
    assert torch.equal(again.get((2,)).features, first.features)
    assert calls2 == []
    again.get((3,))
    assert len(calls2) == 1


def test_embedding_matches_predictor_within_float16(model):
    image = _stack()
    emb = StackEmbedder(model, image)
    got = emb.get((1,)).features
    ref = SamPredictor(model).compute_embedding(image[1], emb.intensity_range).features
    assert torch.equal(got, ref.to(torch.float16).float())
    rel = (got - ref).norm() / ref.norm()
    assert 0 < rel < 1e-3


@pytest.mark.parametrize("change", ["image", "model", "intensity_range", "axes", "precision",
                                    "upscale"])
def test_stale_store_is_recreated(model, tmp_path, change):
    image = _stack()
    path = tmp_path / "s.zarr"
    emb = StackEmbedder(model, image, store=path, intensity_range=(50, 150))
    emb.precompute()
    assert emb.store.n_done == 6
    kwargs = dict(store=path, intensity_range=(50, 150))
    other_model = model
    if change == "image":
        image = image.copy()
        image[4, 10, 10] += 1
    elif change == "model":
        torch.manual_seed(1)
        other_model = build_sam(tiny_config())
    elif change == "intensity_range":
        kwargs["intensity_range"] = (50, 151)
    elif change == "axes":
        kwargs["axes"] = (0, 2)
    elif change == "precision":
        kwargs["precision"] = "bfloat16"
    elif change == "upscale":  # same weights, another cap on magnifying small slices
        other_model = build_sam(dataclasses.replace(tiny_config(), max_input_upscale=1.0))
        other_model.load_state_dict(model.state_dict())
    new = StackEmbedder(other_model, image, **kwargs)
    assert new.store.status == "recreated"
    assert "stale" in new.store.reason
    assert new.store.n_done == 0
    calls = _count_computes(new)
    new.get((0,))
    assert len(calls) == 1


def test_model_fingerprint_cached_and_sees_weight_changes():
    torch.manual_seed(0)
    m = build_sam(tiny_config())
    fp = model_fingerprint(m, "tiny")
    assert fp.startswith("tiny:") and model_fingerprint(m, "tiny") == fp
    with torch.no_grad():
        next(m.parameters()).add_(1e-3)
    assert model_fingerprint(m, "tiny") != fp
    torch.manual_seed(0)
    assert model_fingerprint(build_sam(tiny_config()), "tiny") == fp  # same weights, same id


def test_image_fingerprint_content_axes_and_lazy_arrays():
    da = pytest.importorskip("dask.array")
    image = _stack(shape=(4, 30, 30))
    fp = image_fingerprint(image, (1, 2), (0.0, 1.0))
    assert image_fingerprint(da.from_array(image, chunks=(1, 7, 30)), (1, 2), (0.0, 1.0)) == fp
    assert image_fingerprint(image.astype(image.dtype.newbyteorder(">")), (1, 2), (0, 1)) == fp
    changed = image.copy()
    changed[3, 29, 29] = np.nextafter(changed[3, 29, 29], np.inf)
    assert image_fingerprint(changed, (1, 2), (0.0, 1.0)) != fp
    assert image_fingerprint(image, (0, 2), (0.0, 1.0)) != fp
    assert image_fingerprint(image, (1, 2), (0.0, 2.0)) != fp
    assert image_fingerprint(image.reshape(4, 900, 1), (1, 2), (0.0, 1.0)) != fp


def test_corrupt_store_and_corrupt_plane_are_recomputed(model, tmp_path):
    image = _stack()
    path = tmp_path / "s.zarr"
    emb = StackEmbedder(model, image, store=path)
    emb.precompute(indices=[(0,), (1,)])
    good = emb.get((1,)).features

    # A damaged chunk fails its checksum: that plane is recomputed, never decoded from garbage.
    chunk = path / "features" / "c" / "1" / "0" / "0" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[200] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    fresh = StackEmbedder(model, image, store=path)
    calls = _count_computes(fresh)
    assert fresh.store.status == "reused"
    assert torch.equal(fresh.get((1,)).features, good)
    assert len(calls) == 1 and fresh.store.is_done(1)
    assert fresh.get((0,)) is not None and len(calls) == 1

    # Unreadable metadata: the whole store is recreated.
    (path / "zarr.json").write_text("{ not json")
    broken = StackEmbedder(model, image, store=path)
    assert broken.store.status == "recreated" and "unreadable" in broken.store.reason
    assert broken.store.n_done == 0


def test_foreign_folder_is_never_deleted(model, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.docx").write_text("precious")
    with pytest.raises(ValueError, match="not an embedding store"):
        StackEmbedder(model, _stack(), store=folder).store
    assert (folder / "thesis.docx").read_text() == "precious"
    other = tmp_path / "other.zarr"
    import zarr

    zarr.open_group(str(other), mode="w").attrs["something"] = 1
    with pytest.raises(ValueError, match="not an embedding store"):
        StackEmbedder(model, _stack(), store=other).store


def test_no_recreate_mode_raises_on_mismatch(model, tmp_path):
    path = tmp_path / "s.zarr"
    StackEmbedder(model, _stack(), store=path).store
    emb = StackEmbedder(model, _stack(seed=1), store=path)
    with pytest.raises(StaleStoreError, match="image changed"):
        emb.open_store(recreate=False)


def test_resume_after_cancel_computes_only_the_rest(model, tmp_path):
    image = _stack()
    path = tmp_path / "s.zarr"
    emb = StackEmbedder(model, image, store=path)
    seen = []
    n = emb.precompute(progress=lambda d, t: seen.append((d, t)), cancelled=lambda: len(seen) > 2)
    assert n == 2 and emb.store.n_done == 2
    assert seen == [(0, 6), (1, 6), (2, 6)]
    assert len(emb.memory) == 0  # precompute fills the store, not the LRU

    resumed = StackEmbedder(model, image, store=path)
    calls = _count_computes(resumed)
    progress = []
    assert resumed.precompute(progress=lambda d, t: progress.append(d)) == 4
    assert len(calls) == 4 and progress[0] == 2 and progress[-1] == 6
    assert resumed.store.n_done == 6 and resumed.missing() == []
    assert resumed.precompute() == 0


def test_memory_lru_stays_within_its_bound(model):
    image = _stack(shape=(12, 40, 48))
    per_plane = 32 * 8 * 8 * 2  # float16
    emb = StackEmbedder(model, image, memory_mb=3.5 * per_plane / 2**20)
    for idx in emb.planes():
        emb.get(idx)
        assert emb.memory.nbytes <= emb.memory.max_bytes
    assert len(emb.memory) == 3
    assert emb.has((11,)) and not emb.has((0,))


def test_concurrent_gets_compute_a_plane_once(model):
    emb = StackEmbedder(model, _stack())
    calls = _count_computes(emb)
    results = []
    threads = [threading.Thread(target=lambda: results.append(emb.get((4,)))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(results) == 4
    assert all(torch.equal(r.features, results[0].features) for r in results)


def test_plane_axes_rgb_and_2d(model, tmp_path):
    image = _stack(shape=(5, 30, 20))
    emb = StackEmbedder(model, image, axes=(0, 2))
    assert emb.planes() == [(i,) for i in range(30)]
    assert np.array_equal(emb.plane_image((7,)), image[:, 7, :])
    assert emb.get((7,)).original_size == (5, 20)
    with pytest.raises(IndexError):
        emb.get((30,))
    with pytest.raises(ValueError, match="ascending"):
        StackEmbedder(model, image, axes=(2, 1))

    rgb = np.random.default_rng(0).integers(0, 255, (2, 24, 24, 3), dtype=np.uint8)
    e = StackEmbedder(model, rgb, rgb=True, store=tmp_path / "rgb.zarr")
    assert e.intensity_range is None and e.planes() == [(0,), (1,)]
    ref = SamPredictor(model).compute_embedding(rgb[1]).features
    assert torch.equal(e.get((1,)).features, ref.half().float())

    flat = StackEmbedder(model, image[0], store=tmp_path / "2d.zarr")
    assert flat.planes() == [()] and flat.get(()).original_size == (30, 20)
    assert flat.store.n_planes == 1 and flat.store.is_done(0)


def test_auto_store_lives_in_the_cache_dir(model, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path / "cache"))
    assert default_store_dir() == tmp_path / "cache" / "embeddings"
    image = _stack()
    emb = StackEmbedder(model, image, store="auto", model_name="tiny")
    emb.get((0,))
    assert emb.store_path.parent == default_store_dir() and emb.store_path.exists()
    attrs = json.loads((emb.store_path / "zarr.json").read_text())["attributes"]
    assert attrs["info"]["model"].startswith("tiny:")
    assert attrs["signature"]["model"] == attrs["info"]["model"].split(":")[1]
    renamed = StackEmbedder(model, image, store="auto", model_name="other name")
    assert renamed.store_path == emb.store_path  # same weights: same store
    same = StackEmbedder(model, image.copy(), store="auto", model_name="tiny")
    assert same.store_path == emb.store_path and same.has((0,))
    other = StackEmbedder(model, image + 1, store="auto", model_name="tiny")
    assert other.store_path != emb.store_path


def test_store_rejects_bad_writes(tmp_path):
    store = EmbeddingStore.open(tmp_path / "x.zarr", {"a": 1}, n_planes=2,
                                feature_shape=(4, 2, 2), original_size=(8, 8), img_size=64)
    with pytest.raises(ValueError, match="shape"):
        store.write(0, np.zeros((4, 2, 3)))
    with pytest.raises(ValueError, match="float16"):
        store.write(0, np.full((4, 2, 2), 1e6))
    with pytest.raises(IndexError):
        store.write(2, np.zeros((4, 2, 2)))
    assert store.read(0) is None and store.n_done == 0
    store.write(1, np.ones((4, 2, 2)))
    assert store.read(1).dtype == np.float16 and store.n_done == 1


def test_prune_removes_least_recently_used_stores_only(model, tmp_path):
    import os

    from napari_sam.engine.embedding_store import prune_store_dir

    folder = tmp_path / "embeddings"
    paths = []
    for i in range(3):
        emb = StackEmbedder(model, _stack(seed=i), store=folder / f"s{i}.zarr")
        emb.precompute()
        os.utime(emb.store_path / "zarr.json", (1000 + i, 1000 + i))
        paths.append(emb.store_path)
    (folder / "notes.zarr").mkdir()
    (folder / "notes.zarr" / "keep.txt").write_text("not a store")
    StackEmbedder(model, _stack(seed=0), store=paths[0]).store  # reuse marks s0 as used now
    size = sum(f.stat().st_size for f in paths[1].rglob("*") if f.is_file())
    removed = prune_store_dir(int(2.5 * size), folder, keep=[paths[1]])
    assert removed == [paths[2]]  # s1 is older but kept; s0 was just used
    assert paths[0].exists() and paths[1].exists() and (folder / "notes.zarr" / "keep.txt").exists()
    assert prune_store_dir(0, folder) == [paths[1], paths[0]]
    assert (folder / "notes.zarr" / "keep.txt").exists()


# -- the store proves what it serves (issue 21) -----------------------------------------------


def _chunk(path, plane, array="features"):
    return path / array / "c" / str(plane) / {"features": "0/0/0", "digest": "0", "done": ""}[array]


def _filled(model, tmp_path, n=4):
    """A store with every plane of an ``n``-plane stack written, and each plane's embedding."""
    image = _stack(shape=(n, 40, 48))
    path = tmp_path / "s.zarr"
    emb = StackEmbedder(model, image, store=path)
    emb.precompute()
    return image, path, [emb.get((i,)).features.clone() for i in range(n)]


def _swap(a, b):
    data_a, data_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(data_b)
    b.write_bytes(data_a)


def _damage(path, kind):
    """Damage plane 1 (and 2 for swaps) behind the store's back; returns the planes damaged."""
    import zarr

    if kind == "missing chunk":
        _chunk(path, 1).unlink()
    elif kind == "swapped chunks":  # each chunk's own crc32c stays valid
        _swap(_chunk(path, 1), _chunk(path, 2))
        return {1, 2}
    elif kind == "swapped chunks and digests":
        _swap(_chunk(path, 1), _chunk(path, 2))
        _swap(_chunk(path, 1, "digest"), _chunk(path, 2, "digest"))
        return {1, 2}
    elif kind == "rewritten values":  # valid crc32c, other values
        features = zarr.open_group(str(path), mode="r+")["features"]
        features[1] = np.asarray(features[1]) * np.float16(1.5)
    elif kind == "truncated chunk":
        raw = _chunk(path, 1).read_bytes()
        _chunk(path, 1).write_bytes(raw[: len(raw) // 2])
    elif kind == "flipped byte":
        raw = bytearray(_chunk(path, 1).read_bytes())
        raw[100] ^= 0x10
        _chunk(path, 1).write_bytes(bytes(raw))
    elif kind == "missing digest":
        _chunk(path, 1, "digest").unlink()
    return {1}


FAULTS = ["missing chunk", "swapped chunks", "swapped chunks and digests", "rewritten values",
          "truncated chunk", "flipped byte", "missing digest"]


@pytest.mark.parametrize("fault", FAULTS)
def test_a_damaged_plane_is_recomputed_and_reported_never_used(model, tmp_path, fault, caplog):
    image, path, good = _filled(model, tmp_path)
    damaged = _damage(path, fault)
    fresh = StackEmbedder(model, image, store=path)
    calls = _count_computes(fresh)
    assert fresh.store.status == "reused"
    with caplog.at_level("WARNING"):
        for i in range(4):
            assert torch.equal(fresh.get((i,)).features, good[i]), f"plane {i} served wrong"
    assert len(calls) == len(damaged)  # only the damaged planes were encoded again
    assert set(fresh.problems) == {(i,) for i in damaged}
    assert all(f"plane {i} is not usable" in caplog.text for i in damaged)
    if fault == "missing chunk":
        assert fresh.problems[(1,)] == "missing chunk"
    # repaired on disk: a new session reads every plane without computing
    again = StackEmbedder(model, image, store=path)
    calls = _count_computes(again)
    assert again.verify() == {} and again.missing() == []
    assert all(torch.equal(again.get((i,)).features, good[i]) for i in range(4)) and calls == []


@pytest.mark.parametrize("fault", ["missing chunk", "swapped chunks", "rewritten values"])
def test_verify_finds_bad_planes_and_precompute_repairs_them(model, tmp_path, fault):
    image, path, good = _filled(model, tmp_path)
    damaged = _damage(path, fault)
    fresh = StackEmbedder(model, image, store=path)
    assert fresh.missing() == []  # the flags alone say all is well
    found = fresh.verify()
    assert set(found) == {(i,) for i in damaged}
    assert sorted(fresh.missing()) == sorted(found)
    calls = _count_computes(fresh)
    assert fresh.precompute() == len(damaged) and len(calls) == len(damaged)
    assert fresh.verify() == {} and fresh.store.n_done == 4
    assert all(torch.equal(fresh.get((i,)).features, good[i]) for i in range(4))


@pytest.mark.parametrize("garbage", [b"garbage!", b"\x07"])
def test_a_garbage_done_flag_costs_only_its_plane(model, tmp_path, garbage):
    image, path, good = _filled(model, tmp_path)
    _chunk(path, 1, "done").write_bytes(garbage)
    fresh = StackEmbedder(model, image, store=path)
    calls = _count_computes(fresh)
    assert fresh.store.status == "reused" and fresh.missing() == [(1,)]
    assert set(fresh.verify()) == {(1,)}
    assert all(torch.equal(fresh.get((i,)).features, good[i]) for i in range(4))
    assert len(calls) == 1 and fresh.store.n_done == 4


def test_a_digest_binds_the_plane_and_the_store(tmp_path):
    sig = {"a": 1}
    kw = {"n_planes": 2, "feature_shape": (4, 2, 2), "original_size": (8, 8), "img_size": 64}
    one = EmbeddingStore.open(tmp_path / "one.zarr", sig, **kw)
    other = EmbeddingStore.open(tmp_path / "other.zarr", {"a": 2}, **kw)
    values = np.arange(16, dtype=np.float16).reshape(4, 2, 2)
    one.write(0, values)
    other.write(0, values)
    assert not np.array_equal(one._digest_of(0, values), one._digest_of(1, values))
    assert not np.array_equal(one._digest_of(0, values), other._digest_of(0, values))
    # plane 0's chunk and digest copied from the other store: not this store's plane
    for array in ("features", "digest"):
        _chunk(one.path, 0, array).write_bytes(_chunk(other.path, 0, array).read_bytes())
    one.write(1, values)
    assert np.array_equal(one.read(1), values)
    assert one.read(0) is None and "checksum mismatch" in one.problems[0]


# -- concurrent writers --------------------------------------------------------------------------


def _slow_counting(embedder, log, delay=0.1):
    original = embedder._predictor.compute_embedding

    def slow(image, intensity_range=None):
        log.append(image.shape)
        time.sleep(delay)
        return original(image, intensity_range)

    embedder._predictor.compute_embedding = slow


def test_two_writers_in_threads_compute_each_plane_once(model, tmp_path):
    image = _stack(shape=(8, 40, 48))
    path = tmp_path / "s.zarr"
    writers = [StackEmbedder(model, image, store=path) for _ in range(2)]
    logs = [[], []]
    for w, log in zip(writers, logs):
        _slow_counting(w, log)
    start = threading.Barrier(2)
    results = [None, None]

    def run(k):
        start.wait()
        results[k] = writers[k].precompute()  # both open the new store at once, too

    threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(logs[0]) + len(logs[1]) == 8, logs
    assert results[0] + results[1] == 8 and min(results) >= 1  # both did work
    check = StackEmbedder(model, image, store=path)
    assert check.store.status == "reused" and check.verify() == {} and check.missing() == []
    assert not list((path / "claims").glob("*.claim"))  # every claim released


def test_get_waits_for_a_plane_another_writer_is_computing(model, tmp_path):
    image = _stack()
    path = tmp_path / "s.zarr"
    ours = StackEmbedder(model, image, store=path)
    calls = _count_computes(ours)
    claim = ours.store.claims.try_claim(3)  # another writer is on plane 3
    assert claim is not None and ours.store.claims.try_claim(3) is None
    other = StackEmbedder(model, image, store=path)

    def finish():
        time.sleep(0.3)
        other._compute_and_save((3,))
        claim.release()

    t = threading.Thread(target=finish)
    t.start()
    got = ours.get((3,))
    t.join()
    assert calls == [] and torch.equal(got.features, other.get((3,)).features)


def test_a_dead_writers_claim_is_taken_over(model, tmp_path):
    import json
    import os
    import subprocess
    import sys

    from napari_sam.engine.plane_claims import PlaneClaims

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    claims = PlaneClaims(tmp_path / "claims")
    claims.folder.mkdir()
    record = {"pid": int(dead.stdout), "host": __import__("socket").gethostname(), "time": 0,
              "token": "dead"}
    claims.path(0).write_text(json.dumps(record))
    claims.path(1).write_text(json.dumps({**record, "pid": os.getpid(), "token": "alive"}))
    assert claims.holder(0) is None and claims.try_claim(0) is not None  # dead pid: taken over
    assert claims.try_claim(1) is None  # alive and fresh: respected
    os.utime(claims.path(1), (1, 1))  # ...until not touched for stale_after
    assert claims.try_claim(1) is not None


_WRITER = """
import os
os.environ["OMP_NUM_THREADS"] = "1"
import json, sys, time
import numpy as np, torch
from napari_sam.models.build import build_sam, tiny_config
from napari_sam.engine.embedding_store import StackEmbedder
torch.manual_seed(0)
model = build_sam(tiny_config())
emb = StackEmbedder(model, np.load(sys.argv[1]), store=sys.argv[2])
original = emb._predictor.compute_embedding
def slow(image, intensity_range=None):
    time.sleep(0.25)
    return original(image, intensity_range)
emb._predictor.compute_embedding = slow
open(sys.argv[3], "w").close()
while not os.path.exists(sys.argv[4]):
    time.sleep(0.01)
print(json.dumps(emb.precompute()))
"""
_WRITER_STACK = (8, 40, 48)
_WRITERS: dict = {}


def _writers() -> dict:
    """Two writer processes on one store (started once), each waiting for the file ``go``.

    They start when collection ends (tests/conftest.py calls :func:`start_in_background`), so
    that their interpreters import torch alongside the other tests. Not at a lower priority:
    once they go, the test waits for them (a niced writer starves on a busy machine)."""
    if not _WRITERS:
        import tempfile
        from pathlib import Path

        from _background import BackgroundScript

        folder = Path(tempfile.mkdtemp(prefix="napari-sam-writers-"))
        np.save(folder / "img.npy", _stack(shape=_WRITER_STACK))
        scripts = []
        for k in range(2):
            argv = [str(folder / "img.npy"), str(folder / "s.zarr"), str(folder / f"ready{k}"),
                    str(folder / "go")]
            scripts.append(BackgroundScript(f"import sys\nsys.argv[1:] = {argv!r}\n" + _WRITER))
            scripts[-1].start()
        _WRITERS.update(folder=folder, scripts=scripts)
    return _WRITERS


def start_in_background(selected: list[str]) -> None:
    """Start the writer processes if their test is selected."""
    if "test_two_writer_processes_compute_each_plane_once" in selected:
        _writers()


def stop() -> None:
    """Kill the writers if they still run and delete their files (session end)."""
    import shutil

    if _WRITERS:
        for script in _WRITERS["scripts"]:
            script.stop()
        shutil.rmtree(_WRITERS["folder"], ignore_errors=True)
        _WRITERS.clear()


# -- a read-only cache folder ---------------------------------------------------------------------


def _read_only_cache(tmp_path, monkeypatch, how):
    import os
    import stat

    cache = tmp_path / "cache"
    if how == "chmod":  # read-only for everyone (also counts for root)
        cache.mkdir()
        os.chmod(cache, stat.S_IRUSR | stat.S_IXUSR)
    else:  # a file where the folder should be: nothing can be created there
        cache.write_text("not a folder")
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(cache))
    return cache


@pytest.mark.parametrize("how", ["chmod", "file in the way"])
def test_auto_store_in_a_read_only_cache_falls_back_to_memory(model, tmp_path, monkeypatch,
                                                               caplog, how):
    import os

    cache = _read_only_cache(tmp_path, monkeypatch, how)
    image = _stack()
    try:
        with caplog.at_level("WARNING"):
            emb = StackEmbedder(model, image, store="auto")
            calls = _count_computes(emb)
            first = emb.get((2,))
            assert emb.store is None and emb.has((2,)) and len(calls) == 1
            assert emb.precompute() == 5 and emb.missing() == []
            second = StackEmbedder(model, image, store="auto")
            assert torch.equal(second.get((2,)).features, first.features)
        warnings = [r for r in caplog.records if "memory only" in r.getMessage()]
        assert len(warnings) == 1 and str(cache) in warnings[0].getMessage()
    finally:
        if cache.is_dir():
            os.chmod(cache, 0o755)
    assert not (cache.is_dir() and any(cache.iterdir()))  # nothing was written there


def test_auto_store_made_read_only_is_read_and_new_planes_stay_in_memory(model, tmp_path,
                                                                         monkeypatch, caplog):
    import os

    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path / "cache"))
    image = _stack()
    emb = StackEmbedder(model, image, store="auto")
    emb.precompute(indices=[(0,), (1,)])
    stored = emb.get((1,)).features
    folders = [p for p in [tmp_path / "cache", *(tmp_path / "cache").rglob("*")] if p.is_dir()]
    for p in folders:
        os.chmod(p, 0o555)
    try:
        with caplog.at_level("WARNING"):
            again = StackEmbedder(model, image, store="auto")
            calls = _count_computes(again)
            assert torch.equal(again.get((1,)).features, stored) and calls == []
            assert again.store.status == "reused"
            assert again.precompute() == 4 and len(calls) == 4 and again.missing() == []
        assert sum("memory only" in r.getMessage() for r in caplog.records) == 1
    finally:
        for p in folders:
            os.chmod(p, 0o755)
    assert StackEmbedder(model, image, store="auto").store.n_done == 2  # nothing written


def test_an_explicit_store_that_cannot_be_created_still_raises(model, tmp_path):
    folder = tmp_path / "ro"
    folder.write_text("a file")
    with pytest.raises(OSError):
        StackEmbedder(model, _stack(), store=folder / "s.zarr").get((0,))


def test_two_writer_processes_compute_each_plane_once(request):
    # last in this module: its writers, started at collection, have had time to import torch
    if not _WRITERS:  # not started at collection (a direct call): start them now, stop after
        request.addfinalizer(stop)
    run = _writers()
    folder, scripts = run["folder"], run["scripts"]
    deadline = time.monotonic() + 120
    while not all((folder / f"ready{k}").exists() for k in range(2)):
        ended = [s.finish(timeout=1) for s in scripts if s.poll() is not None]
        assert time.monotonic() < deadline and not ended, ended
        time.sleep(0.05)
    (folder / "go").touch()
    outs = [s.finish(timeout=120) for s in scripts]
    assert all(code == 0 for code, _, _ in outs), outs
    computed = [json.loads(out.strip().splitlines()[-1]) for _, out, _ in outs]
    assert sum(computed) == 8 and min(computed) >= 1, computed
    torch.manual_seed(0)
    check = StackEmbedder(build_sam(tiny_config()), _stack(shape=_WRITER_STACK),
                          store=folder / "s.zarr")
    assert check.store.status == "reused" and check.verify() == {} and check.missing() == []


def test_a_store_being_created_by_another_process_is_waited_for(tmp_path):
    import shutil

    from napari_sam.engine.plane_claims import hold

    sig = {"a": 1}
    kw = {"n_planes": 2, "feature_shape": (4, 2, 2), "original_size": (8, 8), "img_size": 64}
    ready = EmbeddingStore.open(tmp_path / "ready" / "e.zarr", sig, **kw)
    ready.write(1, np.ones((4, 2, 2), np.float16))
    target = tmp_path / "e.zarr"
    got = []
    with hold(tmp_path / ".e.zarr.lock"):  # another process is creating the store: half there
        target.mkdir()
        (target / "part-being-written").write_bytes(b"\0")
        opener = threading.Thread(target=lambda: got.append(EmbeddingStore.open(target, sig, **kw)))
        opener.start()
        time.sleep(0.3)
        assert opener.is_alive() and not got  # waits for the lock, takes it for nothing else
        shutil.rmtree(target)
        shutil.copytree(ready.path, target)
    opener.join(10)
    assert got and got[0].status == "reused" and got[0].done_mask().tolist() == [False, True]
