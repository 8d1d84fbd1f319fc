"""The plugin's session without a viewer: model, embeddings, prefetch, decoding (no Qt, no napari).

The plane on screen never waits behind the prefetch of its neighbours: asking for it abandons
the neighbour being encoded at the encoder's next block.
"""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest
from conftest import nuclei_3d, object_centre, reference_mask

from napari_sam.plugin.session import EmbeddingJob, SamSession


def test_the_session_imports_neither_qt_nor_napari():
    code = (
        "import sys; import napari_sam.plugin.session; "
        "bad = [m for m in ('qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'napari', 'magicgui')"
        " if m in sys.modules]; print(bad); raise SystemExit(bool(bad))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _embed(session, embedder, z, uid="img"):
    key = (uid, (z,), session.model_token)
    errors = []
    job = EmbeddingJob(key, uid, "img", f"z={z}", session.model_token, index=(z,))
    assert session.request_embedding(job, embedder, lambda j, e: errors.append(e))
    return key, job, errors


def _ready(model, image, z):
    """A session with the tiny model and plane ``z`` of ``image`` embedded and in use."""
    session = SamSession()
    session.set_model(model, "tiny")
    embedder = session.embedder("img", image, (1, 2), disk=False)
    key, _, errors = _embed(session, embedder, z)
    assert session.wait(30) and errors == [None]
    session.use_embedding(key, image[z])
    return session


def test_a_session_embeds_and_decodes_a_plane_headless(tiny_model):
    image, gt = nuclei_3d((6, 64, 64))
    session = SamSession()
    session.set_model(tiny_model, "tiny")
    embedder = session.embedder("img", image, (1, 2), disk=False)
    key, _, errors = _embed(session, embedder, 3)
    assert session.busy
    assert session.wait(30)
    assert errors == [None] and session.cache.get(key) is not None
    assert session.intensity_range("img") == embedder.intensity_range

    session.use_embedding(key, image[3])
    point = np.array([object_centre(gt[3])], dtype=float)
    results = []
    assert session.decode([{"points": point, "labels": np.array([1])}], results.append)
    assert session.wait(30)
    [result] = results
    assert result.error is None and not result.stale and not result.again
    expected = reference_mask(tiny_model, image[3], embedder.intensity_range,
                              points=point, labels=np.array([1]))
    np.testing.assert_array_equal(result.masks[0], expected)


def test_a_small_object_is_decoded_magnified_in_the_session(tiny_model):
    from scipy import ndimage

    from napari_sam.engine.zoom import SliceZoomer

    yy, xx = np.mgrid[:256, :256]
    plane = (((yy - 60) ** 2 + (xx - 60) ** 2 <= 30 ** 2)
             | ((yy - 200) ** 2 + (xx - 180) ** 2 <= 2)).astype(np.float32)
    image = np.stack([plane, ndimage.gaussian_filter(plane, 0.7)])
    session = _ready(tiny_model, image, 1)
    assert isinstance(session.zoomer, SliceZoomer)
    speck, nucleus, one = np.array([[200.0, 180.0]]), np.array([[60.0, 60.0]]), np.array([1])
    results = []
    session.decode([{"points": speck, "labels": one}, {"points": nucleus, "labels": one}],
                   results.append)
    assert session.wait(30) and results[0].error is None
    zoomed = session.zoomer.zoom_predictor(session.predictor)
    assert zoomed.object_zoom(speck, one) > 1 and zoomed.object_zoom(nucleus, one) == 1
    assert len(zoomed._crops) == 2  # the plane's own embedding and the speck's crop
    np.testing.assert_array_equal(results[0].masks[0], zoomed.segment(speck, one)[0])
    np.testing.assert_array_equal(results[0].masks[1],
                                  session.predictor.segment(nucleus, one)[0])


def test_a_click_added_refines_the_mask_shown(tiny_model):
    from napari_sam.engine.postprocess import after_click

    image, gt = nuclei_3d((4, 64, 64))
    session = _ready(tiny_model, image, 2)
    centre = object_centre(gt[2])
    one = {"points": np.array([centre], float), "labels": np.array([1])}
    two = {"points": np.array([centre, [5.0, 5.0]]), "labels": np.array([1, 0])}
    box = {"box": np.array([2.0, 2.0, 40.0, 40.0])}
    results = []

    def decode(*objects):
        assert session.decode(list(objects), results.append) and session.wait(30)
        assert results[-1].error is None
        return results[-1].masks

    predictor = session.predictor
    shown = decode(one, box)[0]
    masks = decode(two, box)  # a negative click added to the first object
    # decoded with the mask shown as the mask prompt (as SAM's protocol passes the previous
    # mask; the one the user corrects)
    decoded, _, _ = predictor.segment(**two, mask_input=shown)
    assert (decoded != predictor.segment(**two)[0]).any()  # not what it gives from nothing
    # what is shown: the new decode near the click, the first mask elsewhere
    expected = after_click(shown, decoded, two["points"], two["labels"])
    np.testing.assert_array_equal(masks[0], expected)
    assert not expected[5, 5]  # the negative click is outside the mask shown
    # another object's change does not redraw it: the same prompt as before
    masks = decode(two, {"box": np.array([2.0, 2.0, 41.0, 41.0])})
    np.testing.assert_array_equal(masks[0], expected)
    # a moved point starts from nothing
    moved = {"points": np.array([centre, [6.0, 5.0]]), "labels": np.array([1, 0])}
    np.testing.assert_array_equal(decode(moved)[0], predictor.segment(**moved)[0])


def test_a_new_model_makes_a_running_embedding_stale(tiny_model):
    image, _ = nuclei_3d((4, 48, 48))
    session = SamSession()
    session.set_model(tiny_model, "tiny")
    key, _, errors = _embed(session, session.embedder("img", image, (1, 2), disk=False), 1)
    session.set_model(tiny_model, "tiny again")  # before the result is delivered
    assert session.wait(30)
    assert errors == [None] and session.cache.get(key) is None  # not cached under the new model
    assert session.model_token == 2 and session.embedding_key is None


class _Blocks:
    """Counts the image-encoder blocks each thread runs; the first block of a prefetch waits
    until the test lets it go (so the test can ask for another plane mid-encode)."""

    def __init__(self, model):
        self.runs: list[str] = []
        self.prefetch_inside = threading.Event()
        self.release = threading.Event()
        self._handles = [b.register_forward_pre_hook(self._hook)
                         for b in model.image_encoder.blocks]

    def _hook(self, module, args):
        name = threading.current_thread().name
        self.runs.append(name)
        if name == "prefetch" and not self.release.is_set():
            self.prefetch_inside.set()
            assert self.release.wait(20)

    def remove(self):
        for h in self._handles:
            h.remove()


@pytest.fixture
def blocks(tiny_model):
    counter = _Blocks(tiny_model)
    yield counter
    counter.release.set()
    counter.remove()


def _named_runner(session):
    """The default runner, with the prefetch thread named "prefetch"."""
    from napari_sam.plugin import _workers

    runner = session.runner

    def run(fn, args, on_done):
        if fn is _workers.prefetch:
            original = fn

            def fn(*a):  # the same body, in a thread with a name
                threading.current_thread().name = "prefetch"
                return original(*a)
        return runner(fn, args, on_done)

    run.process_events = runner.process_events
    return run


def test_the_plane_on_screen_does_not_wait_behind_prefetch(tiny_model, blocks):
    image, _ = nuclei_3d((10, 48, 48))
    session = SamSession()
    session.runner = _named_runner(session)
    session.set_model(tiny_model, "tiny")
    embedder = session.embedder("img", image, (1, 2), disk=False)
    assert session.start_prefetch(embedder, [(4,), (2,), (5,)])
    assert blocks.prefetch_inside.wait(20)  # the prefetch is encoding plane 4

    key, _, errors = _embed(session, embedder, 8)  # the user moved to z=8
    blocks.release.set()
    assert session.wait(30)
    assert errors == [None] and session.cache.get(key) is not None
    depth = len(tiny_model.image_encoder.blocks)
    # the neighbour was abandoned at its next block; none of the others was started
    assert blocks.runs.count("prefetch") == 1
    assert blocks.runs.count("prefetch") + depth == len(blocks.runs)
    assert not embedder.has((4,)) and not embedder.has((2,))


def test_asking_for_the_plane_being_prefetched_keeps_its_work(tiny_model, blocks):
    image, _ = nuclei_3d((10, 48, 48))
    session = SamSession()
    session.runner = _named_runner(session)
    session.set_model(tiny_model, "tiny")
    embedder = session.embedder("img", image, (1, 2), disk=False)
    assert session.start_prefetch(embedder, [(4,), (2,)])
    assert blocks.prefetch_inside.wait(20)

    key, _, errors = _embed(session, embedder, 4)  # the very plane being prefetched
    blocks.release.set()
    assert session.wait(30)
    assert errors == [None] and session.cache.get(key) is not None
    depth = len(tiny_model.image_encoder.blocks)
    assert len(blocks.runs) == depth  # encoded once, by the prefetch; then it stopped
    assert not embedder.has((2,))


def test_long_jobs_run_one_at_a_time_with_progress_and_owner_cancel():
    """Propagation, precompute, segment everything and text search run as the session's long
    job: progress and cancel from any thread, partial results kept, errors reported."""
    session = SamSession()
    started, results, errors = threading.Event(), [], []

    def body(ctx):
        ctx.progress(0, 100, "working")
        started.set()
        done = 0
        while not ctx.cancelled() and done < 10_000:
            done += 1
            ctx.progress(done, 10_000)
            threading.Event().wait(0.001)
        return done

    ctx = session.start_task("Job", body, lambda r, c: results.append((r, c)), owner="img")
    assert ctx is session.task and started.wait(10)
    assert session.start_task("Other", lambda c: 1, results.append) is None  # one at a time
    assert ctx.snapshot()[2] == "working"
    assert session.cancel_task(owner="other image") is None and not ctx.cancelled()
    assert session.cancel_task(owner="img") is ctx and ctx.cancelled()
    assert session.wait(30)
    [(done, cancelled)] = results
    assert cancelled and 0 < done < 10_000 and session.task is None

    def fail(ctx):
        raise ValueError("bad slice")

    session.start_task("Fail", fail, results.append, errors.append)
    assert session.wait(30)
    assert len(results) == 1 and "bad slice" in str(errors[0])
