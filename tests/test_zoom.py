"""Zoomed decoding of small objects (napari_sam.engine.zoom)."""

import numpy as np
import pytest
from scipy import ndimage

from napari_sam import SamPredictor, build_model
from napari_sam.evaluation.interactive import evaluate_image
from napari_sam.engine.zoom import ZoomPredictor, auto_zoom, typical_radius


def _discs(size, r, step, seed=0):
    """Bright discs of radius ``r`` every ``step`` px, blurred, with noise; and their labels."""
    yy, xx = np.mgrid[:size, :size]
    lab = np.zeros((size, size), np.int32)
    k = 0
    for cy in range(step // 2, size - r, step):
        for cx in range(step // 2, size - r, step):
            k += 1
            lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k
    rng = np.random.default_rng(seed)
    img = ndimage.gaussian_filter((lab > 0) * 1.0, 1.0) + rng.normal(0, 0.03, lab.shape)
    return img.astype(np.float32), lab


@pytest.fixture(scope="module")
def model():
    return build_model("default")


@pytest.mark.parametrize("r", [5, 9, 20])
def test_typical_radius_of_discs(r):
    img, _ = _discs(256, r, 3 * r + 4)
    assert typical_radius(img) == pytest.approx(r, rel=0.4)  # blur widens small discs
    assert typical_radius(np.zeros((64, 64))) is None


def test_auto_zoom_only_for_small_objects():
    small, _ = _discs(512, 4, 20)
    large, _ = _discs(512, 20, 64)
    assert 2.0 <= auto_zoom(small, 512) <= 4.0
    assert auto_zoom(large, 512) == 1.0
    # a 256 px slice is enlarged 2x by a 512 px model already: its 4 px discs are 8 px there
    assert auto_zoom(small[:256, :256], 512) < auto_zoom(small, 512)


def test_zoom_one_is_the_plain_predictor(model):
    img, lab = _discs(256, 12, 48)
    plain, zoomed = SamPredictor(model), ZoomPredictor(model, zoom=1)
    plain.set_image(img, (0.0, 1.0))
    zoomed.set_image(img, (0.0, 1.0))
    pts, labels = np.array([[24.0, 24.0]]), np.array([1])
    for a, b in zip(plain.predict(pts, labels), zoomed.predict(pts, labels)):
        np.testing.assert_array_equal(a, b)


def test_small_objects_are_segmented_in_a_magnified_crop(model):
    # (that this helps is measured on held-out images in docs/default-model.md; on these clean
    # discs both do well)
    img, lab = _discs(512, 4, 20)
    zoomed = ZoomPredictor(model)  # auto
    zoomed.set_image(img, (0.0, 1.0))
    assert zoomed.zoom > 1 and max(zoomed.crop_shape) < 512
    plain = SamPredictor(model)
    plain.set_image(img, (0.0, 1.0))
    ious = {}
    for name, p in (("plain", plain), ("zoom", zoomed)):
        vals = []
        for k in (1, 30, 200, 400):
            gt = lab == k
            centre = np.argwhere(gt).mean(axis=0)
            masks, scores, logits = p.predict(centre[None], np.array([1]))
            assert masks.shape == (3, 512, 512)  # whole-slice masks
            m = masks[int(np.argmax(scores))]
            vals.append((m & gt).sum() / (m | gt).sum())
            # the logits fed back decode in the same crop again
            again, _, _ = p.predict(centre[None], np.array([1]), mask_input=logits[:1],
                                    multimask=False)
            assert again.shape == (1, 512, 512)
        ious[name] = np.mean(vals)
    assert ious["zoom"] > 0.65 and ious["plain"] > 0.65


def test_the_evaluation_protocol_runs_on_a_zoom_predictor(model):
    img, lab = _discs(128, 4, 20)  # 36 discs, in the 4 x 4 crops of 64 px that zoom 2 cuts
    r = evaluate_image(ZoomPredictor(model, zoom=2), img, lab, clicks=2)  # batched
    assert r["n_objects"] == lab.max() and len(r["miou"]) == 2
    assert r["miou"][0] > 0.5
    # object by object (one predict() per mask kind and click) on some of them: the same scores
    few = np.where(lab <= 8, lab, 0)
    old = evaluate_image(ZoomPredictor(model, zoom=2), img, few, clicks=2, batched=False)
    new = {o["id"]: o for o in r["per_object"]}
    assert len(old["per_object"]) == 8
    for o in old["per_object"]:
        for key in ("iou", "iou_oracle"):
            np.testing.assert_allclose(new[o["id"]][key], o[key], atol=0.01)


@pytest.mark.parametrize("kwargs", [dict(zoom=0.5), dict(zoom="big"), dict(overlap=1.0)])
def test_bad_settings_are_rejected(model, kwargs):
    with pytest.raises(ValueError):
        ZoomPredictor(model, **kwargs)
    with pytest.raises(RuntimeError):
        ZoomPredictor(model).predict(np.array([[1.0, 1.0]]))
    zoomed = ZoomPredictor(model, zoom=2)
    zoomed.set_image(np.random.default_rng(0).random((64, 64)))
    with pytest.raises(ValueError, match="earlier predict"):  # logits from nowhere
        zoomed.predict(mask_input=np.zeros((1, 256, 256), np.float32))


def test_every_output_of_several_objects_at_once(model):
    img, lab = _discs(128, 4, 20)
    zoomed = ZoomPredictor(model, zoom=2)
    zoomed.set_image(img, (0.0, 1.0))
    centres = np.array([np.argwhere(lab == k).mean(axis=0) for k in (1, 6, 36)])[:, None]
    masks, scores, logits, origins = zoomed.predict_every_output(centres, np.ones((3, 1)), None)
    assert masks.shape == (3, 4, 128, 128) and scores.shape == (3, 4)
    assert len({tuple(o) for o in origins}) == 3  # three crops
    for i in range(3):  # predict() on one object: its crop, its masks
        multi, multi_scores, _ = zoomed.predict(centres[i], np.array([1]))
        single, _, _ = zoomed.predict(centres[i], np.array([1]), multimask=False)
        assert tuple(zoomed._last) == tuple(origins[i])
        np.testing.assert_allclose(scores[i], np.r_[scores[i, :1], multi_scores], atol=1e-4)
        assert (masks[i, 1:] != multi).mean() < 1e-3 and (masks[i, 0] != single[0]).mean() < 1e-3
    # the next click decodes in the same crops, given them with the logits
    again = zoomed.predict_every_output(centres, np.ones((3, 1)), None, logits[:, :1], origins,
                                        single_output=False)
    assert again[0].shape == (3, 3, 128, 128) and (again[3] == origins).all()
    # the single output alone: the same mask, no candidates upsampled
    alone = zoomed.predict_every_output(centres, np.ones((3, 1)), None, logits[:, :1], origins,
                                        candidates=False)
    both = zoomed.predict_every_output(centres, np.ones((3, 1)), None, logits[:, :1], origins)
    assert alone[0].shape == (3, 1, 128, 128) and alone[1].shape == (3, 1)
    np.testing.assert_array_equal(alone[0], both[0][:, :1])
    np.testing.assert_allclose(alone[2], both[2][:, :1], atol=1e-5)
    with pytest.raises(ValueError, match="no output"):
        zoomed.predict_every_output(centres, np.ones((3, 1)), None, single_output=False,
                                    candidates=False)
    with pytest.raises(ValueError, match="origins"):
        zoomed.predict_every_output(centres, np.ones((3, 1)), None, logits[:, :1])


def _speck_and_nucleus(size=1024):
    """A 1024 px slice: a large blurred nucleus and, apart from it, a speck of radius 2 px
    (1 px at a 512 px model's input); and their labels (1 nucleus, 2 speck)."""
    yy, xx = np.mgrid[:size, :size]
    lab = np.zeros((size, size), np.int32)
    lab[(yy - 300) ** 2 + (xx - 300) ** 2 <= 60 ** 2] = 1
    lab[(yy - 700) ** 2 + (xx - 640) ** 2 <= 2 ** 2] = 2
    rng = np.random.default_rng(3)
    img = ndimage.gaussian_filter((lab > 0) * 1.0, 0.7) + rng.normal(0, 0.02, lab.shape)
    return img.astype(np.float32), lab


def test_a_small_object_is_decoded_in_a_crop_of_its_own(model):
    img, _ = _speck_and_nucleus()
    on, off = ZoomPredictor(model, zoom=1), ZoomPredictor(model, zoom=1, small_objects=False)
    for p in (on, off):
        p.set_image(img, (0.0, 1.0))
    speck, nucleus = np.array([[700.0, 640.0]]), np.array([[300.0, 300.0]])
    assert on.object_zoom(speck, [1]) > 8 and on.object_zoom(nucleus, [1]) == 1.0
    assert off.object_zoom(speck, [1]) == 1.0
    masks, _, logits, frames = on.predict_every_output(np.stack([speck, nucleus]),
                                                       np.ones((2, 1)), None)
    r0, c0, ch, cw = frames[0]
    assert ch < 128 and r0 <= 700 < r0 + ch and c0 <= 640 < c0 + cw  # a magnified crop
    assert tuple(frames[1]) == (0, 0, 1024, 1024)  # the nucleus: the whole slice
    assert not masks[0][:, :r0].any() and not masks[0][:, :, c0 + cw:].any()
    # the nucleus decodes as without small objects; the speck in its crop, again with its
    # logits in the same frame
    plain = off.predict_every_output(nucleus[None], np.ones((1, 1)), None)
    np.testing.assert_array_equal(masks[1], plain[0][0])
    again = on.predict_every_output(speck[None], np.ones((1, 1)), None, logits[:1, :1],
                                    frames[:1], single_output=False)
    assert (again[3] == frames[:1]).all()
    # predict() of the speck: the same crop, then its logits fed back stay in it
    _, _, low = on.predict(speck, np.array([1]))
    assert on._last == tuple(int(v) for v in frames[0])
    on.predict(speck, np.array([1]), mask_input=low[:1], multimask=False)
    assert on._last == tuple(int(v) for v in frames[0])


def test_a_mask_becomes_logits_in_the_frame_it_is_decoded_in(model):
    img, lab = _speck_and_nucleus()
    zoomed = ZoomPredictor(model, zoom=1)
    zoomed.set_image(img, (0.0, 1.0))
    speck, nucleus = np.array([[700.0, 640.0]]), np.array([[300.0, 300.0]])
    _, _, _, frames = zoomed.predict_every_output(np.stack([speck, nucleus]), np.ones((2, 1)),
                                                  None)
    r0, c0, ch, cw = (int(v) for v in frames[0])
    # the speck's mask in its magnified crop: what a predictor holding that crop makes of it
    # (stretched to the model's input: a crop is not capped as a small slice is)
    crop_predictor = SamPredictor(model)
    crop = img[r0:r0 + ch, c0:c0 + cw]
    crop_predictor.set_embedding(crop_predictor.compute_embedding(crop, (0.0, 1.0), fill=True),
                                 crop, (0.0, 1.0))
    speck_mask = lab == 2
    logits = zoomed.mask_to_logits(speck_mask, frames[0])
    expected = crop_predictor.mask_to_logits(speck_mask[r0:r0 + ch, c0:c0 + cw])
    np.testing.assert_allclose(logits, expected)
    assert (logits > 0).sum() > 4  # magnified: the 13 px speck covers several logits
    # the nucleus on the whole slice, as a plain predictor of the slice
    whole = SamPredictor(model)
    whole.set_image(img, (0.0, 1.0))
    np.testing.assert_allclose(zoomed.mask_to_logits(lab == 1, frames[1]),
                               whole.mask_to_logits(lab == 1))
    np.testing.assert_allclose(zoomed.mask_to_logits(lab == 1, [0, 0]),  # a plain batch's frame
                               whole.mask_to_logits(lab == 1))
    # by default: the frame of the last predict(); the logits decode there again
    zoomed.predict(speck, np.array([1]))
    np.testing.assert_allclose(zoomed.mask_to_logits(speck_mask), expected)
    again = zoomed.predict_every_output(speck[None], np.ones((1, 1)), None, logits[None],
                                        frames[:1], single_output=False)
    assert (again[3] == frames[:1]).all()
    with pytest.raises(ValueError, match="does not match"):
        zoomed.mask_to_logits(speck_mask[:10])


def test_the_slice_zoomer_magnifies_small_objects_on_a_plain_predictor(model, monkeypatch):
    import threading

    from napari_sam.engine.zoom import SliceZoomer

    img, _ = _speck_and_nucleus()
    plain = SamPredictor(model)
    plain.set_image(img, (0.0, 1.0))
    zoomer, reference = SliceZoomer(), ZoomPredictor(model, zoom=1)
    reference.set_image(img, (0.0, 1.0))
    speck, nucleus, one = np.array([[700.0, 640.0]]), np.array([[300.0, 300.0]]), np.array([1])
    expected = reference.segment(speck, one)
    encoded = []
    real = SamPredictor.compute_embedding
    monkeypatch.setattr(SamPredictor, "compute_embedding",
                        lambda self, *a, **k: encoded.append(1) or real(self, *a, **k))
    mask, score, _ = zoomer.segment(plain, speck, one)
    np.testing.assert_array_equal(mask, expected[0])
    assert score == pytest.approx(expected[1], abs=1e-5)
    assert len(encoded) == 1  # the speck's crop (the slice's own embedding is reused)
    np.testing.assert_array_equal(zoomer.segment(plain, nucleus, one)[0],
                                  plain.segment(nucleus, one)[0])
    # from another thread (the viewer's next decoding worker): the same mask, no new crop
    out = {}
    worker = threading.Thread(target=lambda: out.update(m=zoomer.segment(plain, speck, one)[0]))
    worker.start()
    worker.join()
    np.testing.assert_array_equal(out["m"], mask)
    zoomer.segment(plain, speck, one)  # and back in this thread
    assert len(encoded) == 1
    # without the slice's pixels it cannot crop: the plain predictor decodes
    bare = SamPredictor(model)
    bare.set_embedding(plain.embedding)
    assert zoomer.zoom_predictor(bare) is None
    np.testing.assert_array_equal(zoomer.segment(bare, speck, one)[0],
                                  bare.segment(speck, one)[0])
