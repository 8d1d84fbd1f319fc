"""Automatic segmentation: no overlaps, filtering, linking across slices, cancel, bad input."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_sam import SamPredictor, build_model
from napari_sam.workflows.automatic import (
    AutomaticParams,
    _Candidate,
    _decode_points,
    _drop_parts,
    _grid,
    _merge_convex_pieces,
    _nms,
    _paint,
    blob_points,
    link_slices,
    segment_everything,
    segment_everything_nd,
)
from napari_sam.evaluation.baselines import instance_metrics
from napari_sam.models.build import build_sam, tiny_config

# on the centres of an 8 x 8 grid's cells, so that a coarse grid (fast) hits every disc
CENTRES = [(48, 48), (48, 144), (144, 48), (144, 176), (208, 208), (80, 208)]


def _discs(size=256, r=15):
    yy, xx = np.mgrid[:size, :size]
    lab = np.zeros((size, size), np.int32)
    for i, (cy, cx) in enumerate(CENTRES, start=1):
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = i
    rng = np.random.default_rng(1)
    img = ndimage.gaussian_filter((lab > 0) * 1.0, 1.5) + rng.normal(0, 0.05, lab.shape)
    return img.astype(np.float32), lab


@pytest.fixture(scope="module")
def default_model():
    return build_model("default")


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_sam(tiny_config())


PARAMS = AutomaticParams(points_per_side=8)


@pytest.mark.parametrize("source", ["grid", "blobs"])
def test_finds_the_discs_without_overlap(default_model, source):
    img, lab = _discs()
    emb = SamPredictor(default_model).compute_embedding(img, (0.0, 1.0))
    seen = []
    params = AutomaticParams(points_per_side=8, point_source=source)
    out = segment_everything(default_model, img, params=params, intensity_range=(0.0, 1.0),
                             embedding=emb, progress=lambda d, t: seen.append((d, t)))
    assert out.dtype == np.int32 and out.shape == lab.shape
    ids = np.unique(out[out > 0])
    np.testing.assert_array_equal(ids, np.arange(1, ids.size + 1))  # consecutive
    for i in ids:  # every object is one connected piece
        assert ndimage.label(out == i)[1] == 1
    m = instance_metrics(out, lab)
    assert m["f1_50"] >= 0.8
    assert seen[-1][0] == seen[-1][1]


def test_paint_never_overlaps_and_drops_covered_masks():
    big = np.ones((10, 10), bool)
    small = np.ones((4, 4), bool)
    cands = [
        _Candidate(0, 0, big, 0.9),
        _Candidate(2, 2, small, 0.8),  # inside the better mask: dropped
        _Candidate(8, 8, np.ones((6, 6), bool), 0.7),  # 4 of 36 pixels taken: kept
    ]
    out = _paint(cands, (16, 16), AutomaticParams(min_area=4, min_free_fraction=0.6))
    assert set(np.unique(out)) == {0, 1, 2}
    assert (out[:10, :10] == 1).all()
    assert np.count_nonzero(out == 2) == 36 - 4


def test_paint_fills_holes_and_removes_islands():
    m = np.ones((12, 12), bool)
    m[5:7, 5:7] = False  # a small hole
    m[0, 11] = False
    island = np.zeros((20, 20), bool)
    island[:12, :12] = m
    island[18, 18] = True  # a 1-pixel island
    out = _paint([_Candidate(0, 0, island, 0.9)], (20, 20),
                 AutomaticParams(min_area=4, max_hole_area=8))
    assert out[5, 5] == 1 and out[18, 18] == 0


def test_nms_keeps_the_better_of_two_duplicates():
    a = _Candidate(0, 0, np.ones((10, 10), bool), 0.6)
    b = _Candidate(1, 0, np.ones((10, 10), bool), 0.9)
    c = _Candidate(30, 30, np.ones((5, 5), bool), 0.5)
    kept = _nms([a, b, c], 0.7)
    assert kept == [b, c]


def _disc_mask(size, centre, r):
    yy, xx = np.mgrid[:size, :size]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= r**2


def _cand(mask, score):
    """A candidate stored like segment_everything's: its tight box and the mask inside it."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return _Candidate(int(rows[0]), int(cols[0]),
                      mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].copy(), score)


