"""Text prompts (napari_sam.workflows.text): crop geometry, CLIP loading, scoring and selection, offline.

No test touches the network: CLIP models are tiny open_clip architectures (a config JSON written
here) with random weights; where a test needs a known answer, the embeddings are set by hand and
the rest of the pipeline runs as is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_sam.workflows import text
from napari_sam.workflows.text import (
    ClipScorer,
    ClipWeightsMissing,
    CropParams,
    TextScores,
    apply_clicks,
    clip_weights,
    crop_boxes,
    extract_crops,
    object_at,
    parse_clip_spec,
    score_objects,
    segment_by_text,
    select_objects,
)

SRC = Path(__file__).resolve().parents[1] / "src"

TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def write_tiny_clip(folder: Path, name: str = "napari-sam-test-clip", seed: int = 0,
                    embed_dim: int = 32) -> str:
    """A tiny open_clip config plus random weights on disk; returns the ``CONFIG:PATH`` spec."""
    import open_clip
    import torch

    cfg = dict(TINY_CONFIG, embed_dim=embed_dim)
    config = folder / f"{name}.json"
    config.write_text(json.dumps(cfg))
    open_clip.add_model_config(config)
    torch.manual_seed(seed)
    model = open_clip.create_model(name, pretrained=None)
    weights = folder / f"{name}-{seed}.pt"
    torch.save(model.state_dict(), weights)
    return f"{config}:{weights}"


@pytest.fixture(scope="module")
def tiny_spec(tmp_path_factory) -> str:
    return write_tiny_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def scorer(tiny_spec) -> ClipScorer:
    return ClipScorer(tiny_spec, device="cpu", isolate=False, download=False)


def square_labels(shape=(64, 64), boxes=((10, 20, 20, 30),)) -> np.ndarray:
    labels = np.zeros(shape, np.int32)
    for i, (r0, c0, r1, c1) in enumerate(boxes, start=1):
        labels[r0:r1, c0:c1] = i
    return labels


# -- crop geometry -----------------------------------------------------------------------------


def test_crop_box_margin_and_square():
    labels = square_labels(boxes=((10, 30, 20, 40), (40, 10, 44, 30)))
    boxes, ids = crop_boxes(labels, params=CropParams(margin=0.5))
    assert ids.tolist() == [1, 2]
    # 10x10 box, 50% on each side: a 20x20 square around the same centre
    assert boxes[0].tolist() == [5, 25, 25, 45]
    # 4x20 box: square of side 20 * 2 = 40 centred on (42, 20)
    assert boxes[1].tolist() == [22, 0, 62, 40]
    boxes0, _ = crop_boxes(labels, params=CropParams(margin=0.0, min_side=1))
    assert boxes0[0].tolist() == [10, 30, 20, 40]


def test_crop_box_min_side_and_spacing():
    labels = square_labels(boxes=((30, 30, 32, 32),))
    (box,), _ = crop_boxes(labels, params=CropParams(margin=0.0, min_side=16))
    assert box[2] - box[0] == 16 and box[3] - box[1] == 16
    # rows twice as large as columns: a 10-row x 20-col object is physically square, and the crop
    # spans half as many rows as columns
    labels = square_labels(boxes=((20, 10, 30, 30),))
    (box,), _ = crop_boxes(labels, params=CropParams(margin=0.0, min_side=1),
                           spacing=(2.0, 1.0))
    assert (box[2] - box[0], box[3] - box[1]) == (10, 20)


def test_crop_ids_order_and_errors():
    labels = square_labels(boxes=((0, 0, 5, 5), (10, 10, 15, 15), (20, 20, 30, 30)))
    labels[labels == 3] = 1000  # large ids are fine
    crops, ids = extract_crops(np.zeros((64, 64), np.uint8), labels, [1000, 1], size=8)
    assert ids.tolist() == [1000, 1] and crops.shape == (2, 8, 8, 3)
    boxes, _ = crop_boxes(labels, [1000, 1], params=CropParams(margin=0, min_side=1))
    assert boxes.tolist() == [[20, 20, 30, 30], [0, 0, 5, 5]]
    with pytest.raises(ValueError, match="not in the label image"):
        crop_boxes(labels, [7])
    with pytest.raises(ValueError, match="background"):
        crop_boxes(labels, [0])
    with pytest.raises(ValueError, match="2D plane"):
        crop_boxes(np.zeros((2, 8, 8), np.int32))
    with pytest.raises(ValueError, match="differ in shape"):
        extract_crops(np.zeros((8, 9)), np.zeros((8, 8), np.int32))
    with pytest.raises(ValueError, match="integers"):
        crop_boxes(np.zeros((8, 8), np.float32))
    empty, none = extract_crops(np.zeros((8, 8)), np.zeros((8, 8), np.int32), size=4)
    assert empty.shape == (0, 4, 4, 3) and none.size == 0


def _ramp_rgb(shape=(64, 64)) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(20, 250, size=(*shape, 3), dtype=np.uint8)


@pytest.mark.parametrize("background", ["keep", "dim", "blank"])
def test_crop_background_and_border(background):
    image = _ramp_rgb()
    labels = square_labels(boxes=((0, 0, 10, 10), (10, 0, 14, 4)))  # object 1 at the corner
    params = CropParams(margin=0.5, background=background, dim_factor=0.5, fill=7)
    (box,), _ = crop_boxes(labels, [1], params=params)
    assert box.tolist() == [-5, -5, 15, 15]
    # crop size == region size: no resampling, so pixels can be compared exactly
    crops, _ = extract_crops(image, labels, [1], params=params, size=20)
    crop = crops[0].astype(float)
    assert (crop[:5] == 7).all() and (crop[:, :5] == 7).all()  # outside the image: fill
    inside = crop[5:15, 5:15]
    np.testing.assert_array_equal(inside, image[:10, :10])  # the object is never altered
    outside = crop[15:20, 5:15]  # image rows 10..14: object 2 and background
    src = image[10:15, :10].astype(float)
    expected = {"keep": src, "dim": np.rint(src * 0.5), "blank": np.full_like(src, 7)}
    np.testing.assert_allclose(outside, expected[background], atol=0.5)


def test_crop_grayscale_16bit_and_range():
    image = np.zeros((40, 40), np.uint16)
    image[10:20, 10:20] = 4000
    image[14, 14] = 2000
    labels = square_labels((40, 40), boxes=((10, 10, 20, 20),))
    params = CropParams(margin=0.0, background="keep", min_side=1)
    crops, _ = extract_crops(image, labels, params=params, size=10, intensity_range=(0, 4000))
    crop = crops[0]
    assert crop.dtype == np.uint8
    assert (crop[..., 0] == crop[..., 1]).all() and (crop[..., 0] == crop[..., 2]).all()
    assert crop[0, 0, 0] == 255 and crop[4, 4, 0] == 128  # 2000 / 4000 * 255 = 127.5
    # another range (a whole stack's) maps the same values differently
    crops2, _ = extract_crops(image, labels, params=params, size=10, intensity_range=(0, 8000))
    assert crops2[0][0, 0, 0] == 128


def test_crop_scale_invariance():
    """The same object twice as large in pixels gives (almost) the same crop."""
    rr, cc = np.mgrid[0:16, 0:16]
    small = 100 + 90 * np.sin(rr / 2.5) * np.cos(cc / 3.5)  # smooth: resampling barely matters
    image = np.zeros((120, 120))
    labels = np.zeros((120, 120), np.int32)
    image[10:26, 10:26] = small
    labels[12:24, 12:24] = 1
    image[50:82, 50:82] = np.kron(small, np.ones((2, 2)))
    labels[54:78, 54:78] = 2
    crops, _ = extract_crops(image, labels, params=CropParams(margin=0.25), size=32,
                             intensity_range=(0, 200))
    diff = np.abs(crops[0].astype(float) - crops[1].astype(float)).mean()
    other = np.abs(crops[0].astype(float) - np.flipud(crops[1]).astype(float)).mean()
    assert diff < 0.25 * other


def test_crop_params_validation():
    for bad in (dict(margin=-1), dict(background="blur"), dict(dim_factor=2), dict(min_side=0)):
        with pytest.raises(ValueError):
            CropParams(**bad)


# -- specs, weights, offline -------------------------------------------------------------------


def test_parse_clip_spec(tmp_path):
    assert parse_clip_spec("ViT-B-32:openai").tag == "openai"
    assert parse_clip_spec("ViT-B-32:random").tag == "random"
    w = tmp_path / "w.safetensors"
    w.write_bytes(b"x")
    spec = parse_clip_spec(f"ViT-B-32:{w}")
    assert spec.weights == w and spec.model == "ViT-B-32"
    cfg = tmp_path / "my-clip.json"
    cfg.write_text("{}")
    spec = parse_clip_spec(f"{cfg}:{w}")
    assert spec.model == "my-clip" and spec.config == cfg
    with pytest.raises(FileNotFoundError):
        parse_clip_spec("ViT-B-32:/no/such/file.bin")
    with pytest.raises(ValueError, match="MODEL:PATH"):
        parse_clip_spec(str(w))
    with pytest.raises(ValueError, match="MODEL:TAG"):
        parse_clip_spec("ViT-B-32")


def test_offline_missing_weights_message(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_SAM_OFFLINE", "1")
    monkeypatch.setattr(clip_weights, "_reachable", lambda *a, **k: pytest.fail("network probed"))
    with pytest.raises(ClipWeightsMissing) as info:
        ClipScorer("ViT-B-32:openai", cache_dir=tmp_path, isolate=False)
    msg = str(info.value)
    assert str(tmp_path / "ViT-B-32-openai.safetensors") in msg
    assert "ViT-B-32-quickgelu:/path/to/weights" in msg and "huggingface.co" in msg


def test_no_network_gives_missing_weights(tmp_path, monkeypatch):
    monkeypatch.delenv("NAPARI_SAM_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    probed = []
    monkeypatch.setattr(clip_weights, "_reachable",
                        lambda url, **k: probed.append(url) or "unreachable")
    monkeypatch.setattr(clip_weights, "_fetch", lambda *a: pytest.fail("download attempted"))
    with pytest.raises(ClipWeightsMissing, match="no network: unreachable"):
        ClipScorer("ViT-B-32:openai", cache_dir=tmp_path, isolate=False)
    assert probed and probed[0].startswith("https://")


def test_unknown_tag_and_architecture(tmp_path):
    with pytest.raises(ValueError, match="known tags"):
        ClipScorer("ViT-B-32:no_such_tag", cache_dir=tmp_path, isolate=False, download=False)
    with pytest.raises(ValueError, match="unknown CLIP architecture"):
        ClipScorer("No-Such-Net:random", isolate=False)


def test_cached_pretrained_file_is_used_offline(tmp_path, monkeypatch):
    """A file saved under the documented cache name loads with no network at all."""
    import open_clip

    spec = write_tiny_clip(tmp_path, name="napari-sam-cache-clip", seed=3)
    config, weights = spec.split(":", 1)
    monkeypatch.setenv("NAPARI_SAM_OFFLINE", "1")
    fake_cfg = {"hf_hub": "example/tiny-clip/", "mean": (0.5, 0.5, 0.5), "std": (0.25,) * 3}
    real_get = open_clip.get_pretrained_cfg
    monkeypatch.setattr(
        open_clip, "get_pretrained_cfg",
        lambda m, t: fake_cfg if (m, t) == ("napari-sam-cache-clip", "test") else real_get(m, t),
    )
    cache = tmp_path / "cache"
    with pytest.raises(ClipWeightsMissing, match="napari-sam-cache-clip-test.safetensors"):
        ClipScorer(f"{config}:test", cache_dir=cache, isolate=False)
    cache.mkdir()
    Path(weights).rename(cache / "napari-sam-cache-clip-test.pt")
    sc = ClipScorer(f"{config}:test", cache_dir=cache, isolate=False)
    assert sc.weights == str(cache / "napari-sam-cache-clip-test.pt")
    assert sc.image_size == 32 and sc.embed_dim == 32


def test_weights_of_another_architecture(tmp_path):
    other = write_tiny_clip(tmp_path, name="napari-sam-other-clip", embed_dim=16)
    config = tmp_path / "napari-sam-test-clip.json"
    config.write_text(json.dumps(TINY_CONFIG))
    with pytest.raises(ValueError, match="not a weights file"):
        ClipScorer(f"{config}:{other.split(':', 1)[1]}", isolate=False)


def test_clip_cache_dir_under_sam_cache_root(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path))
    assert text.clip_cache_dir() == tmp_path / "clip"


def test_text_module_import_is_light():
    code = (
        "import sys, napari_sam, napari_sam.workflows.text\n"
        "bad = [m for m in ('torch', 'open_clip', 'torchvision', 'napari') if m in sys.modules]\n"
        "print(bad or 'CLEAN')\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "CLEAN"


# -- the real (tiny, random) CLIP model --------------------------------------------------------


def test_real_model_embeddings(scorer):
    t = scorer.encode_text(["nucleus", "background", "nucleus"])
    assert tuple(t.shape) == (3, 32)
    np.testing.assert_allclose(t.norm(dim=1).numpy(), 1.0, atol=1e-5)
    np.testing.assert_allclose(t[0].numpy(), t[2].numpy())
    assert not np.allclose(t[0].numpy(), t[1].numpy())
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 255, size=(5, 48, 48, 3), dtype=np.uint8)  # resized to 32
    e = scorer.encode_crops(crops, batch_size=2)
    assert tuple(e.shape) == (5, 32)
    np.testing.assert_allclose(e.norm(dim=1).numpy(), 1.0, atol=1e-5)
    again = scorer.encode_crops(crops[3:4])
    np.testing.assert_allclose(again[0].numpy(), e[3].numpy(), atol=1e-5)  # batch-independent
    with pytest.raises(ValueError, match="uint8"):
        scorer.encode_crops(crops.astype(np.float32))


def test_scores_are_softmax_of_real_embeddings(scorer):
    from napari_sam.data.synthetic import make_nuclei_2d

    image, labels = make_nuclei_2d((96, 96), seed=3)
    s = score_objects(scorer, image, labels, "nucleus", ["background", "debris"])
    assert s.ids.tolist() == np.unique(labels[labels > 0]).tolist()
    crops, _ = extract_crops(image, labels, size=scorer.image_size)
    img = scorer.encode_crops(crops).numpy()
    txt = scorer.encode_text(["nucleus", "background", "debris"]).numpy()
    sims = img @ txt.T
    np.testing.assert_allclose(s.similarity, sims[:, 0], atol=1e-5)
    np.testing.assert_allclose(s.negative_similarity, sims[:, 1:], atol=1e-5)
    logits = scorer.logit_scale * sims
    p = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(s.probability, (p / p.sum(1, keepdims=True))[:, 0], atol=1e-5)
    feats = s.to_features()
    assert set(feats) == {"label", "text_similarity", "text_probability"}
    assert len(feats["label"]) == len(s)


def test_crop_embeddings_are_cached(tiny_spec):
    sc = ClipScorer(tiny_spec, device="cpu", isolate=False)
    encoded = []
    real = sc.encode_crops_numpy

    def counting(crops, *a, **k):
        encoded.append(len(crops))
        return real(crops, *a, **k)

    sc.encode_crops_numpy = counting
    labels = square_labels(boxes=((5, 5, 15, 15), (30, 30, 40, 44), (50, 5, 60, 20)))
    image = np.random.default_rng(0).random((64, 64))
    s1 = score_objects(sc, image, labels, "nucleus", intensity_range=(0, 1))
    assert encoded == [3]
    s2 = score_objects(sc, image, labels, "debris", ["cell"], intensity_range=(0, 1))
    assert encoded == [3]  # new query: no crop encoded again
    assert not np.allclose(s1.similarity, s2.similarity)
    labels[50:60, 20:24] = 3  # one object grows
    score_objects(sc, image, labels, "nucleus", intensity_range=(0, 1))
    assert encoded == [3, 1]


def test_progress_and_cancel(scorer):
    labels = np.zeros((64, 64), np.int32)
    for i in range(6):
        labels[2 + 10 * i: 8 + 10 * i, 2 + 9 * i: 9 + 9 * i] = i + 1
    image = np.random.default_rng(5).random((64, 64))
    scorer.cache.clear()
    calls = []
    s = score_objects(scorer, image, labels, "nucleus", batch_size=2,
                      progress=lambda d, t: calls.append((d, t)), intensity_range=(0, 1))
    assert s.complete and calls[-1] == (6, 6)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    scorer.cache.clear()
    polls = []
    s = score_objects(scorer, image, labels, "nucleus", batch_size=2, intensity_range=(0, 1),
                      cancelled=lambda: polls.append(1) or len(polls) > 1)
    assert not s.complete and s.ids.tolist() == [1, 2]


# -- selection with known embeddings -----------------------------------------------------------


def _known_scorer(scorer, monkeypatch):
    """The tiny scorer with hand-set embeddings: a crop's embedding depends on its brightness."""
    basis = np.eye(32, dtype=np.float32)
    words = {"nucleus": basis[0], "background": basis[1], "debris": basis[2]}

    def enc_text(queries):
        return np.stack([words[q] for q in queries])

    def enc_crops(crops, batch_size=32, progress=None, cancelled=None):
        out = []
        for c in crops:
            b = c.mean() / 255.0  # bright objects -> nucleus, dim -> debris
            v = b * basis[0] + (1 - b) * basis[2] + 0.3 * basis[1]
            out.append(v / np.linalg.norm(v))
        return np.asarray(out, np.float32)

    monkeypatch.setattr(scorer, "encode_text_numpy", enc_text)
    monkeypatch.setattr(scorer, "encode_crops_numpy", enc_crops)
    scorer.cache.clear()
    return scorer


