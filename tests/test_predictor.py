"""SamPredictor: geometry, prompt handling, batching, and parity with Meta's predictor."""

import numpy as np
import pytest
import torch

from napari_sam.models.build import build_sam, tiny_config
from napari_sam.engine.predictor import ImageEmbedding, SamPredictor
from napari_sam.engine.preprocess import ResizeGeometry


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_sam(tiny_config())


@pytest.fixture
def predictor(model):
    p = SamPredictor(model)
    rng = np.random.default_rng(0)
    p.set_image(rng.integers(0, 4000, size=(48, 64)).astype(np.uint16))
    return p


def test_geometry_maps_row_col_to_xy():
    g = ResizeGeometry((50, 100), 64)
    assert g.input_size == (32, 64)
    np.testing.assert_allclose(g.points_to_xy([[10, 20]]), [[20 * 64 / 100, 10 * 32 / 50]])
    # box corners in any order come out sorted as x0 <= x1, y0 <= y1
    np.testing.assert_allclose(
        g.boxes_to_xyxy([[40, 80, 10, 20]]), [[12.8, 6.4, 51.2, 25.6]], rtol=1e-6
    )


def test_predict_shapes_single_point(predictor):
    masks, scores, low = predictor.predict(points=[[10, 20]], labels=[1])
    assert masks.shape == (3, 48, 64) and masks.dtype == bool
    assert scores.shape == (3,)
    assert low.shape == (3, 32, 32)
    masks1, scores1, _ = predictor.predict(points=[[10, 20]], labels=[1], multimask=False)
    assert masks1.shape == (1, 48, 64) and scores1.shape == (1,)


def test_several_boxes_decode_several_objects(predictor):
    boxes = np.array([[2, 2, 20, 30], [25, 30, 45, 60]])
    masks, scores, low = predictor.predict(box=boxes, multimask=False)
    assert masks.shape == (2, 1, 48, 64) and scores.shape == (2, 1) and low.shape == (2, 1, 32, 32)
    # each object equals its own single-box decode
    for i, b in enumerate(boxes):
        m, s, _ = predictor.predict(box=b, multimask=False)
        np.testing.assert_array_equal(masks[i], m)
        np.testing.assert_allclose(scores[i], s, rtol=1e-4, atol=1e-5)


def test_mask_prompt_changes_output_and_roundtrips(predictor):
    base, _, low = predictor.predict(points=[[10, 20]], labels=[1], multimask=False)
    mask = np.zeros((48, 64), bool)
    mask[5:30, 10:40] = True
    logits = predictor.mask_to_logits(mask)
    assert logits.shape == (1, 32, 32)
    assert logits.max() > 0 > logits.min()
    with_mask, _, _ = predictor.predict(points=[[10, 20]], labels=[1], mask_input=mask,
                                        multimask=False, return_logits=True)
    with_logits, _, _ = predictor.predict(points=[[10, 20]], labels=[1], mask_input=logits,
                                          multimask=False, return_logits=True)
    np.testing.assert_allclose(with_mask, with_logits)
    plain, _, _ = predictor.predict(points=[[10, 20]], labels=[1], multimask=False,
                                    return_logits=True)
    assert not np.allclose(plain, with_mask)


def test_segment_picks_best_of_three_for_one_point(predictor):
    masks, scores, _ = predictor.predict(points=[[10, 20]], labels=[1])
    mask, score, low = predictor.segment(points=[[10, 20]], labels=[1])
    best = int(np.argmax(scores))
    np.testing.assert_array_equal(mask, masks[best])
    assert score == pytest.approx(float(scores[best]))
    assert low.shape == (1, 32, 32)


def test_segment_min_area_skips_candidates_smaller_than_it(predictor):
    from napari_sam.engine.predictor import keep_prompted_pieces

    point = np.array([[10.0, 20.0]])
    masks, scores, _ = predictor.predict(point, [1])
    areas = masks.reshape(3, -1).sum(axis=1)
    order = np.argsort(-scores)
    assert areas[order[0]] < areas.max()  # else no threshold would change the choice
    for min_area in sorted({int(a) + 1 for a in areas}):
        mask, score, _ = predictor.segment(point, [1], min_area=min_area)
        big = [k for k in order if areas[k] >= min_area]
        k = big[0] if big else order[0]  # none large enough: the best-scoring one
        np.testing.assert_array_equal(mask, keep_prompted_pieces(masks[k], point))
        assert score == pytest.approx(float(scores[k]))
    plain, _, _ = predictor.segment(point, [1])  # default: SAM's choice
    np.testing.assert_array_equal(plain, keep_prompted_pieces(masks[order[0]], point))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({}, "no prompt"),
        ({"points": [[1, 2]], "labels": [2]}, "1 \\(positive\\) or 0"),
        ({"points": [[1, 2], [3, 4]], "labels": [1]}, "do not match"),
        ({"points": [[np.nan, 2]]}, "finite"),
        ({"box": [1, 2, 3]}, "row0, col0, row1, col1"),
        ({"mask_input": np.zeros((5, 5))}, "does not match the slice"),
    ],
)
def test_bad_prompts_raise_clear_errors(predictor, kwargs, match):
    with pytest.raises(ValueError, match=match):
        predictor.predict(**kwargs)


