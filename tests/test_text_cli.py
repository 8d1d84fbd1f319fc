"""``napari-sam segment IMAGE --text QUERY`` end to end with a tiny random CLIP model (offline)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import tifffile
from test_text import write_tiny_clip

from napari_sam.cli import main
from napari_sam.data.synthetic import make_nuclei_2d


@pytest.fixture(scope="module")
def clip_spec(tmp_path_factory) -> str:
    return write_tiny_clip(tmp_path_factory.mktemp("cliclip"), name="napari-sam-cli-clip")


@pytest.fixture()
def nuclei(tmp_path):
    image, labels = make_nuclei_2d((128, 128), seed=1)  # 14 nuclei
    img_path, lab_path = tmp_path / "img.tif", tmp_path / "cand.tif"
    tifffile.imwrite(img_path, image)
    tifffile.imwrite(lab_path, labels.astype(np.int32))
    return img_path, lab_path, labels


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_text_segment_with_candidates(tmp_path, nuclei, clip_spec, capsys):
    img, cand, labels = nuclei
    out, scores = tmp_path / "out.tif", tmp_path / "scores.csv"
    code = main(["segment", str(img), "--text", "nucleus", "--negative", "debris",
                 "--negative", "background", "--clip", clip_spec, "--candidates", str(cand),
                 "--top-k", "3", "--out", str(out), "--scores-csv", str(scores),
                 "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    result = tifffile.imread(out)
    assert result.shape == labels.shape
    kept = np.unique(result[result > 0])
    assert len(kept) == 3
    for k in kept:  # kept objects are copied whole from the candidates
        np.testing.assert_array_equal(result == k, labels == k)
    rows = read_csv(scores)
    assert sorted(int(r["label"]) for r in rows) == np.unique(labels[labels > 0]).tolist()
    selected = {int(r["label"]) for r in rows if r["selected"] == "1"}
    assert selected == set(kept.tolist())
    probs = {int(r["label"]): float(r["text_probability"]) for r in rows}
    assert min(probs[k] for k in kept) >= max(p for i, p in probs.items() if i not in selected)
    assert "3 of" in capsys.readouterr().out


def test_text_segment_threshold_and_stack(tmp_path, nuclei, clip_spec):
    img, cand, labels = nuclei
    image = tifffile.imread(img)
    stack_img, stack_lab = tmp_path / "stack.tif", tmp_path / "stack_lab.tif"
    tifffile.imwrite(stack_img, np.stack([image, image[::-1]]))
    tifffile.imwrite(stack_lab, np.stack([labels, labels[::-1]]).astype(np.int32))
    out, scores = tmp_path / "out.tif", tmp_path / "s.csv"
    code = main(["segment", str(stack_img), "--text", "nucleus", "--clip", clip_spec,
                 "--candidates", str(stack_lab), "--threshold", "0", "--out", str(out),
                 "--scores-csv", str(scores), "--device", "cpu"])
    assert code == 0
    result = tifffile.imread(out)
    np.testing.assert_array_equal(result[0], labels)  # threshold 0 keeps everything
    np.testing.assert_array_equal(result[1], labels[::-1])
    rows = read_csv(scores)
    assert {r["axis-0"] for r in rows} == {"0", "1"}
    assert len(rows) == 2 * len(np.unique(labels[labels > 0]))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--clip", "ViT-B-32:openai", "--offline"], "not on this machine"),
        (["--clip", "ViT-B-32:/no/such/weights.safetensors"], "not found"),
        (["--clip", "ViT-B-32"], "MODEL:TAG"),
        (["--top-k", "0"], "--top-k"),
        (["--margin", "-1"], "margin"),
        (["--candidates", "WRONG_SHAPE"], "do not match"),
        (["--points", "p.csv"], "cannot be combined"),
    ],
)
def test_text_segment_bad_input(tmp_path, nuclei, clip_spec, capsys, monkeypatch, extra, message):
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path / "cache"))
    img, cand, _ = nuclei
    wrong = tmp_path / "wrong.tif"
    tifffile.imwrite(wrong, np.zeros((5, 5), np.int32))
    extra = [str(wrong) if e == "WRONG_SHAPE" else e for e in extra]
    args = ["segment", str(img), "--text", "nucleus", "--out", str(tmp_path / "o.tif")]
    if "--clip" not in extra:
        args += ["--clip", clip_spec]
    if "--candidates" not in extra:
        args += ["--candidates", str(cand)]
    code = main(args + extra)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "o.tif").exists()
