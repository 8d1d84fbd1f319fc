import json
import threading

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


@pytest.mark.parametrize("change", ["image", "model", "intensity_range", "axes", "precision"])
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
