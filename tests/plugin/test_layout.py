"""The widget fits a 1366 x 768 laptop screen: titled, collapsible sections, and a status line
that wraps instead of widening the dock."""

from __future__ import annotations

from conftest import nuclei_3d
from qtpy.QtWidgets import QApplication

#: What is left of 768 px for the dock under napari's title and menu bars.
MAX_HEIGHT = 700


def _hint(widget):
    QApplication.processEvents()
    return widget.native.sizeHint(), widget.native.minimumSizeHint()


def test_the_widget_fits_a_laptop_screen(sam):
    _, widget, _ = sam(nuclei_3d()[0])
    sections = (widget.model_section, widget.prompts, widget.stack, widget.text)
    titles = [s.collapsible.text() for s in sections]
    assert all(titles) and len(set(titles)) == 4
    hint, _ = _hint(widget)
    assert hint.height() <= MAX_HEIGHT, [s.expanded for s in sections]
    # the first steps are open; the model (loaded by itself) and the text search are folded
    assert widget.prompts.expanded and widget.stack.expanded
    assert not widget.model_section.expanded and not widget.text.expanded

    widget.text.expanded = True  # opening a section shows its rows
    opened, _ = _hint(widget)
    assert opened.height() > hint.height() + 100
    assert widget.text.query.native.isVisibleTo(widget.native)
    widget.text.expanded = False
    assert _hint(widget)[0].height() == hint.height()


def test_a_long_status_does_not_widen_the_widget(sam):
    _, widget, _ = sam(nuclei_3d()[0])
    before, before_min = _hint(widget)
    widget.set_status("Propagation wrote " + ", ".join(f"{i}: slices 0-99" for i in range(60)))
    after, after_min = _hint(widget)
    assert after.width() <= before.width() and after_min.width() <= before_min.width()
    widget.set_status("stored in /a/very/long/" + "unbreakable_folder_name" * 20 + ".zarr")
    after, after_min = _hint(widget)
    assert after.width() <= before.width() and after_min.width() <= before_min.width()
    widget.model_section.show_loaded("/some/long/path/to/" + "checkpoint" * 30 + ".pth", "cpu")
    assert _hint(widget)[1].width() <= before_min.width()
