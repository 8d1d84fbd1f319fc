"""`napari-sam embed`: headless precompute, resume, bad input, and the Dask distributed path."""

import numpy as np
import pytest
import tifffile
import torch
import zarr

from napari_sam.cli import main
from napari_sam.engine.cluster import EmbedJob, make_embedder, precompute_distributed
from napari_sam.engine.embedding_store import StackEmbedder
from napari_sam.models.build import build_model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """The default architecture with random weights, saved where worker processes can load it."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "random_default.pt"
    torch.save(build_model("default", pretrained=False).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def stack_tif(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "stack.tif"
    data = np.random.default_rng(0).integers(0, 4000, (3, 48, 40)).astype(np.uint16)
    # compressed: read through tifffile's zarr view, not memory-mapped
    tifffile.imwrite(path, data, compression="zlib", photometric="minisblack")
    return path


def _stored(path):
    g = zarr.open_group(str(path), mode="r")
    return np.asarray(g["features"][:]), np.asarray(g["done"][:])


def test_embed_writes_a_store_the_embedder_reuses(checkpoint, stack_tif, tmp_path, capsys):
    out = tmp_path / "e.zarr"
    assert main(["embed", str(stack_tif), "--model", str(checkpoint), "--out", str(out)]) == 0
    assert "3 plane(s) computed" in capsys.readouterr().out
    features, done = _stored(out)
    assert done.tolist() == [1, 1, 1] and features.dtype == np.float16

    # The plugin side opens the same store: same image + weights + range -> no recompute.
    model = build_model(checkpoint)
    emb = StackEmbedder(model, tifffile.imread(stack_tif), store=out)
    assert emb.store.status == "reused" and all(emb.has(p) for p in emb.planes())
    assert np.array_equal(emb.get((1,)).features[0].numpy(), features[1].astype(np.float32))

    # Rerunning resumes: nothing left to compute.
    assert main(["embed", str(stack_tif), "--model", str(checkpoint), "--out", str(out)]) == 0
    assert "0 plane(s) computed" in capsys.readouterr().out


def test_embed_resumes_an_interrupted_store(checkpoint, stack_tif, tmp_path, capsys):
    out = tmp_path / "e.zarr"
    model = build_model(checkpoint)
    job = EmbedJob(image=str(stack_tif), store=str(out), model=str(checkpoint),
                   model_name=checkpoint.name)
    partial = make_embedder(job, model)
    partial.precompute(indices=[(0,)])  # "interrupted" after one plane
    assert main(["embed", str(stack_tif), "--model", str(checkpoint), "--out", str(out),
                 "--axis", "0"]) == 0
    text = capsys.readouterr().out
    assert "1/3 plane(s) already done" in text and "2 plane(s) computed" in text


@pytest.mark.parametrize(
    "argv, message",
    [
        (["embed", "{missing}", "--out", "{out}"], "no such file"),
        (["embed", "{img}", "--out", "{out}", "--axis", "0", "1"], "plane axes"),
        (["embed", "{img}", "--out", "{out}", "--axis", "5"], "out of range"),
        (["embed", "{img}", "--out", "{tmp}/nope/e.zarr"], "output directory does not exist"),
        (["embed", "{img}", "--out", "{out}", "--model", "vit_nonsense"], "unknown model"),
        (["embed", "{img}", "--out", "{out}", "--workers", "0"], "at least 1"),
        (["embed", "{img}", "--out", "{foreign}"], "not an embedding store"),
        (["embed", "{img}", "--out", "{out}", "--intensity-range", "5", "1"], "HIGH"),
    ],
)
def test_embed_bad_input_exits_2(stack_tif, tmp_path, capsys, argv, message):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    fill = dict(missing=tmp_path / "missing.tif", out=tmp_path / "e.zarr", img=stack_tif,
                tmp=tmp_path, foreign=foreign)
    args = [a.format(**fill) for a in argv]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("napari-sam: error:") and message in err and "\n" not in err
    assert (foreign / "notes.txt").read_text() == "keep me"
    assert not (tmp_path / "e.zarr" / "done").exists()


def test_distributed_precompute_on_a_local_cluster(checkpoint, stack_tif, tmp_path):
    distributed = pytest.importorskip("distributed")
    model = build_model(checkpoint)
    local = StackEmbedder(model, tifffile.imread(stack_tif), store=tmp_path / "local.zarr")
    local.precompute()
    reference, _ = _stored(tmp_path / "local.zarr")

    out = tmp_path / "dist.zarr"
    job = EmbedJob(image=str(stack_tif), store=str(out), model=str(checkpoint),
                   model_name=checkpoint.name)
    client_side = make_embedder(job, model)
    client_side.precompute(indices=[(2,)])  # one plane already there: it must not be resubmitted
    todo = client_side.missing()
    assert todo == [(0,), (1,)]
    import dataclasses

    job = dataclasses.replace(job, fingerprint=client_side.fingerprint,
                              intensity_range=client_side.intensity_range)
    seen = []
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        computed = precompute_distributed(client, job, todo,
                                          progress=lambda d, t: seen.append((d, t)))
        workers = client.run(lambda: __import__("os").getpid())
    assert computed == 2 and seen[-1] == (2, 2)
    assert len(set(workers.values())) == 2
    features, done = _stored(out)
    assert done.tolist() == [1, 1, 1]
    assert np.array_equal(features, reference)  # same values whichever process wrote them


def test_worker_refuses_a_store_of_other_weights(checkpoint, stack_tif, tmp_path):
    from napari_sam.engine.cluster import embed_planes
    from napari_sam.engine.embedding_store import StaleStoreError

    out = tmp_path / "e.zarr"
    torch.manual_seed(5)
    other = build_model("default", pretrained=False)
    job = EmbedJob(image=str(stack_tif), store=str(out), model=str(checkpoint))
    make_embedder(job, other).store  # the client used other weights
    with pytest.raises(StaleStoreError, match="model changed"):
        embed_planes(job, [(0,)])
    assert _stored(out)[1].tolist() == [0, 0, 0]


def test_embed_without_out_fills_the_store_the_plugin_opens(checkpoint, stack_tif, tmp_path,
                                                            monkeypatch, capsys):
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path / "cache"))
    assert main(["embed", str(stack_tif), "--model", str(checkpoint)]) == 0
    assert str(tmp_path / "cache" / "embeddings") in capsys.readouterr().out
    # what the plugin does with the layer's (fully loaded) data and store="auto"
    emb = StackEmbedder(build_model(checkpoint), tifffile.imread(stack_tif), store="auto")
    assert emb.store.status == "reused" and emb.missing() == []
