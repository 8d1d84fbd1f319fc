"""Long jobs of the widget (propagation, segment everything, text scoring, precompute) run one at a
time in a background thread with a progress bar and a cancel button.

The engine's long functions take ``progress(done, total)`` and ``cancelled() -> bool`` callbacks
and return what they finished when cancelled. :class:`TaskRunner` hands them a thread-safe
progress sink and a cancel flag, polls the progress from the GUI thread with a timer (no signal
crosses threads but the worker's own ``returned``), and delivers the result -- complete or partial
-- to a callback on the GUI thread. The viewer never waits for a task.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from magicgui.widgets import Container, Label, ProgressBar, PushButton
from napari.qt.threading import create_worker
from qtpy.QtCore import QTimer

__all__ = ["TaskContext", "TaskRunner"]

logger = logging.getLogger(__name__)

_POLL_MS = 100


@dataclass
class TaskContext:
    """What a task body receives: report progress, ask whether the user cancelled.

    Both methods are safe to call from the worker thread.
    """

    title: str
    #: What the task works on (the plugin: the image layer's id), so it can be cancelled with it.
    owner: Any = None
    _event: threading.Event = field(default_factory=threading.Event, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _progress: tuple[int, int] = (0, 0)
    _message: str = ""
    started: float = field(default_factory=time.monotonic)

    def progress(self, done: int, total: int, message: str = "") -> None:
        """Record ``done`` of ``total`` units (``total == 0``: unknown)."""
        with self._lock:
            self._progress = (int(done), int(total))
            if message:
                self._message = message

    def cancelled(self) -> bool:
        return self._event.is_set()

    def cancel(self) -> None:
        self._event.set()

    def snapshot(self) -> tuple[int, int, str]:
        with self._lock:
            return (*self._progress, self._message)


class TaskRunner(Container):
    """A progress bar, a status line and a *Cancel* button running one task at a time.

    Parameters
    ----------
    on_busy : callable, optional
        Called with ``True`` when a task starts and ``False`` when it ends.

    Examples
    --------
    >>> runner.start(  # doctest: +SKIP
    ...     "Propagating",
    ...     lambda ctx: propagate(..., progress=ctx.progress, cancelled=ctx.cancelled),
    ...     on_done=lambda result, cancelled: ...,
    ... )
    """

    def __init__(self, on_busy: Callable[[bool], None] | None = None) -> None:
        self.bar = ProgressBar(min=0, max=1, value=0, label="")
        self.text = Label(value="")
        self.cancel_button = PushButton(text="Cancel")
        super().__init__(
            widgets=[self.text, self.bar, self.cancel_button], layout="vertical", labels=False
        )
        self.visible = False
        self.context: TaskContext | None = None
        self.worker = None
        self._on_busy = on_busy
        self._timer = QTimer(self.native)
        self._timer.setInterval(_POLL_MS)
        self._timer.timeout.connect(self._poll)
        self.cancel_button.changed.connect(self.cancel)

    @property
    def busy(self) -> bool:
        return self.context is not None

    def start(
        self,
        title: str,
        body: Callable[[TaskContext], Any],
        on_done: Callable[[Any, bool], None],
        on_error: Callable[[BaseException], None] | None = None,
        owner: Any = None,
    ) -> bool:
        """Run ``body(ctx)`` in a worker thread; ``on_done(result, cancelled)`` on the GUI thread.

        ``owner`` (kept as ``ctx.owner``) names what the task works on. Returns ``False`` (and
        starts nothing) while another task runs.
        """
        if self.context is not None:
            return False
        ctx = TaskContext(title, owner)
        self.context = ctx

        def run():
            try:
                return body(ctx), None
            except Exception as exc:  # reported on the GUI thread
                logger.exception("%s failed", title)
                return None, exc

        worker = create_worker(run, _start_thread=False, _ignore_errors=True)
        worker.returned.connect(lambda result: self._finish(ctx, *result, on_done, on_error))
        self.worker = worker
        self.text.value = f"{title}..."
        self.bar.max, self.bar.value = 0, 0  # indeterminate until the first progress report
        self.cancel_button.enabled = True
        self.visible = True
        self._timer.start()
        if self._on_busy is not None:
            self._on_busy(True)
        worker.start()
        return True

    def cancel(self, value=None) -> None:
        """Ask the running task to stop; it returns what it finished."""
        if self.context is not None:
            self.context.cancel()
            self.cancel_button.enabled = False
            self.text.value = f"{self.context.title}: cancelling (keeping what is done)..."

    def wait(self, timeout: float = 60.0) -> None:
        """Block until the running task has delivered its result (for scripts and tests)."""
        from qtpy.QtWidgets import QApplication

        end = time.monotonic() + timeout
        while self.context is not None:
            if time.monotonic() > end:
                raise TimeoutError(f"task still running after {timeout} s")
            QApplication.processEvents()
            time.sleep(0.01)

    def _poll(self) -> None:
        ctx = self.context
        if ctx is None:
            return
        done, total, message = ctx.snapshot()
        if total > 0:
            self.bar.max = total
            self.bar.value = min(done, total)
        if not ctx.cancelled():
            elapsed = time.monotonic() - ctx.started
            eta = ""
            if 0 < done < total:
                eta = f", ~{elapsed / done * (total - done):.0f} s left"
            detail = f" {done}/{total}{eta}" if total > 0 else ""
            self.text.value = f"{ctx.title}{detail}" + (f" ({message})" if message else "")

    def _finish(self, ctx, result, error, on_done, on_error) -> None:
        self._timer.stop()
        self.context = None
        self.worker = None
        self.visible = False
        if self._on_busy is not None:
            self._on_busy(False)
        if error is not None:
            if on_error is not None:
                on_error(error)
            return
        on_done(result, ctx.cancelled())
