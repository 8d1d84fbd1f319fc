"""Text prompts: keep the objects that CLIP says look like the words typed ("nucleus", "debris").

SAM's paper shows text-to-mask with a text pathway that Meta never released. This package gets
the same effect from parts that exist: candidate objects (a label image: the automatic
segmentation's masks, or objects already drawn) are each cut out as a square crop around the
object, the pixels outside the object dimmed or blanked (the paper's appendix D.5 builds its CLIP
crops the same way: enlarged box, square crop, outside of the mask zeroed), and embedded with a
CLIP image encoder (open_clip). Each crop is scored by the cosine similarity to the CLIP text
embedding of the query and, as in CLIP's zero-shot classification, by a softmax over the query
and negative queries ("background", "debris", ...) scaled by CLIP's learned temperature.

Everything is per 2D plane: ``image`` is ``(H, W)`` or ``(H, W, 3)`` and ``labels`` ``(H, W)``;
for a stack the caller passes ``image[z]``, ``labels[z]`` and one ``intensity_range`` for the
whole stack (:func:`napari_sam.engine.preprocess.estimate_intensity_range`).

Modules
-------
:mod:`.crops`
    Objects cut out as square CLIP-ready crops (:class:`CropParams`, :func:`extract_crops`).
:mod:`.clip_weights`
    CLIP model specifications and their weights: cache, one-time download, offline messages.
:mod:`.clip_model`
    The open_clip model loaded in the current process; text and image encoding.
:mod:`.clip_worker`
    The isolated worker process that holds the model inside a napari viewer.
:mod:`.clip_scorer`
    :class:`ClipScorer` (in process or isolated) and the :class:`CropEmbeddingCache`.
:mod:`.matching`
    Scores of objects against a query and negatives, and the selection of the matches.
:mod:`.segment`
    :func:`segment_by_text` end to end, and clicks that correct a selection.

Process isolation
-----------------
open_clip imports torchvision, which (with CUDA builds of torch) imports triton; importing
triton in a process where napari already created its OpenGL context crashes that process. In
the viewer, use ``ClipScorer(spec, isolate=True)``: the CLIP model then lives in a separate
worker process (:mod:`.clip_worker`, started with :mod:`subprocess`, so a script without an
``if __name__ == "__main__":`` guard is not run again) and only uint8 crops, strings and
embeddings cross over. ``isolate=None`` (default) isolates exactly when that crash is possible
(vispy loaded, triton not yet).

This package imports neither torch nor open_clip at import time.
"""

from __future__ import annotations

from .clip_scorer import ClipScorer, CropEmbeddingCache
from .clip_weights import (
    OFFLINE_ENV_VAR,  # noqa: F401 - public, as before the split (not in __all__)
    ClipSpec,
    ClipWeightsMissing,
    clip_cache_dir,
    parse_clip_spec,
)
from .crops import CropParams, crop_boxes, extract_crops
from .matching import (
    ObjectEmbeddings,
    TextScores,
    embed_objects,
    score_embeddings,
    score_objects,
    select_objects,
)
from .segment import apply_clicks, object_at, segment_by_text

__all__ = [
    "ClipScorer",
    "ClipSpec",
    "ClipWeightsMissing",
    "CropEmbeddingCache",
    "CropParams",
    "ObjectEmbeddings",
    "TextScores",
    "apply_clicks",
    "clip_cache_dir",
    "crop_boxes",
    "embed_objects",
    "extract_crops",
    "object_at",
    "parse_clip_spec",
    "score_embeddings",
    "score_objects",
    "segment_by_text",
    "select_objects",
]