def _bright_dim_image():
    labels = np.zeros((80, 80), np.int32)
    image = np.zeros((80, 80), np.uint8)
    values = {1: 250, 2: 30, 3: 200, 4: 60, 5: 230}
    for i, (oid, v) in enumerate(values.items()):
        r, c = 4 + 15 * i, 4 + 14 * i
        labels[r:r + 10, c:c + 10] = oid
        image[r:r + 10, c:c + 10] = v
    return image, labels


def test_selection_with_known_embeddings(scorer, monkeypatch):
    sc = _known_scorer(scorer, monkeypatch)
    image, labels = _bright_dim_image()
    params = CropParams(margin=0.0, background="keep", min_side=1)
    s = score_objects(sc, image, labels, "nucleus", ["background", "debris"],
                      crop_params=params, intensity_range=(0, 255))
    # default rule: the query is the best match
    assert sorted(select_objects(s).tolist()) == [1, 3, 5]
    assert select_objects(s, top_k=2).tolist() == [1, 5]  # best first
    assert select_objects(s, top_k=10).tolist() == [1, 5, 3, 4, 2]
    kept = select_objects(s, threshold=0.5)
    assert set(kept.tolist()) == set(s.ids[s.probability >= 0.5].tolist())
    assert select_objects(s, threshold=0.0, use="similarity").tolist() == [1, 5, 3, 4, 2]
    assert select_objects(s, threshold=2.0).size == 0
    d = score_objects(sc, image, labels, "debris", ["nucleus"], crop_params=params,
                      intensity_range=(0, 255))
    assert sorted(select_objects(d).tolist()) == [2, 4]
    with pytest.raises(ValueError, match="use must be"):
        select_objects(s, use="score")


