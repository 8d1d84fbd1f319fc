"""A click added to an object refines its previous mask (napari_sam.engine.click_memory)."""

import numpy as np

from napari_sam.engine.click_memory import ClickMemory


def _obj(points=None, labels=None, box=None, mask=None):
    return {"points": None if points is None else np.asarray(points, float),
            "labels": None if labels is None else np.asarray(labels),
            "box": box, "mask_input": mask}


def test_a_click_added_gets_the_previous_logits_and_nothing_else_does():
    memory, emb, other_emb = ClickMemory(), object(), object()
    first = _obj([[10, 10]], [1])
    logits1, logits2 = np.full((1, 8, 8), 1.0, np.float32), np.full((1, 8, 8), 2.0, np.float32)
    assert memory.mask_prompt(emb, first) is None  # nothing decoded yet
    memory.remember(emb, first, None, logits1)
    assert memory.mask_prompt(emb, first) is None  # the same points: the same prompt as before
    second = _obj([[10, 10], [20, 5]], [1, 0])
    np.testing.assert_array_equal(memory.mask_prompt(emb, second), logits1)  # a click added
    memory.remember(emb, second, logits1, logits2)
    np.testing.assert_array_equal(memory.mask_prompt(emb, second), logits1)  # decoded again
    third = _obj([[10, 10], [20, 5], [3, 3]], [1, 0, 1])
    np.testing.assert_array_equal(memory.mask_prompt(emb, third), logits2)
    # a moved or deleted point, another label, another slice: from nothing
    assert memory.mask_prompt(emb, _obj([[11, 10], [20, 5], [3, 3]], [1, 0, 1])) is None
    assert memory.mask_prompt(emb, _obj([[10, 10], [20, 5], [3, 3]], [1, 1, 1])) is None
    assert memory.mask_prompt(emb, first) is None
    assert memory.mask_prompt(other_emb, third) is None
    memory.remember(other_emb, first, None, logits1)  # another slice: the old one forgotten
    assert memory.mask_prompt(emb, third) is None


def test_boxes_are_objects_of_their_own_and_mask_prompts_are_not_followed():
    memory, emb = ClickMemory(), object()
    logits = np.ones((1, 8, 8), np.float32)
    box_a, box_b = np.array([0, 0, 10, 10.0]), np.array([20, 20, 30, 30.0])
    memory.remember(emb, _obj(box=box_a), None, logits)
    np.testing.assert_array_equal(memory.mask_prompt(emb, _obj([[5, 5]], [0], box=box_a)), logits)
    assert memory.mask_prompt(emb, _obj([[25, 25]], [0], box=box_b)) is None
    assert memory.mask_prompt(emb, _obj([[5, 5]], [1])) is None  # the free points: another one
    mask = np.zeros((32, 32), bool)
    memory.remember(emb, _obj(box=box_a, mask=mask), None, logits)
    assert memory.mask_prompt(emb, _obj([[5, 5]], [0], box=box_a, mask=mask)) is None
    memory.clear()
    assert memory.mask_prompt(emb, _obj([[5, 5]], [0], box=box_a)) is None


def test_points_given_at_once_are_decoded_in_click_order():
    from napari_sam.engine.click_memory import segment_in_click_order

    calls = []

    def segment(points=None, labels=None, box=None, mask_input=None):
        calls.append((None if points is None else len(points), box is not None,
                      None if mask_input is None else int(np.count_nonzero(mask_input))))
        mask = np.zeros((4, 4), bool)
        mask[:len(calls)] = True  # the n-th call: n rows
        return mask, 0.5, np.full((1, 2, 2), float(len(calls)), np.float32)

    out = segment_in_click_order(segment, [[1, 1], [2, 2], [3, 3]], [0, 1, 0])
    # the lone negative point makes no object yet; then each click with the last mask shown
    # (a binary mask, which the predictor turns into logits in its frame) as its mask prompt
    assert calls == [(2, False, None), (3, False, 4)] and out[2][0, 0, 0] == 2.0
    calls.clear()
    segment_in_click_order(segment, [[1, 1]], [0], box=np.array([0, 0, 3, 3.0]))
    assert calls == [(None, True, None), (1, True, 4)]  # the box first
    calls.clear()
    segment_in_click_order(segment, [[1, 1]], [0])  # negative points alone: as given
    assert calls == [(1, False, None)]


