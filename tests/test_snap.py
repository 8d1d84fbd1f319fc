"""Masks snapped to the instance decoder's objects (napari_sam.workflows.snap): the rule on
hand-made label images, the predictor wrapper, the evaluation's use of it, ``evaluate --snap``,
and the default model on a real validation image."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_sam import cli
from napari_sam.engine.masks import mask_iou
from napari_sam.engine.predictor import SamPredictor
from napari_sam.evaluation.interactive import evaluate_image
from napari_sam.modeling.instance_decoder import InstanceDecoder
from napari_sam.models.build import build_model, build_sam, tiny_config
from napari_sam.workflows import snap as snap_module
from napari_sam.workflows.snap import SnapPredictor, snap_to_instances

DATA = Path(__file__).parent / "data"


def _two_touching() -> np.ndarray:
    """Instances 1 (rows 10-29, cols 10-29) and 2 (rows 10-29, cols 30-49), touching."""
    inst = np.zeros((40, 60), np.int32)
    inst[10:30, 10:30] = 1
    inst[10:30, 30:50] = 2
    return inst


def test_a_mask_leaking_into_its_neighbour_snaps_to_its_instance():
    inst = _two_touching()
    mask = np.zeros_like(inst, bool)
    mask[11:29, 9:34] = True  # most of 1, a margin into the background, a strip of 2
    out = snap_to_instances(mask, inst, points=[[20, 20]], labels=[1])
    np.testing.assert_array_equal(out, inst == 1)


def test_points_decide_membership_and_corrective_clicks_act_locally():
    inst = _two_touching()
    inst[30:35, 20:25] = 3  # a bleb below instance 1
    # a negative click on the bleb removes it, though the mask covers it whole
    swallowed = np.isin(inst, [1, 3])
    out = snap_to_instances(swallowed, inst, points=[[20, 20], [32, 22]], labels=[1, 0])
    np.testing.assert_array_equal(out, inst == 1)
    # a positive click on instance 2, which the mask covers only in part (40 %), adds it
    partial = (inst == 1) | ((inst == 2) & (np.arange(60) < 38)[None])
    np.testing.assert_array_equal(snap_to_instances(partial, inst, [[20, 20]], [1]), inst == 1)
    out = snap_to_instances(partial, inst, points=[[20, 20], [20, 45]], labels=[1, 1])
    np.testing.assert_array_equal(out, np.isin(inst, [1, 2]))
    # a positive corrective click on a piece of SAM's mask outside every instance keeps it
    mask = inst == 1
    mask[2:10, 15:20] = True  # a bulge above instance 1 (background for the instances)
    out = snap_to_instances(mask, inst, points=[[20, 20], [6, 17]], labels=[1, 1])
    np.testing.assert_array_equal(out, mask)
    # without that click the bulge goes: the instance's outline wins
    np.testing.assert_array_equal(snap_to_instances(mask, inst, [[20, 20]], [1]), inst == 1)


def test_instances_that_disagree_with_the_mask_leave_it_unchanged():
    inst = np.zeros((40, 60), np.int32)
    inst[10:30, 10:50] = 1  # two nuclei merged into one instance
    mask = np.zeros_like(inst, bool)
    mask[10:30, 10:30] = True  # SAM drew the left one
    # the instance is half covered: it belongs, but its union is far from the mask (IoU 0.5)
    np.testing.assert_array_equal(snap_to_instances(mask, inst, [[20, 20]], [1]), mask)
    np.testing.assert_array_equal(snap_to_instances(mask, np.zeros_like(inst)), mask)
    empty = np.zeros_like(mask)
    np.testing.assert_array_equal(snap_to_instances(empty, inst), empty)
    with pytest.raises(ValueError, match="shape"):
        snap_to_instances(mask, inst[:-1])


def test_a_box_still_bounds_the_snapped_mask():
    inst = _two_touching()
    mask = inst == 2
    box = [10, 30, 29, 44]  # cuts the right part of instance 2 off
    out = snap_to_instances(mask, inst, box=box)
    assert out.any() and not out[:, 48:].any()


def _tiny_with_decoder() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_sam(tiny_config())
    model.instance_decoder = InstanceDecoder(embed_dim=32, initial_features=8).eval()
    return model


def test_the_wrapper_snaps_segment_and_makes_instances_once_per_slice(monkeypatch):
    calls = []
    inst = _two_touching()

    def fake_instances(model, image, params=None, intensity_range=None, embedding=None):
        calls.append(image.shape)
        return inst

    monkeypatch.setattr(snap_module, "segment_everything", fake_instances)
    predictor = SnapPredictor(SamPredictor(_tiny_with_decoder()))
    with pytest.raises(RuntimeError, match="set_image"):
        _ = predictor.instances
    image = np.random.default_rng(0).random(inst.shape).astype(np.float32)
    predictor.set_image(image)
    assert predictor.is_image_set  # the wrapped predictor's attributes
    raw, _, logits = predictor.predictor.segment(points=[[20, 20]], labels=[1])
    mask, _, logits2 = predictor.segment(points=[[20, 20]], labels=[1])
    np.testing.assert_array_equal(logits, logits2)  # SAM's logits, to pass back
    np.testing.assert_array_equal(mask, snap_to_instances(raw, inst, [[20, 20]], [1]))
    predictor.segment(box=[10, 10, 29, 29])
    assert calls == [inst.shape]  # once for the slice
    predictor.set_image(image)
    predictor.segment(points=[[20, 20]], labels=[1])
    assert len(calls) == 2  # again for a new slice
    emb = predictor.embedding
    predictor.set_embedding(emb)  # a slice without its pixels: no snapping
    with pytest.raises(RuntimeError, match="pixels"):
        predictor.segment(points=[[20, 20]], labels=[1])
    predictor.set_embedding(emb, image)
    predictor.segment(points=[[20, 20]], labels=[1])
    assert len(calls) == 3
    with pytest.raises(ValueError, match="instance decoder"):
        SnapPredictor(SamPredictor(build_sam(tiny_config())))


def test_the_evaluation_scores_what_the_predictor_finishes():
    # a wrapper whose finished masks are the ground truth scores 1.0 at every click, batched
    # (a ZoomPredictor inside) and object by object
    from napari_sam.engine.zoom import ZoomPredictor
    from napari_sam.evaluation.interactive import ground_truth_objects

    labels = _two_touching()
    image = (labels > 0).astype(np.float32)

    class Oracle(SnapPredictor):
        def finish_mask(self, mask, points=None, labels_=None, box=None):
            if points is None:
                return labels == 1 if box[1] < 30 else labels == 2
            return labels == labels[int(points[0][0]), int(points[0][1])]

    model = _tiny_with_decoder()
    for inner, batched in ((ZoomPredictor(model, zoom=1.0), True), (SamPredictor(model), False)):
        for prompt in ("point", "box"):
            result = evaluate_image(Oracle(inner), image, labels, prompt=prompt, clicks=2,
                                    batched=batched)
            assert result["miou"] == [1.0, 1.0], (prompt, batched)
            assert result["protocol"]["masks"] == (
                "prompted_pieces+clicks_followed+changed_near_click+edge_clicks_move_edge+Oracle")
    assert len(ground_truth_objects(labels)) == 2


def test_evaluate_snap_needs_an_instance_decoder(tmp_path, cli_model, capsys):
    labels = _two_touching()
    tifffile.imwrite(tmp_path / "img.tif", (labels > 0).astype(np.float32))
    tifffile.imwrite(tmp_path / "lab.tif", labels)
    code = cli.main(["evaluate", str(tmp_path / "img.tif"), str(tmp_path / "lab.tif"), "--snap"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--snap" in err and "instance decoder" in err and len(err.strip().splitlines()) == 1


def test_snapping_the_default_model_on_a_real_image_it_never_saw():
    # the largest nuclei away from the border, from their boxes: snapping to the instance
    # decoder's objects keeps or improves every IoU on average (validation split, BBBC039)
    image = tifffile.imread(DATA / "bbbc039_val_image.tif")
    labels = tifffile.imread(DATA / "bbbc039_val_labels.tif")
    predictor = SnapPredictor(SamPredictor(build_model("default")))
    predictor.set_image(image)
    ids, areas = np.unique(labels[labels > 0], return_counts=True)
    border = set(np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])))
    chosen = [i for i in ids[np.argsort(areas)[::-1]] if i not in border][:16]
    raw_iou, snapped_iou = [], []
    for oid in chosen:
        truth = labels == oid
        rows, cols = np.nonzero(truth)
        box = [rows.min(), cols.min(), rows.max(), cols.max()]
        raw, _, _ = predictor.predictor.segment(box=box)
        snapped, _, _ = predictor.segment(box=box)
        raw_iou.append(mask_iou(raw, truth))
        snapped_iou.append(mask_iou(snapped, truth))
    assert np.mean(snapped_iou) >= np.mean(raw_iou) and np.mean(snapped_iou) > 0.85, (
        raw_iou, snapped_iou)
    assert sum(s != r for s, r in zip(snapped_iou, raw_iou)) >= len(chosen) // 4  # it acts


def test_the_slice_snapper_keeps_the_objects_of_its_last_slices(monkeypatch):
    from napari_sam.workflows.snap import SliceSnapper

    inst = _two_touching()
    made = []

    def fake_instances(model, image, params=None, intensity_range=None, embedding=None):
        made.append(embedding)
        return inst

    monkeypatch.setattr(snap_module, "segment_everything", fake_instances)
    predictor = SamPredictor(_tiny_with_decoder())
    snapper = SliceSnapper(keep=2)
    with pytest.raises(RuntimeError, match="set_image"):
        snapper.instances(predictor)
    rng = np.random.default_rng(0)
    images = [rng.random(inst.shape).astype(np.float32) for _ in range(3)]
    embeddings = [predictor.compute_embedding(im) for im in images]
    mask = np.zeros(inst.shape, bool)
    mask[11:29, 9:34] = True
    for i in (0, 1, 0, 2, 0):  # slice 0 is kept until two others came after it
        predictor.set_embedding(embeddings[i], images[i])
        out = snapper.snap(predictor, mask, points=[[20, 20]], labels=[1], mask_input=None)
        np.testing.assert_array_equal(out, inst == 1)
    assert [next(i for i, x in enumerate(embeddings) if x is e) for e in made] == [0, 1, 2, 0]
    with pytest.raises(ValueError, match="instance decoder"):
        plain = SamPredictor(build_sam(tiny_config()))
        plain.set_image(images[0])
        SliceSnapper().snap(plain, mask)


def test_segment_snap_on_the_command_line(tmp_path, cli_model, monkeypatch, capsys):
    from napari_sam.cli import _common

    inst = _two_touching()
    image = (inst > 0).astype(np.float32)
    tifffile.imwrite(tmp_path / "img.tif", image)
    out = tmp_path / "out.tif"
    args = ["segment", str(tmp_path / "img.tif"), "--box", "10,10,29,29", "--out", str(out),
            "--snap"]
    assert cli.main(args) == 2  # the tiny model has no instance decoder
    err = capsys.readouterr().err
    assert "--snap" in err and len(err.strip().splitlines()) == 1 and not out.exists()
    assert cli.main([*args, "--propagate", "0"]) == 2
    assert "--propagate" in capsys.readouterr().err

    # a model with one: SAM's mask (instance 1 without its last row) snaps to instance 1
    monkeypatch.setattr(_common, "load_model", lambda a: _tiny_with_decoder())
    monkeypatch.setattr(snap_module, "segment_everything", lambda *a, **k: inst)
    sam_mask = inst == 1
    sam_mask[29] = False
    monkeypatch.setattr(SamPredictor, "segment", lambda self, points=None, labels=None, box=None,
                        mask_input=None: (sam_mask.copy(), 0.9, np.zeros((1, 16, 16))))
    assert cli.main(args) == 0
    np.testing.assert_array_equal(tifffile.imread(out) > 0, inst == 1)
    assert cli.main(args[:-1]) == 0  # by default too, as in the viewer
    np.testing.assert_array_equal(tifffile.imread(out) > 0, inst == 1)
    assert cli.main([*args[:-1], "--no-snap"]) == 0  # SAM's mask
    np.testing.assert_array_equal(tifffile.imread(out) > 0, sam_mask)
    # evaluate snaps by default too with such a model, and says so
    tifffile.imwrite(tmp_path / "lab.tif", inst)
    report = tmp_path / "r.json"
    for extra, snapped in (([], True), (["--no-snap"], False), (["--raw-masks"], False)):
        assert cli.main(["evaluate", str(tmp_path / "img.tif"), str(tmp_path / "lab.tif"),
                         "--json", str(report), *extra]) == 0
        assert json.loads(report.read_text())["protocol"]["snap"] is snapped


def test_a_slices_objects_are_made_once_ahead_of_its_first_click(monkeypatch):
    import threading

    from napari_sam.workflows.snap import SliceSnapper

    inst = _two_touching()
    made, gate = [], threading.Event()

    def slow_instances(model, image, params=None, intensity_range=None, embedding=None):
        made.append(embedding)
        assert gate.wait(10)
        return inst

    monkeypatch.setattr(snap_module, "segment_everything", slow_instances)
    model = _tiny_with_decoder()
    predictor = SamPredictor(model)
    image = np.random.default_rng(1).random(inst.shape).astype(np.float32)
    predictor.set_image(image)
    snapper = SliceSnapper()
    ahead = threading.Thread(target=snapper.prepare, args=(model, predictor.embedding, image))
    ahead.start()  # the viewer's background job, once the embedding is ready
    while not made:
        threading.Event().wait(0.01)
    mask = np.zeros(inst.shape, bool)
    mask[11:29, 9:34] = True
    out = {}
    click = threading.Thread(target=lambda: out.update(m=snapper.snap(
        predictor, mask, points=[[20, 20]], labels=[1])))
    click.start()  # a click meanwhile waits for them instead of making them again
    click.join(0.2)
    assert click.is_alive() and len(made) == 1
    gate.set()
    ahead.join(10)
    click.join(10)
    np.testing.assert_array_equal(out["m"], inst == 1)
    assert made == [predictor.embedding]
    with pytest.raises(ValueError, match="instance decoder"):
        snapper.prepare(build_sam(tiny_config()), predictor.embedding, image)
