"""The engine is headless: importing it loads neither napari nor any Qt binding.

The check runs in a fresh interpreter (this suite's conftest imports torchvision early), started
when collection ends (tests/conftest.py calls :func:`start_in_background`) so that it runs
alongside the other tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
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


_RUN: dict = {}


def start_in_background(selected: list[str] | None = None) -> None:
    """Start the fresh interpreter (once); :func:`test_engine_imports_no_gui` reads its output."""
    if _RUN:
        return
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")  # noqa: SIM115
    # at a lower priority: it takes the CPU the tests in the foreground leave idle
    nice = 'import os\nif hasattr(os, "nice"):\n    os.nice(10)\n'
    proc = subprocess.Popen([sys.executable, "-c", nice + SCRIPT], stdout=out, stderr=err,
                            env=env)
    _RUN.update(proc=proc, out=out, err=err)


def stop() -> None:
    """Kill the interpreter if it still runs and close its output files."""
    proc = _RUN.get("proc")
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()
    for name in ("out", "err"):
        if name in _RUN:
            _RUN[name].close()
    _RUN.clear()


def test_engine_imports_no_gui(request):
    if not _RUN:
        start_in_background()
        request.addfinalizer(stop)
    returncode = _RUN["proc"].wait(timeout=120)
    _RUN["out"].seek(0)
    _RUN["err"].seek(0)
    stdout, stderr = _RUN["out"].read(), _RUN["err"].read()
    assert returncode == 0, stderr[-3000:]
    assert stdout.strip() == "CLEAN", f"GUI modules imported: {stdout.strip()}"
