"""The isolated CLIP scorer in a real napari session: viewer (OpenGL context) first, then CLIP.

Importing open_clip in that order segfaults this machine's CUDA build of torch (triton, pulled in
by torchvision, after the GL context). ``ClipScorer`` therefore runs the model in a worker
process when a GL stack is loaded; this runs that path in a fresh interpreter (this suite's
conftest imports torchvision early, which would hide the crash) and checks that the scores equal
those of an in-process scorer.

The scripts run from files and have no ``if __name__ == "__main__":`` guard, as users write them:
the worker must not run the script again (a ``multiprocessing`` spawn child would re-import it,
open a second viewer and start a worker of its own).

Each worker imports open_clip (seconds), so the scripts run in one background process started
when collection ends (tests/conftest.py calls :func:`start_in_background`), alongside the other
tests; each test then waits for its script's result and checks it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from napari_sam.data.synthetic import make_nuclei_2d
from napari_sam.workflows.text import ClipScorer, score_objects

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"

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


# The in-process scorer's worker errors and its end, run in a fresh interpreter too (so that it can
# run in the background): an error raised in the worker arrives as itself with the worker's
# traceback chained, and closing the scorer ends the worker.
ERRORS = textwrap.dedent(
    """
    import re
    import sys
    from napari_sam.workflows.text import ClipScorer, ClipWeightsMissing

    spec, cache = sys.argv[1], sys.argv[2]
    try:
        ClipScorer("ViT-B-32:openai", isolate=True, cache_dir=cache)
    except ClipWeightsMissing as exc:
        assert re.search("ViT-B-32-openai", str(exc)), f"the error does not name the weights: {exc}"
        assert "Traceback" in str(exc.__cause__), f"no worker traceback chained: {exc.__cause__!r}"
    else:
        raise AssertionError("no ClipWeightsMissing")

    scorer = ClipScorer(spec, device="cpu", isolate=True)
    proc = scorer._worker._proc
    shape = scorer.encode_text_numpy(["nucleus"]).shape
    assert shape == (1, scorer.embed_dim), f"text embedding of shape {shape}"
    scorer.close()
    code = proc.wait(30)  # stdin closed: the worker ends by itself
    assert code == 0, f"the closed worker ended with exit code {code}"
    try:
        scorer.encode_text_numpy(["debris"])
    except RuntimeError as exc:
        assert re.search("closed", str(exc)), f"a closed scorer raised {exc!r}"
    else:
        raise AssertionError("a closed scorer still encoded text")
    print("OK")
    """
)


def _display_prefix() -> list[str] | None:
    if os.environ.get("DISPLAY") or not sys.platform.startswith("linux"):
        return []
    if shutil.which("xvfb-run"):
        return ["xvfb-run", "-a", "-s", "-screen 0 1280x1024x24"]
    return None


#: name -> (script, its tiny CLIP's name, extra arguments after the spec, needs a display).
SCRIPTS = {
    "unguarded": (UNGUARDED, "napari-sam-unguarded-clip", ["scores.npy", "runs.txt"], False),
    "viewer": (SCRIPT, "napari-sam-iso-clip", ["scores.npy"], True),
    "errors": (ERRORS, "napari-sam-close-clip", ["cache"], False),
}
#: The test that checks each script's result.
TESTS_OF = {
    "test_unguarded_script_starts_the_worker": "unguarded",
    "test_isolated_scorer_after_viewer": "viewer",
    "test_worker_errors_arrive_as_themselves_and_close_ends_it": "errors",
}

# Runs the scripts named in argv one after another, each in its own folder with its own tiny CLIP
# (written here: open_clip is imported in this process, never in a script's), and writes each
# one's result to result.json in its folder. At a lower priority (the scripts inherit it).
DRIVER = textwrap.dedent(
    """
    import json, os, subprocess, sys
    from pathlib import Path

    if hasattr(os, "nice"):  # idle CPU only: the tests in the foreground come first
        os.nice(10)
    tests, root, names = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
    sys.path.insert(0, tests)
    from test_text_isolation import SCRIPTS, _display_prefix
    from test_text import write_tiny_clip

    for name in names:
        source, clip, extra, display = SCRIPTS[name]
        folder = root / name
        folder.mkdir()
        script = folder / "user_script.py"  # a file: a spawn child would re-import it
        script.write_text(source)
        spec = write_tiny_clip(folder, name=clip)
        args = [spec, *(str(folder / a) for a in extra)]
        prefix = _display_prefix() if display else []
        try:
            proc = subprocess.run([*prefix, sys.executable, str(script), *args],
                                  capture_output=True, text=True, timeout=300, check=False,
                                  cwd=folder)
            result = dict(returncode=proc.returncode, stdout=proc.stdout[-2000:],
                          stderr=proc.stderr[-3000:])
        except subprocess.TimeoutExpired as exc:
            result = dict(returncode=None, stdout=str(exc.stdout)[-2000:],
                          stderr=f"timed out after 300 s: {str(exc.stderr)[-3000:]}")
        result["spec"] = spec
        tmp = folder / "result.json.tmp"
        tmp.write_text(json.dumps(result))
        tmp.replace(folder / "result.json")
    """
)

_RUN: dict = {}


def start_in_background(selected: list[str]) -> None:
    """Start the scripts of the ``selected`` tests of this module in one background process."""
    names = [TESTS_OF[t] for t in selected if t in TESTS_OF]
    if "viewer" in names and _display_prefix() is None:
        names.remove("viewer")
    if _RUN or not names:
        return
    root = Path(tempfile.mkdtemp(prefix="napari-sam-clip-isolation-"))
    env = dict(os.environ, NAPARI_SAM_OFFLINE="1", OMP_NUM_THREADS="1",
               NAPARI_SAM_CACHE=str(root / "napari-sam-cache"))
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
    err = tempfile.TemporaryFile("w+")  # noqa: SIM115 - read by the tests, closed by stop()
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(TESTS), str(root), *names],
                            stdout=err, stderr=err, env=env, cwd=root)
    _RUN.update(proc=proc, root=root, err=err, names=names)


def stop() -> None:
    """Kill the background process if it still runs (at the end of the session)."""
    proc = _RUN.get("proc")
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()
    if "err" in _RUN:
        _RUN["err"].close()
    if "root" in _RUN:
        shutil.rmtree(_RUN["root"], ignore_errors=True)
    _RUN.clear()


def _result(request, timeout: float = 600) -> tuple[dict, Path]:
    """The result of this test's script (started here when collection did not start it)."""
    name = TESTS_OF[request.node.originalname]
    if not _RUN:
        start_in_background([request.node.originalname])
        request.addfinalizer(stop)
    assert name in _RUN["names"], f"the {name!r} script was not started"
    folder = _RUN["root"] / name
    deadline = time.monotonic() + timeout
    while not (folder / "result.json").exists():
        if _RUN["proc"].poll() is not None and not (folder / "result.json").exists():
            _RUN["err"].seek(0)
            raise AssertionError(f"the background driver ended ({_RUN['proc'].returncode}) "
                                 f"before the {name!r} script did:\n{_RUN['err'].read()[-3000:]}")
        assert time.monotonic() < deadline, f"the {name!r} script did not end in {timeout} s"
        time.sleep(0.1)
    result = json.loads((folder / "result.json").read_text())
    code = result["returncode"]
    assert code == 0, f"{name} script: exit code {code}:\n{result['stderr']}"
    assert result["stdout"].strip().endswith("OK"), result["stdout"]
    return result, folder


def _check_scores(spec: str, out: Path) -> None:
    ids, sim, prob = np.load(out)
    image, labels = make_nuclei_2d((96, 96), seed=2)
    local = ClipScorer(spec, device="cpu", isolate=False)
    s = score_objects(local, image, labels, "nucleus", ["background", "debris"])
    np.testing.assert_array_equal(ids, s.ids)
    np.testing.assert_allclose(sim, s.similarity, atol=1e-5)
    np.testing.assert_allclose(prob, s.probability, atol=1e-5)


def test_unguarded_script_starts_the_worker(request):
    result, folder = _result(request)
    # the worker never ran the script
    assert (folder / "runs.txt").read_text().split()[1::2] == ["__main__"]
    _check_scores(result["spec"], folder / "scores.npy")


@pytest.mark.skipif(_display_prefix() is None, reason="needs a display or xvfb-run")
def test_isolated_scorer_after_viewer(request):
    result, folder = _result(request)
    _check_scores(result["spec"], folder / "scores.npy")


def test_worker_errors_arrive_as_themselves_and_close_ends_it(request):
    _result(request)
