"""SAM's training scheme on a tiny model: prompt simulation, losses, the loop, resume."""

import json

import numpy as np
import pytest
import torch

from napari_sam import training
from napari_sam.models.build import build_sam, tiny_config
from napari_sam.data.synthetic import make_nuclei_2d


def test_losses_prefer_the_right_mask():
    target = torch.zeros(1, 16, 16)
    target[:, 4:12, 4:12] = 1
    good = (target * 2 - 1) * 8
    bad = -good
    assert training.focal_loss(good, target) < training.focal_loss(bad, target)
    assert training.dice_loss(good, target) < 0.05 < 0.9 < training.dice_loss(bad, target)


def test_points_fall_inside_masks_and_error_points_get_the_right_label():
    g = torch.Generator().manual_seed(0)
    gt = torch.zeros(2, 20, 20, dtype=torch.bool)
    gt[0, 2:8, 2:8] = True
    gt[1, 10:18, 5:15] = True
    pts = training.sample_points_in_masks(gt, g)
    for i, (x, y) in enumerate(pts.long()):
        assert gt[i, y, x]
    pred = gt.clone()
    pred[0] = False  # object 0 missed entirely: false negative -> positive click
    pred[1, 0:5, 0:5] = True  # object 1 has only a false positive -> negative click
    p, lab = training.sample_error_points(pred, gt, g)
    assert lab.tolist() == [1, 0]
    assert gt[0, p[0, 1].long(), p[0, 0].long()]
    assert not gt[1, p[1, 1].long(), p[1, 0].long()]
    _, lab = training.sample_error_points(gt, gt, g)
    assert lab.tolist() == [-1, -1]  # nothing to correct: padding points


def test_noisy_boxes_stay_near_the_object_and_inside_the_image():
    g = torch.Generator().manual_seed(0)
    gt = torch.zeros(50, 64, 64, dtype=torch.bool)
    gt[:, 20:40, 10:30] = True
    boxes = training.noisy_boxes(gt, g, noise=0.1, noise_max=20)
    tight = torch.tensor([10.0, 20.0, 29.0, 39.0])
    assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
    assert boxes.min() >= 0 and boxes.max() <= 63
    assert (boxes - tight).abs().max() <= 20
    assert (boxes - tight).abs().mean() > 0.1  # noise is there


def _examples():
    image, labels = make_nuclei_2d((64, 64), seed=3)
    while True:
        yield image, labels


def test_a_few_steps_lower_the_loss_and_the_run_resumes(tmp_path):
    torch.manual_seed(0)
    model = build_sam(tiny_config())
    config = training.TrainConfig(steps=40, lr=3e-3, warmup_steps=2, log_every=5,
                                  checkpoint_every=20, objects_per_image=4, refine_rounds=2,
                                  focal_ramp_steps=0)
    out = tmp_path / "tiny.pt"
    log = training.train(model, _examples(), config, out)
    assert out.exists() and (tmp_path / "tiny.pt.state.pt").exists()
    losses = [e["loss"] for e in log]
    assert len(losses) == 8
    assert np.mean(losses[-2:]) < 0.7 * np.mean(losses[:2])
    assert not model.training

    # resume: a longer run continues from the saved state instead of starting over
    longer = training.TrainConfig(**{**config.__dict__, "steps": 45})
    log2 = training.train(model, _examples(), longer, out)
    assert log2[:8] == log and [e["step"] for e in log2[8:]] == [45]
    state = torch.load(tmp_path / "tiny.pt.state.pt", weights_only=True)
    assert state["step"] == 45 and json.loads(state["config"])["steps"] == 45


def test_should_stop_saves_the_state(tmp_path):
    model = build_sam(tiny_config())
    config = training.TrainConfig(steps=100, warmup_steps=1, checkpoint_every=1000)
    calls = []
    training.train(model, _examples(), config, tmp_path / "m.pt",
                   should_stop=lambda: len(calls) >= 3 or calls.append(1))
    state = torch.load(tmp_path / "m.pt.state.pt", weights_only=True)
    assert state["step"] == 4
    assert not (tmp_path / "m.pt").exists()  # unfinished: only the resumable state


