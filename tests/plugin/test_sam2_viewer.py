"""SAM 2 (2.1) models in the plugin: the session's clicks, cache and prefetch headless, then the
viewer (model menu, SAM-only options, propagation through Sam2Tracker) with a tiny
random-weight SAM 2."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import EncoderCounter, nuclei_3d, object_centre, wait_idle
from test_nd import go_to

from napari_sam.plugin.session import EmbeddingJob, SamSession


@pytest.fixture(scope="module")
def sam2_model():
    """A tiny SAM 2 (128 px input) with fixed random weights; objects always "present"."""
    import torch

    from napari_sam.models.sam2_configs import build_sam2, tiny_sam2_config

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_sam2(tiny_sam2_config())
    with torch.no_grad():  # the random object-score head would stop tracking at random
        model.sam_mask_decoder.pred_obj_score_head.layers[2].bias.fill_(20.0)
    return model


@pytest.fixture
def encodes(sam2_model):
    counter = EncoderCounter(sam2_model)
    yield counter
    counter.remove()


def _reference(model, plane, intensity_range):
    """A Sam2Predictor on ``plane``, without the plugin (its one encoder pass is counted)."""
    from napari_sam.engine.sam2_predictor import Sam2Predictor

    predictor = Sam2Predictor(model)
    predictor.set_image(plane, intensity_range)
    return predictor


def _embed(session, embedder, z, uid="img"):
    key = (uid, (z,), session.model_token)
    errors = []
    job = EmbeddingJob(key, uid, "img", f"z={z}", session.model_token, index=(z,))
    assert session.request_embedding(job, embedder, lambda j, e: errors.append(e))
    assert session.wait(60)
    assert errors == [None]
    return key


def _decode(session, objects):
    results = []
    assert session.decode(objects, results.append)
    assert session.wait(60)
    [result] = results
    assert result.error is None and not result.stale
    return result


# -- the session, headless -------------------------------------------------------------------


def test_session_clicks_with_sam2_match_sam2_predictor(sam2_model, encodes):
    from napari_sam.engine.sam2_embedder import Sam2StackEmbedder
    from napari_sam.engine.sam2_predictor import Sam2Embedding, Sam2Predictor

    image, gt = nuclei_3d((5, 64, 64))
    session = SamSession()
    session.set_model(sam2_model, "sam2 tiny")
    assert isinstance(session.predictor, Sam2Predictor)
    session.set_refine(True)  # the widget's default: ignored, SAM 2 has no refiner
    assert not session.predictor.refines

    embedder = session.embedder("img", image, (1, 2), disk=True)  # disk asked: memory only
    assert isinstance(embedder, Sam2StackEmbedder) and embedder.store_path is None
    key = _embed(session, embedder, 2)
    emb = session.cache.get(key)
    assert isinstance(emb, Sam2Embedding) and encodes.calls == 1
    sizes = [*emb.features.high_res, emb.features.embed, emb.features.pos]
    assert emb.nbytes == sum(t.nelement() * t.element_size() for t in sizes)
    assert session.cache.nbytes == emb.nbytes  # the LRU counts all feature levels

    session.use_embedding(key, image[2])
    point = np.array([object_centre(gt[2])], dtype=float)
    first = _decode(session, [{"points": point, "labels": np.array([1])}])
    reference = _reference(sam2_model, image[2], embedder.intensity_range)
    expected = reference.segment(points=point, labels=np.array([1]))[0]
    np.testing.assert_array_equal(first.masks[0], expected)
    assert encodes.calls == 2  # the session's pass and the reference's

    # a second click (and a box, and a second object) on the slice: decoded from the cache
    points = np.array([point[0], [5.0, 5.0]])
    box = np.array([10.0, 10.0, 40.0, 44.0])
    objects = [{"points": points, "labels": np.array([1, 0])}, {"box": box}]
    second = _decode(session, objects)
    for mask, prompt in zip(second.masks, objects):
        np.testing.assert_array_equal(mask, reference.segment(**prompt)[0])
    embedder.get((2,))  # asked again: from memory
    assert encodes.calls == 2

    # the neighbours are prefetched in the background into the same embedder
    assert session.start_prefetch(embedder, [(1,), (3,)])
    assert session.wait(60)
    assert embedder.has((1,)) and embedder.has((3,)) and encodes.calls == 4
    session.close()


def test_session_propagates_with_sam2_memory_and_cancels(sam2_model):
    from napari_sam.workflows.propagation import PropagationParams, Seed, propagate

    image, gt = nuclei_3d((7, 64, 64))
    session = SamSession()
    session.set_model(sam2_model, "sam2 tiny")
    embedder = session.embedder("img", image, (1, 2), disk=False)
    seed = Seed(1, 3, points=np.array([object_centre(gt[3])], dtype=float))
    params = PropagationParams(min_score=0.0)
    runs = []

    def body(ctx, cancel_at=None):
        def embed(i):
            if i == cancel_at:
                session.cancel_task()
            return embedder.get((i,))

        return propagate(session.predictor.model, embed, 7, [seed], params=params,
                         progress=ctx.progress, cancelled=ctx.cancelled,
                         slice_image=lambda i: image[i],
                         intensity_range=embedder.intensity_range)

    ctx = session.start_task("propagating", body, lambda r, c: runs.append((r, c)))
    assert session.wait(120) and len(runs) == 1
    result, cancelled = runs[0]
    assert not cancelled and result.complete
    assert len(result.slices(1)) > 1  # labels on several slices
    labels = result.to_labels(7, (64, 64))
    assert (labels == 1).any(axis=(1, 2)).sum() > 1
    done, total, _ = ctx.snapshot()
    assert 0 < done <= total

    # cancelled on the way up: what was done is kept, the run says it is not complete
    embedder.memory.clear()
    session.start_task("again", lambda c: body(c, cancel_at=5),
                       lambda r, c: runs.append((r, c)))
    assert session.wait(120) and len(runs) == 2
    partial, cancelled = runs[1]
    assert cancelled and not partial.complete
    assert 3 in partial.slices(1) and 6 not in partial.slices(1)
    session.close()


# -- the viewer ------------------------------------------------------------------------------


def test_viewer_with_a_sam2_model(sam, sam2_model, tiny_model, encodes, qtbot, notes,
                                  monkeypatch):
    from napari_sam.models.sam2_configs import SAM2_CONFIGS
    from napari_sam.plugin._sam2 import SAM2_LIMITS

    image, gt = nuclei_3d((6, 64, 64))
    viewer, widget, layer = sam(image, model=False)
    assert set(SAM2_CONFIGS) <= set(widget.model_combo.choices)  # offered in the menu
    widget.set_model(sam2_model, "sam2 tiny")
    assert SAM2_LIMITS in notes  # said once, as the model is set
    assert not any(w.enabled for w in (widget.zoom_small, widget.refine_masks,
                                       widget.disk_cache))

    z = 3
    go_to(viewer, axis0=z)
    centre = object_centre(gt[z])
    widget.points_layer.add([z, *centre])
    wait_idle(qtbot, widget, 30_000)
    assert widget.preview is not None, widget.status_label.value
    emb = widget.cache.get((layer.unique_id, widget.preview.plane.key, widget.session.model_token))
    rng = widget.session.intensity_range(layer.unique_id)
    assert emb is not None and encodes.calls == 1
    reference = _reference(sam2_model, image[z], rng)  # (a second encoder pass)
    expected = reference.segment(points=np.array([centre], float), labels=np.array([1]))[0]
    np.testing.assert_array_equal(widget.preview.masks[0], expected)

    # a second click on the slice, and "zoom" switched on by a script: no new embedding, no
    # tiles (SAM-only), no error
    widget.zoom_small.value = True
    widget.points_layer.feature_defaults = {"positive": False}
    widget.points_layer.add([z, 2, 2])
    wait_idle(qtbot, widget, 30_000)
    assert widget.preview is not None and encodes.calls == 2
    assert widget.session.tiled_predictors() == []
    widget.zoom_small.value = False

    # SAM-only jobs refuse with one clear warning
    n = len(notes)
    assert not widget.segment_everything()
    assert not widget.precompute()
    assert any("Segment everything needs a SAM model" in m for m in notes[n:])
    assert any("Precompute stack" in m and "SAM 2" in m for m in notes[n:])
    assert not any("failed" in m.lower() for m in notes)

    # propagation from the stack section goes through SAM 2's memory tracking
    import functools

    from napari_sam.workflows import propagation, sam2_propagation

    calls = []

    class Spy(sam2_propagation.Sam2Tracker):
        def __init__(self, *args, **kwargs):
            calls.append((args[1], type(kwargs["cache"]).__name__))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(sam2_propagation, "Sam2Tracker", Spy)
    # random IoU heads predict about 0.5: below the default min_score, tracking would stop
    monkeypatch.setattr(propagation, "PropagationParams",
                        functools.partial(propagation.PropagationParams, min_score=0.0))
    assert widget.propagate()
    widget.tasks.wait(120)
    assert calls == [(6, "_EmbedFeatures")]  # the whole stack, features from the viewer's cache
    assert encodes.calls == 2 + 5  # every other slice encoded once, slice 3 not again
    target = widget.target_layer
    assert target is not None
    assert (target.data > 0).any(axis=(1, 2)).sum() > 1, widget.status_label.value
    assert "Propagation wrote" in widget.status_label.value

    # back to SAM: the options come back
    widget.set_model(tiny_model, "tiny")
    assert all(w.enabled for w in (widget.zoom_small, widget.refine_masks, widget.disk_cache))


def test_sam2_loads_from_the_menu_paths(sam, sam2_model, qtbot, notes, monkeypatch, tmp_path):
    """A SAM 2.1 checkpoint file goes through the widget's loader like any checkpoint; a SAM 2.1
    registry name whose weights are not in the cache and cannot be downloaded says where to put
    them."""
    import socket

    import torch

    from napari_sam.engine.sam2_predictor import Sam2Predictor
    from napari_sam.models import sam2_configs
    from napari_sam.models.sam2_build import SAM2_DOWNLOADS
    from napari_sam.models.sam2_configs import tiny_sam2_config

    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(sam2_configs.SAM2_CONFIGS, "sam2_test_tiny", tiny_sam2_config())
    with socket.socket() as s:  # the download fails at once, and never reaches the network
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/sam2.1_hiera_tiny.pt"
    monkeypatch.setitem(SAM2_DOWNLOADS, "sam2.1_hiera_tiny", (url, "sam2.1_hiera_tiny.pt", 156.0))
    ckpt = tmp_path / "sam2.1_test.pt"
    torch.save({"model": sam2_model.state_dict()}, ckpt)
    image, _ = nuclei_3d((3, 48, 48))
    viewer, widget, _ = sam(image, model=False)

    widget.load_model("sam2.1_hiera_tiny")
    qtbot.waitUntil(lambda: not widget.session.model_loading, timeout=30_000)
    assert widget.predictor is None
    assert any("sam2.1_hiera_tiny weights are not in the" in m for m in notes), notes

    widget.load_model(str(ckpt))
    qtbot.waitUntil(lambda: widget.predictor is not None, timeout=30_000)
    assert isinstance(widget.predictor, Sam2Predictor)
    assert not widget.disk_cache.enabled
    go_to(viewer, axis0=1)
    widget.points_layer.add([1, 24, 24])
    wait_idle(qtbot, widget, 30_000)
    assert widget.preview is not None, widget.status_label.value


def test_a_large_slice_is_embedded_whole_with_sam2(sam, sam2_model, qtbot, notes):
    image = np.zeros((40, 1100), np.float32)
    image[10:30, 500:540] = 1.0
    _, widget, _ = sam(image, model=False)
    widget.set_model(sam2_model, "sam2 tiny")
    widget.points_layer.add([20, 520])
    wait_idle(qtbot, widget, 30_000)
    assert widget.preview is not None and widget.preview.masks[0].shape == (40, 1100)
    assert widget.session.tiled_predictors() == []
    assert any("SAM 2 embeds it whole" in m for m in notes)
