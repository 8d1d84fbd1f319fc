import json

import numpy as np
import pytest
import torch
from skimage.draw import disk

from napari_sam.models.build import build_sam, tiny_config
from napari_sam.evaluation.interactive import (
    MASKS,
    evaluate_image,
    evaluate_object,
    farthest_point,
    ground_truth_objects,
    mask_iou,
    next_click,
)
from napari_sam.engine.predictor import SamPredictor
from napari_sam.data.synthetic import make_nuclei_2d, make_nuclei_3d

# -- test-only predictors whose answers are right or wrong by construction ---------------------


class GroundTruthPredictorForTests(SamPredictor):
    """Returns the ground-truth object under the first positive click (or filling the box).

    Not a model: it proves that a perfect segmenter scores exactly 1 under the protocol.
    """

    mask_to_logits = None  # no model: the decoder's logits are passed on, as for any stand-in

    def __init__(self, labels2d):
        super().__init__(model=None)
        self.labels = np.asarray(labels2d)

    def set_image(self, image, intensity_range=None):
        assert np.shape(image)[:2] == self.labels.shape

    def _object(self, points, labels, box):
        if points is not None:
            for (r, c), lab in zip(np.asarray(points, int), np.asarray(labels)):
                if lab == 1:
                    return self.labels == self.labels[r, c]
        r0, c0, r1, c1 = np.asarray(box, int)
        ids = np.bincount(self.labels[r0 : r1 + 1, c0 : c1 + 1].ravel())
        ids[0] = 0
        return self.labels == ids.argmax()

    def predict(self, points=None, labels=None, box=None, mask_input=None, multimask=True,
                return_logits=False):
        k = 3 if multimask else 1
        mask = self._object(points, labels, box)
        return (np.repeat(mask[None], k, 0), np.ones(k, np.float32),
                np.zeros((k, 16, 16), np.float32))


class EmptyMaskPredictorForTests(SamPredictor):
    """Always predicts nothing: the metric must then report 0."""

    mask_to_logits = None

    def __init__(self):
        super().__init__(model=None)
        self.shape = None

    def set_image(self, image, intensity_range=None):
        self.shape = np.shape(image)[:2]

    def predict(self, points=None, labels=None, box=None, mask_input=None, multimask=True,
                return_logits=False):
        k = 3 if multimask else 1
        return (np.zeros((k, *self.shape), bool), np.ones(k, np.float32),
                np.zeros((k, 16, 16), np.float32))


class ScriptedPredictorForTests(SamPredictor):
    """Multimask: [wrong, right, wrong] with the wrong one ranked first; single output: right.

    Records every call so the protocol's prompts can be checked.
    """

    mask_to_logits = None

    def __init__(self, gt):
        super().__init__(model=None)
        self.gt = gt
        self.calls = []

    def predict(self, points=None, labels=None, box=None, mask_input=None, multimask=True,
                return_logits=False):
        self.calls.append(dict(points=None if points is None else np.array(points),
                               labels=None if labels is None else np.array(labels),
                               box=box, mask_input=mask_input, multimask=multimask))
        wrong = np.zeros_like(self.gt)
        wrong[:2, :2] = True
        if multimask:
            logits = np.stack([np.full((16, 16), v, np.float32) for v in (1.0, 2.0, 3.0)])
            return (np.stack([wrong, self.gt, wrong]), np.array([0.9, 0.1, 0.2], np.float32),
                    logits)
        return self.gt[None], np.array([0.5], np.float32), np.full((1, 16, 16), 7.0, np.float32)


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    # The tiny model's ops take microseconds: thread hand-offs would dominate, badly so on a
    # busy machine (measured 20x slower with 2 threads under load).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def predictor(_one_torch_thread):
    torch.manual_seed(0)
    return SamPredictor(build_sam(tiny_config()).eval())


@pytest.fixture(scope="module")
def nuclei_2d():
    return make_nuclei_2d((64, 64), seed=1)