def test_input_size_conversion_keeps_weights_and_runs():
    torch.manual_seed(0)
    config = tiny_config()
    model = build_sam(config)
    big = training.with_input_size(model, config, 128)
    assert big.img_size == 128
    assert big.image_encoder.pos_embed.shape[1:3] == (16, 16)
    back = training.with_input_size(big, config, 64)
    torch.testing.assert_close(
        back.mask_decoder.state_dict(), model.mask_decoder.state_dict()
    )
    with torch.no_grad():
        feats = big.image_encoder(big.preprocess(torch.rand(1, 3, 128, 128) * 255))
    assert feats.shape == (1, config.prompt_embed_dim, 16, 16)


def test_folder_examples_crops_planes_with_objects():
    labels = np.zeros((3, 40, 40), np.int32)
    labels[1, 5:15, 5:15] = 1
    image = np.random.default_rng(0).random((3, 40, 40))
    it = training.folder_examples([image], [labels], crop=32, seed=0)
    for _ in range(5):
        img, lab = next(it)
        assert img.shape == lab.shape == (32, 32) and lab.any()
    with pytest.raises(ValueError, match="no objects"):
        next(training.folder_examples([image], [np.zeros_like(labels)], crop=32))


def test_stack_slices_keep_only_objects_well_cut_by_the_slice(monkeypatch):
    from napari_sam.data import synthetic

    stacks = []
    original = synthetic.make_nuclei_3d

    def recording(shape, **kwargs):
        out = original(shape, **kwargs)
        stacks.append(out)
        return out

    monkeypatch.setattr(synthetic, "make_nuclei_3d", recording)
    it = training.synthetic_examples(seed=2, shape=(96, 96), stack_fraction=1.0)
    for _ in range(3):
        img, lab = next(it)
        volume_img, volume_lab = stacks[-1]
        z = next(k for k in range(len(volume_img)) if np.array_equal(volume_img[k], img))
        assert lab.shape == img.shape == (96, 96)
        largest = {int(o): max(int((p == o).sum()) for p in volume_lab)
                   for o in np.unique(volume_lab)[1:]}
        for oid, big in largest.items():
            here = int((volume_lab[z] == oid).sum())
            kept = bool((lab == oid).any())
            assert kept == (here >= 0.5 * big)  # dim caps of objects are left out
            if kept:
                np.testing.assert_array_equal(lab == oid, volume_lab[z] == oid)
    with pytest.raises(ValueError, match="stack_fraction"):
        next(training.synthetic_examples(stack_fraction=1.5))


def test_log_uniform_sizes_give_more_small_images(monkeypatch):
    from napari_sam.data import synthetic

    monkeypatch.setattr(synthetic, "make_nuclei_2d",
                        lambda shape, **kw: (np.zeros(shape), np.zeros(shape, np.int32)))
    sides = {}
    for size_log in (False, True):
        it = training.synthetic_examples(seed=0, size_range=(80, 1024), size_log=size_log)
        sides[size_log] = np.array([next(it)[0].shape for _ in range(400)]).ravel()
        assert sides[size_log].min() >= 80 and sides[size_log].max() <= 1024
    small = {k: np.mean(v < 200) for k, v in sides.items()}
    assert small[False] < 0.2 and small[True] > 0.3  # log: (log 200 - log 80) / log 12.8 = 0.36


def test_synthetic_examples_use_the_chosen_training_ranges(monkeypatch):
    from napari_sam.data import synthetic

    seen = []
    monkeypatch.setattr(synthetic, "make_nuclei_2d", lambda shape, settings, **kw: (
        seen.append(settings) or (np.zeros(shape), np.zeros(shape, np.int32))))
    for ranges in ("v0.4", "v0.5"):
        it = training.synthetic_examples(seed=0, shape=(32, 32), ranges=ranges)
        for _ in range(40):
            next(it)
    old, new = seen[:40], seen[40:]
    assert min(s.photons for s in old) >= 30.0
    assert min(s.photons for s in new) < 30.0
    with pytest.raises(ValueError, match="ranges"):
        next(training.synthetic_examples(seed=0, ranges="v0.3"))


def _disc_image(cy: int, cx: int, r: int) -> tuple[torch.Tensor, np.ndarray]:
    """A bright disc on a 64 x 64 image: pixels ``(3, 64, 64)`` in [0, 255] and its mask."""
    yy, xx = np.mgrid[:64, :64]
    mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
    return torch.from_numpy(np.stack([mask * 200.0 + 20] * 3)).float(), mask


