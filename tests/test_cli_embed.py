"""`napari-sam embed`: headless precompute, resume, bad input, and the Dask distributed path.

The Dask cluster (two worker processes, each importing torch) takes seconds to start: its part
of :func:`test_distributed_precompute_on_a_local_cluster` runs in a fresh interpreter started
when collection ends (tests/conftest.py calls :func:`start_in_background`), alongside the other
tests; the test then waits for it and checks what it wrote.
"""

import importlib.util
import json
import shutil
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr
from _background import BackgroundScript

from napari_sam.cli import main
from napari_sam.engine.cluster import EmbedJob, make_embedder
from napari_sam.engine.embedding_store import StackEmbedder
from napari_sam.models.build import build_model


def _write_checkpoint(path):
    torch.manual_seed(0)
    torch.save(build_model("default", pretrained=False).state_dict(), path)
    return path


def _write_stack(path):
    data = np.random.default_rng(0).integers(0, 4000, (3, 48, 40)).astype(np.uint16)
    # compressed: read through tifffile's zarr view, not memory-mapped
    tifffile.imwrite(path, data, compression="zlib", photometric="minisblack")
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """The default architecture with random weights, saved where worker processes can load it."""
    return _write_checkpoint(tmp_path_factory.mktemp("model") / "random_default.pt")


@pytest.fixture(scope="module")
def stack_tif(tmp_path_factory):
    return _write_stack(tmp_path_factory.mktemp("img") / "stack.tif")


# The client's side of a distributed precompute, run in a fresh interpreter: one plane is
# computed by the client first (it must not be resubmitted), the two others on a LocalCluster of
# two worker processes. Prints what the test checks as one JSON line.
_CLUSTER_SCRIPT = textwrap.dedent(
    """
    import dataclasses, json, os
    import distributed
    from napari_sam.engine.cluster import EmbedJob, make_embedder, precompute_distributed
    from napari_sam.models.build import build_model

    checkpoint, stack, out = {checkpoint!r}, {stack!r}, {out!r}
    model = build_model(checkpoint)
    job = EmbedJob(image=stack, store=out, model=checkpoint,
                   model_name=os.path.basename(checkpoint))
    client_side = make_embedder(job, model)
    client_side.precompute(indices=[(2,)])
    todo = client_side.missing()
    job = dataclasses.replace(job, fingerprint=client_side.fingerprint,
                              intensity_range=client_side.intensity_range)
    seen = []
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \\
            distributed.Client(cluster) as client:
        computed = precompute_distributed(client, job, todo,
                                          progress=lambda d, t: seen.append((d, t)))
        workers = client.run(lambda: __import__("os").getpid())
    print(json.dumps(dict(todo=todo, computed=computed, seen=seen,
                          workers=sorted(workers.values()), client=os.getpid())))
    """
)

_CLUSTER: dict = {}


def _cluster_run() -> dict:
    """The background run of the distributed precompute (started once): its script and files."""
    if not _CLUSTER:
        folder = Path(tempfile.mkdtemp(prefix="napari-sam-cluster-"))
        files = {"checkpoint": str(_write_checkpoint(folder / "random_default.pt")),
                 "stack": str(_write_stack(folder / "stack.tif")), "out": str(folder / "dist.zarr")}
        script = BackgroundScript(_CLUSTER_SCRIPT.format(**files), nice=10)
        script.start()
        _CLUSTER.update(files, folder=folder, script=script)
    return _CLUSTER


def start_in_background(selected: list[str]) -> None:
    """Start the distributed precompute if its test is selected (and Dask installed)."""
    if ("test_distributed_precompute_on_a_local_cluster" in selected
            and importlib.util.find_spec("distributed") is not None):
        _cluster_run()


def stop() -> None:
    """Kill the background run if it still runs and delete its files (session end)."""
    if _CLUSTER:
        _CLUSTER["script"].stop()
        shutil.rmtree(_CLUSTER["folder"], ignore_errors=True)
        _CLUSTER.clear()


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


# -- a reused store is verified and repaired; concurrent runs; a read-only cache (issue 21) -------


def _embed(checkpoint, stack_tif, out, *extra):
    return main(["embed", str(stack_tif), "--model", str(checkpoint), "--out", str(out), *extra])


