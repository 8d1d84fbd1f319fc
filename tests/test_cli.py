"""The napari-sam command line: segment, models, errors as one line with exit code 2."""

import subprocess
import sys

import numpy as np
import pytest
import tifffile
import torch

from napari_sam import cli
from napari_sam.models.build import build_sam, tiny_config


@pytest.fixture
def stack(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, rng.integers(0, 4000, (4, 40, 50), dtype=np.uint16), photometric="minisblack")
    return path


def test_help_runs_as_a_console_command():
    out = subprocess.run([sys.executable, "-m", "napari_sam.cli", "--help"],
                         capture_output=True, text=True, check=True)
    assert "segment" in out.stdout


def test_segment_stack_from_csv_and_box(tmp_path, stack, cli_model, capsys):
    csv = tmp_path / "points.csv"
    csv.write_text("index,axis-0,axis-1,axis-2,label\n0,2,10,12,1\n1,2,30,30,0\n")
    out = tmp_path / "labels.tif"
    code = cli.main(["segment", str(stack), "--points", str(csv), "--box", "1,5,5,30,40",
                     "--out", str(out)])
    assert code == 0
    labels = tifffile.imread(out)
    assert labels.shape == (4, 40, 50)
    assert set(np.unique(labels[[0, 3]])) == {0}
    assert set(np.unique(labels[2])) <= {0, 1}
    assert set(np.unique(labels[1])) <= {0, 2}
    assert "wrote" in capsys.readouterr().out


def _ellipsoids(n=12, size=128):
    """Two blurred ellipsoids: object 1 on slices 1..10, object 2 on slices 3..8."""
    from scipy import ndimage

    z, y, x = np.mgrid[:n, :size, :size]
    lab = np.zeros((n, size, size), np.int32)
    lab[((z - 5.5) / 4.6) ** 2 + ((y - 40) / 14) ** 2 + ((x - 40) / 14) ** 2 <= 1] = 1
    lab[((z - 5.5) / 2.6) ** 2 + ((y - 88) / 14) ** 2 + ((x - 88) / 14) ** 2 <= 1] = 2
    rng = np.random.default_rng(0)
    img = ndimage.gaussian_filter((lab > 0) * 1.0, (0, 1.5, 1.5)) + rng.normal(0, 0.05, lab.shape)
    return (np.clip(img, 0, None) * 3000).astype(np.uint16), lab


def test_segment_propagate_follows_each_object_through_the_stack(tmp_path, capsys):
    image, truth = _ellipsoids()
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, image)
    csv = tmp_path / "points.csv"
    # object "a" has anchors on slices 2 and 8; the other is one point on slice 5
    csv.write_text("axis-0,axis-1,axis-2,object\n2,40,40,a\n8,40,40,a\n5,88,88,b\n")
    out = tmp_path / "labels.tif"
    assert cli.main(["segment", str(path), "--points", str(csv), "--propagate", "0",
                     "--out", str(out)]) == 0
    labels = tifffile.imread(out)
    assert labels.shape == truth.shape
    assert set(np.unique(labels)) == {0, 1, 2}  # two objects, anchors of "a" joined
    for value, true_id in ((1, 1), (2, 2)):
        pred, gt = labels == value, truth == true_id
        assert np.count_nonzero(pred & gt) / np.count_nonzero(pred | gt) > 0.6
        # propagated beyond the prompted planes, not to the ends of the stack
        assert pred.any(axis=(1, 2)).sum() >= 4
    assert not (labels == 2)[[0, 11]].any()
    assert "propagating" in capsys.readouterr().err