@pytest.mark.parametrize("weight", [0.0, 0.1])
def test_other_outputs_weight_trains_all_three_outputs(weight):
    torch.manual_seed(0)
    model = build_sam(tiny_config())
    pixels, mask = _disc_image(30, 34, 12)
    config = training.TrainConfig(box_probability=0.0, refine_rounds=0, maskonly_rounds=0,
                                  focal_ramp_steps=0, other_outputs_weight=weight)
    loss, _ = training.train_step(model, pixels, torch.from_numpy(mask)[None], config,
                                  torch.Generator().manual_seed(0))
    loss.backward()
    # a lone point is ambiguous: the multimask outputs are the hypernetworks 1..3
    trained = [any(p.grad is not None and p.grad.abs().sum() > 0 for p in mlp.parameters())
               for mlp in model.mask_decoder.output_hypernetworks_mlps[1:]]
    # the paper's loss trains only the best output; the extra term reaches the other two
    assert sum(trained) == (3 if weight else 1)


def test_iou_head_target_is_the_users_mask_at_input_resolution():
    # a disc of radius 5 px is 2.5 cells wide in the decoder's 4x coarser frame: scored there,
    # a decoder's smooth logits look perfect, but the mask the user gets (bilinear upsampling,
    # threshold 0) is not: the IoU head must learn the latter
    yy, xx = np.mgrid[:64, :64]
    signed = 5 - np.hypot(yy - 30.5, xx - 30.5)
    disc = torch.from_numpy(signed >= 0)
    logits = torch.nn.functional.avg_pool2d(torch.from_numpy(signed).float()[None, None], 4)
    target = training.image_resolution_iou(logits, disc[None])
    up = torch.nn.functional.interpolate(logits, size=(64, 64), mode="bilinear") > 0
    assert target.shape == (1, 1)
    assert float(target) == pytest.approx(float(training.mask_iou(up[0, 0], disc)))
    low_truth = torch.nn.functional.avg_pool2d(disc[None, None].float(), 4)[0, 0] > 0.5
    low_iou = float(training.mask_iou(logits[0, 0] > 0, low_truth))
    assert low_iou == 1.0 and float(target) < 0.9


def test_prepare_example_keeps_a_random_subset_of_the_large_enough_objects():
    labels = np.zeros((40, 40), np.int32)
    for k in range(16):  # 16 objects of 2 x 2 px ...
        r, c = divmod(k, 4)
        labels[r * 10:r * 10 + 2, c * 10:c * 10 + 2] = k + 1
    labels[5:9, 5:9] = 99  # ... and one of 4 x 4
    image = labels.astype(np.float32)
    _, all_masks = training.prepare_example(image, labels, 40, min_object_pixels=4)
    assert len(all_masks) == 17
    _, big = training.prepare_example(image, labels, 40, min_object_pixels=5)
    assert len(big) == 1 and big[0].sum() == 16
    _, some = training.prepare_example(image, labels, 40, 4, max_objects=5,
                                       rng=np.random.default_rng(1))
    expected = np.sort(np.random.default_rng(1).choice(17, 5, replace=False))
    assert torch.equal(some, all_masks[torch.from_numpy(expected)])
    with pytest.raises(ValueError, match="rng"):
        training.prepare_example(image, labels, 40, 4, max_objects=5)


def test_prepare_example_small_object_bias_draws_small_objects_more_often():
    labels = np.zeros((64, 64), np.int32)
    for k in range(4):  # four objects of 2 x 2 px, four of 12 x 12
        labels[k * 16:k * 16 + 2, 0:2] = k + 1
        labels[k * 16:k * 16 + 12, 20:32] = k + 11
    image = labels.astype(np.float32)
    rng = np.random.default_rng(0)
    small = {False: 0, True: 0}
    for bias in (0.0, 1.0):
        for _ in range(200):
            _, masks = training.prepare_example(image, labels, 64, 4, max_objects=2, rng=rng,
                                                small_object_bias=bias)
            small[bool(bias)] += int((masks.flatten(1).sum(1) == 4).sum())
    # uniform: half of the drawn objects are small; area^-1: 36x likelier each, ~97 %
    assert 150 < small[False] < 250 and small[True] > 360


