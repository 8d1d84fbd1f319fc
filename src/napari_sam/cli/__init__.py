"""The ``napari-sam`` command line: one module per command group, sharing :mod:`._common`."""

from ._main import main

__all__ = ["main"]
