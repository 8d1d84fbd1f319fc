"""What a prompt asked for of a mask: cut to the box, clicks followed, the prompted pieces; a
corrective click's mask kept near the click."""

import numpy as np
import pytest

from napari_sam.engine.postprocess import (
    BOX_MARGIN,
    after_click,
    clip_to_box,
    follow_clicks,
    keep_prompted_pieces,
)


def _spilling_mask():
    """An object in rows/cols 20..39 whose mask spills 15 px to the right (a halo, a neighbour)."""
    mask = np.zeros((80, 80), bool)
    mask[20:40, 20:55] = True
    return mask


def test_clip_to_box_keeps_the_box_and_its_margin_only():
    mask = _spilling_mask()
    before = mask.copy()
    out = clip_to_box(mask, [20, 20, 39, 39])
    np.testing.assert_array_equal(mask, before)  # not changed in place
    reach = 39 + BOX_MARGIN * 20 + 1  # 10 % of the side plus one pixel
    cols = np.flatnonzero(out.any(axis=0))
    assert cols[0] == 20 and cols[-1] == int(np.ceil(reach))
    assert out[20:40, 20:40].all()  # nothing inside the box is lost
    assert not out[:, 45:].any()


def test_clip_to_box_grows_to_take_in_positive_points():
    mask = _spilling_mask()
    # a positive click at column 52 says the object reaches there; a negative one does not
    out = clip_to_box(mask, [20, 20, 39, 39], points=[[30, 52], [30, 60]], labels=[1, 0])
    np.testing.assert_array_equal(out, mask)  # 20..52 grown by 10 % + 1 px reaches col 57
    outside = clip_to_box(mask, [20, 20, 39, 39], points=[[30, 60]], labels=[0])
    assert outside[30, 42] and not outside[30, 43]  # 39 + 3: a negative click widens nothing


def test_clip_to_box_at_the_image_border():
    mask = np.ones((10, 10), bool)
    out = clip_to_box(mask, [-5, -5, 3, 3], margin=0.0)
    assert out[:5, :5].all() and not out[6:, :].any() and not out[:, 6:].any()
    assert not clip_to_box(mask, [30, 30, 40, 40], margin=0.0).any()  # box off the image


def test_keep_prompted_pieces_cuts_to_the_box_before_choosing_pieces():
    mask = _spilling_mask()
    far = mask.copy()
    far[60:70, 60:70] = True  # a stray piece, outside the box
    out = keep_prompted_pieces(far, box=[20, 20, 39, 39])
    assert not out[60:70, 60:70].any() and not out[:, 45:].any()
    assert out[20:40, 20:40].all()
    # with a positive point inside the box the same cut applies
    np.testing.assert_array_equal(keep_prompted_pieces(far, [[30, 30]], [1], [20, 20, 39, 39]), out)


