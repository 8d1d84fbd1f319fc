"""The engine is headless: importing it loads neither napari nor any Qt binding.

The check runs in a fresh interpreter (this suite's conftest imports torchvision early), started
when collection ends (tests/conftest.py calls :func:`start_in_background`) so that it runs
alongside the other tests.
"""

from __future__ import annotations

import textwrap

from _background import BackgroundScript

SCRIPT = textwrap.dedent(
    """
    import sys
    import importlib, pkgutil
    import napari_sam
    # every module of the headless layers (all but plugin/), found by walking the package
    for info in pkgutil.walk_packages(napari_sam.__path__, "napari_sam."):
        if not info.name.startswith("napari_sam.plugin"):
            importlib.import_module(info.name)
    from napari_sam import SamPredictor, build_model, list_models
    list_models()
    forbidden = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "vispy", "magicgui",
                 "superqt", "torchvision", "triton", "open_clip", "torch._dynamo")
    loaded = sorted(
        m for m in sys.modules
        if m.split(".")[0] in forbidden or m == "torch._dynamo" or m.startswith("torch._dynamo.")
    )
    print(" ".join(loaded) if loaded else "CLEAN")
    """
)


_CHECK = BackgroundScript(SCRIPT, nice=10)


def start_in_background(selected: list[str] | None = None) -> None:
    """Start the fresh interpreter (once); :func:`test_engine_imports_no_gui` reads its output."""
    _CHECK.start()


def stop() -> None:
    _CHECK.stop()


def test_engine_imports_no_gui():
    returncode, stdout, stderr = _CHECK.finish(timeout=120)
    assert returncode == 0, stderr[-3000:]
    assert stdout.strip() == "CLEAN", f"GUI modules imported: {stdout.strip()}"
