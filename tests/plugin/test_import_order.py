"""The real import order of a napari session: the viewer (and its OpenGL context) first, then the
plugin and torch. Run in a fresh interpreter: this suite's conftest imports torchvision early,
which would hide a crash (importing triton after the GL context exists segfaults here).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from conftest import ROOT

SCRIPT = textwrap.dedent(
    """
    import sys
    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=False)
    import numpy as np
    viewer.add_image(np.random.default_rng(0).random((3, 48, 48)).astype("float32"))

    from napari_sam.plugin import SamWidget  # plugin (and torch) after the GL context
    from napari_sam.build import build_sam, tiny_config

    widget = SamWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.set_model(build_sam(tiny_config()), "tiny")
    widget.points_layer.add([1, 24, 24])
    app = QApplication.instance()
    import time
    t0 = time.time()
    while (widget.is_busy or widget.preview is None) and time.time() - t0 < 30:
        app.processEvents()
        time.sleep(0.01)
    assert widget.preview is not None, widget.status_label.value
    bad = sorted(m for m in ("torchvision", "triton", "open_clip", "torch._dynamo") if m in sys.modules)
    assert not bad, bad
    viewer.close()
    print("OK")
    """
)


@pytest.mark.skipif(
    sys.platform.startswith("linux") and not os.environ.get("DISPLAY"),
    reason="needs a display (run under xvfb-run)",
)
def test_viewer_first_then_plugin():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("OK")
