import json

import numpy as np
import pytest
from skimage.draw import disk

from napari_sam.evaluation.baselines import (
    classical_instances,
    classical_instances_3d,
    evaluate_classical_interactive,
    evaluate_classical_propagation,
    instance_metrics,
)
from napari_sam.evaluation.propagation import propagation_seed_points
from napari_sam.data.synthetic import make_nuclei_2d, make_nuclei_3d


def _squares():
    gt = np.zeros((30, 30), np.int32)
    gt[1:6, 1:6] = 1
    gt[10:16, 10:16] = 2
    gt[20:28, 3:9] = 3
    return gt


# -- instance_metrics ----------------------------------------------------------------------


def test_instance_metrics_perfect_match():
    gt = _squares()
    relabelled = np.select([gt == 1, gt == 2, gt == 3], [7, 3, 12], 0)  # ids need not agree
    m = instance_metrics(relabelled, gt)
    assert m["f1_50"] == 1.0 and m["mean_accuracy"] == 1.0 and m["mean_matched_iou"] == 1.0
    assert m["tp"] == [3] * 10 and m["fp"] == [0] * 10 and m["fn"] == [0] * 10
    assert m["n_pred"] == m["n_true"] == 3
    json.dumps(m)


def test_instance_metrics_missing_and_extra_objects():
    gt = _squares()
    missing = gt.copy()
    missing[missing == 3] = 0
    m = instance_metrics(missing, gt)
    assert (m["tp"][0], m["fp"][0], m["fn"][0]) == (2, 0, 1)
    assert m["f1_50"] == pytest.approx(0.8)  # 2 TP / (2 TP + 0 FP + 1 FN) -> 4 / 5
    assert m["mean_accuracy"] == pytest.approx(2 / 3)
    assert m["precision"][0] == 1.0 and m["recall"][0] == pytest.approx(2 / 3)

    extra = gt.copy()
    extra[0, 25:30] = 9
    m = instance_metrics(extra, gt)
    assert (m["tp"][0], m["fp"][0], m["fn"][0]) == (3, 1, 0)
    assert m["f1_50"] == pytest.approx(6 / 7)


