"""The half-maximum outline of propagated objects (napari_sam.workflows.outline)."""

import numpy as np
import pytest
from _blurred import S, Z, _iou, _stack
from scipy import ndimage

from napari_sam.workflows.mask_stack import MaskStack, Propagation
from napari_sam.workflows.outline import contrast, gray, half_max_outlines
from napari_sam.workflows.propagation import Seed


def _seeds(*ids, at=None):
    """One click per object on slice 8: at ``at[oid]`` ``(row, col)``, else the centre."""
    at = at or {}
    return {oid: [Seed(oid, 8, points=np.array([at.get(oid, (S // 2, S // 2))], float))]
            for oid in ids}


def _result(masks_by_object, score=0.9):
    return Propagation(masks={oid: MaskStack(m) for oid, m in masks_by_object.items()},
                       complete=True,
                       scores={oid: {i: score for i in m} for oid, m in masks_by_object.items()},
                       stopped={oid: {} for oid in masks_by_object})


def _volume(stack: MaskStack) -> np.ndarray:
    out = np.zeros((Z, S, S), bool)
    for i in stack:
        out[i] = stack[i]
    return out


def test_halo_masks_shrink_to_the_half_maximum_and_missing_ends_are_added():
    img, (truth,) = _stack([((8, 32, 32), 10)])
    zs = np.flatnonzero(truth.any(axis=(1, 2)))
    grown = ndimage.binary_dilation(truth, np.ones((1, 3, 3), bool), iterations=3)
    # the model's masks: 3 px too large all round, and ending a slice early at both ends
    masks = {int(i): grown[i] for i in zs[1:-1]}
    result = _result({1: masks})
    before = _volume(result.masks[1])
    out = half_max_outlines(result, lambda i: img[i], Z, _seeds(1))
    after = _volume(out.masks[1])
    assert out is result
    assert _iou(before, truth) < 0.7
    assert _iou(after, truth) > 0.85
    assert int(zs[0]) in out.masks[1] and int(zs[-1]) in out.masks[1]  # the ends came back
    assert out.scores[1][int(zs[0])] == pytest.approx(0.9)  # from the nearest slice


def test_slices_beyond_the_object_are_dropped_with_their_scores():
    img, (truth,) = _stack([((8, 32, 32), 8)])
    zs = np.flatnonzero(truth.any(axis=(1, 2)))
    disc = truth[8]
    # the model carried the object's mask on into the dark slices beyond its end
    masks = {i: disc for i in range(int(zs[0]), Z)}
    out = half_max_outlines(_result({1: masks}), lambda i: img[i], Z, _seeds(1))
    assert max(out.masks[1]) <= int(zs[-1]) + 1
    assert set(out.scores[1]) == set(out.masks[1])


def test_touching_neighbours_split_where_the_image_is_darkest_between_them():
    img, truths = _stack([((8, 32, 22), 9), ((8, 32, 40), 9)])
    halo = ndimage.binary_dilation(truths[0], np.ones((1, 3, 3), bool), iterations=4)
    # the model's boundary lies 4 px inside the right-hand nucleus
    masks = {1: {i: halo[i] for i in range(Z) if halo[i].any()},
             2: {i: truths[1][i] & ~halo[i] for i in range(Z) if (truths[1][i] & ~halo[i]).any()}}
    out = half_max_outlines(_result(masks), lambda i: img[i], Z,
                            _seeds(1, 2, at={1: (32, 22), 2: (32, 40)}))
    a, b = _volume(out.masks[1]), _volume(out.masks[2])
    gap = ~(truths[0] | truths[1])[8, 32]  # the row through both centres
    contact = int(np.flatnonzero(gap[22:40])[0]) + 22  # the column between them
    assert _iou(halo, truths[0]) < 0.6
    assert _iou(a, truths[0]) > 0.8 and _iou(b, truths[1]) > 0.7
    assert not (a & b).any()
    assert abs(np.nonzero(a.any(axis=(0, 1)))[0].max() - contact) <= 1  # split at the contact


def test_an_object_the_model_missed_is_drawn_from_its_click():
    img, (truth,) = _stack([((8, 24, 40), 7)])
    empty = np.zeros((S, S), bool)
    result = _result({1: {8: empty}, 2: {8: empty}})  # the model found nothing at either click
    out = half_max_outlines(result, lambda i: img[i], Z, _seeds(1, at={1: (24, 40)}))
    assert _iou(_volume(out.masks[1]), truth) > 0.7
    assert set(out.scores[1]) == set(out.masks[1])  # each gained slice has a score
    assert not _volume(out.masks[2]).any()  # no click (no seed here): nothing to draw from
    tiny = {8: ndimage.binary_dilation(np.pad(np.ones((1, 1), bool), ((24, 39), (40, 23))))}
    out = half_max_outlines(_result({1: tiny}), lambda i: img[i], Z,
                            _seeds(1, at={1: (24, 40)}))  # 5 px: measured at the click
    assert _iou(_volume(out.masks[1]), truth) > 0.7


def test_dark_objects_on_a_bright_background_keep_the_model_masks():
    img, (truth,) = _stack([((8, 32, 32), 10)])
    inverted = img.max() - img  # a dark ball on a bright background
    grown = ndimage.binary_dilation(truth, np.ones((1, 3, 3), bool), iterations=3)
    masks = {i: grown[i] for i in range(Z) if grown[i].any()}
    out = half_max_outlines(_result({1: masks}), lambda i: inverted[i], Z, _seeds(1))
    assert np.array_equal(_volume(out.masks[1]), grown)


def test_a_mask_given_as_a_seed_is_not_redrawn():
    img, (truth,) = _stack([((8, 32, 32), 10)])
    grown = ndimage.binary_dilation(truth, np.ones((1, 3, 3), bool), iterations=3)
    result = _result({1: {i: grown[i] for i in range(Z) if grown[i].any()}})
    result.scores[1][8] = float("inf")  # slice 8's mask was the user's annotation
    out = half_max_outlines(result, lambda i: img[i], Z, _seeds(1))
    assert np.array_equal(out.masks[1][8], grown[8])
    assert np.count_nonzero(out.masks[1][7]) < np.count_nonzero(grown[7])  # the rest redrawn


def test_rgb_slices_are_read_as_gray_and_each_slice_once():
    img, (truth,) = _stack([((8, 32, 32), 10)])
    rgb = np.repeat(img[..., None], 3, axis=-1)
    reads = []

    def slice_image(i):
        reads.append(i)
        return rgb[i]

    masks = {int(i): truth[i] for i in np.flatnonzero(truth.any(axis=(1, 2)))}
    corner = np.zeros((S, S), bool)
    corner[50:54, 50:54] = True  # a second object whose crop meets the first one's
    out = half_max_outlines(_result({1: masks, 2: {8: corner}}), slice_image, Z,
                            _seeds(1, 2, at={2: (52, 52)}))
    assert len(reads) == len(set(reads)) and len(reads) > 0
    assert _iou(_volume(out.masks[1]), truth) > 0.75
    assert gray(rgb[8]).shape == (S, S)


# polled before each of the Z slices read, then before measuring each of the two objects,
# then before outlining each: cancelled while reading, measuring, outlining
@pytest.mark.parametrize("after", [0, Z, Z + 3])
def test_cancel_leaves_the_masks_as_they_were(after):
    img, truths = _stack([((8, 20, 20), 8), ((8, 44, 44), 8)])
    grown = [ndimage.binary_dilation(t, np.ones((1, 3, 3), bool), iterations=3) for t in truths]
    masks = {oid: {i: g[i] for i in range(Z) if g[i].any()} for oid, g in ((1, grown[0]),
                                                                           (2, grown[1]))}
    polls = []

    def cancelled():
        polls.append(1)
        return len(polls) > after

    seeds = _seeds(1, 2, at={1: (20, 20), 2: (44, 44)})
    out = half_max_outlines(_result(masks), lambda i: img[i], Z, seeds, cancelled=cancelled)
    assert len(polls) == after + 1  # it returned at the first True
    for oid, g in ((1, grown[0]), (2, grown[1])):
        assert np.array_equal(_volume(out.masks[oid]), g)
        assert set(out.scores[oid]) == set(masks[oid])
    polls.clear()
    done = half_max_outlines(_result(masks), lambda i: img[i], Z, seeds,
                             cancelled=lambda: bool(polls.append(1)))
    assert len(polls) == Z + 4  # every stage polled
    assert not np.array_equal(_volume(done.masks[1]), grown[0])  # not cancelled: redrawn


def test_level_is_checked():
    with pytest.raises(ValueError, match="level"):
        half_max_outlines(_result({}), lambda i: None, Z, {}, level=1.0)


def test_contrast_is_inside_minus_band():
    img = np.zeros((20, 20), np.float32)
    img[5:15, 5:15] = 10
    mask = img > 0
    assert contrast(img, mask) == pytest.approx(10.0)
    assert contrast(img, np.zeros_like(mask)) == 0.0


def test_the_default_level_follows_the_object_size():
    from napari_sam.workflows.outline import LEVEL_BY_RADIUS

    img, (small, large) = _stack([((8, 16, 16), 5), ((8, 40, 40), 18)])
    masks = {oid: {int(i): t[i] for i in np.flatnonzero(t.any(axis=(1, 2)))}
             for oid, t in ((1, small), (2, large))}

    def run(level):
        out = half_max_outlines(_result(masks), lambda i: img[i], Z,
                                _seeds(1, 2, at={1: (16, 16), 2: (40, 40)}), level=level)
        return _volume(out.masks[1]), _volume(out.masks[2])

    default = run(None)
    low, high = run(LEVEL_BY_RADIUS[3]), run(LEVEL_BY_RADIUS[2])  # large, small
    assert not np.array_equal(low[0], high[0]) and not np.array_equal(low[1], high[1])
    assert np.array_equal(default[0], high[0])  # radius 5 px: the small object's level
    assert np.array_equal(default[1], low[1])  # radius 18 px: the large object's

