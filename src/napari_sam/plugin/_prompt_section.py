"""The widget's "Prompts" section: where commits go, mask prompts, positive / negative points,
decoding options, and *Commit* / *Clear slice*."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from magicgui.widgets import CheckBox, ComboBox, Container, PushButton, RadioButtons

from ._section import Section

if TYPE_CHECKING:  # pragma: no cover
    from ._widget import SamWidget

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
    overwrite_checkbox, zoom_small, refine_masks : CheckBox
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
        self.commit_button = PushButton(text=f"Commit ({KEY_COMMIT})")
        self.clear_button = PushButton(text=f"Clear slice ({KEY_CLEAR})")
        options = Container(widgets=[self.zoom_small, self.refine_masks], layout="horizontal",
                            labels=False)
        actions = Container(widgets=[self.commit_button, self.clear_button],
                            layout="horizontal", labels=False)
        super().__init__("Prompts and commit", [
            self.target_combo, self.mask_combo, self.point_mode, self.overwrite_checkbox,
            options, actions,
        ])
        self.commit_button.changed.connect(lambda _=None: host.commit())
        self.clear_button.changed.connect(lambda _=None: host.clear())

    def _target_choices(self, _widget=None) -> list[tuple[str, Any]]:
        return [(f"new layer '{LABELS_NAME}'", NEW_LAYER)] + [
            (layer.name, layer) for layer in self.host.labels_layers()
        ]

    def _mask_choices(self, _widget=None) -> list[tuple[str, Any]]:
        return [("none", NO_LAYER)] + [(layer.name, layer) for layer in self.host.labels_layers()]