def _three_disks(shape=(40, 60)):
    labels = np.zeros(shape, np.int32)
    for i, (center, radius) in enumerate((((10, 10), 6), ((25, 30), 8), ((12, 48), 5)), 1):
        labels[disk(center, radius, shape=shape)] = i
    return labels


# -- clicks --------------------------------------------------------------------------------


def test_farthest_point_of_a_disk_is_its_centre():
    mask = np.zeros((64, 64), bool)
    mask[disk((30, 37), 11)] = True
    assert farthest_point(mask) == (30, 37)


def test_farthest_point_of_an_l_shape_lies_inside():
    mask = np.zeros((50, 50), bool)
    mask[5:45, 5:15] = True
    mask[35:45, 5:45] = True
    r, c = farthest_point(mask)
    assert mask[r, c]
    assert farthest_point(mask) == (r, c)  # deterministic


def test_farthest_point_counts_the_image_border_as_boundary():
    mask = np.zeros((20, 30), bool)
    mask[:, :7] = True  # a strip along the left border
    r, c = farthest_point(mask)
    assert c == 3 and 0 < r < 19


def test_farthest_point_tie_break_is_central():
    mask = np.zeros((9, 9), bool)
    mask[2:7, 1:8] = True  # a plateau of three pixels along the middle row
    assert farthest_point(mask) == (4, 4)


def test_farthest_point_rejects_empty_and_non_2d_masks():
    with pytest.raises(ValueError, match="empty"):
        farthest_point(np.zeros((5, 5), bool))
    with pytest.raises(ValueError, match="2D"):
        farthest_point(np.ones((2, 5, 5), bool))


def test_next_click_is_positive_in_a_false_negative():
    gt = np.zeros((50, 50), bool)
    gt[10:30, 10:30] = True
    pred = gt.copy()
    pred[10:20, 10:30] = False  # the top half is missed
    (r, c), label = next_click(pred, gt)
    assert label == 1 and gt[r, c] and not pred[r, c]


def test_next_click_is_negative_in_a_false_positive():
    gt = np.zeros((50, 50), bool)
    gt[10:30, 10:30] = True
    pred = gt.copy()
    pred[30:45, 10:30] = True  # a spurious region below
    (r, c), label = next_click(pred, gt)
    assert label == 0 and pred[r, c] and not gt[r, c]


def test_next_click_goes_to_the_deeper_error_region():
    gt = np.zeros((60, 60), bool)
    gt[10:40, 10:40] = True
    pred = np.zeros_like(gt)
    pred[12:38, 12:38] = True  # a 2-px rim of false negatives (208 px)...
    pred[45:48, 0:60] = True  # ... and a 3-px-thick strip of false positives (180 px)
    (r, c), label = next_click(pred, gt)
    assert label == 0 and 45 <= r < 48
    pred[45:48, 0:60] = False
    pred[12:24, 12:38] = False  # now a 12-px-deep false negative
    (r, c), label = next_click(pred, gt)
    assert label == 1 and gt[r, c] and not pred[r, c]


def test_next_click_is_none_without_error():
    gt = np.zeros((10, 10), bool)
    gt[2:5, 2:5] = True
    assert next_click(gt.copy(), gt) is None
    with pytest.raises(ValueError, match="differ"):
        next_click(gt, gt[:5])


def test_mask_iou():
    a = np.zeros((10, 10), bool)
    a[:, :5] = True
    b = np.zeros((10, 10), bool)
    b[:, 2:7] = True
    assert mask_iou(a, b) == pytest.approx(30 / 70)
    assert mask_iou(a, a) == 1.0


# -- one object ----------------------------------------------------------------------------


