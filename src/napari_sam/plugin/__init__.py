"""The napari side of napari-sam-nd: the "Segment Anything" dock widget, sample data, launcher.

Importing this package imports napari and Qt; ``napari_sam`` itself never imports it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["SamWidget", "launch"]

if TYPE_CHECKING:  # pragma: no cover
    from ._launch import launch
    from ._widget import SamWidget

_LAZY = {"SamWidget": "._widget", "launch": "._launch"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