def test_parts_of_a_convex_whole_give_way_to_it():
    whole = _disc_mask(40, (20, 20), 15)
    top, bottom = whole.copy(), whole.copy()
    top[20:] = False
    bottom[:20] = False
    far = _disc_mask(40, (5, 35), 3)
    cands = [_cand(whole, 0.80), _cand(top, 0.86), _cand(bottom, 0.84), _cand(far, 0.99)]
    kept = _drop_parts(cands, 0.1)
    assert [c.score for c in kept] == [0.80, 0.99]  # both halves dropped, the far disc kept
    # a whole scoring further below its parts than the margin does not replace them
    assert len(_drop_parts(cands, 0.05)) == 3  # the top half (0.86) stays, the bottom goes
    assert _drop_parts(cands, None) == cands
    labels = _paint(_nms(kept, 0.7), (40, 40), AutomaticParams())
    assert len(np.unique(labels)) == 3  # background, the whole, the far disc
    assert labels[10, 20] == labels[30, 20] != 0


def test_two_touching_objects_are_not_taken_for_one_whole():
    left, right = _disc_mask(60, (30, 18), 12), _disc_mask(60, (30, 42), 12)
    pair = left | right  # touching at one point: a waist, solidity well below 0.9
    cands = [_cand(pair, 0.9), _cand(left, 0.85), _cand(right, 0.85)]
    assert _drop_parts(cands, 0.2) == cands


def test_pieces_with_a_convex_union_are_merged_touching_objects_are_not():
    labels = np.zeros((60, 120), np.int32)
    disc = _disc_mask(60, (30, 30), 14)
    labels[:30, :60][disc[:30]] = 7  # one disc cut in three pieces
    labels[30:, :60][disc[30:]] = 3
    labels[30:, 30:60][labels[30:, 30:60] == 3] = 9
    labels[:, 60:][_disc_mask(60, (30, 12), 11)] = 4  # two touching discs
    labels[:, 60:][_disc_mask(60, (30, 34), 11)] = 5
    out = _merge_convex_pieces(labels, 0.95)
    assert len(np.unique(out[:, :60][disc])) == 1 and out[30, 30] != 0  # three pieces, one
    assert out[30, 72] != out[30, 94] and 0 not in (out[30, 72], out[30, 94])
    assert sorted(np.unique(out)) == [0, 1, 2, 3]  # labels stay 1..N
    assert np.array_equal(out > 0, labels > 0)  # nothing painted or erased
    assert np.array_equal(_merge_convex_pieces(labels, None), labels)


def test_blob_points_one_point_per_blob_strongest_first():
    yy, xx = np.mgrid[:200, :300]
    blobs = [((50, 60), 6, 1.0), ((120, 200), 20, 0.6), ((160, 60), 10, 0.3)]
    img = np.zeros((200, 300))
    for (cy, cx), r, v in blobs:
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = v
    img = ndimage.gaussian_filter(img, 1.0) + np.random.default_rng(0).normal(0, 0.02, img.shape)
    pts = blob_points(img, (0.0, 1.0), work_size=512)
    assert pts.shape == (3, 2)
    # the threshold is in units of the noise: at 1 noise std, noise maxima come (after the blobs)
    more = blob_points(img, (0.0, 1.0), work_size=512, threshold=1.0, min_contrast=0.0)
    assert len(more) > 3
    hit = set()
    for p in more[:3]:  # the three strongest are the blobs
        k = int(np.argmin([np.hypot(*(p - c)) for c, _, _ in blobs]))
        assert np.hypot(*(p - blobs[k][0])) < blobs[k][1] / 2
        hit.add(k)
    assert hit == {0, 1, 2}
    for (cy, cx), r, _ in blobs:  # one point near each centre
        d = np.hypot(pts[:, 0] - cy, pts[:, 1] - cx)
        assert np.sum(d < r / 2) == 1
    # strongest first: the bright small disc before the dim one
    order = [int(np.argmin(np.hypot(*(pts - c).T))) for c, _, _ in blobs]
    assert order[0] < order[2]
    # downsampled to the working size, the points stay in the image's pixel frame
    small = blob_points(img, (0.0, 1.0), work_size=100)
    assert len(small) >= 2 and small.max(axis=0).tolist() <= [199, 299]
    assert np.min(np.hypot(small[:, 0] - 120, small[:, 1] - 200)) < 6
    assert blob_points(np.zeros((50, 50))).shape == (0, 2)
    assert len(blob_points(np.random.default_rng(1).normal(0, 1, (200, 200)), (-4.0, 4.0))) <= 2


