"""The ``napari-sam`` command line: one module per command, sharing :mod:`._common`.

:func:`main` is the entry point of the ``napari-sam`` console script.
"""

# The commands' model loader, under its old name. The commands call ``_common.load_model``:
# replace that one, not this alias, to change the model every command loads.
from ._common import load_model as _load_model  # noqa: F401
from ._main import build_parser, main

__all__ = ["build_parser", "main"]
