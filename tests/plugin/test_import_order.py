"""The real import order of a napari session: the viewer (and its OpenGL context) first, then the
plugin and torch. Run in a fresh interpreter: this suite's conftest imports torchvision early,
which would hide a crash (importing triton after the GL context exists segfaults here).
"""

from __future__ import annotations

import os
import sys
import textwrap

import pytest
from _background import BackgroundScript

SCRIPT = textwrap.dedent(
    """
    import sys
    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=False)
    import numpy as np
    viewer.add_image(np.random.default_rng(0).random((3, 48, 48)).astype("float32"))

    from napari_sam.plugin import SamWidget  # plugin (and torch) after the GL context
    from napari_sam.models.build import MODEL_CONFIGS, build_model, build_sam, tiny_config
    import tempfile, torch

    # the real loading path: a checkpoint file read by build_model
    MODEL_CONFIGS["tiny"] = tiny_config()
    ckpt = tempfile.NamedTemporaryFile(suffix=".pt", delete=False).name
    torch.save(build_sam(tiny_config()).state_dict(), ckpt)
    model = build_model("tiny", checkpoint=ckpt)
    model = build_model(ckpt)  # model type inferred from the file's shapes

    widget = SamWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.set_model(model, "tiny")
    widget.points_layer.add([1, 24, 24])
    app = QApplication.instance()
    import time
    t0 = time.time()
    while (widget.is_busy or widget.preview is None) and time.time() - t0 < 30:
        app.processEvents()
        time.sleep(0.01)
    assert widget.preview is not None, widget.status_label.value

    # SAM 2 after the GL context too: its modules, the registry, clicks and memory tracking
    from napari_sam.engine.sam2_predictor import predictor_for
    from napari_sam.models.sam2_configs import build_sam2, tiny_sam2_config
    from napari_sam.workflows.propagation import PropagationParams, Seed, propagate
    build_model("sam2.1_hiera_tiny", pretrained=False)
    sam2 = build_sam2(tiny_sam2_config())
    stack = np.random.default_rng(1).random((3, 64, 64)).astype("float32")
    clicks = predictor_for(sam2)
    clicks.set_image(stack[0])
    clicks.segment(points=[[30, 30]])
    run = propagate(sam2, None, 3, [Seed(1, 1, points=np.array([[30, 30]]))],
                    slice_image=lambda i: stack[i], params=PropagationParams(min_score=0.0))
    assert run.complete
    # ... and in the widget: the viewer's embedding path and decoding with a SAM 2 model
    widget.set_model(sam2, "sam2")
    widget.points_layer.add([1, 20, 20])
    t0 = time.time()
    while (widget.is_busy or not any(type(widget.cache.get(k)).__name__ == "Sam2Embedding"
                                     for k in widget.cache.keys())) and time.time() - t0 < 30:
        app.processEvents()
        time.sleep(0.01)
    assert widget.preview is not None and not widget.is_busy, widget.status_label.value
    bad = sorted(m for m in ("torchvision", "triton", "open_clip", "torch._dynamo") if m in sys.modules)
    assert not bad, bad
    viewer.close()
    print("OK")
    """
)


_HAS_DISPLAY = not sys.platform.startswith("linux") or bool(os.environ.get("DISPLAY"))
_CHECK = BackgroundScript(SCRIPT)


def start_in_background(selected: list[str]) -> None:
    """Start the subprocess (tests/conftest.py does it when collection ends, so that it overlaps
    the other tests)."""
    if _HAS_DISPLAY:
        _CHECK.start()


def stop() -> None:
    _CHECK.stop()


@pytest.mark.skipif(not _HAS_DISPLAY, reason="needs a display (run under xvfb-run)")
def test_viewer_first_then_plugin():
    returncode, stdout, stderr = _CHECK.finish(timeout=180)
    assert returncode == 0, f"exit code {returncode}:\n{stderr[-3000:]}"
    assert stdout.strip().endswith("OK")
