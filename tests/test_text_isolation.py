"""The isolated CLIP scorer in a real napari session: viewer (OpenGL context) first, then CLIP.

Importing open_clip in that order segfaults this machine's CUDA build of torch (triton, pulled in
by torchvision, after the GL context). ``ClipScorer`` therefore runs the model in a worker
process when a GL stack is loaded; this runs that path in a fresh interpreter (this suite's
conftest imports torchvision early, which would hide the crash) and checks that the scores equal
those of an in-process scorer.

The scripts run from files and have no ``if __name__ == "__main__":`` guard, as users write them:
the worker must not run the script again (a ``multiprocessing`` spawn child would re-import it,
open a second viewer and start a worker of its own).
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


# No viewer: runs everywhere. Counts its runs in a file: a worker that re-ran it would add one.
UNGUARDED = textwrap.dedent(
    """
    import os
    import sys
    import numpy as np
    from napari_sam.data.synthetic import make_nuclei_2d
    from napari_sam.workflows.text import ClipScorer, score_objects

    spec, out, runs = sys.argv[1], sys.argv[2], sys.argv[3]
    with open(runs, "a") as f:
        f.write(f"{os.getpid()} {__name__}\\n")
    image, labels = make_nuclei_2d((96, 96), seed=2)
    scorer = ClipScorer(spec, device="cpu", isolate=True)
    s = score_objects(scorer, image, labels, "nucleus", ["background", "debris"])
    np.save(out, np.stack([s.ids, s.similarity, s.probability]))
    bad = sorted(m for m in ("torch", "torchvision", "open_clip") if m in sys.modules)
    assert not bad, bad
    print("OK")
    """
)


def _display_prefix() -> list[str] | None:
    if os.environ.get("DISPLAY") or not sys.platform.startswith("linux"):
        return []
    if shutil.which("xvfb-run"):
        return ["xvfb-run", "-a", "-s", "-screen 0 1280x1024x24"]
    return None


def _run_script(tmp_path: Path, source: str, args: list[str], prefix: list[str] = ()):
    script = tmp_path / "user_script.py"  # a file: a spawn child would re-import it
    script.write_text(source)
    env = dict(os.environ, NAPARI_SAM_OFFLINE="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
    proc = subprocess.run([*prefix, sys.executable, str(script), *args], capture_output=True,
                          text=True, env=env, timeout=300, check=False, cwd=tmp_path)
    assert proc.returncode == 0, f"exit code {proc.returncode}:\n{proc.stderr[-3000:]}"
    assert proc.stdout.strip().endswith("OK"), proc.stdout[-2000:]


def _check_scores(spec: str, out: Path) -> None:
    ids, sim, prob = np.load(out)
    image, labels = make_nuclei_2d((96, 96), seed=2)
    local = ClipScorer(spec, device="cpu", isolate=False)
    s = score_objects(local, image, labels, "nucleus", ["background", "debris"])
    np.testing.assert_array_equal(ids, s.ids)
    np.testing.assert_allclose(sim, s.similarity, atol=1e-5)
    np.testing.assert_allclose(prob, s.probability, atol=1e-5)


def test_unguarded_script_starts_the_worker(tmp_path):
    spec = write_tiny_clip(tmp_path, name="napari-sam-unguarded-clip")
    out, runs = tmp_path / "scores.npy", tmp_path / "runs.txt"
    _run_script(tmp_path, UNGUARDED, [spec, str(out), str(runs)])
    assert runs.read_text().split()[1::2] == ["__main__"]  # the worker never ran the script
    _check_scores(spec, out)


@pytest.mark.skipif(_display_prefix() is None, reason="needs a display or xvfb-run")
def test_isolated_scorer_after_viewer(tmp_path):
    spec = write_tiny_clip(tmp_path, name="napari-sam-iso-clip")
    out = tmp_path / "scores.npy"
    _run_script(tmp_path, SCRIPT, [spec, str(out)], _display_prefix())
    _check_scores(spec, out)


def test_worker_errors_arrive_as_themselves_and_close_ends_it(tmp_path, monkeypatch):
    from napari_sam.workflows.text import ClipWeightsMissing

    monkeypatch.setenv("NAPARI_SAM_OFFLINE", "1")
    with pytest.raises(ClipWeightsMissing, match="ViT-B-32-openai") as info:
        ClipScorer("ViT-B-32:openai", isolate=True, cache_dir=tmp_path / "cache")
    assert "Traceback" in str(info.value.__cause__)  # the worker's traceback, chained

    spec = write_tiny_clip(tmp_path, name="napari-sam-close-clip")
    scorer = ClipScorer(spec, device="cpu", isolate=True)
    proc = scorer._worker._proc
    assert scorer.encode_text_numpy(["nucleus"]).shape == (1, scorer.embed_dim)
    scorer.close()
    assert proc.wait(30) == 0  # stdin closed: the worker ends by itself
    with pytest.raises(RuntimeError, match="closed"):
        scorer.encode_text_numpy(["debris"])
