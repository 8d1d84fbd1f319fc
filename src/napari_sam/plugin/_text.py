"""The widget's text-prompt section: "find the objects that match a text" with CLIP.

Candidates are the objects of a Labels layer on the current slice (for example the output of
*Segment everything*). Each is scored against the query (:mod:`napari_sam.workflows.text`) in a background
job; the scores go to that layer's features table, and the objects above the threshold are shown
in the "SAM text" Labels layer. Moving the threshold re-selects at once; editing the query
re-scores with the cached CLIP embeddings of the crops (only the text is encoded again).

The "SAM text" layer is then a mask prompt: its objects appear in the preview, a point inside
one refines it, ``K`` commits them -- text narrows, a click picks or corrects.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, FloatSlider, LineEdit, PushButton
from napari.layers import Labels
from napari.utils.notifications import show_warning
from qtpy.QtCore import QTimer

from ._layers import PromptError, current_plane, image_level0, sample_labels_on_plane
from ._section import Section

if TYPE_CHECKING:  # pragma: no cover
    from ._widget import SamWidget

__all__ = ["TEXT_NAME", "TextSection"]

logger = logging.getLogger(__name__)

TEXT_NAME = "SAM text"
DEFAULT_CLIP = "ViT-B-32:openai"
_DEBOUNCE_MS = 400


class TextSection(Section):
    """Text box, negatives, CLIP model, candidates layer and threshold, bound to a SamWidget.

    Attributes
    ----------
    query, negatives, clip_spec : LineEdit
    candidates_combo : ComboBox
        The Labels layer whose objects are scored.
    threshold : FloatSlider
        Objects whose probability (softmax of the query against the negatives) reaches it are
        kept.
    find_button : PushButton
    scores : napari_sam.workflows.text.TextScores or None
        The last scores (of ``plane``'s objects of the candidates layer).
    """

    def __init__(self, owner: SamWidget) -> None:
        self.owner = owner
        self.query = LineEdit(label="text", value="")
        self.negatives = LineEdit(label="not", value="background")
        self.clip_spec = LineEdit(label="CLIP", value=DEFAULT_CLIP)
        self.candidates_combo = ComboBox(label="among", choices=self._candidate_choices)
        self.threshold = FloatSlider(label="threshold", min=0.0, max=1.0, step=0.01, value=0.5)
        self.find_button = PushButton(text="Find objects")
        super().__init__(
            "Text: find objects by a description",
            [self.query, self.negatives, self.clip_spec, self.candidates_combo, self.threshold,
             self.find_button],
            expanded=False,
        )
        self.scores = None
        self.plane = None
        self._scorer = None
        self._scorer_spec: str | None = None
        self._objects = None
        self._objects_key: tuple | None = None
        self._candidates: np.ndarray | None = None
        self._shown: tuple | None = None  # the plane of the "SAM text" layer holding matches
        self._layer: Labels | None = None
        self._source: Labels | None = None
        self._timer = QTimer(self.native)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self._on_query_edited)
        self.find_button.changed.connect(lambda _=None: self.find())
        self.query.changed.connect(self._on_text_edited)
        self.negatives.changed.connect(self._on_text_edited)
        self.threshold.changed.connect(lambda _=None: self.apply_threshold())

    # -- public --------------------------------------------------------------------------------

    def find(self) -> bool:
        """Score the candidates of the current slice against the query in the background."""
        owner = self.owner
        query = str(self.query.value).strip()
        if not query:
            show_warning("Type what to find (for example 'nucleus') in the text box first.")
            return False
        image = owner.job_image()
        if image is None:
            return False
        source = self.candidates_combo.value
        if not isinstance(source, Labels):
            show_warning(
                "No candidate objects: run 'Segment everything' (or choose a Labels layer "
                "under 'among') first; the text picks among its objects."
            )
            return False
        try:
            plane = current_plane(image, owner.viewer.dims)
        except PromptError as exc:
            show_warning(str(exc))
            return False
        candidates = np.asarray(sample_labels_on_plane(source, image, plane))
        if not candidates.any():
            show_warning(f"'{source.name}' has no objects on {plane.label()}.")
            return False
        pixels = np.asarray(image_level0(image)[plane.indexer()])
        negatives = tuple(s.strip() for s in str(self.negatives.value).split(",") if s.strip())
        spec = str(self.clip_spec.value).strip() or DEFAULT_CLIP
        intensity_range = owner.session.intensity_range(image.unique_id)
        if spec != self._scorer_spec:
            self.close()
            self._scorer_spec = spec
        section = self
        key = (image.unique_id, plane.key, source.unique_id, spec, _digest(candidates))
        known = self._objects if self._objects_key == key else None

        def body(ctx):
            from ..workflows.text import embed_objects, score_embeddings

            if section._scorer is None:
                ctx.progress(0, 0, f"loading CLIP {spec}")
                section._scorer = _make_scorer(spec)
            objects = known
            if objects is None:  # the slow half, once per plane: CLIP on every object's crop
                objects = embed_objects(
                    section._scorer,
                    pixels,
                    candidates,
                    intensity_range=intensity_range,
                    progress=ctx.progress,
                    cancelled=ctx.cancelled,
                )
            # the fast half, on every edit of the text: only the texts are encoded
            return objects, score_embeddings(section._scorer, objects, query, negatives)

        done = functools.partial(self._on_scored, image, plane, source, key, candidates)
        owner.set_status(f"Scoring the objects of '{source.name}' against '{query}'...")
        return owner.tasks.start(f"Finding '{query}'", body, done, owner.report_task_error,
                                 owner=image.unique_id)

    def close(self) -> None:
        """Stop the CLIP process (if CLIP runs in one)."""
        scorer, self._scorer = self._scorer, None
        if scorer is not None:
            try:
                scorer.close()
            except Exception:  # closing is best effort at shutdown
                logger.debug("closing the CLIP scorer failed", exc_info=True)

    def apply_threshold(self) -> np.ndarray:
        """Re-select the scored objects at the current threshold; returns the ids kept."""
        from ..workflows.text import select_objects

        if self.scores is None or self.plane is None:
            return np.zeros(0, dtype=int)
        kept = select_objects(self.scores, threshold=float(self.threshold.value))
        self._show(kept)
        return kept

    # -- internals -----------------------------------------------------------------------------

    def _on_text_edited(self, value=None) -> None:
        if self.owner.closed:
            return
        try:
            self._timer.start(_DEBOUNCE_MS)
        except RuntimeError:  # the Qt side is gone (viewer closed)
            pass

    def _on_query_edited(self) -> None:
        if self.scores is not None and str(self.query.value).strip() and not self.owner.tasks.busy:
            self.find()

    def _on_scored(self, image, plane, source, key, candidates, result, cancelled) -> None:
        owner = self.owner
        objects, scores = result
        if cancelled or not objects.complete:
            owner.set_status("Text search cancelled; nothing was changed.", sticky=True)
            return
        self._objects, self._objects_key = objects, key
        self.scores, self.plane, self._source = scores, plane, source
        self._candidates = candidates
        _write_features(source, scores)
        kept = self.apply_threshold()
        best = np.argsort(-np.asarray(scores.probability))[:3]
        top = ", ".join(
            f"{int(scores.ids[i])}: {float(scores.probability[i]):.2f}" for i in best
        )
        owner.set_status(
            f"'{scores.query}': {len(kept)} of {len(scores.ids)} objects of '{source.name}' "
            f"reach {float(self.threshold.value):.2f} (best {top}); they are in '{TEXT_NAME}' "
            "and are the mask prompts: click to correct, K to commit.",
            sticky=True,
        )

    def _show(self, kept: np.ndarray) -> None:
        owner = self.owner
        image, plane, source = owner.image, self.plane, self._source
        if image is None or source is None or source not in owner.viewer.layers:
            return
        candidates = self._candidates  # the objects that were scored
        selected = np.where(np.isin(candidates, kept), candidates, 0)
        layer = self._text_layer(image)
        # in place: a threshold drag must not allocate a whole stack per step; reassigning the
        # array emits the data event that re-decodes the mask prompts
        data = np.asarray(layer.data)
        if self._shown is not None:
            data[self._shown] = 0
        data[plane.indexer()] = selected
        self._shown = plane.indexer()
        layer.data = data
        if len(kept) and owner.mask_combo.value is not layer:
            owner.mask_combo.value = layer  # the matches become the mask prompts

    def _text_layer(self, image) -> Labels:
        from ._layers import image_spatial_shape, transform_kwargs

        layer = self._layer
        shape = image_spatial_shape(image)
        if layer is None or layer not in self.owner.viewer.layers or layer.data.shape != shape:
            layer = Labels(np.zeros(shape, dtype=np.int32), name=TEXT_NAME,
                           **transform_kwargs(image))
            self.owner.viewer.layers.append(layer)
            self._layer = layer
            self._shown = None
        return layer

    def _candidate_choices(self, _widget=None) -> list[tuple[str, Any]]:
        owner = self.owner
        layers = [
            layer
            for layer in owner.labels_layers()
            if layer is not self._layer and layer.name not in (TEXT_NAME, "SAM preview")
        ]
        # the automatic result first: it is what the text usually picks among
        layers.sort(key=lambda layer: layer.name != "SAM automatic")
        return [(layer.name, layer) for layer in layers]


def _make_scorer(spec: str):
    """A CLIP scorer usable in the viewer process.

    Importing open_clip (torchvision, triton) after napari's OpenGL context exists crashes the
    process with CUDA builds of torch, so in a viewer CLIP runs in a spawned child process
    (``isolate=None`` decides: see :class:`napari_sam.workflows.text.ClipScorer`).
    """
    from ..workflows.text import ClipScorer

    return ClipScorer(spec)


def _digest(labels: np.ndarray) -> str:
    import hashlib

    return hashlib.blake2b(np.ascontiguousarray(labels).tobytes(), digest_size=16).hexdigest()


def _write_features(layer: Labels, scores) -> None:
    """Put the scores in the layer's features table (one row per label value)."""
    import pandas as pd

    features = layer.features
    table = pd.DataFrame(features) if len(features) else pd.DataFrame({"index": []})
    if "index" not in table:
        table["index"] = np.arange(len(table))
    table = table.set_index("index", drop=False)
    ids = np.asarray(scores.ids, dtype=int)
    for name, values in (
        ("text_similarity", scores.similarity),
        ("text_probability", scores.probability),
    ):
        if name not in table:
            table[name] = np.nan
        for i, v in zip(ids, np.asarray(values, dtype=float)):
            table.loc[i, name] = v
    table["index"] = table.index
    layer.features = table.reset_index(drop=True)
