"""`napari-sam automatic` and `napari-sam evaluate --propagate / --automatic`."""

import argparse
import json

import numpy as np
import pytest
import tifffile

from napari_sam import cli
from napari_sam.cli._common import add_automatic_options, automatic_params


def _write(path, arr):
    tifffile.imwrite(path, arr, photometric="minisblack")
    return str(path)


@pytest.fixture
def volume(tmp_path):
    z, y, x = np.mgrid[:6, :48, :48]
    lab = np.zeros((6, 48, 48), np.int32)
    lab[((z - 2.5) / 2.6) ** 2 + ((y - 16) / 8.0) ** 2 + ((x - 16) / 8.0) ** 2 <= 1] = 1
    lab[((z - 2.5) / 1.6) ** 2 + ((y - 34) / 7.0) ** 2 + ((x - 32) / 7.0) ** 2 <= 1] = 2
    img = (lab > 0) * 1000 + np.random.default_rng(0).integers(0, 100, lab.shape)
    return _write(tmp_path / "img.tif", img.astype(np.uint16)), _write(tmp_path / "lab.tif", lab)


def test_automatic_2d_writes_labels(tmp_path, cli_model, capsys):
    img = _write(tmp_path / "a.tif", np.random.default_rng(0).integers(0, 255, (40, 50), np.uint8))
    out = tmp_path / "out.tif"
    code = cli.main(["automatic", img, "--out", str(out), "--point-source", "grid",
                     "--points-per-side", "4", "--pred-iou-thresh", "0",
                     "--stability-score-thresh", "0"])
    assert code == 0
    labels = tifffile.imread(out)
    assert labels.shape == (40, 50) and labels.dtype.kind == "i"
    assert f"{labels.max()} object(s)" in capsys.readouterr().out


def test_automatic_stack_slices_and_axis(tmp_path, cli_model, volume):
    out = tmp_path / "out.tif"
    assert cli.main(["automatic", volume[0], "--axis", "0", "--slices", "1:3", "--out",
                     str(out), "--points-per-side", "2"]) == 0
    labels = tifffile.imread(out)
    assert labels.shape == (6, 48, 48)
    assert not labels[0].any() and not labels[3:].any()


@pytest.mark.parametrize(
    "extra, match",
    [([], "--axis"), (["--axis", "5"], "out of range"), (["--axis", "0", "--slices", "9:12"],
                                                         "no slice"),
     (["--axis", "0", "--point-source", "random"], "point_source"),
     (["--axis", "0", "--part-score-margin", "2"], "part_score_margin"),
     (["--axis", "0", "--merge-solidity", "-1"], "merge_solidity")],
)
def test_automatic_bad_input_is_one_line(tmp_path, cli_model, volume, capsys, extra, match):
    out = tmp_path / "out.tif"
    code = cli.main(["automatic", volume[0], "--out", str(out), *extra])
    err = capsys.readouterr().err
    assert code == 2 and match in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_part_and_merge_options_take_a_number_or_off(capsys):
    parser = argparse.ArgumentParser()
    add_automatic_options(parser)
    default = automatic_params(parser.parse_args([]))
    assert (default.part_score_margin, default.merge_solidity) == (0.1, 0.95)
    p = automatic_params(parser.parse_args(["--part-score-margin", "0.3",
                                             "--merge-solidity", "off"]))
    assert (p.part_score_margin, p.merge_solidity) == (0.3, None)
    p = automatic_params(parser.parse_args(["--part-score-margin", "OFF",
                                             "--merge-solidity", "0.9"]))
    assert (p.part_score_margin, p.merge_solidity) == (None, 0.9)
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["--part-score-margin", "some"])
    assert e.value.code == 2 and "'off'" in capsys.readouterr().err