def test_select_without_negatives_needs_threshold():
    s = TextScores(ids=np.array([1, 2]), similarity=np.array([0.2, 0.3], np.float32),
                   probability=np.ones(2, np.float32), query="x",
                   negative_similarity=np.zeros((2, 0), np.float32))
    with pytest.raises(ValueError, match="threshold or top_k"):
        select_objects(s)
    assert select_objects(s, top_k=1, use="similarity").tolist() == [2]


def test_segment_by_text_with_candidates(scorer, monkeypatch):
    sc = _known_scorer(scorer, monkeypatch)
    image, labels = _bright_dim_image()
    params = CropParams(margin=0.0, background="keep", min_side=1)
    out, s = segment_by_text(sc, image, "nucleus", candidates=labels,
                             negatives=["background", "debris"], crop_params=params)
    assert out.dtype == np.int32 and out.shape == labels.shape
    assert sorted(np.unique(out[out > 0]).tolist()) == [1, 3, 5]
    np.testing.assert_array_equal(out > 0, np.isin(labels, [1, 3, 5]))
    relabelled, _ = segment_by_text(sc, image, "nucleus", candidates=labels, top_k=2,
                                    negatives=["background", "debris"], crop_params=params,
                                    relabel=True)
    assert (relabelled == 1).sum() == (labels == 1).sum()  # best object gets 1
    assert np.array_equal(relabelled == 2, labels == 5)
    with pytest.raises(ValueError, match="candidate labels or a SAM model"):
        segment_by_text(sc, image, "nucleus")
    with pytest.raises(ValueError, match="empty"):
        segment_by_text(sc, image, "  ", candidates=labels)


