"""Shared test setup.

With CUDA builds of torch, importing triton (pulled in by torchvision, which Meta's reference
``segment_anything`` imports) after napari has created its Mesa OpenGL context crashes the process.
Import it here, before any viewer exists, so test order and selection cannot matter. The plugin
itself never imports torchvision (tests/test_headless.py checks the real order in a subprocess).
"""

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
