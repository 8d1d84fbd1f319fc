"""What a prompt asked for of a mask: cut to the box, the prompted pieces."""

import numpy as np

from napari_sam.engine.postprocess import BOX_MARGIN, clip_to_box, keep_prompted_pieces


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
