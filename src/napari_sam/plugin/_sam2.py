"""What the widget does differently with a SAM 2 (2.1) model.

With SAM 2, points, boxes and mask prompts on a slice work as with SAM (the session's
predictor is a :class:`~napari_sam.engine.sam2_predictor.Sam2Predictor` and its embedder a
memory-only :class:`~napari_sam.engine.sam2_embedder.Sam2StackEmbedder`: embedded in the
background per slice, kept in the LRU, neighbours prefetched), and propagation tracks the
objects with SAM 2's memory. What is built on SAM's single image-embedding tensor does not
apply; the widget says so once when the model is set (:data:`SAM2_LIMITS`), greys out those
options and ignores them, and an action that needs SAM refuses with one warning:

* embeddings on disk: kept in memory only (the zarr store holds one tensor per plane);
* tiles of large slices and "zoom in on small objects": a slice is embedded whole, resized to
  the model's input;
* the mask-edge refiner (SAM 2 has none) and micro-sam's instance decoder;
* segment everything and precompute stack (no disk store to precompute into).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from napari.utils.notifications import show_info

from ..engine.sam2_embedder import is_sam2_model

if TYPE_CHECKING:  # pragma: no cover
    from ._widget import SamWidget

__all__ = ["SAM2_LIMITS", "adapt_to_model", "refuse_sam2", "sam2_loaded"]

#: Shown once when a SAM 2 model is set.
SAM2_LIMITS = (
    "SAM 2 model loaded: points, boxes, mask prompts and propagation (with SAM 2's memory) "
    "work. Not with SAM 2: embeddings on disk (kept in memory only), tiles of large slices and "
    "'zoom in on small objects' (slices are embedded whole), the mask-edge refiner, segment "
    "everything and precompute stack."
)

#: The SAM-only checkboxes, greyed out while a SAM 2 model is loaded.
_SAM_ONLY_OPTIONS = ("zoom_small", "refine_masks", "snap_objects", "disk_cache")


def sam2_loaded(host: SamWidget) -> bool:
    """Whether the widget's loaded model is a SAM 2 model."""
    predictor = host.session.predictor
    return predictor is not None and is_sam2_model(predictor.model)


def adapt_to_model(host: SamWidget, model: Any) -> None:
    """Grey out (SAM 2) or restore (SAM) the SAM-only options, and say once what SAM 2 lacks."""
    sam2 = is_sam2_model(model)
    tips = host.__dict__.setdefault("_sam_only_tooltips", {})  # their own, restored for SAM
    for name in _SAM_ONLY_OPTIONS:
        widget = getattr(host, name)
        tips.setdefault(name, widget.tooltip)
        widget.enabled = not sam2
        widget.tooltip = "Not available with a SAM 2 model" if sam2 else tips[name]
    if sam2:
        show_info(SAM2_LIMITS)


def refuse_sam2(host: SamWidget, what: str) -> bool:
    """With a SAM 2 model loaded: warn (once per slice on screen) that ``what`` needs a SAM
    model and return ``True``; else ``False``."""
    if not sam2_loaded(host):
        return False
    host.warn_once(f"sam2:{what}", f"{what} needs a SAM model: it does not work with the SAM 2 "
                                   f"model '{host.model_name}'. Load a SAM model for it.")
    return True
