"""The mask refiner: crops, paste-back, the predictor's use of it, loading and training."""

import numpy as np
import pytest
import tifffile
import torch

from napari_sam import SamPredictor
from napari_sam.models.build import build_sam, tiny_config
from napari_sam.models.checkpoint import CheckpointError, infer_model_type, load_weights
from napari_sam.modeling import MaskRefiner
from napari_sam.engine.refine import mask_crop_box, refine_logits, slice_gray
from napari_sam.training.refiner import (
    RefinerExamples,
    attach_refiner,
    simulate_refiner_examples,
    train_refiner,
)


def _disc_logits(shape=(120, 100), centre=(50, 40), radius=10.0):
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    d = np.hypot(rr - centre[0], cc - centre[1])
    return torch.from_numpy((radius - d).astype(np.float32))  # > 0 inside the disc


def _shifted(delta: float) -> MaskRefiner:
    """A refiner whose correction is ``delta`` everywhere."""
    ref = MaskRefiner()
    with torch.no_grad():
        ref.out.bias.fill_(delta)
    return ref.eval()


def test_crop_box_holds_the_mask_with_a_margin_and_stays_in_the_image():
    logits = _disc_logits()
    r0, c0, r1, c1 = mask_crop_box(logits)
    near = np.argwhere(logits.numpy() > -2.0)
    assert r0 < near[:, 0].min() and r1 > near[:, 0].max() + 1
    assert c0 < near[:, 1].min() and c1 > near[:, 1].max() + 1
    assert abs((r1 - r0) - (c1 - c0)) <= 1  # square
    edge = mask_crop_box(_disc_logits(centre=(2, 3)))
    assert edge[0] == 0 and edge[1] == 0
    assert mask_crop_box(torch.full((30, 30), -5.0)) is None


def test_a_fresh_refiner_changes_nothing():
    logits = torch.stack([_disc_logits(), _disc_logits(centre=(80, 70), radius=4)])
    gray = np.random.default_rng(0).random((120, 100)).astype(np.float32)
    out = refine_logits(MaskRefiner().eval(), gray, logits)
    assert torch.equal(out, logits)


def test_the_correction_is_added_inside_each_crop_only():
    logits = torch.stack([_disc_logits(), torch.full((120, 100), -8.0)])
    out = refine_logits(_shifted(3.0), np.zeros((120, 100), np.float32), logits)
    r0, c0, r1, c1 = mask_crop_box(logits[0])
    inside = torch.zeros((120, 100), dtype=torch.bool)
    inside[r0:r1, c0:c1] = True
    assert torch.allclose(out[0][inside], logits[0][inside] + 3.0, atol=1e-5)
    assert torch.equal(out[0][~inside], logits[0][~inside])
    assert torch.equal(out[1], logits[1])  # no pixel near a mask: no crop
    with pytest.raises(ValueError, match="differ in shape"):
        refine_logits(_shifted(1.0), np.zeros((10, 10), np.float32), logits)


def test_slice_gray_scales_like_the_encoder_input():
    image = np.array([[0, 50], [100, 200]], dtype=np.uint16)
    gray = slice_gray(image, (0, 100))
    assert gray.dtype == np.float32
    np.testing.assert_allclose(gray, [[0, 0.5], [1, 1]])


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return build_sam(tiny_config())


def _image():
    img = np.zeros((64, 64), np.float32)
    img[20:40, 24:44] = 1.0
    return img


def test_the_predictor_refines_when_it_has_the_slice(tiny):
    image = _image()
    plain = SamPredictor(tiny)
    plain.set_image(image)
    base, _, _ = plain.predict([[30, 34]], [1], return_logits=True)
    attach_refiner(tiny, _shifted(2.0))
    pred = SamPredictor(tiny)
    pred.set_image(image)
    assert pred.refines
    refined, _, low = pred.predict([[30, 34]], [1], return_logits=True)
    changed = ~np.isclose(refined, base, atol=1e-5)
    assert changed.any()
    np.testing.assert_allclose(refined[changed], base[changed] + 2.0, atol=1e-4)
    # the low-res logits (the next call's mask prompt) are the decoder's, unrefined
    _, _, low_plain = plain.predict([[30, 34]], [1])
    np.testing.assert_allclose(low, low_plain, atol=1e-6)

    off = SamPredictor(tiny, refine=False)
    off.set_image(image)
    assert not off.refines
    np.testing.assert_allclose(off.predict([[30, 34]], [1], return_logits=True)[0], base,
                               atol=1e-5)
    # an embedding without its pixels decodes unrefined; with them, refined
    emb = pred.embedding
    pred.set_embedding(emb)
    assert not pred.refines
    np.testing.assert_allclose(pred.predict([[30, 34]], [1], return_logits=True)[0], base,
                               atol=1e-5)
    pred.set_embedding(emb, image)
    np.testing.assert_allclose(pred.predict([[30, 34]], [1], return_logits=True)[0], refined,
                               atol=1e-5)
    with pytest.raises(ValueError, match="given for an embedding"):
        pred.set_embedding(emb, image[:10])


