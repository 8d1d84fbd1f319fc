"""Errors that fit napari's toast: one short line, the whole message one click away."""

from __future__ import annotations

from napari.utils.notifications import Notification, NotificationSeverity, notification_manager

__all__ = ["notify_error", "short_message"]

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
