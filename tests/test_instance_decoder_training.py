"""Training an instance-segmentation decoder for a frozen model (``napari-sam train-decoder``):
the targets (checked against torch_em's ``PerObjectDistanceTransform`` when it is installed), the
loss, a few training steps, the checkpoint, resuming, and bad input. Tiny random-weight models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch

from napari_sam import cli
from napari_sam.modeling.instance_decoder import InstanceDecoder
from napari_sam.models.build import MODEL_CONFIGS, build_model, build_sam, tiny_config
from napari_sam.training import instance_decoder as idt


def _disc(size=41, radius=15):
    yy, xx = np.mgrid[:size, :size]
    c = size // 2
    return ((yy - c) ** 2 + (xx - c) ** 2 <= radius**2).astype(np.int32), c


def _blobs(seed, shape=(64, 80), n=6):
    """Label image of a few discs, some touching (later ones painted over earlier ones)."""
    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, np.int32)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for k in range(1, n + 1):
        cy, cx = rng.integers(8, shape[0] - 8), rng.integers(8, shape[1] - 8)
        r = rng.integers(4, 9)
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k
    return lab


def test_targets_of_a_disc():
    lab, c = _disc()
    t = idt.decoder_targets(lab)
    assert t.shape == (3, *lab.shape) and t.dtype == np.float32
    inside = lab > 0
    np.testing.assert_array_equal(t[0], inside)
    assert np.all(t[1:, ~inside] == 1.0)  # outside: both distances are 1
    assert t[1, c, c] == 0 and t[2, c, c] == 0  # centre and deepest pixel
    # centre distance: radius over the largest radius in the disc, linear along a ray
    rmax = np.sqrt(((np.argwhere(inside) - c) ** 2).sum(1)).max()
    for r in (3, 7, 12):
        assert t[1, c, c + r] == pytest.approx(r / rmax, abs=1e-5)
    # boundary distance: 1 on the inner boundary, falling towards the centre
    assert t[2, c, c + 15] == pytest.approx(1.0)
    ray = t[2, c, c:c + 15]
    assert np.all(np.diff(ray) > 0)
    assert t[1, inside].max() == pytest.approx(1.0, abs=1e-5)


def test_touching_objects_are_normalised_separately():
    lab = np.zeros((20, 40), np.int32)
    lab[2:18, 2:12] = 1  # small
    lab[2:18, 12:38] = 2  # large, touching it
    t = idt.decoder_targets(lab)
    for k in (1, 2):
        m = lab == k
        assert t[1, m].min() == pytest.approx(0, abs=1e-6)
        assert t[1, m].max() == pytest.approx(1, abs=1e-5)
        assert t[2, m].max() == pytest.approx(1, abs=1e-5)
    # the pixels on either side of the contact are boundary pixels of their own object
    assert t[2, 10, 11] == pytest.approx(1) and t[2, 10, 12] == pytest.approx(1)
    # two pieces of one label are two objects
    split = lab.copy()
    split[split == 2] = 1
    split[:, 12:14] = 0
    t2 = idt.decoder_targets(split)
    assert t2[1, split > 0].max() == pytest.approx(1, abs=1e-5)
    assert t2[1, 10, 6] < 0.2 and t2[1, 10, 25] < 0.2  # each piece has its own centre


def test_targets_match_torch_em():
    label = pytest.importorskip("torch_em.transform.label")
    for seed in range(3):
        lab = _blobs(seed)
        ref = label.PerObjectDistanceTransform(distances=True, boundary_distances=True,
                                               directed_distances=False, foreground=True)(lab)
        np.testing.assert_allclose(idt.decoder_targets(lab), ref, atol=1e-5)


def test_targets_reject_bad_labels():
    with pytest.raises(ValueError, match="integer"):
        idt.decoder_targets(np.zeros((4, 4), np.float32))


def test_loss_is_zero_for_the_targets_and_masks_distances_in_background():
    t = torch.from_numpy(idt.decoder_targets(_blobs(0)))[None]
    assert float(idt.decoder_loss(t, t)) == pytest.approx(0.0, abs=1e-6)
    wrong_bg = t.clone()
    wrong_bg[:, 1:][t[:, :1].expand(-1, 2, -1, -1) == 0] = 0.3  # distances outside: ignored
    assert float(idt.decoder_loss(wrong_bg, t)) == pytest.approx(0.0, abs=1e-6)
    worse = t.clone()
    worse[:, 0] = 1 - t[:, 0]
    assert float(idt.decoder_loss(worse, t)) > 0.9
    with pytest.raises(ValueError, match="B, 3, H, W"):
        idt.decoder_loss(t[:, :2], t[:, :2])


def test_upscale_8_decoder_layout_round_trips():
    dec = InstanceDecoder(32, 3, 4, upscale=8).eval()
    assert not any(k.startswith(("deconv4.", "deconv_out.")) for k in dec.state_dict())
    assert dec(torch.randn(1, 32, 8, 8)).shape == (1, 3, 64, 64)
    again = InstanceDecoder.from_state_dict(dec.state_dict())
    assert again.upscale == 8
    assert InstanceDecoder.from_state_dict(InstanceDecoder(32, 3, 4).state_dict()).upscale == 16
    with pytest.raises(ValueError, match="upscale"):
        InstanceDecoder(32, upscale=4)


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    pairs = []
    for k in range(n):
        lab = _blobs(seed + k)
        img = (200 + 2000 * (lab > 0) + rng.normal(0, 50, lab.shape)).astype(np.uint16)
        pairs.append((img, lab))
    return pairs


def test_views_targets_and_a_few_steps_lower_the_loss():
    torch.manual_seed(0)
    model = build_sam(tiny_config()).eval()
    pairs = _images(4)
    data = idt.decoder_examples(model, [p[0] for p in pairs], [p[1] for p in pairs])
    # 4 images x (whole + 4 crops) + one mosaic; 8 x 8 embeddings, targets at the 64 px input
    assert data.embeddings.shape == (21, 32, 8, 8) and data.targets.shape == (21, 3, 64, 64)
    assert data.embeddings.dtype == torch.float16 and data.targets.dtype == torch.uint8
    # the whole 64 x 80 image fills 51 x 64 of the input; the padding is background
    assert data.targets[0, 0, 51:].sum() == 0 and data.targets[0, 0, :51].sum() > 0
    assert torch.all(data.targets[0, 1:, 51:] == 255)
    decoder = idt.attach_instance_decoder(model, initial_features=4)
    assert model.instance_decoder is decoder

    def loss_now():
        decoder.eval()
        with torch.no_grad():
            return float(idt.decoder_loss(decoder(data.embeddings.float()),
                                          data.targets.float() / 255))

    before = loss_now()
    log = idt.train_instance_decoder(decoder, data, steps=40, lr=3e-3, crop=None,
                                     log_every=20)
    assert [e["step"] for e in log] == [20, 40]
    assert loss_now() < before - 0.05


def _tiny_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setitem(MODEL_CONFIGS, "tiny", tiny_config())
    torch.manual_seed(0)
    path = tmp_path / "tiny.pt"
    torch.save(build_sam(tiny_config()).state_dict(), path)
    img_dir, lab_dir = tmp_path / "images", tmp_path / "labels"
    img_dir.mkdir()
    lab_dir.mkdir()
    for k, (img, lab) in enumerate(_images(5)):
        tifffile.imwrite(img_dir / f"im{k}.tif", img)
        tifffile.imwrite(lab_dir / f"im{k}.tif", lab.astype(np.uint16))
    return path, img_dir, lab_dir


def test_cli_writes_a_loadable_decoder_and_resumes(tmp_path, monkeypatch, capsys):
    model, img_dir, lab_dir = _tiny_checkpoint(tmp_path, monkeypatch)
    out, log = tmp_path / "dec.pt", tmp_path / "log.jsonl"
    args = ["train-decoder", "--images", str(img_dir), "--labels", str(lab_dir),
            "--holdout-every", "4", "--model", str(model), "--out", str(out),
            "--initial-features", "4", "--crop", "4", "--threads", "1", "--log", str(log)]
    assert cli.main([*args, "--steps", "3"]) == 0
    assert "3 images" in capsys.readouterr().out  # 5 images, every 4th held out
    state = torch.load(str(out) + ".state.pt", weights_only=True)
    assert state["step"] == 3
    assert cli.main([*args, "--steps", "5"]) == 0  # resumes at step 3
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [3, 5]
    saved = torch.load(out, weights_only=True)
    assert all(v.dtype == torch.float16 for k, v in saved.items()
               if k.startswith("instance_decoder.") and v.is_floating_point())
    loaded = build_model(str(out), device="cpu")
    assert isinstance(loaded.instance_decoder, InstanceDecoder)
    assert loaded.instance_decoder.upscale == 8
    seg = tmp_path / "seg.tif"
    assert cli.main(["automatic", str(img_dir / "im1.tif"), "--model", str(out),
                     "--mode", "decoder", "--out", str(seg)]) == 0
    assert tifffile.imread(seg).shape == (64, 80)
    assert cli.main(["automatic", str(img_dir / "im1.tif"), "--model", str(out),
                     "--mode", "decoder", "--zoom-below-radius", "100", "--out", str(seg)]) == 0


@pytest.mark.parametrize("extra, message", [
    (["--steps", "0"], "--steps must be >= 1"),
    (["--holdout-every", "1"], "--holdout-every"),
    (["--labels", "MISSING"], "not a folder"),
])
def test_cli_bad_input_exits_2_with_one_line(tmp_path, monkeypatch, capsys, extra, message):
    model, img_dir, lab_dir = _tiny_checkpoint(tmp_path, monkeypatch)
    out = tmp_path / "dec.pt"
    args = ["train-decoder", "--images", str(img_dir), "--labels", str(lab_dir),
            "--model", str(model), "--out", str(out)]
    if extra[0] == "--labels":
        args[4] = str(tmp_path / extra[1])
        extra = []
    assert cli.main([*args, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not out.exists()


def test_zoom_decodes_the_four_crops_stitched_at_the_overlap_middles(monkeypatch):
    from napari_sam.workflows import instance_decoder as workflow

    torch.manual_seed(0)
    model = build_sam(tiny_config()).eval()
    idt.attach_instance_decoder(model, initial_features=4).eval()
    yy, xx = np.mgrid[:128, :160]
    image = np.zeros((128, 160), np.float32)
    for cy in range(10, 128, 16):
        for cx in range(10, 160, 16):
            image[(yy - cy) ** 2 + (xx - cx) ** 2 <= 9] = 1.0  # radius 3: 1.2 px at 64 px
    calls = []

    def fake(model, emb):
        calls.append(tuple(emb.original_size))
        return np.full((3, *emb.original_size), len(calls) - 1, np.float32)

    monkeypatch.setattr(workflow, "decoder_outputs", fake)
    maps = workflow.slice_outputs(model, image, workflow.DecoderParams(zoom_below_radius=10))
    boxes = workflow.zoom_boxes((128, 160))
    assert boxes == [(0, 0, 74, 92), (0, 68, 74, 160), (54, 0, 128, 92), (54, 68, 128, 160)]
    assert calls == [(74, 92)] * 4 and maps.shape == (3, 128, 160)
    # each pixel from the crop whose half of the overlap it lies in (rows 54..73: split at 64)
    assert maps[0, 63, 79] == 0 and maps[0, 64, 79] == 2 and maps[0, 63, 80] == 1
    assert maps[0, 127, 159] == 3
    calls.clear()
    workflow.slice_outputs(model, image, workflow.DecoderParams())
    assert calls == [(74, 92)] * 4  # the default for the project's own decoders (upscale 8)
    calls.clear()
    no_zoom = workflow.DecoderParams(zoom_below_radius=0)
    assert workflow.slice_outputs(model, image, no_zoom).shape == (3, 128, 160)
    assert calls == [(128, 160)]  # zoom off: the whole slice
    calls.clear()
    idt.attach_instance_decoder(model, initial_features=4, upscale=16)  # micro-sam's layout
    workflow.slice_outputs(model, image, workflow.DecoderParams())
    assert calls == [(128, 160)]  # micro-sam's default for its decoders: never zoomed
    calls.clear()
    workflow.slice_outputs(model, image[:60, :60], workflow.DecoderParams(zoom_below_radius=10))
    assert calls == [(60, 60)]  # smaller than the model input: never zoomed


def test_cli_refuses_to_overwrite_its_model(tmp_path, monkeypatch, capsys):
    model, img_dir, lab_dir = _tiny_checkpoint(tmp_path, monkeypatch)
    before = model.read_bytes()
    assert cli.main(["train-decoder", "--images", str(img_dir), "--labels", str(lab_dir),
                     "--model", str(model), "--out", str(model)]) == 2
    err = capsys.readouterr().err.strip()
    assert "same file as the --model" in err and "\n" not in err
    assert model.read_bytes() == before
