"""Nothing lost, nothing silently wrong (issue 21): outputs never replace inputs and fail before
any computation, files get the umask's mode, large planes are decoded in tiles, the Python API
checks prompts like the CLI, one line and exit 2 for bad tables and tiny images, and a
SamPredictor shared by threads never decodes one thread's prompts on another's image."""

from __future__ import annotations

import json
import os
import stat
import threading

import numpy as np
import pytest
import tifffile
import torch

from napari_sam import SamPredictor
from napari_sam.cli import main
from napari_sam.models.build import build_sam, tiny_config


def _one_line_error(capsys, *fragments):
    err = capsys.readouterr().err.strip()
    assert err.startswith("napari-sam: error:") and "\n" not in err, err
    for fragment in fragments:
        assert fragment in err, err
    return err


@pytest.fixture
def files(tmp_path):
    """A small image, its labels, a points table and a checkpoint-like file."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 4000, (40, 50), dtype=np.uint16)
    labels = np.zeros((40, 50), np.int32)
    labels[10:20, 10:25] = 1
    paths = {
        "img": tmp_path / "img.tif",
        "lab": tmp_path / "lab.tif",
        "npy": tmp_path / "img.npy",
        "csv": tmp_path / "points.csv",
        "ckpt": tmp_path / "model.pt",
    }
    tifffile.imwrite(paths["img"], image)
    tifffile.imwrite(paths["lab"], labels)
    np.save(paths["npy"], image)
    paths["csv"].write_text("row,col\n15,17\n")
    paths["ckpt"].write_bytes(b"not read: the command must stop before")
    return paths


@pytest.fixture
def no_compute(monkeypatch):
    """Any model load fails the test: a refused output must stop the command before."""
    from napari_sam.cli import _common
    from napari_sam.models import build

    def loaded(*args, **kwargs):
        raise AssertionError("the command started computing before refusing its output")

    monkeypatch.setattr(_common, "load_model", loaded)
    monkeypatch.setattr(build, "build_model", loaded)
    monkeypatch.setattr(build, "build_sam", loaded)


# --------------------------------------------------------------------- 1. inputs are never outputs

SAME_FILE = [  # (argv, the input that {OUT} is, how the message names it)
    (["segment", "{img}", "--box", "5,5,20,20", "--out", "{OUT}"], "img", "input image"),
    (["segment", "{img}", "--points", "{csv}", "--out", "{OUT}"], "csv", "--points file"),
    (["segment", "{img}", "--text", "cell", "--out", "{o}", "--scores-csv", "{OUT}"], "img",
     "input image"),
    (["segment", "{img}", "--box", "5,5,20,20", "--model", "{ckpt}", "--out", "{OUT}"], "ckpt",
     "--model file"),
    (["automatic", "{img}", "--out", "{OUT}"], "img", "input image"),
    (["evaluate", "{img}", "{lab}", "--json", "{OUT}"], "lab", "labels image"),
    (["evaluate", "{img}", "{lab}", "--json", "{OUT}"], "img", "input image"),
    (["train", "--synthetic", "--init", "{ckpt}", "--out", "{OUT}"], "ckpt", "--init model"),
    (["train", "--synthetic", "--init", "{ckpt}", "--out", "{o}", "--log", "{OUT}"], "ckpt",
     "--init model"),
    (["train-refiner", "--synthetic", "--init", "{ckpt}", "--out", "{OUT}"], "ckpt",
     "--init model"),
    (["embed", "{npy}", "--out", "{OUT}"], "npy", "input image"),
]


@pytest.mark.parametrize("argv, key, what", SAME_FILE)
@pytest.mark.parametrize("link", ["same", "symlink", "hardlink"])
def test_an_output_that_is_an_input_is_refused(tmp_path, files, no_compute, capsys, argv, key,
                                               what, link):
    before = {k: p.read_bytes() for k, p in files.items()}
    out = files[key]
    if link != "same":  # the input named through a link
        out = tmp_path / f"alias{files[key].suffix}"
        if link == "symlink":
            out.symlink_to(files[key])
        else:
            os.link(files[key], out)
    names = {k: str(p) for k, p in files.items()}
    code = main([a.format(OUT=out, o=tmp_path / "o.tif", **names) for a in argv])
    assert code == 2
    _one_line_error(capsys, "same file as the " + what, "refusing to overwrite")
    assert {k: p.read_bytes() for k, p in files.items()} == before
    assert not (tmp_path / "o.tif").exists()


@pytest.mark.parametrize("argv", [
    ["segment", "{img}", "--text", "cell", "--out", "{o}", "--scores-csv", "{o}"],
    ["train", "--synthetic", "--out", "{o}", "--log", "{o}"],
])
def test_two_outputs_naming_one_file_are_refused(tmp_path, files, no_compute, capsys, argv):
    code = main([a.format(img=files["img"], o=tmp_path / "o.tif") for a in argv])
    assert code == 2
    _one_line_error(capsys, "name the same file")
    assert not (tmp_path / "o.tif").exists()


# --------------------------------------------------------------- 2. unwritable outputs, at once

OUTPUT_OPTIONS = [
    ["segment", "{img}", "--box", "5,5,20,20", "--out", "{out}"],
    ["automatic", "{img}", "--out", "{out}"],
    ["evaluate", "{img}", "{lab}", "--json", "{out}"],
    ["train", "--synthetic", "--out", "{out}"],
    ["train", "--synthetic", "--out", "{o}", "--log", "{out}"],
    ["train-refiner", "--synthetic", "--out", "{out}"],
]


def _unwritable(tmp_path, case):
    """An output path of kind ``case`` and the message that refuses it."""
    if case == "folder":
        (tmp_path / "taken").mkdir()
        return tmp_path / "taken", "is a folder"
    if case == "read-only file":
        path = tmp_path / "kept.out"
        path.write_text("keep me")
        path.chmod(0o444)
        return path, "is read-only"
    if case == "read-only folder":
        (tmp_path / "ro").mkdir()
        (tmp_path / "ro").chmod(0o555)
        return tmp_path / "ro" / "x.out", "is not writable"
    if case == "parent is a file":
        (tmp_path / "plain").write_text("")
        return tmp_path / "plain" / "x.out", "is not a folder"
    return tmp_path / "missing" / "x.out", "does not exist"


@pytest.mark.parametrize("argv", OUTPUT_OPTIONS)
@pytest.mark.parametrize("case", ["folder", "read-only file", "read-only folder",
                                  "parent is a file", "missing folder"])
def test_unwritable_outputs_fail_before_computing(tmp_path, files, no_compute, capsys, argv,
                                                  case):
    out, message = _unwritable(tmp_path, case)
    try:
        code = main([a.format(img=files["img"], lab=files["lab"], out=out, o=tmp_path / "o.pt")
                     for a in argv])
        assert code == 2
        _one_line_error(capsys, message)
        if case == "read-only file":
            assert out.read_text() == "keep me"
    finally:
        for p in (tmp_path / "ro", out):
            if p.exists():
                p.chmod(0o755)


@pytest.mark.parametrize("case, message", [("a file", "is a file, not a folder"),
                                           ("read-only store", "is read-only"),
                                           ("missing folder", "does not exist")])
def test_embed_store_location_is_checked_before_computing(tmp_path, files, no_compute, capsys,
                                                          case, message):
    out = tmp_path / "e.zarr"
    if case == "a file":
        out.write_text("")
    elif case == "read-only store":
        out.mkdir()
        out.chmod(0o555)
    else:
        out = tmp_path / "missing" / "e.zarr"
    try:
        assert main(["embed", str(files["npy"]), "--out", str(out)]) == 2
        _one_line_error(capsys, message)
    finally:
        if out.exists():
            out.chmod(0o755)


# ------------------------------------------------------------------ 3. the umask's file mode

@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield 0o640
    os.umask(old)


def test_outputs_get_the_umask_mode(tmp_path, files, cli_model, umask_027, capsys):
    labels_out, json_out = tmp_path / "labels.tif", tmp_path / "res.json"
    for path in (labels_out, json_out):  # earlier outputs of another mode are replaced
        path.write_text("old")
        path.chmod(0o600)
    assert main(["segment", str(files["img"]), "--box", "5,5,20,20",
                 "--out", str(labels_out)]) == 0
    assert main(["evaluate", str(files["img"]), str(files["lab"]), "--json",
                 str(json_out)]) == 0
    for path in (labels_out, json_out):
        assert stat.S_IMODE(path.stat().st_mode) == umask_027, path
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_training_log_is_replaced_atomically_with_the_umask_mode(tmp_path, monkeypatch,
                                                                 umask_027, capsys):
    from napari_sam.models.build import MODEL_CONFIGS

    monkeypatch.setitem(MODEL_CONFIGS, "tiny", tiny_config())
    log = tmp_path / "log.jsonl"
    log.write_text("an earlier run's log\n")
    log.chmod(0o600)
    assert main(["train", "--synthetic", "--init", "tiny", "--from-scratch", "--steps", "2",
                 "--warmup", "1", "--no-resume", "--out", str(tmp_path / "m.pt"),
                 "--log", str(log)]) == 0
    assert stat.S_IMODE(log.stat().st_mode) == umask_027
    assert stat.S_IMODE((tmp_path / "m.pt").stat().st_mode) == umask_027
    lines = log.read_text().splitlines()
    assert lines and all(json.loads(line)["step"] >= 1 for line in lines)


# ----------------------------------------------------------- 4. large planes decoded in tiles

def _disk_image(shape, centre, radius, seed=0):
    rr, cc = np.ogrid[: shape[0], : shape[1]]
    disk = (rr - centre[0]) ** 2 + (cc - centre[1]) ** 2 < radius**2
    noise = np.random.default_rng(seed).normal(0, 5, shape)
    return (20 + 200 * disk + noise).clip(0, 255).astype(np.uint8), disk


def test_segment_decodes_large_planes_in_tiles(tmp_path, cli_model, embedded_shapes,
                                               monkeypatch, capsys):
    from napari_sam.engine import tiling
    from napari_sam.engine.tiling import TiledPredictor

    # the tiny model's input is 64 px: planes longer than 128 px are large
    monkeypatch.setattr(tiling, "TILE_ABOVE_PIXELS", 0)
    built = []
    original_init = TiledPredictor.__init__

    def recording_init(self, model, image, **kwargs):
        built.append(tuple(np.shape(image)))
        original_init(self, model, image, **kwargs)

    monkeypatch.setattr(TiledPredictor, "__init__", recording_init)
    stack = np.stack([_disk_image((300, 260), (150, 130), 20, seed=z)[0] for z in range(2)])
    tifffile.imwrite(tmp_path / "large.tif", stack)
    out = tmp_path / "large_labels.tif"
    assert main(["segment", str(tmp_path / "large.tif"), "--box", "1,130,110,170,150",
                 "--box", "0,10,10,40,40", "--out", str(out)]) == 0
    assert tifffile.imread(out).shape == (2, 300, 260)
    assert built == [(300, 260), (300, 260)]  # one TiledPredictor per large plane
    assert embedded_shapes and set(embedded_shapes) == {(64, 64)}  # tiles, never the plane

    # a plane within the limit is decoded whole, as before
    built.clear()
    embedded_shapes.clear()
    tifffile.imwrite(tmp_path / "small.tif", stack[0, :100, :100])
    assert main(["segment", str(tmp_path / "small.tif"), "--box", "10,10,40,40",
                 "--out", str(out)]) == 0
    assert built == [] and embedded_shapes == [(100, 100)]


def test_segment_finds_a_small_object_on_a_large_plane(tmp_path, embedded_shapes, capsys):
    """The default model (512 px input) on a 3000 x 3000 plane: shrunk whole, a disk of radius
    20 px is 3 px across and is lost (IoU 0.02); in tiles it is found whole, across a tile
    border, and only the tiles under the prompt are embedded."""
    image, disk = _disk_image((3000, 3000), (1490, 1510), 20)
    tifffile.imwrite(tmp_path / "slide.tif", image)
    (tmp_path / "p.csv").write_text("row,col\n1490,1510\n")
    out = tmp_path / "slide_labels.tif"
    assert main(["segment", str(tmp_path / "slide.tif"), "--points", str(tmp_path / "p.csv"),
                 "--out", str(out)]) == 0
    mask = tifffile.imread(out) > 0
    assert (mask & disk).sum() / (mask | disk).sum() > 0.8
    assert embedded_shapes and set(embedded_shapes) == {(512, 512)}
    assert len(embedded_shapes) <= 4


# ------------------------------------------------------- 5. the API checks prompts like the CLI

@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_sam(tiny_config())


@pytest.fixture
def predictor(tiny_model):
    p = SamPredictor(tiny_model)
    p.set_image(np.random.default_rng(0).random((256, 256)).astype(np.float32))
    return p


@pytest.mark.parametrize("kwargs, match", [
    ({"box": [10, 10, np.nan, 40]}, r"box \(10, 10, nan, 40\) is not finite"),
    ({"box": [[10, 10, 30, 40], [0, 0, np.inf, 5]]}, r"box \(0, 0, inf, 5\) is not finite"),
    ({"points": [[np.inf, 3]]}, r"point \(inf, 3\) is not finite"),
    ({"points": [[5000, -300]], "labels": [1]},
     r"point \(5000, -300\) is outside the 256x256 image"),
    ({"points": [[10, 10], [100, 256.6]], "labels": [1, 0]},
     r"point \(100, 256.6\) is outside the 256x256"),
    ({"box": [300, 300, 400, 400]}, r"box \(300, 300, 400, 400\) is outside the 256x256"),
])
def test_the_api_refuses_bad_prompts(predictor, kwargs, match):
    with pytest.raises(ValueError, match=match):
        predictor.predict(**kwargs)
    if np.ndim(kwargs.get("box", [])) < 2:  # segment() takes one object
        with pytest.raises(ValueError, match=match):
            predictor.segment(**kwargs)


def test_prompts_on_the_image_edge_and_boxes_sticking_out_are_fine(predictor):
    masks, scores, _ = predictor.predict(points=[[-0.5, 255.5], [128, 0]], labels=[1, 0])
    assert masks.shape == (3, 256, 256) and np.isfinite(scores).all()
    masks, scores, _ = predictor.predict(box=[-20, 200, 100, 276], multimask=False)
    assert masks.shape == (1, 256, 256) and np.isfinite(scores).all()


def test_zoomed_crops_take_clicks_beyond_the_crop_but_not_beyond_the_slice(tiny_model):
    """In a magnified crop, a corrective click elsewhere on the slice is a valid prompt (the
    evaluation protocol makes such clicks); a point off the slice is refused."""
    from napari_sam.engine.zoom import ZoomPredictor

    zp = ZoomPredictor(tiny_model, zoom=4)
    zp.set_image(np.random.default_rng(0).random((256, 256)).astype(np.float32))
    assert zp.crop_shape == (64, 64)
    masks, _, _ = zp.predict(points=[[10, 10], [200, 200]], labels=[1, 0])
    assert masks.shape == (3, 256, 256)
    mask, _, _ = zp.segment(points=[[10, 10], [20, 150]], labels=[1, 1])
    assert mask.shape == (256, 256)
    with pytest.raises(ValueError, match=r"point \(300, 10\) is outside the 256x256"):
        zp.predict(points=[[300, 10]])
    with pytest.raises(ValueError, match="not finite"):
        zp.predict(box=[0, 0, np.nan, 10])


# ----------------------------------------------------------------- 6. one line, not a traceback

@pytest.mark.parametrize("table, message", [
    ("row,col\n1,2\n3,4,5\n", "line 3: 3 value(s) for the header's 2 column(s)"),
    ("row,col,label\n1,2,1\n3,4\n", "line 3: 2 value(s) for the header's 3 column(s)"),
])
def test_ragged_points_table_is_one_line(tmp_path, files, cli_model, capsys, table, message):
    files["csv"].write_text(table)
    assert main(["segment", str(files["img"]), "--points", str(files["csv"]),
                 "--out", str(tmp_path / "o.tif")]) == 2
    _one_line_error(capsys, message)
    assert not (tmp_path / "o.tif").exists()


def test_points_table_with_trailing_empty_values_and_blank_lines(tmp_path, files, cli_model):
    files["csv"].write_text("row,col,\n\n15,17,\n20,20\n")
    assert main(["segment", str(files["img"]), "--points", str(files["csv"]),
                 "--out", str(tmp_path / "o.tif")]) == 0


@pytest.mark.parametrize("shape", [(1, 1), (6, 5)])
def test_evaluate_labels_without_background(tmp_path, cli_model, capsys, shape):
    """A 1 x 1 image (or any whose labels have no background) is evaluated, not a traceback."""
    tifffile.imwrite(tmp_path / "i.tif", np.full(shape, 100, np.uint8))
    tifffile.imwrite(tmp_path / "l.tif", np.full(shape, 3, np.int32))
    assert main(["evaluate", str(tmp_path / "i.tif"), str(tmp_path / "l.tif"),
                 "--json", str(tmp_path / "r.json")]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["n_objects"] == 1 and result["per_object"][0]["id"] == 3


# ---------------------------------------------------------------- 7. one predictor, two threads

def _images():
    rng = np.random.default_rng(1)
    a = np.zeros((64, 64), np.float32)
    a[10:30, 10:30] = 1
    b = rng.random((48, 80)).astype(np.float32)  # another shape: a mix-up cannot go unseen
    return a, b


def test_a_thread_whose_image_was_replaced_gets_an_error(tiny_model):
    predictor = SamPredictor(tiny_model)
    a, b = _images()
    first_set, second_set = threading.Event(), threading.Event()
    outcome = {}

    def thread_a():
        predictor.set_image(a)
        first_set.set()
        second_set.wait(5)
        try:
            outcome["a"] = predictor.predict(points=[[20, 20]])
        except RuntimeError as exc:
            outcome["a"] = exc

    def thread_b():
        first_set.wait(5)
        predictor.set_image(b)
        second_set.set()
        outcome["b"] = predictor.predict(points=[[20, 20]])

    threads = [threading.Thread(target=thread_a), threading.Thread(target=thread_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert isinstance(outcome["a"], RuntimeError)
    assert "another thread" in str(outcome["a"])
    assert outcome["b"][0].shape == (3, 48, 80)  # b's own image


def test_two_threads_sharing_a_predictor_never_get_the_other_image(tiny_model):
    a, b = _images()
    reference = {}
    for name, image in (("a", a), ("b", b)):
        p = SamPredictor(tiny_model)
        p.set_image(image)
        reference[name] = p.predict(points=[[20, 20]], labels=[1])
    predictor = SamPredictor(tiny_model)
    results = {"a": [], "b": []}
    start = threading.Barrier(2)

    def run(name, image):
        start.wait(5)
        for _ in range(12):
            predictor.set_image(image)
            try:
                results[name].append(predictor.predict(points=[[20, 20]], labels=[1]))
            except RuntimeError:
                results[name].append(None)

    threads = [threading.Thread(target=run, args=item) for item in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for name in ("a", "b"):
        assert len(results[name]) == 12
        for got in results[name]:
            if got is None:  # refused loudly: fine
                continue
            masks, scores, _ = got
            np.testing.assert_array_equal(masks, reference[name][0])
            np.testing.assert_allclose(scores, reference[name][1], rtol=1e-5, atol=1e-6)


def test_setting_in_a_worker_and_decoding_in_the_main_thread_is_fine(tiny_model):
    predictor = SamPredictor(tiny_model)
    a, _ = _images()
    worker = threading.Thread(target=predictor.set_image, args=(a,))
    worker.start()
    worker.join(10)
    masks, _, _ = predictor.predict(points=[[20, 20]])
    assert masks.shape == (3, 64, 64)
