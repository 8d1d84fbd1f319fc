"""The session's default runner: plain threads, results delivered on demand."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["ThreadRunner"]


class ThreadRunner:
    """Runs each job in a daemon thread; results are delivered by :meth:`process_events`,
    in the thread that calls it (as Qt's event loop does for the widget)."""

    def __init__(self) -> None:
        self._results: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self.running = 0

    def __call__(self, fn: Callable, args: tuple, on_done: Callable[[Any], None]) -> None:
        with self._lock:
            self.running += 1

        def run() -> None:
            self._results.put((on_done, fn(*args)))

        threading.Thread(target=run, daemon=True).start()

    def process_events(self, timeout: float = 0.0) -> int:
        """Deliver the results that arrived (waiting up to ``timeout`` s for the first one)."""
        n = 0
        try:
            item = self._results.get(timeout=timeout) if timeout > 0 else self._results.get_nowait()
            while True:
                with self._lock:
                    self.running -= 1
                item[0](item[1])
                n += 1
                item = self._results.get_nowait()
        except queue.Empty:
            return n
