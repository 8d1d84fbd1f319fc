"""A titled, collapsible group of the widget's rows (superqt's ``QCollapsible``)."""

from __future__ import annotations

from collections.abc import Sequence

from magicgui.widgets import Container
from magicgui.widgets.bases import Widget
from qtpy.QtWidgets import QSizePolicy
from superqt import QCollapsible

__all__ = ["Section", "elide_width"]


class Section(Container):
    """``widgets`` in labelled rows under a title that folds them away.

    Parameters
    ----------
    title : str
    widgets : sequence of magicgui widgets
    expanded : bool
        Whether the section starts open.

    Attributes
    ----------
    body : magicgui.widgets.Container
        The rows (a labelled container); the section's own list holds nothing else.
    collapsible : superqt.QCollapsible
    """

    def __init__(self, title: str, widgets: Sequence[Widget], expanded: bool = True) -> None:
        super().__init__(labels=False)
        self.body = Container(widgets=list(widgets), labels=True)
        self.body.margins = (4, 0, 0, 0)
        self.collapsible = QCollapsible(title)
        self.collapsible.setDuration(0)
        self.collapsible.addWidget(self.body.native)
        layout = self.native.layout()
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.collapsible)
        inner = self.collapsible.layout()
        if inner is not None:
            inner.setContentsMargins(0, 0, 0, 0)
        self.expanded = expanded

    @property
    def expanded(self) -> bool:
        """Whether the rows are shown."""
        return self.collapsible.isExpanded()

    @expanded.setter
    def expanded(self, value: bool) -> None:
        if value:
            self.collapsible.expand(animate=False)
        else:
            self.collapsible.collapse(animate=False)
        # the size hints up to the dock change now, also while the window is hidden
        widget = self.collapsible
        while widget is not None:
            widget.updateGeometry()
            if widget.layout() is not None:
                widget.layout().invalidate()
            widget = widget.parentWidget()

    def reset_choices(self, *_) -> None:
        self.body.reset_choices()


def elide_width(widget: Widget) -> None:
    """Let ``widget`` (a label) take the width it is given, never ask for more: a long text
    wraps instead of widening the dock."""
    native = widget.native
    if hasattr(native, "setWordWrap"):
        native.setWordWrap(True)
    policy = native.sizePolicy()
    policy.setHorizontalPolicy(QSizePolicy.Policy.Ignored)
    native.setSizePolicy(policy)
