"""The engine is headless: importing it loads neither napari nor any Qt binding."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

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


def test_engine_imports_no_gui():
    import os

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "CLEAN", f"GUI modules imported: {proc.stdout.strip()}"
