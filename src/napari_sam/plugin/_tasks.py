"""The Qt side of the session's background work: :func:`qt_runner` (the session's runner, napari
thread workers) and :class:`TaskPanel` (progress bar, status line and *Cancel* of the long job).

Every job -- model load, embedding, prefetch, decoding, and the long ones (propagation, segment
everything, text scoring, precompute) -- is started by the :class:`~.session.SamSession` through
its runner; a long job's progress sink and cancel flag are its :class:`~._workers.TaskContext`.
The panel only shows the job the session runs: it polls the progress from the GUI thread with a
timer (no signal crosses threads but the worker's own ``returned``). The viewer never waits.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from magicgui.widgets import Container, Label, ProgressBar, PushButton
from napari.qt.threading import create_worker
from qtpy.QtCore import QTimer

from ._workers import TaskContext

if TYPE_CHECKING:  # pragma: no cover
    from .session import SamSession

__all__ = ["TaskContext", "TaskPanel", "qt_runner"]

_POLL_MS = 100


def qt_runner(fn: Callable, args: tuple, on_done: Callable[[Any], None]):
    """The session's runner in the viewer: ``fn(*args)`` in a napari thread worker,
    ``on_done(result)`` on the GUI thread (worker bodies return their errors, never raise)."""
    worker = create_worker(fn, *args, _start_thread=False, _ignore_errors=True)
    worker.returned.connect(on_done)
    worker.start()
    return worker


class TaskPanel(Container):
    """A progress bar, a status line and a *Cancel* button for the session's long job.

    Parameters
    ----------
    session : SamSession
        Runs the jobs (:meth:`SamSession.start_task`) and cancels them.
    on_busy : callable, optional
        Called with ``True`` when a job starts and ``False`` when it ends.

    Examples
    --------
    >>> panel.start(  # doctest: +SKIP
    ...     "Propagating",
    ...     lambda ctx: propagate(..., progress=ctx.progress, cancelled=ctx.cancelled),
    ...     on_done=lambda result, cancelled: ...,
    ... )
    """

    def __init__(self, session: SamSession, on_busy: Callable[[bool], None] | None = None) -> None:
        self.bar = ProgressBar(min=0, max=1, value=0, label="")
        self.text = Label(value="")
        self.cancel_button = PushButton(text="Cancel")
        super().__init__(
            widgets=[self.text, self.bar, self.cancel_button], layout="vertical", labels=False
        )
        self.visible = False
        self.session = session
        self._on_busy = on_busy
        self._timer = QTimer(self.native)
        self._timer.setInterval(_POLL_MS)
        self._timer.timeout.connect(self._poll)
        self.cancel_button.changed.connect(self.cancel)

    @property
    def context(self) -> TaskContext | None:
        """The session's long job, if one runs."""
        return self.session.task

    @property
    def busy(self) -> bool:
        return self.session.task is not None

    def start(
        self,
        title: str,
        body: Callable[[TaskContext], Any],
        on_done: Callable[[Any, bool], None],
        on_error: Callable[[BaseException], None] | None = None,
        owner: Any = None,
    ) -> bool:
        """Have the session run ``body(ctx)``, shown here; ``on_done(result, cancelled)`` (or
        ``on_error(error)``) on the GUI thread. ``False`` (nothing started) while a job runs."""

        def finished(callback, *args) -> None:
            self._timer.stop()
            self.visible = False
            if self._on_busy is not None:
                self._on_busy(False)
            if callback is not None:
                callback(*args)

        # shown before it starts: a runner may deliver at once
        if self.session.task is not None:
            return False
        self.text.value = f"{title}..."
        self.bar.max, self.bar.value = 0, 0  # indeterminate until the first progress report
        self.cancel_button.enabled = True
        self.visible = True
        self._timer.start()
        if self._on_busy is not None:
            self._on_busy(True)
        ctx = self.session.start_task(
            title, body, lambda result, cancelled: finished(on_done, result, cancelled),
            lambda error: finished(on_error, error), owner=owner,
        )
        return ctx is not None

    def cancel(self, value=None) -> None:
        """Ask the running job to stop; it returns what it finished."""
        if self.session.cancel_task() is not None:
            self._poll()

    def wait(self, timeout: float = 60.0) -> None:
        """Block until the running job has delivered its result (for scripts and tests)."""
        from qtpy.QtWidgets import QApplication

        end = time.monotonic() + timeout
        while self.session.task is not None:
            if time.monotonic() > end:
                raise TimeoutError(f"task still running after {timeout} s")
            QApplication.processEvents()
            time.sleep(0.01)

    def _poll(self) -> None:
        ctx = self.session.task
        if ctx is None:
            return
        done, total, message = ctx.snapshot()
        if total > 0:
            self.bar.max = total
            self.bar.value = min(done, total)
        if ctx.cancelled():  # by the button, or by the session (its image was removed)
            self.cancel_button.enabled = False
            self.text.value = f"{ctx.title}: cancelling (keeping what is done)..."
            return
        elapsed = time.monotonic() - ctx.started
        eta = ""
        if 0 < done < total:
            eta = f", ~{elapsed / done * (total - done):.0f} s left"
        detail = f" {done}/{total}{eta}" if total > 0 else ""
        self.text.value = f"{ctx.title}{detail}" + (f" ({message})" if message else "")
