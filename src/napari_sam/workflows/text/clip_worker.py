"""The isolated CLIP worker: a separate Python process that holds the CLIP model.

open_clip imports torchvision, which (with CUDA builds of torch) imports triton; importing triton
in a process where napari already created its OpenGL context crashes that process. An isolated
:class:`~.clip_scorer.ClipScorer` therefore keeps its model in this worker, and only strings,
uint8 crops and embeddings cross over.

The worker is a fresh interpreter started with :mod:`subprocess` (``python -c``, the bootstrap
below), not a :mod:`multiprocessing` child: a ``spawn`` child re-imports the parent's main
script, so a script that opens the viewer without an ``if __name__ == "__main__":`` guard would
open a second viewer in the child and start the worker again from there. Here the child imports
only this module. The parent's ``sys.path`` is sent first (as ``spawn`` does), then requests and
replies are pickles on the child's stdin and stdout; the child's own prints go to stderr. An
exception raised in the worker is raised again in the parent as itself (e.g.
:class:`~.clip_weights.ClipWeightsMissing`), its worker traceback chained as the cause. The
worker ends when its stdin closes: :meth:`ClipWorker.close`, or the parent process ending.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import threading
import traceback
from typing import Any

import numpy as np

from .clip_model import LoadedClip, encode_images_local, encode_text_local, load_clip

__all__ = ["ClipWorker", "serve"]

#: What the child runs: read the parent's sys.path, then serve requests from this module.
_BOOTSTRAP = (
    "import pickle, sys; sys.path[:] = pickle.load(sys.stdin.buffer); "
    "from napari_sam.workflows.text.clip_worker import serve; serve()"
)
#: Seconds a closed worker may take to finish its current request before it is killed.
_EXIT_GRACE_S = 30.0
_PROTOCOL = pickle.HIGHEST_PROTOCOL


class _RemoteTraceback(Exception):
    """The traceback of an exception raised in the worker (chained as its ``__cause__``)."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb}"""'


# -- the child's side --------------------------------------------------------------------------

# The model of this worker process.
_CLIP: LoadedClip | None = None


def _load(spec_text: str, device, cache_dir, download: bool) -> dict:
    global _CLIP
    _CLIP = load_clip(spec_text, device, cache_dir, download)
    return _CLIP.info()


def _loaded() -> LoadedClip:
    if _CLIP is None:  # pragma: no cover - the parent always loads first
        raise RuntimeError("the CLIP worker has no model loaded")
    return _CLIP


def _encode_text(queries: list[str]) -> np.ndarray:
    return encode_text_local(_loaded(), queries)


def _encode_images(crops: np.ndarray) -> np.ndarray:
    return encode_images_local(_loaded(), crops)


_HANDLERS = {"load": _load, "encode_text": _encode_text, "encode_images": _encode_images}


def _error_reply(exc: BaseException) -> tuple:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        payload = pickle.dumps(exc, protocol=_PROTOCOL)
    except Exception:  # noqa: BLE001 - one that does not pickle arrives as a RuntimeError
        payload = None
    return ("error", payload, tb)


def serve() -> None:
    """The worker's loop: answer requests on stdin until it closes (run by the bootstrap)."""
    stdin = sys.stdin  # kept referenced: collecting it would close the requests' stream
    requests = stdin.buffer  # already read from (sys.path): keep its buffer
    sys.stdin = open(os.devnull)  # noqa: SIM115 - lives as long as the process
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    try:  # stray prints (libraries, warnings) go to stderr, not into the replies
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):  # pragma: no cover - no stderr (pythonw)
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115
    # Ctrl+C in a terminal reaches the whole process group: the parent decides when this ends.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            name, args = pickle.load(requests)
        except EOFError:
            return
        try:
            reply: tuple = ("ok", _HANDLERS[name](*args))
        except BaseException as exc:  # noqa: BLE001 - every error goes back to the parent
            reply = _error_reply(exc)
        pickle.dump(reply, replies, protocol=_PROTOCOL)
        replies.flush()


# -- the parent's side -------------------------------------------------------------------------


def _python() -> str:
    """The interpreter for the worker: ``multiprocessing``'s (``set_executable`` is honoured)."""
    from multiprocessing import spawn

    return os.fsdecode(spawn.get_executable() or sys.executable)


def _reap(proc: subprocess.Popen, grace: float) -> None:
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


class ClipWorker:
    """A worker process and a way to call its functions (one call at a time, from any thread).

    Starting it takes a moment (a Python process starts); the first :meth:`call` (``load``)
    reports a worker that failed to start as a ``RuntimeError``.
    """

    def __init__(self) -> None:
        flags = getattr(subprocess, "CREATE_NO_WINDOW", 0) if sys.platform == "win32" else 0
        self._proc: subprocess.Popen | None = subprocess.Popen(
            [_python(), "-c", _BOOTSTRAP],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            creationflags=flags,
        )
        self._lock = threading.Lock()
        try:
            self._send(self._proc, list(sys.path))
        except BaseException:
            self.close()
            raise

    @property
    def pid(self) -> int | None:
        """The worker's process id (None once closed)."""
        return None if self._proc is None else self._proc.pid

    @staticmethod
    def _send(proc: subprocess.Popen, obj: Any) -> None:
        try:
            pickle.dump(obj, proc.stdin, protocol=_PROTOCOL)
            proc.stdin.flush()
        except (OSError, ValueError) as exc:  # ValueError: closed meanwhile
            raise ClipWorker._died(proc) from exc

    @staticmethod
    def _died(proc: subprocess.Popen) -> RuntimeError:
        if proc.stdin is None or proc.stdin.closed:  # by close(), meanwhile
            return RuntimeError("the CLIP worker process was closed")
        try:
            code = proc.wait(1.0)
        except subprocess.TimeoutExpired:
            code = None
        return RuntimeError(
            f"the CLIP worker process ended unexpectedly (exit code {code}); its error output "
            "(stderr) says why"
        )

    def call(self, name: str, *args: Any) -> Any:
        """Run one of the worker's functions (``load``, ``encode_text``, ``encode_images``)."""
        with self._lock:
            proc = self._proc
            if proc is None:
                raise RuntimeError("the CLIP worker process was closed")
            self._send(proc, (name, args))
            try:
                status, *rest = pickle.load(proc.stdout)
            except (EOFError, OSError, ValueError, pickle.UnpicklingError) as exc:
                raise self._died(proc) from exc
        if status == "ok":
            return rest[0]
        payload, tb = rest
        try:
            exc = pickle.loads(payload) if payload is not None else None
        except Exception:  # noqa: BLE001 - cannot rebuild it here (class not importable)
            exc = None
        if not isinstance(exc, BaseException):
            last = tb.strip().splitlines()[-1] if tb.strip() else "unknown error"
            exc = RuntimeError(f"the CLIP worker failed: {last}")
        raise exc from _RemoteTraceback(tb)

    def close(self) -> None:
        """Let the worker end (after its current request, if any); never blocks."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                proc.stdin.close()  # the worker reads EOF and exits
        except OSError:  # pragma: no cover - it is gone already
            pass
        threading.Thread(target=_reap, args=(proc, _EXIT_GRACE_S), daemon=True,
                         name="napari-sam-clip-reaper").start()
