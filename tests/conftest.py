"""Shared test setup.

With CUDA builds of torch, importing triton (pulled in by torchvision, which Meta's reference
``segment_anything`` imports) after napari has created its Mesa OpenGL context crashes the process.
Import it here, before any viewer exists, so test order and selection cannot matter. The plugin
itself never imports torchvision (tests/test_headless.py checks the real order in a subprocess).
"""

import gc
import importlib.util
import os
import sys

if importlib.util.find_spec("torchvision") is not None:
    import torchvision  # noqa: F401


import pytest

#: Why the viewer tests are skipped on a machine without a screen (pytest-xvfb, in the testing
#: extra, starts a virtual one by itself where Xvfb is installed).
NO_SCREEN = ("no screen: the viewer tests need Xvfb (Debian: apt-get install xvfb libgl1-mesa-dri "
             "libegl1 ..., see .ci/install-system-deps), which pytest-xvfb then starts")


def have_screen() -> bool:
    """A display Qt can open: always off Linux, else $DISPLAY (pytest-xvfb sets it)."""
    return not sys.platform.startswith("linux") or bool(
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def pytest_configure(config):
    """Under pytest-xdist each worker is one process of several on the machine: one torch
    thread each, so that the workers do not fight over the cores."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


def pytest_report_header(config):
    return None if have_screen() else f"viewer tests skipped: {NO_SCREEN}"


def pytest_collection_modifyitems(config, items):
    """Skip the viewer tests (tests/plugin) with one reason instead of letting Qt abort."""
    if have_screen():
        return
    skip = pytest.mark.skip(reason=NO_SCREEN)
    for item in items:
        if "plugin" in item.path.parts:
            item.add_marker(skip)


def pytest_collection_finish(session):
    """Start the fresh-interpreter checks of the selected tests now, so that they run alongside
    the other tests: a test module opts in with ``start_in_background(names)`` (called once with
    its selected tests' names; its tests wait for the results) and ``stop()`` (session end).
    Under pytest-xdist a worker collects every test but runs only those it is sent, so it starts
    a module's checks when it reaches that module instead (:func:`pytest_runtest_setup`).
    Then freeze the objects that exist after collection (see below)."""
    selected: dict = {}
    for item in session.items:
        module = getattr(item, "module", None)
        if hasattr(module, "start_in_background") and not item.get_closest_marker("skip"):
            selected.setdefault(module, []).append(item.originalname)
    if not session.config.option.collectonly:
        if os.environ.get("PYTEST_XDIST_WORKER"):
            _LATER.update(selected)
        else:
            for module, names in selected.items():
                _start(module, names)
    # Everything imported so far (torch, napari, the test modules) lives until the end: keep it
    # out of the garbage collector's full passes, which napari's viewer fixture runs after each
    # viewer test (each pass traversed all of it: ~40% of those tests' time).
    gc.freeze()


def _start(module, names) -> None:
    module.start_in_background(names)
    _BACKGROUND.append(module)


def pytest_runtest_setup(item):
    """Under pytest-xdist: start a module's background checks at the first of its tests that
    this worker runs."""
    names = _LATER.pop(getattr(item, "module", None), None)
    if names is not None:
        _start(item.module, names)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    """After the last test of a module (its module fixtures gone): collect, then freeze what is
    left too (modules imported by the tests, napari's state after its first viewer)."""
    yield
    if nextitem is not None and getattr(nextitem, "module", None) is not getattr(item, "module", None):
        gc.collect()
        gc.freeze()


def pytest_sessionfinish(session):
    for module in _BACKGROUND:
        module.stop()


_BACKGROUND: list = []
#: Modules whose background checks start with their first test here (pytest-xdist workers).
_LATER: dict = {}


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Weights and embedding stores of each test go to a fresh temporary folder, never to the
    user's cache (the plugin keeps embeddings on disk by default) nor to another test's."""
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path_factory.mktemp("napari-sam-cache")))


@pytest.fixture
def cli_model(monkeypatch):
    """A tiny random-weight SAM that every ``napari-sam`` command loads instead of its --model."""
    import torch

    from napari_sam.cli import _common
    from napari_sam.models.build import build_sam, tiny_config

    torch.manual_seed(0)
    model = build_sam(tiny_config())
    monkeypatch.setattr(_common, "load_model", lambda args: model)
    return model


@pytest.fixture
def embedded_shapes(monkeypatch):
    """The ``(H, W)`` of every image ``SamPredictor.compute_embedding`` embeds during the test,
    in order (to see which crops or slices were embedded)."""
    from napari_sam import SamPredictor

    shapes = []
    original = SamPredictor.compute_embedding

    def recording(self, image, *args, **kwargs):
        shapes.append(tuple(int(v) for v in image.shape[:2]))
        return original(self, image, *args, **kwargs)

    monkeypatch.setattr(SamPredictor, "compute_embedding", recording)
    return shapes


@pytest.fixture
def keyword_spy(monkeypatch):
    """``keyword_spy(owner, name, key)``: replace ``owner.name`` by a wrapper that records the
    value of its keyword argument ``key`` at every call and calls through; returns the list."""

    def install(owner, name, key):
        seen = []
        original = getattr(owner, name)

        def recording(*args, **kwargs):
            seen.append(kwargs[key])
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, recording)
        return seen

    return install