@pytest.mark.parametrize("oracle", ["first", "every"])
def test_evaluate_object_selects_by_predicted_iou_and_reports_the_oracle(oracle):
    gt = np.zeros((32, 32), bool)
    gt[10:20, 12:24] = True
    fake = ScriptedPredictorForTests(gt)
    result = evaluate_object(fake, gt, "point", clicks=3, oracle=oracle)
    # click 1: the wrong mask has the highest predicted IoU; the oracle finds the right one
    assert result.iou[0] == 0.0 and result.iou_oracle[0] == 1.0
    # click 2 corrects it (single output = ground truth); then nothing is left to correct
    assert result.iou == [0.0, 1.0, 1.0]
    assert result.iou_oracle == ([1.0] if oracle == "first" else [1.0, 1.0, 1.0])
    # the candidates are decoded after the first click only for an oracle at every click
    assert [c["multimask"] for c in fake.calls] == (
        [True, False] if oracle == "first" else [True, True, False])
    assert result.point_labels == [1, 1]
    assert result.points[0] == farthest_point(gt)
    first, second_single = fake.calls[0], fake.calls[-1]
    assert first["multimask"] and first["mask_input"] is None
    assert not second_single["multimask"]
    assert len(second_single["points"]) == 2
    # the previous logits passed on are those of the selected mask (index 0 -> value 1.0)
    np.testing.assert_array_equal(second_single["mask_input"], np.full((1, 16, 16), 1.0))


class MaskPromptPredictorForTests(ScriptedPredictorForTests):
    """The scripted predictor with a ``mask_to_logits`` that writes a mask's area into every
    logit, so the mask prompt shows which mask it was made from."""

    def __init__(self, gt):
        super().__init__(gt)
        self.turned = []

    def mask_to_logits(self, mask, frame=None):
        self.turned.append(np.array(mask))
        return np.full((1, 16, 16), float(np.count_nonzero(mask)), np.float32)


@pytest.mark.parametrize("raw", [False, True])
def test_the_mask_kept_prompts_the_next_click(raw):
    gt = np.zeros((32, 32), bool)
    gt[10:20, 12:24] = True
    fake = MaskPromptPredictorForTests(gt)
    fake.set_image = lambda image, intensity_range=None: None
    result = evaluate_image(fake, gt.astype(np.float32), gt.astype(np.int32), clicks=2,
                            raw=raw, batched=False)
    second = fake.calls[-1]
    if raw:  # SAM's protocol: the decoder's logits of the selected mask (index 0 -> 1.0)
        np.testing.assert_array_equal(second["mask_input"], np.full((1, 16, 16), 1.0))
        assert result["protocol"]["mask_prompt"] == "previous_logits"
        return
    # the mask kept after click 1 (the wrong candidate, ranked first: 4 px in a corner)
    # turned into logits is what click 2 gets
    wrong = np.zeros_like(gt)
    wrong[:2, :2] = True
    np.testing.assert_array_equal(fake.turned[0], wrong)
    np.testing.assert_array_equal(second["mask_input"], np.full((1, 16, 16), 4.0))
    assert len(fake.turned) == 1  # the last click's mask prompts nothing: not turned
    assert result["protocol"]["mask_prompt"] == "kept_mask_as_logits"


def test_evaluate_object_box_mode_keeps_the_box():
    gt = np.zeros((32, 32), bool)
    gt[10:20, 12:24] = True
    fake = EmptyMaskPredictorForTests()
    fake.set_image(np.zeros((32, 32)))
    result = evaluate_object(fake, gt, "box", clicks=3)
    assert result.box == (10, 12, 19, 23)
    assert result.iou == [0.0, 0.0, 0.0]
    assert len(result.points) == 2 and result.point_labels == [1, 1]  # box + 2 corrections


def test_evaluate_object_rejects_bad_arguments():
    gt = np.zeros((8, 8), bool)
    fake = EmptyMaskPredictorForTests()
    fake.set_image(gt)
    with pytest.raises(ValueError, match="empty"):
        evaluate_object(fake, gt)
    gt[2:4, 2:4] = True
    with pytest.raises(ValueError, match="prompt"):
        evaluate_object(fake, gt, "lasso")
    with pytest.raises(ValueError, match="clicks"):
        evaluate_object(fake, gt, clicks=0)
    fake.set_image(np.zeros((9, 8)))
    with pytest.raises(ValueError, match="set_image"):
        evaluate_object(fake, gt)


