"""The widget's "Prompts" section: where commits go, mask prompts, positive / negative points,
decoding options, and *Commit* / *Clear slice* (what they do is here too)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, PushButton, RadioButtons
from napari.layers import Labels
from napari.utils.notifications import show_warning

from ._label_ids import max_label
from ._layers import PromptError, current_plane, mask_prompts_from_labels, paint_mask
from ._notify import guarded, notify_error
from ._section import Section

if TYPE_CHECKING:  # pragma: no cover
    from napari.layers import Image

    from ._widget import SamWidget
    from .session import Preview

__all__ = ["KEY_CLEAR", "KEY_COMMIT", "KEY_TOGGLE", "LABELS_NAME", "PromptSection"]

#: Toggle positive / negative for the next points.
KEY_TOGGLE = "N"
#: Commit the preview into the result Labels layer ("keep").
KEY_COMMIT = "K"
#: Clear the prompts of the current slice.
KEY_CLEAR = "Q"
LABELS_NAME = "SAM labels"
NEW_LAYER = "__new__"
NO_LAYER = "__none__"


class PromptSection(Section):
    """Target and mask-prompt layers, point mode, options, commit and clear.

    Attributes
    ----------
    target_combo, mask_combo : ComboBox
        The Labels layer commits write into ("new layer" until one exists); the Labels layer
        whose objects are mask prompts ("none").
    point_mode : RadioButtons
    overwrite_checkbox, zoom_small, refine_masks, snap_objects : CheckBox
    commit_button, clear_button : PushButton
    """

    def __init__(self, host: SamWidget) -> None:
        self.host = host
        self.target_combo = ComboBox(label="write into", choices=self._target_choices)
        self.mask_combo = ComboBox(label="mask prompt", choices=self._mask_choices)
        self.point_mode = RadioButtons(
            label=f"points ({KEY_TOGGLE})", choices=["positive", "negative"],
            value="positive", orientation="horizontal",
        )
        self.overwrite_checkbox = CheckBox(text="overwrite existing objects", value=False)
        self.zoom_small = CheckBox(
            text="zoom in on small objects", value=False,
            tooltip="When the slice's objects are small for the model (radius below ~10 px at "
                    "its input), decode prompts in magnified crops of the slice (each crop "
                    "embedded once, when a prompt first needs it)",
        )
        self.refine_masks = CheckBox(
            text="refine mask edges", value=True,
            tooltip="Redraw each mask at the image's resolution with the model's mask refiner "
                    "(the default model has one; SAM's own masks come out at a quarter of its "
                    "input size). Used for previews and segment everything",
        )
        self.snap_objects = CheckBox(
            text="snap to objects", value=True,
            tooltip="Draw each mask with the outline of the object that segment everything's "
                    "instance decoder finds there (models with one, such as the default "
                    "model): touching nuclei split better. A slice's objects are found in the "
                    "background once its embedding is ready (1-2 s on a CPU); slices decoded "
                    "in tiles or zoomed crops are not snapped",
        )
        self.commit_button = PushButton(text=f"Commit ({KEY_COMMIT})")
        self.clear_button = PushButton(text=f"Clear slice ({KEY_CLEAR})")
        options = Container(widgets=[self.zoom_small, self.refine_masks, self.snap_objects],
                            layout="horizontal", labels=False)
        actions = Container(widgets=[self.commit_button, self.clear_button],
                            layout="horizontal", labels=False)
        super().__init__("Prompts and commit", [
            self.target_combo, self.mask_combo, self.point_mode, self.overwrite_checkbox,
            options, actions,
        ])
        self.commit_button.changed.connect(lambda _=None: host.commit())
        self.clear_button.changed.connect(lambda _=None: host.clear())
        self.point_mode.changed.connect(self._on_point_mode)
        self.refine_masks.changed.connect(self._on_refine_changed)
        self.snap_objects.changed.connect(self._on_snap_changed)
        self.zoom_small.changed.connect(lambda _=None: host.loop.schedule("prompts"))
        self.mask_combo.changed.connect(self._on_mask_source_changed)

    @property
    def target_layer(self) -> Labels | None:
        """The Labels layer commits write into (``None`` until a new one is created)."""
        value = self.target_combo.value
        return value if isinstance(value, Labels) else None

    @property
    def mask_source(self) -> Labels | None:
        """The Labels layer whose objects are mask prompts, if one is chosen."""
        value = self.mask_combo.value
        return value if isinstance(value, Labels) else None

    def toggle_point_mode(self) -> None:
        """Switch the next points between positive and negative."""
        self.host.restore_prompt_layers()
        self.point_mode.value = "negative" if self.point_mode.value == "positive" else "positive"

    # -- commit and clear ------------------------------------------------------------------------

    def commit(self) -> list[int]:
        """See :meth:`SamWidget.commit`."""
        host = self.host
        host.wait_decoded()  # commit what the prompts ask for, not an older preview
        image, preview = host.image, host.preview
        target = self._commit_target(image, preview)
        if target is None:
            return []
        current = max_label(target)
        dtype = np.asarray(target.data[(0,) * target.ndim]).dtype
        if np.issubdtype(dtype, np.integer) and current + len(preview.masks) > np.iinfo(dtype).max:
            notify_error(f"Labels layer '{target.name}' ({dtype}) has no free ids left: "
                         "choose another target layer.")
            return []
        overwrite = bool(self.overwrite_checkbox.value)
        ids: list[int] = []
        with target.block_history():
            for mask in preview.masks:
                if paint_mask(target, image, preview.plane, mask, current + 1 + len(ids),
                              overwrite):
                    ids.append(current + 1 + len(ids))
        if not ids:
            show_warning("Nothing was written: the preview lies entirely on existing objects "
                         "(tick 'overwrite existing objects' to replace them).")
            return []
        if preview.mask_objects and self.mask_source is not None:
            host.consumed_for(self.mask_source, image, preview.plane).update(
                preview.mask_objects)
        host.prompt_layers.remove_on(image, preview.plane)
        host.drop_preview()
        target.selected_label = ids[-1]
        host.prompt_layers.activate_points()
        host.set_status(
            f"Committed object{'s' if len(ids) > 1 else ''} {', '.join(map(str, ids))} "
            f"into '{target.name}' ({preview.plane.label()}). Ctrl+Z on that layer undoes it.",
            sticky=True,
        )
        return ids

    def _commit_target(self, image: Image | None, preview: Preview | None) -> Labels | None:
        """The layer a commit of ``preview`` writes into, or ``None`` (the user was told why)."""
        host = self.host
        if host.viewer.dims.ndisplay != 2:
            show_warning("Segment Anything commits on 2D slices: switch the viewer to 2D display.")
            return None
        if image is None:
            show_warning("No image layer: open an image and choose it in the widget.")
            return None
        if preview is None or preview.empty:
            if preview is not None:
                message = "The preview is empty: SAM found no object for these prompts."
            elif host.session.job is not None and host.has_prompts():
                message = "This slice is still being prepared: commit when the preview appears."
            else:
                message = "Nothing to commit: place a point or draw a box on this slice first."
            show_warning(message)
            return None
        target = self.target_layer
        if target is not None and target is self.mask_source:
            show_warning(f"'{target.name}' is both the mask prompt and the target: choose "
                         "another target layer (or 'new layer').")
            return None
        return target if target is not None else host.new_labels_layer(image)

    def clear(self) -> None:
        """See :meth:`SamWidget.clear`."""
        host = self.host
        image = host.image
        if image is None:
            show_warning("No image layer: nothing to clear.")
            return
        host.restore_prompt_layers()
        try:
            plane = current_plane(image, host.viewer.dims)
        except PromptError as exc:
            show_warning(str(exc))
            return
        if self.mask_source is not None:
            consumed = host.consumed_for(self.mask_source, image, plane)
            for value, _, digest in mask_prompts_from_labels(self.mask_source, image, plane):
                consumed[value] = digest
        host.prompt_layers.remove_on(image, plane)
        host.drop_preview()
        host.set_status(f"Cleared the prompts of {plane.label()}.", sticky=True)

    # -- events ----------------------------------------------------------------------------------

    @guarded
    def _on_point_mode(self, value=None) -> None:
        positive = self.point_mode.value == "positive"
        if self.host.points_layer is not None:
            self.host.points_layer.feature_defaults = {"positive": positive}
        self.host.set_status(f"Next points are {'positive' if positive else 'negative'}.")

    @guarded
    def _on_refine_changed(self, value=None) -> None:
        """The preview is decoded again with or without the mask refiner."""
        self.host.session.set_refine(bool(self.refine_masks.value))
        self.host.loop.schedule("prompts")

    def _on_snap_changed(self, value=None) -> None:
        """The preview is decoded again, snapped to the slice's objects or not."""
        self.apply_snap(ticked=True)
        self.host.loop.schedule("prompts")

    def apply_snap(self, ticked: bool = False) -> None:
        """Give the session a snapper while "snap to objects" is on and the model has an
        instance decoder (else, when the user has just ``ticked`` the box, say so once; on by
        default, it stays quiet for models without one)."""
        session = self.host.session
        model = None if session.predictor is None else session.predictor.model
        session.snapper = None
        if not self.snap_objects.value or model is None:
            return
        from ..workflows.instance_decoder import has_instance_decoder
        from ..workflows.snap import SliceSnapper

        if not has_instance_decoder(model):
            if ticked:
                self.host.warn_once("snap:no-decoder", "'snap to objects' needs a model with "
                                    "an instance decoder (the default model, micro-sam's *_lm): "
                                    "masks are shown as SAM draws them.")
            return
        session.snapper = SliceSnapper()  # a new model: new objects

    def _on_mask_source_changed(self, value=None) -> None:
        source = self.mask_source
        if source is not None:
            connect = self.host.prompt_layers.connect
            connect(source, source.events.paint, self.host.on_prompts_changed)
            connect(source, source.events.data, self.host.on_prompts_changed)
        self.host.loop.schedule("prompts")

    def _target_choices(self, _widget=None) -> list[tuple[str, Any]]:
        return [(f"new layer '{LABELS_NAME}'", NEW_LAYER)] + [
            (layer.name, layer) for layer in self.host.labels_layers()
        ]

    def _mask_choices(self, _widget=None) -> list[tuple[str, Any]]:
        return [("none", NO_LAYER)] + [(layer.name, layer) for layer in self.host.labels_layers()]