def test_refiner_weights_travel_with_the_checkpoint(tiny):
    attach_refiner(tiny, _shifted(1.5))
    state = tiny.state_dict()
    assert any(k.startswith("mask_refiner.") for k in state)
    # the model type is recognised without the refiner's keys
    assert infer_model_type(state, {"tiny": tiny_config()}) == "tiny"
    fresh = build_sam(tiny_config())
    assert fresh.mask_refiner is None
    load_weights(fresh, state, "tiny")
    assert isinstance(fresh.mask_refiner, MaskRefiner)
    assert float(fresh.mask_refiner.out.bias.detach()) == pytest.approx(1.5)
    bad = dict(state)
    bad["mask_refiner.out.weight"] = torch.zeros(1, 8, 3, 3)
    with pytest.raises(CheckpointError, match="mask refiner"):
        load_weights(build_sam(tiny_config()), bad, "tiny")


def _toy_examples(n=120, size=16, seed=0):
    """Crops whose true mask is the bright square and whose logits are a blurred, too large
    version of it: a refiner can learn to sharpen them from the gray channels."""
    rng = np.random.default_rng(seed)
    crops = np.zeros((n, 3, size, size), np.float32)
    targets = np.zeros((n, size, size), np.float32)
    rr, cc = np.mgrid[:size, :size]
    for i in range(n):
        r, c, h = rng.integers(3, 6), rng.integers(3, 6), rng.integers(4, 8)
        sq = (rr >= r) & (rr < r + h) & (cc >= c) & (cc < c + h)
        targets[i] = sq
        crops[i, 0] = crops[i, 1] = sq * 0.8 + rng.normal(0, 0.05, (size, size))
        grown = (rr >= r - 2) & (rr < r + h + 2) & (cc >= c - 2) & (cc < c + h + 2)
        crops[i, 2] = np.where(grown, 0.5, -0.5)
    return RefinerExamples(crops.astype(np.float16), np.zeros(n, np.float32),
                           targets.astype(np.float16), np.zeros(n, np.float32))


def test_training_improves_the_masks_and_resumes(tmp_path):
    data = _toy_examples()
    torch.manual_seed(0)
    ref = MaskRefiner(width=8, dilations=(1, 2), crop_size=16)
    state = tmp_path / "ref.state.pt"
    log = train_refiner(ref, data, epochs=2, lr=1e-2, batch_size=16, seed=1, state_path=state)
    assert [e["epoch"] for e in log] == [1, 2]
    log = train_refiner(ref, data, epochs=12, lr=1e-2, batch_size=16, seed=1, state_path=state)
    assert [e["epoch"] for e in log] == list(range(1, 13))  # resumed after epoch 2
    assert log[-1]["loss"] < log[0]["loss"]
    assert log[-1]["val_iou"] > log[-1]["val_iou_before"] + 0.1
    with pytest.raises(ValueError, match="too few"):
        train_refiner(ref, _toy_examples(n=5), epochs=1)


def test_simulated_examples_come_from_the_models_masks(tiny):
    from napari_sam.data.synthetic import make_nuclei_2d

    def stream():
        seed = 0
        while True:
            yield make_nuclei_2d((96, 96), seed=seed)
            seed += 1

    data = simulate_refiner_examples(tiny, stream(), n_images=2, seed=0, objects_per_image=3,
                                     crop_size=16)
    assert 1 <= len(data) <= 6
    assert data.crops.shape == (len(data), 3, 16, 16) and data.targets.shape == (len(data), 16, 16)
    assert ((data.targets >= 0) & (data.targets <= 1)).all()
    assert ((data.base_iou >= 0) & (data.base_iou <= 1)).all()


def test_cli_trains_a_refiner_and_reports_bad_input(tmp_path, tiny, monkeypatch, capsys):
    from napari_sam.models import build as build_mod
    from napari_sam.cli import main
    from napari_sam.data.synthetic import make_nuclei_2d

    monkeypatch.setattr(build_mod, "build_model", lambda name, device=None: tiny)
    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    for i in range(2):
        image, labels = make_nuclei_2d((96, 96), seed=i)
        tifffile.imwrite(tmp_path / "img" / f"{i}.tif", image)
        tifffile.imwrite(tmp_path / "lab" / f"{i}.tif", labels)
    out = tmp_path / "refined.pt"
    args = ["train-refiner", "--images", str(tmp_path / "img"), "--labels",
            str(tmp_path / "lab"), "--n-images", "6", "--epochs", "1", "--batch-size", "4",
            "--out", str(out)]
    assert main(args) == 0
    state = torch.load(out, weights_only=True)
    assert any(k.startswith("mask_refiner.") for k in state)
    assert (tmp_path / "refined.pt.examples.npz").exists()
    capsys.readouterr()
    assert main(args) == 0  # resumes: the examples are read back, not simulated again
    assert "examples from" in capsys.readouterr().out

    assert main([*args[:-1], str(tmp_path / "nodir" / "x.pt")]) == 2
    assert "output directory does not exist" in capsys.readouterr().err
    assert main(["train-refiner", "--images", str(tmp_path / "img"), "--out", str(out)]) == 2
    assert "--images needs --labels" in capsys.readouterr().err
    assert main([*args, "--epochs", "0"]) == 2
    assert "--epochs must be >= 1" in capsys.readouterr().err


def test_cli_no_refine_loads_the_model_without_its_refiner():
    from napari_sam.cli import _load_model, build_parser

    parser = build_parser()
    for command in (["evaluate", "a.tif", "b.tif"], ["automatic", "a.tif", "--out", "b.tif"],
                    ["segment", "a.tif", "--out", "b.tif"]):
        assert _load_model(parser.parse_args(command)).mask_refiner is not None
        assert _load_model(parser.parse_args([*command, "--no-refine"])).mask_refiner is None