def test_blobs_decode_fewer_prompts_than_the_grid(default_model, monkeypatch):
    import napari_sam.workflows.candidates as candidates

    img, lab = _discs()
    calls = []
    real = candidates.decode_windows

    def counting(predictor, emb, points, *args, **kwargs):
        calls.append(len(points))
        return real(predictor, emb, points, *args, **kwargs)

    monkeypatch.setattr(candidates, "decode_windows", counting)
    n = {}
    for source in ("grid", "blobs"):
        calls.clear()
        out = segment_everything(default_model, img, intensity_range=(0.0, 1.0),
                                 params=AutomaticParams(point_source=source))
        n[source] = sum(calls)
        assert instance_metrics(out, lab)["f1_50"] >= 0.8
    assert n["blobs"] * 4 <= n["grid"]


def test_windowed_decoding_matches_the_whole_grid(default_model):
    img, lab = _discs()
    predictor = SamPredictor(default_model)
    emb = predictor.compute_embedding(img, (0.0, 1.0))
    pts = np.asarray(CENTRES, dtype=float)[:, None, :]
    full, full_iou = _decode_points(predictor, emb, pts, 0)
    win, win_iou = _decode_points(predictor, emb, pts, 16, 0.5)
    assert win.shape == full.shape and win_iou.shape == full_iou.shape == (len(CENTRES), 3)
    best = full_iou.argmax(dim=1)
    for i, k in enumerate(best.tolist()):
        a, b = full[i, k] > 0, win[i, k] > 0
        assert (a & b).sum() / (a | b).sum() > 0.9
    # a window smaller than the discs cuts every mask: with no IoU floor all of them are
    # decoded again on the whole grid, so the result is the full decode
    tiny_win, tiny_iou = _decode_points(predictor, emb, pts, 2, 0.0)
    torch.testing.assert_close(tiny_win, full)
    torch.testing.assert_close(tiny_iou, full_iou)


def test_grid_is_coarse_to_fine_and_covers_the_image():
    pts = _grid(8, (64, 32))
    assert pts.shape == (64, 2)
    assert len({tuple(p) for p in pts}) == 64
    first = pts[:4]  # the coarsest level spreads over the image
    assert first[:, 0].max() - first[:, 0].min() >= 32


def test_cancel_returns_what_was_found(default_model):
    img, lab = _discs()
    polls = []

    def cancelled():
        polls.append(1)
        return len(polls) > 2

    params = AutomaticParams(points_per_side=8, points_per_batch=8)
    out = segment_everything(default_model, img, params=params, intensity_range=(0.0, 1.0),
                             cancelled=cancelled)
    full = segment_everything(default_model, img, params=params, intensity_range=(0.0, 1.0))
    assert out.shape == lab.shape and out.max() <= full.max()


def test_stack_objects_are_linked_across_slices(default_model):
    img, lab = _discs()
    stack = np.stack([img, img, np.zeros_like(img), img])
    out = segment_everything_nd(default_model, stack, axis=0, indices=[0, 1, 3], params=PARAMS,
                                intensity_range=(0.0, 1.0))
    assert out.shape == stack.shape
    np.testing.assert_array_equal(out[0], out[1])  # same objects, same ids
    assert not out[2].any()
    assert set(np.unique(out[3])).isdisjoint(set(np.unique(out[0])) - {0})  # gap: new objects



def test_unlinked_stack_gives_every_2d_object_its_own_id(tiny):
    img = np.random.default_rng(0).random((40, 50))
    params = AutomaticParams(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                             max_area_fraction=1.0, min_free_fraction=0.0, min_area=1,
                             point_source="grid")
    out = segment_everything_nd(tiny, np.stack([img, img]), axis=0, params=params,
                                link_3d=False)
    a, b = set(np.unique(out[0])) - {0}, set(np.unique(out[1])) - {0}
    assert a and b and a.isdisjoint(b)


def test_link_slices_pairs_by_overlap():
    a = np.zeros((3, 10, 10), np.int32)
    a[0, :5, :5] = 4
    a[1, 1:6, :5] = 9  # overlaps 4
    a[1, 7:, 7:] = 2  # new
    a[2, 7:, 7:] = 5  # continues 2
    out = link_slices(a, 0.5)
    assert out[0, 0, 0] == out[1, 2, 2] and out[1, 8, 8] == out[2, 8, 8]
    assert out[0, 0, 0] != out[1, 8, 8]
    assert set(np.unique(out)) == {0, 1, 2}