# -- whole images --------------------------------------------------------------------------


@pytest.mark.parametrize("prompt", ["point", "box"])
def test_evaluate_image_result_format(predictor, nuclei_2d, prompt):
    image, labels = nuclei_2d
    calls = []
    result = evaluate_image(predictor, image, labels, prompt=prompt, clicks=3, model_name="tiny",
                            progress=lambda done, total: calls.append((done, total)))
    assert set(result) == {"miou", "miou_oracle", "per_object", "n_objects", "protocol", "model"}
    n = result["n_objects"]
    assert n == len(ground_truth_objects(labels)) == len(result["per_object"]) > 0
    assert len(result["miou"]) == 3 and len(result["miou_oracle"]) == 1  # the first prompt's
    assert result["model"] == "tiny"
    assert result["protocol"]["prompt"] == prompt and result["protocol"]["clicks"] == 3
    assert result["protocol"]["next_click"] == "center_of_larger_error_region"
    assert result["protocol"]["selection"] == "highest_predicted_iou"
    for obj in result["per_object"]:
        assert set(obj) == {"id", "slice", "iou", "iou_oracle"}
        assert obj["slice"] is None and len(obj["iou"]) == 3 and len(obj["iou_oracle"]) == 1
        assert all(0.0 <= v <= 1.0 for v in obj["iou"] + obj["iou_oracle"])
        assert obj["iou_oracle"][0] >= obj["iou"][0]
    assert result["miou_oracle"][0] >= result["miou"][0]
    assert result["protocol"]["oracle"] == "best_true_iou_of_candidates_first_prompt"
    assert calls[-1] == (n, n)
    json.loads(json.dumps(result))
    # deterministic
    again = evaluate_image(predictor, image, labels, prompt=prompt, clicks=3, model_name="tiny")
    assert again == result


def test_evaluate_image_rgb(predictor):
    labels = _three_disks()
    image = np.zeros((*labels.shape, 3), np.uint8)
    image[labels > 0] = (200, 120, 40)
    result = evaluate_image(predictor, image, labels, clicks=2)
    assert result["n_objects"] == 3 and len(result["miou"]) == 2


@pytest.mark.parametrize("prompt", ["point", "box"])
def test_a_perfect_predictor_scores_exactly_one(prompt):
    labels = _three_disks()
    image = (labels > 0).astype(np.float32)
    result = evaluate_image(GroundTruthPredictorForTests(labels), image, labels,
                            prompt=prompt, clicks=3)
    assert result["miou"] == [1.0, 1.0, 1.0]
    assert result["miou_oracle"] == [1.0]
    assert result["n_objects"] == 3
    every = evaluate_image(GroundTruthPredictorForTests(labels), image, labels,
                           prompt=prompt, clicks=3, oracle="every")
    assert every["miou_oracle"] == [1.0, 1.0, 1.0]


def test_an_empty_predictor_scores_zero():
    labels = _three_disks()
    image = (labels > 0).astype(np.float32)
    result = evaluate_image(EmptyMaskPredictorForTests(), image, labels, clicks=2)
    assert result["miou"] == [0.0, 0.0] and result["miou_oracle"] == [0.0]
    with pytest.raises(ValueError, match="oracle"):
        evaluate_image(EmptyMaskPredictorForTests(), image, labels, oracle="last")


