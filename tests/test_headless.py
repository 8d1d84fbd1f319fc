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
    import napari_sam
    import napari_sam.engine.predictor, napari_sam.engine.embedding_cache, napari_sam.engine.preprocess
    import napari_sam.workflows.segment, napari_sam.models.build, napari_sam.cli, napari_sam.data.synthetic
    import napari_sam.engine.embedding_store, napari_sam.engine.tiling, napari_sam.engine.cluster
    import napari_sam.workflows.propagation, napari_sam.workflows.automatic, napari_sam.workflows.text
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