def test_random_tiny_model_gives_valid_labels(tiny):
    rng = np.random.default_rng(0)
    out = segment_everything(tiny, rng.random((40, 50)), params=AutomaticParams(points_per_side=4,
                             pred_iou_thresh=0.0, stability_score_thresh=0.0))
    assert out.shape == (40, 50) and out.dtype == np.int32 and out.min() >= 0
    out3 = segment_everything_nd(tiny, rng.random((40, 3, 50)), axis=1,
                                 params=AutomaticParams(points_per_side=2))
    assert out3.shape == (40, 3, 50)


@pytest.mark.parametrize("kwargs", [dict(points_per_side=0), dict(pred_iou_thresh=1.5),
                                    dict(crop_overlap=1.0), dict(crop_n_layers=5),
                                    dict(min_area=-1), dict(points_per_batch=True),
                                    dict(point_source="random"), dict(blob_threshold=0),
                                    dict(decode_window=-1), dict(part_score_margin=-0.1),
                                    dict(merge_solidity=1.5)])
def test_bad_params_are_rejected(kwargs):
    with pytest.raises(ValueError):
        AutomaticParams(**kwargs)


def test_bad_input_is_rejected(tiny):
    with pytest.raises(ValueError, match="2D slice"):
        segment_everything(tiny, np.zeros((2, 3, 8, 8)))
    with pytest.raises(ValueError, match="axis=None"):
        segment_everything_nd(tiny, np.zeros((3, 8, 8)), axis=None)
    with pytest.raises(ValueError, match="indices"):
        segment_everything_nd(tiny, np.zeros((3, 8, 8)), axis=0, indices=[3])
    emb = SamPredictor(tiny).compute_embedding(np.zeros((8, 8)))
    with pytest.raises(ValueError, match="embedding"):
        segment_everything(tiny, np.zeros((9, 9)), embedding=emb)


def test_filter_defaults_follow_the_point_source():
    assert (AutomaticParams().pred_iou_thresh, AutomaticParams().stability_score_thresh) == (
        0.3, 0.75)
    grid = AutomaticParams(point_source="grid")
    assert (grid.pred_iou_thresh, grid.stability_score_thresh) == (0.7, 0.9)
    given = AutomaticParams(point_source="grid", pred_iou_thresh=0.2)
    assert (given.pred_iou_thresh, given.stability_score_thresh) == (0.2, 0.9)


def _spotted(size, r, n_side):
    """Discs of radius ``r`` on an ``n_side`` x ``n_side`` lattice, each with 4 bright spots."""
    yy, xx = np.mgrid[:size, :size]
    img = np.zeros((size, size), np.float32)
    step = size / n_side
    for i in range(n_side):
        for j in range(n_side):
            cy, cx = (i + 0.5) * step, (j + 0.5) * step
            img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 0.4
            if r > 6:
                for dy, dx in ((-0.4, -0.4), (-0.4, 0.4), (0.4, -0.4), (0.4, 0.4)):
                    sy, sx = cy + dy * r, cx + dx * r
                    img[(yy - sy) ** 2 + (xx - sx) ** 2 <= 4] = 1.0
    rng = np.random.default_rng(0)
    return ndimage.gaussian_filter(img, 1.0) + rng.normal(0, 0.02, img.shape).astype(np.float32)


def test_zooms_in_on_small_objects_not_on_textured_large_ones(default_model, embedded_shapes):
    shapes = embedded_shapes
    size = default_model.img_size
    # large discs: their bright spots are small blobs, but the objects are large -> whole image
    segment_everything(default_model, _spotted(2 * size, 80, 4))
    assert shapes == [(2 * size, 2 * size)]
    shapes.clear()
    # small discs (radius 4 px at the model's input scale) -> 2 x 2 overlapping crops
    small = _spotted(size, 4, 8)  # 64 of them: each crop holds several
    segment_everything(default_model, small)
    assert len(shapes) == 4 and all(max(s) < size for s in shapes)
    shapes.clear()
    segment_everything(default_model, small, params=AutomaticParams(zoom_below_radius=0))
    assert shapes == [(size, size)]


def test_kept_masks_are_refined_unless_asked_not_to(default_model):
    import copy

    from napari_sam.training.refiner import attach_refiner

    img, _ = _discs()
    model = copy.deepcopy(default_model)
    refiner = attach_refiner(model)
    with torch.no_grad():
        refiner.out.bias.fill_(-30.0)  # erases every mask
    off = segment_everything(model, img, params=AutomaticParams(points_per_side=8, refine=False),
                             intensity_range=(0.0, 1.0))
    on = segment_everything(model, img, params=AutomaticParams(points_per_side=8),
                            intensity_range=(0.0, 1.0))
    assert off.max() >= 2
    assert on.max() == 0