def test_objects_are_connected_components_per_label():
    labels = _three_disks()
    labels[labels == 3] = 1  # label 1 now has two separate pieces
    objects = ground_truth_objects(labels)
    assert [o.id for o in objects] == [1, 1, 2]
    fake = GroundTruthPredictorForTests(labels)
    raw = evaluate_image(fake, labels.astype(float), labels, raw=True)
    # the predictor returns the whole label id (both pieces), so each piece scores < 1 ...
    assert raw["n_objects"] == 3 and raw["miou"][0] < 1.0
    # ... unless, as in the viewer, only the clicked piece is kept
    assert evaluate_image(fake, labels.astype(float), labels)["miou"][0] == 1.0


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_evaluate_image_3d_along_an_axis(predictor, axis):
    image, labels = make_nuclei_3d((6, 40, 40), seed=2)
    result = evaluate_image(predictor, image, labels, axis=axis, clicks=2, prompt="box")
    slices = {o["slice"] for o in result["per_object"]}
    n_along = labels.shape[axis]
    expected = sum(
        len(ground_truth_objects(np.take(labels, i, axis=axis))) for i in range(n_along)
    )
    assert result["n_objects"] == expected
    assert slices <= set(range(n_along)) and len(slices) > 1
    assert all(0.0 <= v <= 1.0 for v in result["miou"] + result["miou_oracle"])
    json.dumps(result)


def test_evaluate_image_validates_its_inputs(predictor):
    labels = _three_disks()
    image = labels.astype(np.float32)
    with pytest.raises(ValueError, match="differ"):
        evaluate_image(predictor, image[:, :-1], labels)
    with pytest.raises(ValueError, match="no objects"):
        evaluate_image(predictor, image, np.zeros_like(labels))
    with pytest.raises(ValueError, match="integer"):
        evaluate_image(predictor, image, labels.astype(np.float32))
    with pytest.raises(ValueError, match="non-negative"):
        evaluate_image(predictor, image, -labels)
    with pytest.raises(ValueError, match="axis"):
        evaluate_image(predictor, image, labels, axis=0)  # 2D labels take no axis
    volume = np.stack([labels] * 2)
    with pytest.raises(ValueError, match="axis"):
        evaluate_image(predictor, volume.astype(float), volume)  # 3D labels need one
    with pytest.raises(ValueError, match="out of range"):
        evaluate_image(predictor, volume.astype(float), volume, axis=3)
    with pytest.raises(ValueError, match="prompt"):
        evaluate_image(predictor, image, labels, prompt="scribble")
    with pytest.raises(ValueError, match="clicks"):
        evaluate_image(predictor, image, labels, clicks=0)


class StrayPiecePredictorForTests(GroundTruthPredictorForTests):
    """The right object plus a stray piece far from it (as SAM's masks sometimes have)."""

    def predict(self, points=None, labels=None, box=None, mask_input=None, multimask=True,
                return_logits=False):
        masks, scores, logits = super().predict(points, labels, box, mask_input, multimask)
        masks = masks.copy()
        masks[:, -4:, -4:] = True
        return masks, scores, logits


@pytest.mark.parametrize("prompt", ["point", "box"])
def test_masks_are_scored_as_the_viewer_shows_them_unless_raw(prompt):
    labels = _three_disks()
    image = (labels > 0).astype(np.float32)
    fake = StrayPiecePredictorForTests(labels)
    shown = evaluate_image(fake, image, labels, prompt=prompt, clicks=2)
    raw = evaluate_image(fake, image, labels, prompt=prompt, clicks=2, raw=True)
    assert shown["miou"] == [1.0, 1.0]  # the stray piece holds no click / lies outside the box
    assert raw["miou"][0] < 1.0
    assert shown["protocol"]["masks"] == MASKS[False] and raw["protocol"]["masks"] == "raw"


# -- batched evaluation --------------------------------------------------------------------


def _per_object(result, key="iou"):
    return np.array([o[key] for o in result["per_object"]])


@pytest.fixture(scope="module")
def nuclei_12():
    return make_nuclei_2d((96, 96), seed=3)  # 12 objects: rounds of several decoder calls