def test_predict_before_set_image(model):
    with pytest.raises(RuntimeError, match="set_image"):
        SamPredictor(model).predict(points=[[1, 1]])


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((1, 1), np.uint8),
        np.full((30, 20), 7.0),
        np.array([[np.nan, np.inf], [-np.inf, 1.0]]),
        np.random.default_rng(1).random((20, 30, 3)).astype(np.float32),
        np.random.default_rng(2).integers(0, 255, (40, 30, 3), dtype=np.uint8),
    ],
    ids=["1px", "constant", "nan-inf", "rgb-float", "rgb-uint8"],
)
def test_any_slice_embeds_and_decodes(model, image):
    p = SamPredictor(model)
    p.set_image(image)
    emb = p.embedding
    assert emb.original_size == image.shape[:2]
    assert torch.isfinite(emb.features).all()
    masks, _, _ = p.predict(points=[[0, 0]])
    assert masks.shape[1:] == image.shape[:2]


def test_set_embedding_reuses_features(model, predictor):
    emb = predictor.embedding
    other = SamPredictor(model)
    other.set_embedding(emb)
    a, _, _ = predictor.predict(points=[[10, 20]], return_logits=True)
    b, _, _ = other.predict(points=[[10, 20]], return_logits=True)
    np.testing.assert_array_equal(a, b)
    wrong = ImageEmbedding(emb.features, emb.original_size, emb.img_size * 2)
    with pytest.raises(ValueError, match="model input"):
        other.set_embedding(wrong)


def _meta_tiny_sam(ours):
    """Meta's modules with the same tiny hyperparameters, loaded with our weights."""
    sa = pytest.importorskip("segment_anything")
    from _reference import reference_sam

    ref = reference_sam(tiny_config())
    ref.load_state_dict(ours.state_dict())
    return sa.SamPredictor(ref)


def test_matches_meta_predictor_in_napari_coordinates(model):
    """Same weights, same uint8 RGB image: our (row, col) prompts give Meta's (x, y) results."""
    ref = _meta_tiny_sam(model)
    rng = np.random.default_rng(3)
    # longest side == img_size, so neither pipeline resamples the pixels
    image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    ours = SamPredictor(model)
    ours.set_image(image)
    ref.set_image(image)
    np.testing.assert_allclose(
        ours.get_image_embedding().numpy(), ref.get_image_embedding().numpy(),
        rtol=1e-4, atol=1e-5,
    )
    rc = np.array([[10.0, 40.0], [30.0, 12.0]])
    m1, s1, l1 = ours.predict(points=rc, labels=[1, 0], multimask=True)
    m2, s2, l2 = ref.predict(point_coords=rc[:, ::-1], point_labels=np.array([1, 0]),
                             multimask_output=True)
    np.testing.assert_allclose(l1, l2, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(s1, s2, rtol=1e-4, atol=1e-4)
    assert (m1 == m2).mean() > 0.999
    box_rc = np.array([5.0, 8.0, 40.0, 50.0])
    m1, s1, _ = ours.predict(box=box_rc, multimask=False)
    m2, s2, _ = ref.predict(box=box_rc[[1, 0, 3, 2]], multimask_output=False)
    np.testing.assert_allclose(s1, s2, rtol=1e-4, atol=1e-4)
    assert (m1 == m2).mean() > 0.999


def test_keep_prompted_pieces():
    from napari_sam.engine.predictor import keep_prompted_pieces

    mask = np.zeros((40, 40), bool)
    mask[2:10, 2:10] = True  # piece A
    mask[20:30, 20:30] = True  # piece B
    mask[10, 10] = True  # touches A diagonally: 8-connected to it
    a = keep_prompted_pieces(mask, [[5, 5]], [1])
    assert a[5, 5] and a[10, 10] and not a[25, 25]
    both = keep_prompted_pieces(mask, [[5, 5], [25, 25]], [1, 1])
    np.testing.assert_array_equal(both, mask)
    # negative points select nothing; a positive point outside the mask keeps it whole
    np.testing.assert_array_equal(keep_prompted_pieces(mask, [[35, 35]], [1]), mask)
    only_b = keep_prompted_pieces(mask, [[25, 25], [5, 5]], [1, 0])
    assert only_b[25, 25] and not only_b[5, 5]
    # a box without points: the pieces overlapping it
    boxed = keep_prompted_pieces(mask, box=[18, 18, 32, 32])
    assert boxed[25, 25] and not boxed[5, 5]
    np.testing.assert_array_equal(keep_prompted_pieces(mask), mask)  # nothing to go by


def test_segment_returns_the_prompted_piece_of_the_best_mask():
    from napari_sam import build_model
    from napari_sam.engine.predictor import keep_prompted_pieces
    from napari_sam.data.synthetic import make_nuclei_2d

    image, labels = make_nuclei_2d((128, 128), seed=5)
    predictor = SamPredictor(build_model("default"))
    predictor.set_image(image)
    rr, cc = np.nonzero(labels == 1)
    point = np.array([[rr.mean(), cc.mean()]])
    masks, scores, _ = predictor.predict(point, np.array([1]), multimask=True)
    mask, score, _ = predictor.segment(point, np.array([1]))
    np.testing.assert_array_equal(mask, keep_prompted_pieces(masks[np.argmax(scores)], point))
    assert score == pytest.approx(float(scores.max()))
