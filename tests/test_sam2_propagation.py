"""Propagation with a SAM 2 model: propagate() and propagate_volume() pick the memory tracker."""

import numpy as np
import pytest
import torch

from napari_sam.models.sam2_configs import build_sam2, tiny_sam2_config
from napari_sam.workflows.propagation import PropagationParams, Seed, propagate
from napari_sam.workflows.propagation_volume import propagate_volume

N = 9


def _model(present: float):
    torch.manual_seed(0)
    model = build_sam2(tiny_sam2_config())
    with torch.no_grad():  # random heads: decide whether the object is seen
        model.sam_mask_decoder.pred_obj_score_head.layers[2].bias.fill_(present)
    return model


@pytest.fixture(scope="module")
def present():
    return _model(20.0)


@pytest.fixture(scope="module")
def absent():
    return _model(-20.0)


def _stack():
    yy, xx = np.mgrid[:96, :112]
    vol = np.zeros((N, 96, 112), np.uint16)
    for z in range(N):
        vol[z][(yy - 40) ** 2 + (xx - 50 - z) ** 2 < 15**2] = 1000
    return vol


def test_propagate_reads_sam2_embeddings_from_embed(present):
    """The viewer passes its embedder's cache: the tracker reads the features there, encodes
    nothing itself, and tracks exactly as when it encodes the slices."""
    from napari_sam.engine.sam2_embedder import Sam2StackEmbedder

    vol = _stack()
    embedder = Sam2StackEmbedder(present, vol, axes=(1, 2), intensity_range=(0.0, 1000.0))
    asked = []

    def embed(i):
        asked.append(i)
        return embedder.get((i,))

    def no_pixels(i):
        raise AssertionError("the features come from embed(): no slice is read")

    seeds = [Seed(1, 4, points=np.array([[40, 54]]))]
    params = PropagationParams(min_score=0.0)
    shared = propagate(present, embed, N, seeds, slice_image=no_pixels, params=params,
                       intensity_range=(0.0, 1000.0))
    alone = propagate(present, None, N, seeds, slice_image=lambda i: vol[i], params=params,
                      intensity_range=(0.0, 1000.0))
    assert set(asked) == set(range(N))
    assert shared.slices(1) == alone.slices(1) == list(range(N))
    for i in range(N):
        np.testing.assert_array_equal(shared.masks[1][i], alone.masks[1][i])
    with pytest.raises(TypeError, match="Sam2Embedding"):
        propagate(present, lambda i: vol[i], N, seeds, slice_image=no_pixels, params=params,
                  intensity_range=(0.0, 1000.0))


def test_propagate_dispatches_to_memory_tracking(present):
    vol = _stack()
    seeds = [Seed(1, 4, points=np.array([[40, 54]])), Seed(2, 2, box=np.array([30, 40, 50, 62]))]
    calls = []
    params = PropagationParams(min_score=0.0)  # random IoU heads predict about 0.5
    result = propagate(present, None, N, seeds, slice_image=lambda i: vol[i],
                       params=params, progress=lambda d, t: calls.append((d, t)))
    assert result.complete
    for oid in (1, 2):
        assert result.slices(oid) == list(range(N))  # present everywhere: tracked to both ends
        assert result.stopped[oid] == {"up": "end of stack", "down": "end of stack"}
        assert result.masks[oid][3].shape == (96, 112)
        assert all(0 <= v <= 1 for v in result.scores[oid].values())
    assert calls and calls[-1][0] <= calls[-1][1]
    labels = result.to_labels(N, (96, 112))
    assert labels.shape == (N, 96, 112) and set(np.unique(labels)) <= {0, 1, 2}


def test_absent_object_stops_beyond_the_seeds(absent):
    vol = _stack()
    seed_mask = vol[4] > 0
    seeds = [Seed(1, 4, mask=seed_mask), Seed(1, 6, mask=vol[6] > 0)]
    result = propagate(absent, None, N, seeds, slice_image=lambda i: vol[i])
    # the seeds are kept as they are; beyond them the object is absent: both fronts stop
    assert result.slices(1) == [4, 6]
    assert result.scores[1][4] == float("inf")
    np.testing.assert_array_equal(result.masks[1][4], seed_mask)
    assert result.stopped[1] == {"up": "empty", "down": "empty"}


def test_max_slices_and_volume(present):
    vol = _stack()
    seeds = [Seed(1, 4, points=np.array([[40, 54]]))]
    params = PropagationParams(max_slices=2, min_score=0.0)
    labels = propagate_volume(present, vol, seeds, params=params, zoom="auto")
    assert labels.shape == vol.shape
    found = [z for z in range(N) if (labels[z] == 1).any()]
    assert found and min(found) >= 2 and max(found) <= 6


def test_cancel_keeps_what_was_done(present):
    vol = _stack()
    seeds = [Seed(1, 0, points=np.array([[40, 50]]))]
    polls = []

    def cancelled():
        polls.append(1)
        return len(polls) > 3

    result = propagate(present, None, N, seeds, slice_image=lambda i: vol[i],
                       params=PropagationParams(min_score=0.0), cancelled=cancelled)
    assert not result.complete
    assert 0 in result.masks[1] and len(result.masks[1]) < N
    assert result.stopped[1]["up"] == "cancelled"


def test_sam2_needs_the_slices(present):
    with pytest.raises(ValueError, match="slice_image"):
        propagate(present, None, N, [Seed(1, 0, points=np.array([[4, 4]]))])


def test_low_predicted_iou_stops_beyond_the_seed(present):
    """With the default min_score, the random IoU head (about 0.5) ends both fronts."""
    vol = _stack()
    seeds = [Seed(1, 4, points=np.array([[40, 54]]))]
    result = propagate(present, None, N, seeds, slice_image=lambda i: vol[i],
                       params=PropagationParams(min_score=0.9))
    assert result.slices(1) == [4]
    assert result.stopped[1] == {"up": "score", "down": "score"}
