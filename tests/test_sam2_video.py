"""SAM 2 tracking through a stack against Meta's SAM2VideoPredictor on the same random weights."""

import numpy as np
import pytest
import torch

pytest.importorskip("sam2")

from _sam2_reference import reference_sam2

from napari_sam.engine.lru import LRUCache
from napari_sam.engine.sam2_video import BACKWARD, FORWARD, Sam2Tracker
from napari_sam.models.sam2_configs import build_sam2, tiny_sam2_config

N_FRAMES = 6


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    config = tiny_sam2_config()
    ref = reference_sam2(config, video=True)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
        # Random heads call most tracked slices empty (object score < 0: every logit -1024),
        # which would make the comparison trivial: make the objects present.
        ref.sam_mask_decoder.pred_obj_score_head.layers[2].bias.add_(20.0)
    ours = build_sam2(config)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return config, ref, ours


def _disc(cy, cx, r, size=128):
    yy, xx = np.mgrid[:size, :size]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _frames(size, n=N_FRAMES):
    """Two bright discs drifting on a noisy background, uint8 RGB (H, W, 3)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    frames = []
    for t in range(n):
        img = rng.normal(60, 10, (size, size))
        for cy, cx, r in ((40 + 2 * t, 40 + 3 * t, 14), (85 - t, 90 - 2 * t, 11)):
            img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 200
        frames.append(np.repeat(np.clip(img, 0, 255).astype(np.uint8)[..., None], 3, axis=-1))
    return frames


def _meta_track(ref, ours, frames, tmp_path, prompts, reverse_too):
    """Meta's video predictor on our preprocessed frames; {frame: {obj: logits (H, W)}}."""
    from PIL import Image

    for i in range(len(frames)):  # init_state reads a folder of JPEGs; replaced just below
        Image.fromarray(frames[i]).save(tmp_path / f"{i:05d}.jpg")
    with torch.inference_mode():
        state = ref.init_state(str(tmp_path))
        x = torch.stack([torch.from_numpy(f).permute(2, 0, 1) for f in frames])
        state["images"] = ours.preprocess(x)
        state["cached_features"] = {}
        for oid, frame, point in prompts:
            if isinstance(point, np.ndarray):  # a mask prompt
                ref.add_new_mask(state, frame_idx=frame, obj_id=oid, mask=torch.from_numpy(point))
                continue
            ref.add_new_points_or_box(state, frame_idx=frame, obj_id=oid,
                                      points=np.array([point[::-1]], np.float32),
                                      labels=np.array([1], np.int32))
        out: dict = {}
        passes = [False, True] if reverse_too else [False]
        for reverse in passes:
            for f, ids, masks in ref.propagate_in_video(state, reverse=reverse):
                out.setdefault(f, {}).update({o: masks[k, 0].numpy() for k, o in enumerate(ids)})
    return out


def _our_track(ours, frames, prompts, directions):
    tracker = Sam2Tracker(ours, len(frames), lambda i: frames[i])
    for oid, frame, point in prompts:
        if isinstance(point, np.ndarray):
            tracker.add_prompt(oid, frame, mask=point)
        else:
            tracker.add_prompt(oid, frame, points=[point])
    out: dict = {}
    for s in tracker.propagate(directions=directions):
        out.setdefault(s.index, {}).update(s.logits)
    return out, tracker


@pytest.mark.parametrize(
    "prompts, reverse_too",
    [
        ([(1, 0, (40, 40)), (2, 0, (85, 90))], False),  # two objects, one slice, forward
        # anchors on two slices, both directions. (Meta's CPU path fails when an object's
        # only memory is a later prompted slice: bf16 memory meets float32 weights.)
        ([(1, 2, (44, 46)), (2, 2, (83, 86)), (1, 4, (48, 52))], True),
        ([(1, 0, _disc(40, 40, 14)), (2, 0, (85, 90))], False),  # a mask prompt
    ],
)
def test_tracking_matches_meta(pair, tmp_path, prompts, reverse_too):
    config, ref, ours = pair
    frames = _frames(config.image_size)
    theirs = _meta_track(ref, ours, frames, tmp_path, prompts, reverse_too)
    dirs = (FORWARD, BACKWARD) if reverse_too else (FORWARD,)
    mine, _ = _our_track(ours, frames, prompts, dirs)
    assert sorted(mine) == sorted(theirs)
    assert len(mine) == (N_FRAMES if reverse_too else N_FRAMES - min(p[1] for p in prompts))
    prompted = {(p[0], p[1]) for p in prompts}
    tracked_masks = 0
    for f in theirs:
        for oid, logits in theirs[f].items():
            a, b = mine[f][oid] > 0, logits > 0
            union = (a | b).sum()
            iou = (a & b).sum() / union if union else 1.0
            assert iou > 0.99, (f, oid, iou)
            # (1e-3: dropping the object pointers or shortening the memory moves them 0.05+)
            np.testing.assert_allclose(mine[f][oid], logits, atol=1e-3, rtol=1e-3)
            tracked_masks += (oid, f) not in prompted and bool(b.any())
    assert tracked_masks >= N_FRAMES  # masks from memory, not empty comparisons


def test_memory_bank_is_bounded(pair):
    """On a long stack the tracker keeps only the memories later slices can read."""
    config, _, ours = pair
    frames = _frames(config.image_size, n=4) * 10  # 40 slices
    tracker = Sam2Tracker(ours, len(frames), lambda i: frames[i], cache=LRUCache(max_items=2))
    tracker.add_prompt(1, 20, points=[(40, 40)])
    reach = max(ours.num_maskmem, ours.max_obj_ptrs_in_encoder)
    sizes = []
    for s in tracker.propagate():
        sizes.append(tracker.memory_size())
    assert max(sizes) <= 2 * reach
    assert tracker.memory_size() == 0
    assert len(tracker.cache) <= 2


def test_prompt_errors(pair):
    config, _, ours = pair
    frames = _frames(config.image_size, n=2)
    tracker = Sam2Tracker(ours, 2, lambda i: frames[i])
    with pytest.raises(ValueError, match="no prompts"):
        next(tracker.propagate())
    with pytest.raises(ValueError, match="no prompt for object"):
        tracker.add_prompt(1, 0)
    with pytest.raises(ValueError, match="without points or a box"):
        tracker.add_prompt(1, 0, points=[(3, 3)], mask=np.ones((128, 128), bool))
    with pytest.raises(ValueError, match="outside"):
        tracker.add_prompt(1, 5, points=[(3, 3)])