def test_evaluate_propagate_writes_miou_3d(tmp_path, cli_model, volume, capsys):
    out = tmp_path / "r.json"
    assert cli.main(["evaluate", *volume, "--propagate", "--axis", "0", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert 0 <= r["miou_3d"] <= 1 and r["n_objects"] == 2
    assert [o["id"] for o in r["per_object"]] == [1, 2]
    assert r["per_object"][0]["seed_slice"] in (2, 3)
    assert r["protocol"]["zoom"] == 1.0  # whole slices unless --zoom is given
    assert r["params"]["outline"] == "half_max"  # redrawn at the half-maximum by default
    assert "miou_3d" in capsys.readouterr().out
    assert cli.main(["evaluate", *volume, "--propagate", "--axis", "0", "--outline", "model",
                     "--json", str(out)]) == 0
    assert json.loads(out.read_text())["params"]["outline"] == "model"
    assert cli.main(["evaluate", *volume, "--propagate", "--axis", "0", "--outline-level", "0.3",
                     "--json", str(out)]) == 0
    assert json.loads(out.read_text())["params"]["outline_level"] == 0.3


def test_evaluate_propagate_in_magnified_crops(tmp_path, cli_model, volume, keyword_spy):
    import napari_sam.workflows.propagation_volume as propagation

    zooms = keyword_spy(propagation, "propagate_in_crops", "zoom")
    out = tmp_path / "r.json"
    assert cli.main(["evaluate", *volume, "--propagate", "--axis", "0", "--zoom", "2",
                     "--json", str(out)]) == 0
    assert zooms == [2.0] and json.loads(out.read_text())["protocol"]["zoom"] == 2.0


@pytest.mark.parametrize(
    "extra, match",
    [(["--propagate"], "--axis"), (["--propagate", "--axis", "0", "--clicks", "3"], "one point"),
     (["--propagate", "--automatic"], "not allowed"),
     (["--propagate", "--axis", "0", "--outline-level", "0"], "outline_level")],
)
def test_evaluate_propagate_bad_input(cli_model, volume, capsys, extra, match):
    with pytest.raises(SystemExit) if match == "not allowed" else _nothing():
        code = cli.main(["evaluate", *volume, *extra])
        assert code == 2
    assert match in capsys.readouterr().err


def test_evaluate_propagate_2d_labels_rejected(tmp_path, cli_model, capsys):
    img = _write(tmp_path / "a.tif", np.ones((20, 20), np.uint8))
    lab = _write(tmp_path / "l.tif", np.eye(20, dtype=np.int32))
    assert cli.main(["evaluate", img, lab, "--propagate", "--axis", "0"]) == 2
    assert "3D labels" in capsys.readouterr().err


def test_evaluate_automatic_reports_f1_beside_classical(tmp_path, cli_model, volume):
    img2 = _write(tmp_path / "i2.tif", tifffile.imread(volume[0])[2])
    lab2 = _write(tmp_path / "l2.tif", tifffile.imread(volume[1])[2])
    out = tmp_path / "r.json"
    assert cli.main(["evaluate", img2, lab2, "--automatic", "--points-per-side", "4",
                     "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert set(r["methods"]) == {"default", "classical"}
    for m in r["methods"].values():
        assert 0 <= m["f1_50"] <= 1 and 0 <= m["mean_accuracy"] <= 1
    assert r["methods"]["classical"]["f1_50"] == 1.0  # two bright, separate objects
    assert r["params"]["points_per_side"] == 4
    assert r["mode"] == "points"  # 'auto' for a model without an instance decoder


def test_evaluate_automatic_scores_the_instance_decoder_like_the_automatic_command(
        tmp_path, cli_model, volume, monkeypatch, capsys):
    from napari_sam.modeling.instance_decoder import InstanceDecoder
    from napari_sam.workflows import automatic, instance_decoder

    img2 = _write(tmp_path / "i2.tif", tifffile.imread(volume[0])[2])
    lab2 = _write(tmp_path / "l2.tif", tifffile.imread(volume[1])[2])
    out = tmp_path / "r.json"
    assert cli.main(["evaluate", img2, lab2, "--automatic", "--mode", "decoder"]) == 2
    assert "instance-segmentation decoder" in capsys.readouterr().err
    assert cli.main(["evaluate", img2, lab2, "--mode", "points"]) == 2  # without --automatic
    assert "--automatic" in capsys.readouterr().err
    # options of the click protocol are refused, not ignored, with the other modes
    assert cli.main(["evaluate", img2, lab2, "--automatic", "--snap"]) == 2
    assert "--snap applies to clicks and boxes" in capsys.readouterr().err
    assert cli.main(["evaluate", img2, lab2, "--automatic", "--oracle", "every"]) == 2
    assert "--oracle" in capsys.readouterr().err
    decoder = InstanceDecoder(embed_dim=cli_model.prompt_encoder.embed_dim, initial_features=8)
    monkeypatch.setattr(cli_model, "instance_decoder", decoder.eval(), raising=False)
    truth = tifffile.imread(lab2)
    calls = []

    def exact(model, image, **kwargs):  # the decoder path gives the ground truth back
        calls.append(kwargs["params"])
        return truth

    def points(*args, **kwargs):
        raise AssertionError("the point mode ran for a model with an instance decoder")

    monkeypatch.setattr(instance_decoder, "segment_everything_nd", exact)
    monkeypatch.setattr(automatic, "segment_everything_nd", points)
    assert cli.main(["evaluate", img2, lab2, "--automatic", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["mode"] == "decoder" and r["methods"]["default"]["f1_50"] == 1.0
    assert type(calls[0]).__name__ == "DecoderParams"


def test_evaluate_automatic_classical_only_and_3d(tmp_path, volume):
    out = tmp_path / "r.json"
    assert cli.main(["evaluate", *volume, "--automatic", "--axis", "0", "--model", "classical",
                     "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert list(r["methods"]) == ["classical"] and r["n_true"] == 2
    assert r["methods"]["classical"]["f1_50"] == 1.0  # linked into two 3D objects


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