def test_iou_ranking_loss_teaches_the_order_and_ignores_ties():
    true = torch.tensor([[0.9, 0.4, 0.0], [0.7, 0.7, 0.1]])
    wrong = torch.tensor([[0.70, 0.80, 0.0], [0.5, 0.9, 0.0]], requires_grad=True)
    loss = training.iou_ranking_loss(wrong, true)
    assert loss.shape == (2,)
    assert float(loss[0].detach()) > 0.5 * 1.0  # margin 0.5 times a cross-entropy above 1
    assert float(loss[1].detach()) == 0.0  # a tie between the two best costs nothing
    loss.sum().backward()
    # the gradient raises the truly best candidate and lowers the one ranked above it
    assert wrong.grad[0, 0] < 0 < wrong.grad[0, 1]
    right = torch.tensor([[0.9, 0.4, 0.0]])
    assert float(training.iou_ranking_loss(right, true[:1])) < 0.01


def test_iou_rank_weight_reaches_the_iou_head_only_for_one_point():
    pixels, mask = _disc_image(30, 34, 12)
    grads = {}
    for weight, box in ((0.0, 0.0), (1.0, 0.0), (1.0, 1.0)):
        torch.manual_seed(0)
        model = build_sam(tiny_config())
        config = training.TrainConfig(box_probability=box, refine_rounds=0, maskonly_rounds=0,
                                      focal_ramp_steps=0, iou_rank_weight=weight)
        loss, _ = training.train_step(model, pixels, torch.from_numpy(mask)[None], config,
                                      torch.Generator().manual_seed(0))
        loss.backward()
        grads[weight, box] = torch.cat([p.grad.flatten() for p in
                                        model.mask_decoder.iou_prediction_head.parameters()])
    assert not torch.allclose(grads[1.0, 0.0], grads[0.0, 0.0])
    # a box is not ambiguous: the single output is trained and the ranking term is absent
    torch.manual_seed(0)
    model = build_sam(tiny_config())
    config = training.TrainConfig(box_probability=1.0, refine_rounds=0, maskonly_rounds=0,
                                  focal_ramp_steps=0)
    loss, _ = training.train_step(model, pixels, torch.from_numpy(mask)[None], config,
                                  torch.Generator().manual_seed(0))
    loss.backward()
    plain = torch.cat([p.grad.flatten() for p in
                       model.mask_decoder.iou_prediction_head.parameters()])
    assert torch.allclose(grads[1.0, 1.0], plain)


