"""A Python script run in a fresh interpreter alongside the tests.

Checks that need a fresh interpreter (import order, what a bare ``import`` loads) are slow to
start; their modules start them when collection ends (tests/conftest.py and
tests/plugin/conftest.py) and the test that needs the result waits for it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


class BackgroundScript:
    """``python -c script`` with this checkout's ``src`` first on the path.

    Parameters
    ----------
    script : str
        The code to run.
    nice : int
        Lower the interpreter's priority by this much (POSIX), so that it takes the CPU the
        tests in the foreground leave idle.
    """

    def __init__(self, script: str, nice: int = 0) -> None:
        self.script = script
        self.nice = nice
        self._run: dict = {}

    @property
    def started(self) -> bool:
        return bool(self._run)

    def start(self) -> None:
        """Start the interpreter (once until :meth:`stop`)."""
        if self._run:
            return
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
        prefix = f'import os\nif hasattr(os, "nice"):\n    os.nice({self.nice})\n' if self.nice else ""
        # kept open until the test reads them: the process writes while other tests run
        out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, "-c", prefix + self.script], stdout=out,
                                stderr=err, env=env)
        self._run.update(proc=proc, out=out, err=err)

    def poll(self) -> int | None:
        """The interpreter's exit code once it has ended; None while it runs or before start."""
        proc = self._run.get("proc")
        return None if proc is None else proc.poll()

    def finish(self, timeout: float) -> tuple[int, str, str]:
        """Wait for the interpreter (started if it was not); its exit code, stdout and stderr.
        Stops it afterwards (killed if the wait timed out)."""
        self.start()
        try:
            returncode = self._run["proc"].wait(timeout=timeout)
            self._run["out"].seek(0)
            self._run["err"].seek(0)
            return returncode, self._run["out"].read(), self._run["err"].read()
        finally:
            self.stop()

    def stop(self) -> None:
        """Kill the interpreter if it still runs and close its output files."""
        proc = self._run.get("proc")
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        for name in ("out", "err"):
            if name in self._run:
                self._run[name].close()
        self._run.clear()