def _disc(shape, centre, radius):
    yy, xx = np.ogrid[:shape[0], :shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2


def test_a_negative_click_inside_the_mask_moves_its_edge_there_only():
    truth = _disc((80, 80), (40, 40), 15)
    mask = _disc((80, 80), (40, 40), 18)  # 3 px too large all round
    out = follow_clicks(mask, [[40, 40], [23, 40]], [1, 0])  # the click in the top rim
    assert mask[23, 40] and not out[23, 40]
    removed = mask & ~out
    assert removed[:26].sum() == removed.sum() > 5  # a dent at the click only
    assert out[57, 40] and out[40, 23] and out[40, 57]  # the other sides untouched
    assert np.count_nonzero(out & ~truth) < np.count_nonzero(mask & ~truth)
    assert not (out & ~mask).any()


def test_a_positive_click_outside_grows_the_mask_towards_it():
    mask = _disc((80, 80), (40, 40), 12)
    out = follow_clicks(mask, [[40, 40], [40, 56]], [1, 1])  # 4 px right of the edge
    assert out[40, 56] and not mask[40, 56]
    assert out[40, 52:57].all()  # joined to the mask, not a speck
    assert not (mask & ~out).any() and not (out & ~mask)[:, :40].any()


def test_clicks_on_the_right_side_and_first_clicks_change_nothing():
    mask = _disc((60, 60), (30, 30), 10)
    assert follow_clicks(mask, [[30, 30], [5, 5]], [1, 0]) is mask  # already outside
    assert follow_clicks(mask, [[5, 5]], [1]) is mask  # the first click: SAM's choice
    assert follow_clicks(mask, None) is mask
    # with a box every point is corrective
    boxed = follow_clicks(mask, [[30, 21]], [0], box=[15, 15, 45, 45])
    assert not boxed[30, 21] and boxed[30, 30]
    # keep_prompted_pieces follows the clicks unless told not to
    assert not keep_prompted_pieces(mask, [[30, 30], [30, 21]], [1, 0])[30, 21]
    assert keep_prompted_pieces(mask, [[30, 30], [30, 21]], [1, 0], follow=False)[30, 21]


def test_the_image_border_is_not_an_edge_of_the_mask():
    mask = np.zeros((40, 40), bool)
    mask[:, :10] = True  # an object cut by the image's left border
    out = follow_clicks(mask, [[5, 5], [20, 1]], [1, 0])
    # the click is 9 px from the mask's edge (column 10), not 1 px from the border
    assert not out[20, 1:10].any()
    assert out[:3, :6].all() and out[37:, :6].all()  # far from it: untouched


def test_after_click_takes_the_new_mask_near_the_click_only():
    previous = _disc((100, 100), (50, 50), 20)
    new = _disc((100, 100), (50, 58), 20)  # shifted right: the left side moved too
    # a click 7 px beyond the edge (deeper than EDGE_CLICK): SAM's new mask near it
    near_click = after_click(previous, new, [[50, 50], [50, 77]], [1, 1])
    assert near_click[50, 77] and near_click[50, 78]  # grown where clicked (right)
    assert near_click[50, 30] and not new[50, 30]  # the left side kept as it was
    # a click that chose another object: its mask is taken whole
    other = _disc((100, 100), (20, 20), 8)
    np.testing.assert_array_equal(after_click(previous, other, [[50, 50], [20, 20]], [1, 1]),
                                  keep_prompted_pieces(other, [[50, 50], [20, 20]], [1, 1]))
    with pytest.raises(ValueError, match="differ"):
        after_click(previous, new[:50], [[50, 50]], [1])


def test_a_click_at_the_edge_moves_the_edge_only():
    previous = _disc((100, 100), (50, 50), 20)
    # SAM's answer to a negative click 2 px inside the edge: a chunk carved out
    carved = previous & ~_disc((100, 100), (50, 75), 14)
    points, labels = [[50, 50], [50, 68]], [1, 0]
    out = after_click(previous, carved, points, labels)
    np.testing.assert_array_equal(out, keep_prompted_pieces(previous, points, labels))
    assert not out[50, 68]  # the click is outside the mask
    assert out[50, 62] and not carved[50, 62]  # the chunk was not carved
    assert np.count_nonzero(previous & ~out) < 30  # only the edge near the click moved
    # a positive click 3 px outside: the edge grows to it, SAM's bulge is not taken
    bulge = previous | _disc((100, 100), (50, 78), 9)
    grown = after_click(previous, bulge, [[50, 50], [50, 73]], [1, 1])
    assert grown[50, 73] and not grown[50, 80] and bulge[50, 80]
    # the same click with edge=0, or a deep click: SAM's mask near the click
    assert not after_click(previous, carved, points, labels, edge=0)[50, 62]
    deep = previous & ~_disc((100, 100), (50, 64), 6)
    assert not after_click(previous, deep, [[50, 50], [50, 62]], [1, 0])[50, 64]


def test_a_click_on_its_right_side_or_at_the_image_border_is_not_at_the_edge():
    from napari_sam.engine.postprocess import _edge_depth

    mask = np.zeros((40, 40), bool)
    mask[:, :10] = True  # cut by the image's left border
    assert _edge_depth(mask, 20, 1, 0, 4.0) == np.inf  # 9 px from the edge, 1 from the border
    assert _edge_depth(mask, 20, 8, 0, 4.0) == 2.0
    assert _edge_depth(mask, 20, 12, 1, 4.0) == 3.0  # a positive click outside
    assert _edge_depth(mask, 20, 5, 1, 4.0) == np.inf  # a positive click inside: right side