@pytest.mark.parametrize("with_mask", [False, True])
def test_windowed_training_decodes_as_the_viewer_does(with_mask):
    # train --window-fraction must show the decoder what the viewer's windowed decoding does
    from napari_sam.engine.decoding import decode_windows
    from napari_sam.engine.predictor import SamPredictor
    from napari_sam.training.promptable import _decode_all

    torch.manual_seed(0)
    model = build_sam(tiny_config()).eval()
    predictor = SamPredictor(model)
    emb = predictor.compute_embedding(np.random.default_rng(3).random((64, 64)), (0.0, 1.0))
    h = emb.features.shape[-1]
    points = np.array([[[10.0, 12.0]], [[40.0, 50.0]], [[60.0, 3.0]]])  # (row, col)
    labels = np.ones((3, 1), dtype=np.int64)
    logits = None
    if with_mask:
        logits = np.random.default_rng(4).normal(0, 5, (3, 1, 4 * h, 4 * h)).astype(np.float32)
    found = decode_windows(predictor, emb, points, labels, None, logits, True, points[:, 0],
                           h // 2, min_iou=2.0)  # nothing is decoded again on the whole grid
    xy = torch.from_numpy(emb.geometry.points_to_xy(points.reshape(-1, 2))).float()
    with torch.no_grad():
        low, iou = _decode_all(model, emb.features.float(), (xy[:, None], torch.ones(3, 1)),
                               None, None if logits is None else torch.from_numpy(logits),
                               (torch.from_numpy(found.origins // 4), h // 2))
    torch.testing.assert_close(low[:, 1:], found.full(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(iou[:, 1:], found.iou, rtol=1e-4, atol=1e-4)
    whole, _ = _decode_all(model, emb.features.float(), (xy[:, None], torch.ones(3, 1)), None,
                           None if logits is None else torch.from_numpy(logits))
    assert not torch.allclose(whole[:, 1:], low[:, 1:], atol=1e-3)  # the window matters


def test_object_windows_hold_their_objects():
    masks = torch.zeros(3, 256, 256, dtype=torch.bool)
    masks[0, 10:30, 200:240] = True
    masks[1, 120:140, 120:130] = True
    masks[2, 240:256, 0:8] = True
    g = torch.Generator().manual_seed(0)
    origins, side = training.object_windows(masks, (32, 32), 8, g)
    assert side == 8 and origins.shape == (3, 2)  # the largest object is 5 x 2.5 tokens
    for m, (r, c) in zip(masks, origins.tolist()):
        assert 0 <= r <= 32 - side and 0 <= c <= 32 - side
        inside = torch.zeros_like(m)
        inside[8 * r:8 * (r + side), 8 * c:8 * (c + side)] = True
        assert not (m & ~inside).any()
    masks[1, 0:200, 120:130] = True  # 25 tokens tall: the window grows to hold it
    assert training.object_windows(masks, (32, 32), 8, g)[1] == 27
    masks[1, 0:256] = True
    assert training.object_windows(masks, (32, 32), 8, g) is None  # the whole grid


def test_window_fraction_trains_through_the_windows():
    torch.manual_seed(0)
    model = build_sam(tiny_config())
    pixels, mask = _disc_image(20, 24, 6)
    config = training.TrainConfig(refine_rounds=1, maskonly_rounds=1, focal_ramp_steps=0,
                                  window_fraction=1.0, window_tokens=(3, 3))
    calls = []
    real = model.mask_decoder.predict_masks

    def spy(image_embeddings, image_pe, *args, **kwargs):
        calls.append(tuple(image_embeddings.shape[-2:]))
        return real(image_embeddings, image_pe, *args, **kwargs)

    model.mask_decoder.predict_masks = spy
    loss, stats = training.train_step(model, pixels, torch.from_numpy(mask)[None], config,
                                      torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and 0 <= stats["iou_last"] <= 1
    assert calls and all(c == (4, 4) for c in calls)  # 12 px object: 3 tokens grown to 4
    assert model.mask_decoder.iou_token.weight.grad.abs().sum() > 0


def test_interior_clicks_land_in_the_deep_interior():
    masks = torch.zeros(2, 64, 64, dtype=torch.bool)
    masks[0, 10:50, 10:50] = True  # a 40 px square: its deep interior is the central 20 x 20
    masks[1, 0:20, 40:64] = True  # touches the image border, which counts as background
    g = torch.Generator().manual_seed(0)
    inner = torch.stack([training.sample_points_in_masks(masks, g, 1.0) for _ in range(200)])
    x, y = inner[:, 0, 0], inner[:, 0, 1]
    assert ((x >= 19) & (x <= 40) & (y >= 19) & (y <= 40)).all()
    x1, y1 = inner[:, 1, 0], inner[:, 1, 1]
    assert (masks[1][y1.long(), x1.long()]).all() and (y1 >= 4).all() and (x1 <= 59).all()
    uniform = torch.stack([training.sample_points_in_masks(masks, g) for _ in range(200)])
    ux, uy = uniform[:, 0, 0], uniform[:, 0, 1]
    assert ((ux < 19) | (ux > 40) | (uy < 19) | (uy > 40)).float().mean() > 0.5
    # the default draws the same points as before the option existed
    a = training.sample_points_in_masks(masks, torch.Generator().manual_seed(5))
    b = training.sample_points_in_masks(masks, torch.Generator().manual_seed(5), 0.0)
    assert torch.equal(a, b)


def test_real_crop_range_shows_the_objects_at_several_scales():
    image = np.zeros((300, 400), np.float32)
    labels = np.zeros((300, 400), np.int32)
    labels[100:140, 100:140] = 1
    labels[200:220, 300:330] = 2
    sides = set()
    stream = training.folder_examples([image], [labels], 999, seed=0, crop_range=(64, 256))
    for _ in range(60):
        img, lab = next(stream)
        assert img.shape == lab.shape and lab.any()
        assert max(lab.shape) <= 256 and min(lab.shape) >= 64
        sides.add(img.shape[0])
    assert len(sides) > 10 and min(sides) < 100 and max(sides) > 180
