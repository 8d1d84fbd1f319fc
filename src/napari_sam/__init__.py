"""Segment Anything for napari: a headless SAM engine and a thin napari plugin.

``import napari_sam`` imports neither Qt nor napari. The heavy parts (torch) are loaded on first
use of :func:`build_model` or :class:`SamPredictor`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["SamPredictor", "build_model", "list_models", "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from .models.build import build_model, list_models
    from .engine.predictor import SamPredictor

_LAZY = {
    "build_model": ".models.build",
    "list_models": ".models.build",
    "SamPredictor": ".engine.predictor",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module = importlib.import_module(_LAZY[name], __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'napari_sam' has no attribute {name!r}")