def test_clicks_correct_a_selection():
    labels = square_labels(boxes=((0, 0, 10, 10), (20, 20, 30, 30), (40, 40, 50, 50)))
    assert object_at(labels, (5, 5)) == 1 and object_at(labels, (15, 15)) == 0
    assert object_at(labels, (-3, 5)) == 0 and object_at(labels, (2, 25, 25)) == 2
    sel = apply_clicks([1, 2], labels, [(45, 45), (25, 25), (15, 15)], [1, 0, 1])
    assert sel.tolist() == [1, 3]
    assert apply_clicks([], labels, [(5, 5)]).tolist() == [1]
    with pytest.raises(ValueError, match="point labels"):
        apply_clicks([1], labels, [(5, 5)], [1, 0])


def test_segment_by_text_automatic_candidates(scorer, monkeypatch):
    """Without candidates, the plane goes through napari_sam.workflows.automatic.segment_everything (a
    stand-in here, so this test does not depend on the automatic segmentation's quality)."""
    import types

    image, labels = _bright_dim_image()
    calls = []

    def segment_everything(model, image2d, intensity_range=None):
        calls.append((model, image2d.shape, intensity_range))
        return labels

    fake = types.ModuleType("napari_sam.workflows.automatic")
    fake.segment_everything = segment_everything
    monkeypatch.setitem(sys.modules, "napari_sam.workflows.automatic", fake)
    sc = _known_scorer(scorer, monkeypatch)
    params = CropParams(margin=0.0, background="keep", min_side=1)
    out, s = segment_by_text(sc, image, "nucleus", model="SAM", negatives=["debris"],
                             crop_params=params, intensity_range=(0, 255))
    assert calls == [("SAM", (80, 80), (0, 255))]
    assert sorted(np.unique(out[out > 0]).tolist()) == [1, 3, 5]
