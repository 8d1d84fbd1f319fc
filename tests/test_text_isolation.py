"""The isolated CLIP scorer in a real napari session: viewer (OpenGL context) first, then CLIP.

Importing open_clip in that order segfaults this machine's CUDA build of torch (triton, pulled in
by torchvision, after the GL context). ``ClipScorer`` therefore runs the model in a spawned child
process when a GL stack is loaded; this runs that path in a fresh interpreter (this suite's
conftest imports torchvision early, which would hide the crash) and checks that the scores equal
those of an in-process scorer.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from test_text import write_tiny_clip

from napari_sam.data.synthetic import make_nuclei_2d
from napari_sam.workflows.text import ClipScorer, score_objects

SRC = Path(__file__).resolve().parents[1] / "src"

SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=True)
    viewer.add_image(np.zeros((32, 32), "float32"))
    QApplication.processEvents()

    from napari_sam.data.synthetic import make_nuclei_2d
    from napari_sam.workflows.text import ClipScorer, ClipWeightsMissing, score_objects

    spec, out = sys.argv[1], sys.argv[2]
    image, labels = make_nuclei_2d((96, 96), seed=2)
    with ClipScorer(spec, device="cpu") as scorer:  # isolate=None: must choose the child process
        assert scorer.isolated, "a viewer is open: the scorer must be isolated"
        s = score_objects(scorer, image, labels, "nucleus", ["background", "debris"])
        np.save(out, np.stack([s.ids, s.similarity, s.probability]))
    try:  # errors raised in the child arrive as themselves
        ClipScorer("ViT-B-32:openai", isolate=True, cache_dir=out + ".cache")
    except ClipWeightsMissing as exc:
        assert "ViT-B-32-openai" in str(exc), str(exc)
    else:
        raise AssertionError("no ClipWeightsMissing")
    bad = sorted(m for m in ("torchvision", "triton", "open_clip") if m in sys.modules)
    assert not bad, bad
    viewer.close()
    print("OK")
    """
)


def _command() -> list[str] | None:
    if os.environ.get("DISPLAY") or not sys.platform.startswith("linux"):
        return [sys.executable, "-c", SCRIPT]
    if shutil.which("xvfb-run"):
        return ["xvfb-run", "-a", "-s", "-screen 0 1280x1024x24", sys.executable, "-c", SCRIPT]
    return None


@pytest.mark.skipif(_command() is None, reason="needs a display or xvfb-run")
def test_isolated_scorer_after_viewer(tmp_path):
    spec = write_tiny_clip(tmp_path, name="napari-sam-iso-clip")
    out = tmp_path / "scores.npy"
    env = dict(os.environ, NAPARI_SAM_OFFLINE="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
    proc = subprocess.run([*_command(), spec, str(out)], capture_output=True, text=True,
                          env=env, timeout=300, check=False)
    assert proc.returncode == 0, f"exit code {proc.returncode}:\n{proc.stderr[-3000:]}"
    assert proc.stdout.strip().endswith("OK")

    ids, sim, prob = np.load(out)
    image, labels = make_nuclei_2d((96, 96), seed=2)
    local = ClipScorer(spec, device="cpu", isolate=False)
    s = score_objects(local, image, labels, "nucleus", ["background", "debris"])
    np.testing.assert_array_equal(ids, s.ids)
    np.testing.assert_allclose(sim, s.similarity, atol=1e-5)
    np.testing.assert_allclose(prob, s.probability, atol=1e-5)