@pytest.mark.parametrize("prompt", ["point", "box"])
@pytest.mark.parametrize("zoom", [None, 2])
def test_batched_evaluation_matches_object_by_object(predictor, nuclei_12, prompt, zoom):
    from napari_sam.engine.zoom import ZoomPredictor

    image, labels = nuclei_12
    make = (lambda: predictor) if zoom is None else (
        lambda: ZoomPredictor(predictor.model, zoom=zoom))
    # one oracle setting per zoom: both are compared below
    kw = {"prompt": prompt, "clicks": 3, "model_name": "tiny",
          "oracle": "every" if zoom is None else "first"}
    old = evaluate_image(make(), image, labels, batched=False, **kw)
    new = evaluate_image(make(), image, labels, batched=True, **kw)
    assert old["n_objects"] == new["n_objects"] > 3
    assert [(o["id"], o["slice"]) for o in old["per_object"]] == [
        (o["id"], o["slice"]) for o in new["per_object"]]
    # the same clicks and masks up to float rounding of the batched decoder
    for key in ("iou", "iou_oracle"):
        np.testing.assert_allclose(_per_object(new, key), _per_object(old, key), atol=0.01)
    assert (_per_object(new) == _per_object(old)).all(axis=1).mean() >= 0.75
    assert new["protocol"] == old["protocol"]


@pytest.mark.parametrize("prompt", ["point", "box"])
def test_the_oracle_setting_changes_only_the_oracle(predictor, nuclei_12, prompt):
    from napari_sam.engine.zoom import ZoomPredictor

    image, labels = nuclei_12
    first, every = (evaluate_image(ZoomPredictor(predictor.model, zoom=2), image, labels,
                                   prompt=prompt, clicks=3, oracle=oracle)
                    for oracle in ("first", "every"))
    # the same clicks and kept masks; the first prompt's oracle alone, or one per click
    np.testing.assert_array_equal(_per_object(first), _per_object(every))
    np.testing.assert_array_equal(_per_object(first, "iou_oracle"),
                                  _per_object(every, "iou_oracle")[:, :1])
    assert len(every["miou_oracle"]) == 3 and (
        _per_object(every, "iou_oracle") >= _per_object(every)).all()


def test_batched_rounds_cover_every_object_in_order(predictor, nuclei_12):
    from napari_sam.evaluation.batched import batched_decoder, evaluate_objects

    image, labels = nuclei_12
    objects = ground_truth_objects(labels)
    predictor.set_image(image)
    decode = batched_decoder(predictor)
    masks = [o.mask(labels.shape) for o in objects]
    ticks = []
    # batches of 5: 12 objects in rounds of 5, 5 and 2
    results = evaluate_objects(decode, iter(masks), "point", clicks=2, batch_size=5,
                               progress=lambda: ticks.append(1),
                               to_logits=predictor.mask_to_logits)  # as evaluate_object's
    assert len(results) == len(objects) == len(ticks)
    for gt, result in zip(masks, results):
        one = evaluate_object(predictor, gt, "point", clicks=2)
        assert result.points == one.points and result.point_labels == one.point_labels
        np.testing.assert_allclose(result.iou, one.iou, atol=0.01)
    with pytest.raises(ValueError, match="batch_size"):
        evaluate_objects(decode, iter(masks), batch_size=0)


def test_stand_in_predictors_are_evaluated_object_by_object():
    from napari_sam.evaluation.batched import batched_decoder

    labels = _three_disks()
    # subclasses that decode their own way have no batched path: their predict() is what counts
    assert batched_decoder(GroundTruthPredictorForTests(labels)) is None
    assert batched_decoder(object()) is None