def _disc(centre, radius, shape=(100, 100)):
    yy, xx = np.ogrid[:shape[0], :shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2


def test_settle_keeps_a_clicks_change_near_the_click():
    from napari_sam.engine.postprocess import after_click

    memory, emb = ClickMemory(), object()
    first, second = _obj([[50, 50]], [1]), _obj([[50, 50], [50, 72]], [1, 1])
    shown1 = _disc((50, 50), 20)
    moved = _disc((50, 53), 20)  # the decode with the click: the far side moved too
    assert memory.settle(emb, first, shown1) is shown1  # the first decode: as it is
    shown2 = memory.settle(emb, second, moved)
    np.testing.assert_array_equal(shown2, after_click(shown1, moved, [[50, 50], [50, 72]],
                                                      [1, 1]))
    assert shown2[50, 30] and not moved[50, 30]
    # decoded again with the same points (another object changed): the same mask again
    np.testing.assert_array_equal(memory.settle(emb, second, moved), shown2)
    # a third click builds on what was shown after the second
    third = _obj([[50, 50], [50, 72], [20, 50]], [1, 1, 0])
    np.testing.assert_array_equal(
        memory.settle(emb, third, moved),
        after_click(shown2, moved, [[50, 50], [50, 72], [20, 50]], [1, 1, 0]))
    # a moved point, another slice, a mask-layer prompt: the mask as decoded
    assert memory.settle(emb, _obj([[51, 50], [50, 72]], [1, 1]), moved) is moved
    assert memory.settle(object(), second, moved) is moved
    assert memory.settle(emb, _obj([[50, 50]], [1], mask=shown1), moved) is moved


def test_points_given_at_once_show_what_clicking_them_one_by_one_shows():
    from napari_sam.engine.click_memory import segment_in_click_order
    from napari_sam.engine.postprocess import after_click

    decodes = [_disc((50, 50), 20), _disc((50, 53), 20)]
    finished = []

    def segment(points=None, labels=None, box=None, mask_input=None):
        return decodes[len(points) - 1], 0.9, np.zeros((1, 4, 4), np.float32)

    def finish(mask, points=None, labels=None, box=None):
        finished.append(len(points))
        return mask

    pts, labs = [[50, 50], [50, 72]], [1, 1]
    mask, score, _ = segment_in_click_order(segment, pts, labs, finish=finish)
    np.testing.assert_array_equal(mask, after_click(decodes[0], decodes[1], pts, labs))
    assert score == 0.9 and finished == [1, 2]  # every click's mask finished (snapped)



def test_the_mask_shown_is_the_next_clicks_prompt():
    memory, emb = ClickMemory(), object()
    first, second = _obj([[50, 50]], [1]), _obj([[50, 50], [50, 72]], [1, 1])
    decoded = np.full((1, 4, 4), -3.0, np.float32)
    memory.remember(emb, first, None, decoded)
    shown1 = memory.settle(emb, first, _disc((50, 50), 20))
    # the next click gets the shown mask (as a binary mask), not the decoder's logits
    np.testing.assert_array_equal(memory.mask_prompt(emb, second), shown1)
    memory.remember(emb, second, memory.mask_prompt(emb, second), decoded)
    shown2 = memory.settle(emb, second, _disc((50, 53), 20))
    assert not np.array_equal(shown1, shown2)
    third = _obj([[50, 50], [50, 72], [20, 50]], [1, 1, 0])
    np.testing.assert_array_equal(memory.mask_prompt(emb, third), shown2)
    # decoded again with the same points: the prompt used last time, as before
    np.testing.assert_array_equal(memory.mask_prompt(emb, second), shown1)
    # a small object decoded in its magnified crop: its logits are not kept, the mask shown is
    memory.remember(emb, third, shown2, None)
    fourth = _obj([[50, 50], [50, 72], [20, 50], [80, 50]], [1, 1, 0, 0])
    assert memory.mask_prompt(emb, fourth) is None  # not settled: nothing to prompt with
    shown3 = memory.settle(emb, third, _disc((52, 53), 18))
    np.testing.assert_array_equal(memory.mask_prompt(emb, fourth), shown3)
    # a decode that was not remembered is not followed; another slice forgets
    memory.settle(emb, _obj([[10, 10]], [1], box=np.array([0, 0, 20, 20.0])), shown1)
    assert memory.mask_prompt(emb, _obj([[10, 10], [5, 5]], [1, 0],
                                        box=np.array([0, 0, 20, 20.0]))) is None
    assert memory.mask_prompt(object(), fourth) is None

