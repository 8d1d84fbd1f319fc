"""Fixtures for the viewer tests: a tiny random-weight SAM, a viewer with the widget, helpers.

They need a screen: on a headless Linux machine pytest-xvfb (testing extra) starts a virtual one
when Xvfb is installed, and without it they are skipped with one line saying so (napari cannot
render with ``QT_QPA_PLATFORM=offscreen``).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = "napari-sam-nd"


@pytest.fixture(scope="session")
def tiny_model():
    """A tiny SAM with fixed random weights: milliseconds per embedding on a CPU."""
    import torch

    from napari_sam.models.build import build_sam, tiny_config

    with torch.random.fork_rng():  # fixed weights without touching the global generator
        torch.manual_seed(0)
        return build_sam(tiny_config()).eval()


@pytest.fixture
def plugin_viewer(npe2pm, make_napari_viewer):
    """``make_napari_viewer`` with the plugin registered from napari.yaml.

    npe2's ``npe2pm`` fixture gives a plugin manager of this test only (nothing discovered,
    nothing left behind), so the tests do not depend on ``pip install -e .``.
    """
    npe2pm.register(str(ROOT / "napari.yaml"))
    return make_napari_viewer


@pytest.fixture
def notes():
    """Messages of the napari notifications shown during the test."""
    from napari.utils.notifications import notification_manager

    messages: list[str] = []

    def record(event):
        messages.append(str(getattr(event, "message", "")))

    notification_manager.notification_ready.connect(record)
    yield messages
    notification_manager.notification_ready.disconnect(record)


@pytest.fixture
def sam(make_napari_viewer, qtbot, tiny_model):
    """Factory: a viewer with ``image`` added and the widget docked, the tiny model set.

    Returns ``(viewer, widget, image_layer)``; ``model=False`` leaves the widget without model;
    ``prefetch=True`` keeps the background embedding of neighbouring slices on;
    ``setup(viewer)`` runs before the widget is created; ``show=True`` shows the window (needed
    for screenshots: a hidden canvas renders black).
    """
    from napari_sam.plugin import SamWidget

    def factory(image, *, model=True, setup=None, show=False, prefetch=False, **layer_kwargs):
        viewer = make_napari_viewer(show=show)
        layer = viewer.add_image(image, **layer_kwargs)
        if setup is not None:
            setup(viewer)
        widget = SamWidget(viewer, load_default=False)
        if not prefetch:  # deterministic encoder counts; test_cache.py turns it on
            widget.prefetch_slices = 0
        viewer.window.add_dock_widget(widget, name="Segment Anything")
        if model:
            widget.set_model(tiny_model, "tiny")
        wait_idle(qtbot, widget)
        return viewer, widget, layer

    yield factory


def wait_idle(qtbot, widget, timeout: int = 10_000) -> None:
    """Wait until no embedding, model load or refresh is pending."""
    qtbot.waitUntil(lambda: not widget.is_busy and not widget.is_prefetching, timeout=timeout)


@pytest.fixture
def idle(qtbot):
    return lambda widget, timeout=10_000: wait_idle(qtbot, widget, timeout)


class EncoderCounter:
    """Counts image-encoder forward passes (a forward hook on the model)."""

    def __init__(self, model):
        self.calls = 0
        self._handle = model.image_encoder.register_forward_hook(self._hook)

    def _hook(self, *args):
        self.calls += 1

    def remove(self):
        self._handle.remove()


@pytest.fixture
def encoder_calls(tiny_model):
    counter = EncoderCounter(tiny_model)
    yield counter
    counter.remove()


class Gate:
    """Blocks every ``SamPredictor.compute_embedding`` (the image encoder, run by the workers,
    whichever predictor they use) until ``open()``."""

    def __init__(self, predictor):
        self.entered = threading.Event()
        self._release = threading.Event()
        self._cls = type(predictor)
        self._original = original = self._cls.compute_embedding
        gate = self

        def blocked(self, *args, **kwargs):
            gate.entered.set()
            if not gate._release.wait(20):
                raise TimeoutError("the test never released the gate")
            return original(self, *args, **kwargs)

        self._cls.compute_embedding = blocked

    def open(self):
        self._release.set()

    def restore(self):
        self._cls.compute_embedding = self._original


@pytest.fixture
def gate():
    gates: list[Gate] = []

    def make(predictor):
        g = Gate(predictor)
        gates.append(g)
        return g

    yield make
    for g in gates:  # never leave a worker blocked
        g.open()
        g.restore()


class SegmentSpy:
    """Records the keyword arguments of every ``predictor.segment`` call."""

    def __init__(self, predictor):
        self.calls: list[dict] = []
        original = predictor.segment

        def spy(*args, **kwargs):
            names = ("points", "labels", "box", "mask_input")
            record = dict(zip(names, args))
            record.update(kwargs)
            self.calls.append(record)
            return original(*args, **kwargs)

        predictor.segment = spy


def reference_mask(model, plane, intensity_range, **prompts):
    """SAM's mask for ``prompts`` on ``plane``, computed without the widget."""
    from napari_sam.engine.predictor import SamPredictor

    predictor = SamPredictor(model)
    predictor.set_image(plane, intensity_range)
    mask, _, _ = predictor.segment(**prompts)
    return mask


def nuclei_2d(shape=(64, 64), seed=1):
    from napari_sam.data.synthetic import make_nuclei_2d

    return make_nuclei_2d(shape, seed=seed)


def nuclei_3d(shape=(10, 64, 64), seed=1):
    from napari_sam.data.synthetic import make_nuclei_3d

    return make_nuclei_3d(shape, seed=seed)


def object_centre(labels2d: np.ndarray) -> tuple[int, int]:
    """A pixel deep inside the largest object of a 2D label image."""
    from scipy import ndimage

    ids, counts = np.unique(labels2d[labels2d > 0], return_counts=True)
    obj = np.pad(labels2d == ids[np.argmax(counts)], 1)  # the image border counts as outside
    dist = ndimage.distance_transform_edt(obj)[1:-1, 1:-1]
    r, c = np.unravel_index(np.argmax(dist), dist.shape)
    return int(r), int(c)