def test_a_perfect_decoder_stops_clicking_in_a_batch():
    # objects whose mask becomes exact leave the round; the others go on
    from napari_sam.evaluation.batched import evaluate_objects

    labels = _three_disks()
    masks = [labels == i for i in (1, 2, 3)]
    calls = []

    def decode(points, point_labels, boxes, mask_input, origins, single_output, candidates):
        calls.append((len(points), single_output, candidates))
        out = []
        for pts in points:  # exact for objects 1 and 3; object 2 misses its last row
            m = labels == labels[int(pts[0][0]), int(pts[0][1])]
            if labels[int(pts[0][0]), int(pts[0][1])] == 2:
                m = m & (np.arange(m.shape[0]) < np.flatnonzero(m.any(axis=1))[-1])[:, None]
            out.append(np.repeat(m[None], 1 if not candidates else 4 if single_output else 3, 0))
        k = out[0].shape[0]
        return (np.stack(out), np.ones((len(out), k), np.float32),
                np.zeros((len(out), k, 16, 16), np.float32), np.zeros((len(out), 2), int))

    results = evaluate_objects(decode, masks, "point", clicks=3)
    # the first point: the candidates alone; then the single output alone (no oracle)
    assert calls == [(3, False, True), (1, True, False), (1, True, False)]
    assert results[0].iou == [1.0, 1.0, 1.0] and results[2].iou == [1.0, 1.0, 1.0]
    assert results[1].iou[0] < 1.0 and len(results[1].points) == 3


def test_a_corrective_clicks_mask_is_kept_near_the_click():
    from napari_sam.engine.postprocess import after_click, keep_prompted_pieces
    from napari_sam.evaluation.clicks import ClickSession

    def disc(centre, radius):
        m = np.zeros((100, 100), bool)
        m[disk(centre, radius, shape=m.shape)] = True
        return m

    gt = disc((50, 50), 20)
    session = ClickSession(gt, "point", clicks=2, raw=False)
    first = disc((50, 47), 20)  # 3 px too far left
    logits = np.zeros((3, 4, 4), np.float32)
    session.record([first] * 3, [0.9, 0.8, 0.7], logits)
    session.advance()  # a positive click in the missed part, on the right
    pts, labs, _, _ = session.prompts()
    assert list(labs) == [1, 1] and pts[1][1] > 65
    spoiled = disc((50, 53), 20)  # the decode with the click: it overshoots on the right
    session.record([], [], [], spoiled, logits[0])
    expected = after_click(first, keep_prompted_pieces(spoiled, pts, labs), pts, labs)
    assert session.ious[1] == pytest.approx(mask_iou(expected, gt))
    assert mask_iou(expected, gt) > mask_iou(spoiled, gt)  # the left side was kept
    raw = ClickSession(gt, "point", clicks=2, raw=True)  # raw: the decodes as they are
    raw.record([first] * 3, [0.9, 0.8, 0.7], logits)
    raw.advance()
    raw.record([], [], [], spoiled, logits[0])
    assert raw.ious[1] == pytest.approx(mask_iou(spoiled, gt))


def test_corrective_clicks_that_act_where_placed_help_on_a_real_image(monkeypatch):
    # the default model on a real validation image it never saw (BBBC039, 110 nuclei): the
    # protocol's masks with the clicks followed and kept near them, against SAM's redraws
    from pathlib import Path

    import tifffile

    from napari_sam import build_model
    from napari_sam.engine import postprocess
    from napari_sam.engine.zoom import ZoomPredictor
    from napari_sam.evaluation import clicks

    data = Path(__file__).parent / "data"
    image = tifffile.imread(data / "bbbc039_val_image.tif")
    labels = tifffile.imread(data / "bbbc039_val_labels.tif")
    model = build_model("default")
    acting = evaluate_image(ZoomPredictor(model), image, labels, clicks=3)["miou"]
    monkeypatch.setattr(clicks, "after_click", lambda previous, mask, *args: mask)
    monkeypatch.setattr(postprocess, "follow_clicks", lambda mask, *args, **kwargs: mask)
    redrawn = evaluate_image(ZoomPredictor(model), image, labels, clicks=3)["miou"]
    assert acting[0] == redrawn[0]  # the first click is SAM's choice either way
    assert acting[1] > redrawn[1] + 0.01 and acting[2] > redrawn[2] + 0.005, (acting, redrawn)
    assert acting[2] > 0.9