@pytest.mark.parametrize("extra, outline", [
    ([], "half_max"), (["--time-axis"], "model"), (["--outline", "model"], "model"),
    (["--time-axis", "--outline", "half_max"], "half_max"),
    (["--outline-level", "0.4"], "half_max"),
])
def test_segment_propagate_outline_follows_the_axis_and_the_option(tmp_path, keyword_spy,
                                                                    extra, outline):
    import napari_sam.workflows.propagation_volume as volume

    image, _ = _ellipsoids(n=6, size=64)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, image)
    csv = tmp_path / "points.csv"
    csv.write_text("axis-0,axis-1,axis-2\n3,20,20\n")
    seen = keyword_spy(volume, "propagate_volume", "params")
    assert cli.main(["segment", str(path), "--points", str(csv), "--propagate", "0",
                     *extra, "--out", str(tmp_path / "labels.tif")]) == 0
    assert [p.outline for p in seen] == [outline]
    assert seen[0].max_regrowth == (None if "--time-axis" in extra else 1.25)
    assert seen[0].outline_level == (0.4 if "--outline-level" in extra else None)


def test_segment_propagate_in_4d_runs_each_time_point(tmp_path, capsys):
    image, truth = _ellipsoids()
    path = tmp_path / "tzyx.tif"
    tifffile.imwrite(path, np.stack([image, image]))
    csv = tmp_path / "points.csv"
    csv.write_text("axis-0,axis-1,axis-2,axis-3,object\n0,5,40,40,a\n1,5,88,88,b\n")
    out = tmp_path / "labels.tif"
    assert cli.main(["segment", str(path), "--points", str(csv), "--propagate", "1",
                     "--out", str(out)]) == 0
    labels = tifffile.imread(out)
    assert labels.shape == (2, *truth.shape)
    # each time point holds only its own prompted object, followed along z
    assert set(np.unique(labels[0])) == {0, 1} and set(np.unique(labels[1])) == {0, 2}
    assert (labels[0] == 1).any(axis=(1, 2)).sum() >= 4