def test_instance_metrics_iou_thresholds():
    gt = np.zeros((20, 20), np.int32)
    gt[0:10, 0:10] = 1
    pred = np.zeros_like(gt)
    pred[2:12, 0:10] = 1  # IoU = 80 / 120 = 0.667: a hit at 0.5 ... 0.65, a miss from 0.7
    m = instance_metrics(pred, gt)
    assert m["tp"] == [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    assert m["mean_accuracy"] == pytest.approx(0.4)
    assert m["f1_50"] == 1.0 and m["mean_matched_iou"] == pytest.approx(2 / 3)


def test_instance_metrics_uses_an_optimal_matching():
    # Greedy matching by IoU pairs p1 with A (0.46) and leaves p2 (only overlapping A) unmatched;
    # the optimal matching at threshold 0.15 pairs p1 with B (0.19) and p2 with A (0.4).
    gt = np.zeros((1, 20), np.int32)
    gt[0, :10], gt[0, 10:] = 1, 2
    pred = np.zeros_like(gt)
    pred[0, :4], pred[0, 4:13] = 1, 2
    assert instance_metrics(pred, gt, thresholds=[0.15])["tp"] == [2]


def test_instance_metrics_edge_cases_and_errors():
    gt = _squares()
    m = instance_metrics(np.zeros_like(gt), gt)
    assert m["f1_50"] == 0.0 and m["fn"][0] == 3 and m["n_pred"] == 0
    with pytest.raises(ValueError, match="differ"):
        instance_metrics(gt[:-1], gt)
    with pytest.raises(ValueError, match="integer"):
        instance_metrics(gt.astype(float), gt)
    with pytest.raises(ValueError, match="thresholds"):
        instance_metrics(gt, gt, thresholds=[0.0])


# -- classical_instances -------------------------------------------------------------------


def test_classical_baseline_segments_synthetic_nuclei():
    image, labels = make_nuclei_2d((256, 256), seed=1)
    pred = classical_instances(image)
    assert pred.shape == labels.shape and pred.dtype == np.int32
    m = instance_metrics(pred, labels)
    assert m["f1_50"] > 0.85  # measured 0.99 (Otsu instead of Li: 0.85)


def test_classical_baseline_splits_touching_nuclei_and_takes_any_dtype():
    image = np.zeros((60, 80))
    image[disk((30, 25), 13)] = 1.0
    image[disk((30, 47), 13)] = 1.0  # overlapping disks: one blob with a waist
    for dtype in (np.uint8, np.uint16, np.float32, np.float64):
        scaled = (image * 200 + 10).astype(dtype)
        assert classical_instances(scaled, sigma=0.5).max() == 2
    rgb = np.repeat((image * 200).astype(np.uint8)[..., None], 3, axis=-1)
    assert classical_instances(rgb).max() == 2
    nan = image.copy()
    nan[0, 0] = np.nan
    assert classical_instances(nan).max() == 2
    dark = 1.0 - image
    assert classical_instances(dark, dark_objects=True).max() == 2
    assert classical_instances(np.full((20, 20), 7.0)).max() == 0


def test_classical_baseline_removes_small_objects():
    image = np.zeros((40, 40))
    image[disk((20, 20), 8)] = 1.0
    image[2:4, 2:4] = 1.0  # 4 px of noise
    pred = classical_instances(image, sigma=0, min_size=10)
    assert pred.max() == 1 and pred[3, 3] == 0


def test_classical_baseline_rejects_bad_input():
    with pytest.raises(ValueError, match="2D"):
        classical_instances(np.zeros((3, 10, 10)))
    with pytest.raises(ValueError, match="threshold"):
        classical_instances(np.zeros((10, 10)), threshold="yen")


# -- evaluate_classical_interactive --------------------------------------------------------


@pytest.mark.parametrize("prompt", ["point", "box"])
def test_classical_interactive_result_format(prompt):
    image, labels = make_nuclei_2d((128, 128), seed=3)
    result = evaluate_classical_interactive(image, labels, prompt=prompt)
    assert set(result) == {"miou", "miou_oracle", "per_object", "n_objects", "protocol", "model"}
    assert len(result["miou"]) == len(result["miou_oracle"]) == 1
    assert result["miou"] == result["miou_oracle"]
    assert result["n_objects"] == len(result["per_object"]) > 0
    assert result["protocol"]["prompt"] == prompt and result["protocol"]["clicks"] == 1
    assert all(0.0 <= o["iou"][0] <= 1.0 for o in result["per_object"])
    assert result["miou"][0] > 0.5
    assert "classical" in result["model"]
    json.loads(json.dumps(result))


def test_classical_interactive_click_on_background_scores_zero_and_box_clips():
    labels = np.zeros((40, 60), np.int32)
    labels[disk((20, 15), 8)] = 1
    labels[disk((20, 45), 8)] = 2
    image = np.zeros(labels.shape)
    image[labels == 1] = 1.0  # object 2 is invisible to the baseline
    image[18:23, 20:40] = 1.0  # and object 1 leaks into a bridge towards it
    point = evaluate_classical_interactive(image, labels, sigma=0)
    by_id = {o["id"]: o["iou"][0] for o in point["per_object"]}
    assert by_id[2] == 0.0 and 0.0 < by_id[1] < 1.0
    box = evaluate_classical_interactive(image, labels, prompt="box", sigma=0)
    by_id_box = {o["id"]: o["iou"][0] for o in box["per_object"]}
    assert by_id_box[1] > by_id[1]  # the bridge is cut at the box
    assert by_id_box[2] == 0.0


def test_classical_interactive_3d_and_validation():
    image, labels = make_nuclei_3d((4, 48, 48), seed=2)
    result = evaluate_classical_interactive(image, labels, axis=0)
    assert {o["slice"] for o in result["per_object"]} <= {0, 1, 2, 3}
    with pytest.raises(ValueError, match="axis"):
        evaluate_classical_interactive(image, labels)
    with pytest.raises(ValueError, match="differ"):
        evaluate_classical_interactive(image[:, :-1], labels, axis=0)
    with pytest.raises(ValueError, match="no objects"):
        evaluate_classical_interactive(image, np.zeros_like(labels), axis=0)
    with pytest.raises(ValueError, match="prompt"):
        evaluate_classical_interactive(image, labels, axis=0, prompt="text")


# -- 3D baseline (propagation's comparison) ------------------------------------------------


def _two_ellipsoids(shape=(16, 48, 64)):
    """Two touching ellipsoids, twice as long in physical z as their voxel extent shows."""
    z, y, x = np.indices(shape)
    gt = np.zeros(shape, np.int32)
    # spacing (2, 1, 1): a radius of 10 physical units spans 5 slices
    for oid, cx in ((1, 20), (2, 39)):
        gt[((z - 8) * 2.0) ** 2 + (y - 24) ** 2 + (x - cx) ** 2 <= 10.0 ** 2] = oid
    return gt


def test_classical_instances_3d_splits_touching_objects_with_anisotropy():
    gt = _two_ellipsoids()
    rng = np.random.default_rng(0)
    image = (gt > 0) * 100.0 + rng.normal(10, 5, gt.shape)
    pred = classical_instances_3d(image, spacing=(2.0, 1.0, 1.0))
    assert pred.shape == gt.shape and pred.dtype == np.int32
    for oid in (1, 2):
        ids, counts = np.unique(pred[gt == oid], return_counts=True)
        best = ids[np.argmax(counts)]
        assert best > 0
        iou = np.sum((pred == best) & (gt == oid)) / np.sum((pred == best) | (gt == oid))
        assert iou > 0.8
    # the two objects are two instances, not one
    assert pred[8, 24, 14] != pred[8, 24, 45]
    # without the spacing the watershed works in voxel units: still two here, and the
    # result changes, which shows the spacing is used
    assert not np.array_equal(classical_instances_3d(image), pred)


def test_classical_instances_3d_rejects_bad_input():
    with pytest.raises(ValueError, match="volume"):
        classical_instances_3d(np.zeros((8, 8)))
    with pytest.raises(ValueError, match="spacing"):
        classical_instances_3d(np.zeros((4, 8, 8)), spacing=(1, 0, 1))
    assert not classical_instances_3d(np.zeros((4, 8, 8))).any()


def test_evaluate_classical_propagation_format_and_scores():
    gt = _two_ellipsoids()
    image = (gt > 0) * 100.0 + np.random.default_rng(1).normal(10, 5, gt.shape)
    image[:, :, 30:] = 10.0  # object 2 made invisible: its click falls on background
    result = evaluate_classical_propagation(image, gt, axis=0, spacing=(2.0, 1.0, 1.0))
    json.dumps(result)
    assert result["n_objects"] == 2
    by_id = {o["id"]: o for o in result["per_object"]}
    assert by_id[1]["iou_3d"] > 0.8 and by_id[2]["iou_3d"] == 0.0
    assert by_id[2]["slices_pred"] is None
    assert result["miou_3d"] == pytest.approx((by_id[1]["iou_3d"] + 0.0) / 2)
    # the seeds are the propagation protocol's
    seeds = propagation_seed_points(gt, [1, 2])
    assert [(o["seed_slice"], tuple(o["seed_point"])) for o in result["per_object"]] == [
        (index, tuple(point)) for _, index, point in seeds]
    # along another axis the seeds move, the segmentation does not
    other = evaluate_classical_propagation(image, gt, axis=2, spacing=(2.0, 1.0, 1.0))
    assert other["protocol"]["axis"] == 2 and other["per_object"][0]["iou_3d"] == pytest.approx(
        by_id[1]["iou_3d"])
    with pytest.raises(ValueError, match="3D labels"):
        evaluate_classical_propagation(image[0], gt[0], axis=None)
    with pytest.raises(ValueError, match="no objects"):
        evaluate_classical_propagation(image, np.zeros_like(gt), axis=0)