def test_embed_verifies_a_reused_store_and_prints_what_it_repaired(checkpoint, stack_tif,
                                                                   tmp_path, capsys):
    out = tmp_path / "e.zarr"
    assert _embed(checkpoint, stack_tif, out) == 0
    good, _ = _stored(out)
    capsys.readouterr()
    (out / "features" / "c" / "0" / "0" / "0" / "0").unlink()  # done flag set, chunk gone
    a, b = (out / "features" / "c" / str(i) / "0" / "0" / "0" for i in (1, 2))
    data_a, data_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(data_b)  # two planes swapped: each chunk's crc32c still valid
    b.write_bytes(data_a)

    assert _embed(checkpoint, stack_tif, out) == 0
    text = capsys.readouterr().out
    assert "3 stored plane(s) failed verification" in text
    assert "plane (0,): missing chunk" in text and "plane (1,): checksum mismatch" in text
    assert "repaired 3 plane(s): (0,), (1,), (2,)" in text and "3 plane(s) computed" in text
    features, done = _stored(out)
    assert done.tolist() == [1, 1, 1] and np.array_equal(features, good)

    assert _embed(checkpoint, stack_tif, out) == 0  # now intact: nothing to redo
    text = capsys.readouterr().out
    assert "verified 3 stored plane(s): all intact" in text and "0 plane(s) computed" in text


def test_embed_no_verify_skips_the_check(checkpoint, stack_tif, tmp_path, capsys):
    out = tmp_path / "e.zarr"
    assert _embed(checkpoint, stack_tif, out) == 0
    (out / "features" / "c" / "1" / "0" / "0" / "0").unlink()
    capsys.readouterr()
    assert _embed(checkpoint, stack_tif, out, "--no-verify") == 0
    text = capsys.readouterr().out
    assert "verifying" not in text and "failed verification" not in text
    assert "0 plane(s) computed" in text
    # the damage is still caught when the plane is read
    emb = StackEmbedder(build_model(checkpoint), tifffile.imread(stack_tif), store=out)
    assert emb.get((1,)) is not None and emb.problems == {(1,): "missing chunk"}


def test_two_embed_runs_on_one_store_compute_each_plane_once(checkpoint, stack_tif, tmp_path,
                                                             capsys, monkeypatch):
    import threading
    import time

    from napari_sam.engine.predictor import SamPredictor

    calls = []
    original = SamPredictor.compute_embedding

    def slow(self, image, intensity_range=None):
        calls.append(threading.get_ident())
        time.sleep(0.3)
        return original(self, image, intensity_range)

    monkeypatch.setattr(SamPredictor, "compute_embedding", slow)
    out = tmp_path / "e.zarr"
    codes = []
    runs = [threading.Thread(target=lambda: codes.append(_embed(checkpoint, stack_tif, out)))
            for _ in range(2)]
    for t in runs:
        t.start()
    for t in runs:
        t.join()
    assert codes == [0, 0] and len(calls) == 3  # 3 planes, each computed once
    text = capsys.readouterr().out
    counts = [int(line.split(": ")[1].split()[0]) for line in text.splitlines()
              if line.startswith("wrote ")]
    assert sorted(counts) in ([0, 3], [1, 2]) and sum(counts) == 3
    assert _stored(out)[1].tolist() == [1, 1, 1]


def test_embed_into_a_read_only_cache_is_refused_up_front(checkpoint, stack_tif, tmp_path,
                                                          capsys, monkeypatch):
    import os

    cache = tmp_path / "cache"
    cache.mkdir()
    os.chmod(cache, 0o555)
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(cache))
    try:
        assert main(["embed", str(stack_tif), "--model", str(checkpoint)]) == 2
    finally:
        os.chmod(cache, 0o755)
    err = capsys.readouterr().err.strip()
    assert err.startswith("napari-sam: error:") and "not writable" in err and "\n" not in err
    assert not any(cache.iterdir())


def test_distributed_precompute_on_a_local_cluster(tmp_path, request):
    # last in this module: its cluster, started at collection, has had time to finish
    pytest.importorskip("distributed")
    if not _CLUSTER:  # not started at collection (a direct call): start it now, stop it after
        request.addfinalizer(stop)
    run = _cluster_run()
    returncode, stdout, stderr = run["script"].finish(timeout=300)
    assert returncode == 0, stderr[-3000:]
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result["todo"] == [[0], [1]]  # the client's plane is not resubmitted
    assert result["computed"] == 2 and result["seen"][-1] == [2, 2]
    assert len(set(result["workers"])) == 2 and result["client"] not in result["workers"]
    features, done = _stored(run["out"])
    assert done.tolist() == [1, 1, 1]
    # same values whichever process wrote them
    local = StackEmbedder(build_model(Path(run["checkpoint"])), tifffile.imread(run["stack"]),
                          store=tmp_path / "local.zarr")
    local.precompute()
    reference, _ = _stored(tmp_path / "local.zarr")
    assert np.array_equal(features, reference)