def test_segment_propagate_bad_input(tmp_path, stack, cli_model, capsys):
    out = tmp_path / "o.tif"
    assert cli.main(["segment", str(stack), "--box", "0,0,0,5,5", "--propagate", "1",
                     "--out", str(out)]) == 2
    assert "leading axis" in capsys.readouterr().err
    assert cli.main(["segment", str(stack), "--text", "nucleus", "--propagate", "0",
                     "--out", str(out)]) == 2
    assert "--text" in capsys.readouterr().err
    assert cli.main(["segment", str(stack), "--box", "0,0,0,5,5", "--propagate", "0",
                     "--max-slices", "-1", "--out", str(out)]) == 2
    assert "max_slices" in capsys.readouterr().err
    assert cli.main(["segment", str(stack), "--box", "0,0,0,5,5", "--propagate", "0",
                     "--outline-level", "1.5", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "outline_level" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["segment", "missing.tif", "--box", "0,0,5,5", "--out", "o.tif"], "no such file"),
        (["segment", "{stack}", "--out", "o.tif"], "no prompts"),
        (["segment", "{stack}", "--box", "0,0,5,5", "--out", "o.tif"], "plane index"),
        (["segment", "{stack}", "--box", "9,0,0,5,5", "--out", "o.tif"], "outside the image"),
        (["segment", "{stack}", "--box", "0,0,0,500,5", "--out", "o.tif"], "outside the 40x50"),
        (["segment", "{stack}", "--points", "{csv}", "--out", "o.tif"], "expected coordinate"),
        (["segment", "{stack}", "--box", "0,0,0,5,5", "--out", "nodir/o.tif"], "does not exist"),
    ],
)
def test_bad_input_one_line_exit_2(tmp_path, stack, cli_model, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    csv = tmp_path / "bad.csv"
    csv.write_text("a,b\n1,2\n")
    argv = [a.format(stack=stack, csv=csv) for a in args]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("napari-sam: error:") and "\n" not in err
    assert message in err
    assert not (tmp_path / "o.tif").exists()


def test_unknown_model_is_a_clean_error(stack, tmp_path, capsys):
    code = cli.main(["segment", str(stack), "--box", "0,0,0,5,5", "--out",
                     str(tmp_path / "o.tif"), "--model", "no_such_model"])
    assert code == 2
    assert "no_such_model" in capsys.readouterr().err


def test_evaluate_writes_the_documented_json(tmp_path, cli_model, capsys):
    import json

    from napari_sam.data.synthetic import make_nuclei_2d

    image, labels = make_nuclei_2d((64, 64), seed=2)
    tifffile.imwrite(tmp_path / "img.tif", image)
    tifffile.imwrite(tmp_path / "lab.tif", labels)
    out = tmp_path / "res.json"
    code = cli.main(["evaluate", str(tmp_path / "img.tif"), str(tmp_path / "lab.tif"),
                     "--clicks", "3", "--json", str(out)])
    assert code == 0
    res = json.loads(out.read_text())
    assert len(res["miou"]) == 3 and len(res["miou_oracle"]) == 1  # the first prompt's
    assert res["n_objects"] == len(res["per_object"]) > 0
    assert res["protocol"]["prompt"] == "point" and res["protocol"]["clicks"] == 3
    assert res["protocol"]["zoom"] == "auto"
    assert all(0.0 <= v <= 1.0 for v in res["miou"])
    assert "mIoU per click" in capsys.readouterr().out
    # the oracle after every click too
    assert cli.main(["evaluate", str(tmp_path / "img.tif"), str(tmp_path / "lab.tif"),
                     "--clicks", "2", "--oracle", "every", "--json", str(out)]) == 0
    assert len(json.loads(out.read_text())["miou_oracle"]) == 2
    # a fixed magnification, or none
    for zoom, recorded in (("2", 2.0), ("off", 1.0)):
        assert cli.main(["evaluate", str(tmp_path / "img.tif"), str(tmp_path / "lab.tif"),
                         "--zoom", zoom, "--json", str(out)]) == 0
        assert json.loads(out.read_text())["protocol"]["zoom"] == recorded
    assert cli.main(["evaluate", str(tmp_path / "img.tif"), str(tmp_path / "lab.tif"),
                     "--zoom", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "--zoom" in err and len(err.strip().splitlines()) == 1


def test_evaluate_classical_baseline(tmp_path, capsys):
    import json

    from napari_sam.data.synthetic import make_nuclei_2d

    image, labels = make_nuclei_2d((96, 96), seed=1)
    tifffile.imwrite(tmp_path / "img.tif", image)
    tifffile.imwrite(tmp_path / "lab.tif", labels)
    out = tmp_path / "res.json"
    assert cli.main(["evaluate", str(tmp_path / "img.tif"), str(tmp_path / "lab.tif"),
                     "--model", "classical", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["model"] == "classical" and len(res["miou"]) == 1


@pytest.mark.parametrize(
    "case, message",
    [
        ("shape", "differ in shape"),
        ("empty", "no objects"),
        ("float", "must be integers"),
        ("missing", "no such file"),
    ],
)
def test_evaluate_bad_input(tmp_path, cli_model, capsys, case, message):
    img = np.zeros((32, 32), np.uint16)
    lab = np.zeros((32, 32), np.int32)
    lab[5:10, 5:10] = 1
    if case == "shape":
        lab = np.zeros((30, 32), np.int32)
        lab[1, 1] = 1
    elif case == "empty":
        lab[:] = 0
    elif case == "float":
        lab = lab.astype(np.float32)
    tifffile.imwrite(tmp_path / "img.tif", img)
    if case != "missing":
        tifffile.imwrite(tmp_path / "lab.tif", lab)
    out = tmp_path / "res.json"
    code = cli.main(["evaluate", str(tmp_path / "img.tif"), str(tmp_path / "lab.tif"),
                     "--json", str(out)])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not out.exists()


def test_train_cli_bad_input_and_a_tiny_run(tmp_path, capsys, monkeypatch):
    from napari_sam.data.synthetic import make_nuclei_2d
    from napari_sam.models.build import MODEL_CONFIGS

    (tmp_path / "im").mkdir()
    (tmp_path / "lab").mkdir()
    image, labels = make_nuclei_2d((64, 64), seed=4)
    tifffile.imwrite(tmp_path / "im" / "a.tif", image)
    assert cli.main(["train", "--images", str(tmp_path / "im"), "--labels",
                     str(tmp_path / "lab"), "--out", str(tmp_path / "m.pt")]) == 2
    assert "no label image" in capsys.readouterr().err
    assert cli.main(["train", "--synthetic", "--stack-fraction", "2",
                     "--out", str(tmp_path / "m.pt")]) == 2
    assert "--stack-fraction" in capsys.readouterr().err
    assert cli.main(["train", "--synthetic", "--other-outputs-weight", "-1",
                     "--out", str(tmp_path / "m.pt")]) == 2
    assert "--other-outputs-weight" in capsys.readouterr().err
    assert cli.main(["train", "--synthetic", "--iou-rank-weight", "nan",
                     "--out", str(tmp_path / "m.pt")]) == 2
    assert "--iou-rank-weight" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # argparse's choices: usage line, exit 2
        cli.main(["train", "--synthetic", "--ranges", "v0.3", "--out", str(tmp_path / "m.pt")])
    assert exit_info.value.code == 2
    assert "--ranges" in capsys.readouterr().err
    assert not (tmp_path / "m.pt").exists()
    tifffile.imwrite(tmp_path / "lab" / "a.tif", labels)
    monkeypatch.setitem(MODEL_CONFIGS, "tiny", tiny_config())
    code = cli.main(["train", "--images", str(tmp_path / "im"), "--labels",
                     str(tmp_path / "lab"), "--init", "tiny", "--from-scratch", "--steps", "3",
                     "--warmup", "1", "--out", str(tmp_path / "m.pt")])
    assert code == 0
    state = torch.load(tmp_path / "m.pt", weights_only=True)
    assert set(state) == set(build_sam(tiny_config()).state_dict())


def _annotated_folder(tmp_path, size: int) -> None:
    """tmp_path/im/a.tif and tmp_path/lab/a.tif: a synthetic nuclei image and its labels."""
    from napari_sam.data.synthetic import make_nuclei_2d

    (tmp_path / "im").mkdir()
    (tmp_path / "lab").mkdir()
    image, labels = make_nuclei_2d((size, size), seed=4)
    tifffile.imwrite(tmp_path / "im" / "a.tif", image)
    tifffile.imwrite(tmp_path / "lab" / "a.tif", labels)


def test_train_only_updates_the_named_parameters(tmp_path, capsys, monkeypatch):
    from napari_sam.models.build import MODEL_CONFIGS

    _annotated_folder(tmp_path, 64)
    monkeypatch.setitem(MODEL_CONFIGS, "tiny", tiny_config())
    torch.manual_seed(0)
    start = build_sam(tiny_config()).state_dict()
    torch.save(start, tmp_path / "init.pt")
    common = ["train", "--images", str(tmp_path / "im"), "--labels", str(tmp_path / "lab"),
              "--init", str(tmp_path / "init.pt"), "--steps", "3", "--warmup", "1",
              "--lr", "1e-2", "--out", str(tmp_path / "m.pt")]
    assert cli.main([*common, "--train-only", "no_such_module"]) == 2
    err = capsys.readouterr().err.strip()
    assert "matches no parameter" in err and "mask_decoder" in err and "\n" not in err
    assert cli.main([*common, "--train-only", "mask_decoder.iou_prediction_head"]) == 0
    state = torch.load(tmp_path / "m.pt", weights_only=True)
    changed = {k for k in start if not torch.equal(start[k], state[k])}
    assert changed and all(k.startswith("mask_decoder.iou_prediction_head") for k in changed)


def test_synthetic_crop_sizes_the_generator_apart_from_real_crops(tmp_path, capsys, monkeypatch):
    from napari_sam import training
    from napari_sam.models.build import MODEL_CONFIGS

    assert cli.main(["train", "--synthetic", "--synthetic-crop", "8",
                     "--out", str(tmp_path / "m.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--synthetic-crop" in err and "\n" not in err
    _annotated_folder(tmp_path, 96)
    monkeypatch.setitem(MODEL_CONFIGS, "tiny", tiny_config())
    shapes, real_crops = [], []
    original, original_folder = training.synthetic_examples, training.folder_examples
    monkeypatch.setattr(training, "synthetic_examples",
                        lambda seed, shape, **kw: shapes.append(shape) or original(seed, shape, **kw))
    monkeypatch.setattr(training, "folder_examples",
                        lambda im, lab, crop, seed=0, **kw: real_crops.append(crop)
                        or original_folder(im, lab, crop, seed, **kw))
    code = cli.main(["train", "--images", str(tmp_path / "im"), "--labels", str(tmp_path / "lab"),
                     "--synthetic", "--init", "tiny", "--from-scratch", "--steps", "2",
                     "--warmup", "1", "--crop", "96", "--synthetic-crop", "48",
                     "--out", str(tmp_path / "m.pt")])
    assert code == 0
    assert shapes == [(48, 48)] and real_crops == [96]


def test_the_default_model_warns_about_a_brightfield_image(tmp_path, cli_model, capsys):
    yy, xx = np.mgrid[:64, :64]
    nuclei = ((yy - 20) ** 2 + (xx - 20) ** 2 < 64) | ((yy - 40) ** 2 + (xx - 44) ** 2 < 100)
    fluorescence = (20 + 180 * nuclei).astype(np.uint8)
    for name, image, warned in (("fluo.tif", fluorescence, False),
                                ("bf.tif", np.repeat(255 - fluorescence[..., None], 3, -1), True)):
        tifffile.imwrite(tmp_path / name, image)
        out = tmp_path / f"out_{name}"
        for model in ("default", "vit_b"):
            code = cli.main(["segment", str(tmp_path / name), "--box", "10,10,30,30", "--out",
                             str(out), "--model", model, "--no-snap"])
            err = capsys.readouterr().err
            assert code == 0 and out.exists()  # a warning, not an error
            assert ("bright background" in err) == (warned and model == "default"), err


def test_segment_decodes_an_objects_points_in_their_click_order(tmp_path, cli_model):
    from napari_sam import SamPredictor
    from napari_sam.engine.postprocess import after_click

    yy, xx = np.mgrid[:64, :64]
    image = (((yy - 30) ** 2 + (xx - 30) ** 2 < 300) * 200 + 20).astype(np.float32)
    tifffile.imwrite(tmp_path / "img.tif", image)
    csv = tmp_path / "points.csv"
    csv.write_text("index,axis-0,axis-1,label\n0,30,30,1\n1,50,12,0\n2,22,36,1\n")
    out = tmp_path / "out.tif"
    assert cli.main(["segment", str(tmp_path / "img.tif"), "--points", str(csv), "--out",
                     str(out)]) == 0
    predictor = SamPredictor(cli_model)
    predictor.set_image(image)
    points, labels = np.array([[30.0, 30], [50, 12], [22, 36]]), np.array([1, 0, 1])
    # each click decoded with the mask shown after the last as its mask prompt, and kept
    # near the click
    clicked, _, _ = predictor.segment(points[:1], labels[:1])
    for k in (2, 3):
        decoded, _, _ = predictor.segment(points[:k], labels[:k], mask_input=clicked)
        clicked = after_click(clicked, decoded, points[:k], labels[:k])
    at_once, _, _ = predictor.segment(points, labels)
    assert (clicked != at_once).any()  # (the test tells them apart)
    np.testing.assert_array_equal(tifffile.imread(out) > 0, clicked)
