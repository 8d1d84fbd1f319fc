"""Errors that fit napari's toast: one short line, the whole message one click away."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from napari.utils.notifications import Notification, NotificationSeverity, notification_manager

__all__ = ["guarded", "notify_error", "short_message"]

logger = logging.getLogger(__name__)

#: Characters a toast shows in full on a laptop screen.
TOAST_CHARS = 90


def short_message(text: str, limit: int = TOAST_CHARS) -> str:
    """The first sentence of ``text``, cut to ``limit`` characters with an ellipsis."""
    first = text.strip().split("\n", 1)[0]
    cut = first.find(". ")
    if 0 < cut < limit:
        first = first[: cut + 1]
    return first if len(first) <= limit else first[: limit - 1].rstrip() + "…"


def notify_error(text: str) -> Notification:
    """Show ``text`` as an error: the toast holds its first sentence and, when that is not all,
    a *Details* button that opens the whole message."""
    short = short_message(text)
    actions = [] if short == text.strip() else [("Details", lambda *_: _show_details(text))]
    note = Notification(short, NotificationSeverity.ERROR, actions=actions)
    note.details = text  # for scripts and tests
    notification_manager.dispatch(note)
    return note


def _show_details(text: str) -> None:
    from qtpy.QtWidgets import QMessageBox

    box = QMessageBox(QMessageBox.Icon.Critical, "Segment Anything", short_message(text))
    box.setDetailedText(text)
    box.setInformativeText(text if len(text) < 600 else text[:600] + "…")
    box.exec()


def guarded(method: Callable) -> Callable:
    """Run a Qt/napari callback of the widget (or of a part of it, with a ``host``: the widget);
    report any failure as one notification instead of a traceback. Once the widget is closed
    (``closed``), the callback does nothing."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        widget = getattr(self, "host", self)
        if widget.closed:
            return None
        try:
            return method(self, *args, **kwargs)
        except RuntimeError as exc:
            if "has been deleted" in str(exc):  # the Qt side is gone (viewer closed)
                widget.closed = True
                return None
            logger.exception("Segment Anything: %s failed", method.__name__)
            notify_error(f"Segment Anything: {exc}")
        except Exception as exc:  # the user sees the message, the log the rest
            logger.exception("Segment Anything: %s failed", method.__name__)
            notify_error(f"Segment Anything: {exc}")
        return None

    return wrapper
