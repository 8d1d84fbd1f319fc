"""The widget's "Model" section: which SAM model, on which device, and what is loaded."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from magicgui.widgets import ComboBox, FileEdit, Label, PushButton
from napari.utils.notifications import show_info, show_warning

from ._notify import guarded, notify_error
from ._sam2 import adapt_to_model
from ._section import Section, elide_width

if TYPE_CHECKING:  # pragma: no cover
    from ._widget import SamWidget

__all__ = ["CHECKPOINT_CHOICE", "ModelSection"]

logger = logging.getLogger(__name__)

CHECKPOINT_CHOICE = "checkpoint file..."


def _model_choices() -> list[str]:
    try:
        from .. import list_models
        from ..models.sam2_configs import SAM2_CONFIGS

        names = [*list_models(), *SAM2_CONFIGS]  # SAM 2.1: downloaded on first use too
    except Exception:  # the widget still opens; loading reports the problem
        logger.exception("listing the models failed")
        names = []
    return [*names, CHECKPOINT_CHOICE]


def _download_note(name: str) -> str:
    """" (downloading N MB on first use)" for a registry name whose weights are not cached."""
    try:
        from ..models.sam2_build import SAM2_DOWNLOADS
        from ..models.weights import WEIGHTS, cache_dir

        entry = WEIGHTS.get(name)
        _, filename, size_mb = ((entry.url, entry.filename, entry.size_mb) if entry is not None
                                else SAM2_DOWNLOADS[name])
        return "" if (cache_dir() / filename).is_file() else (
            f" (downloading {size_mb:.0f} MB on first use)")
    except (KeyError, OSError):  # not a registry name (a checkpoint path, the default)
        return ""


def _device_choices() -> list[str]:
    try:
        from ..models.device import available_devices

        return ["auto", *available_devices()]
    except Exception:
        logger.exception("listing the devices failed")
        return ["auto", "cpu"]


class ModelSection(Section):
    """Model name (or checkpoint file), device, *Load model*, and the loaded model's name.

    Attributes
    ----------
    model_combo, device_combo : ComboBox
    checkpoint_edit : FileEdit
        Shown when ``model_combo`` is "checkpoint file...".
    load_button : PushButton
    model_label : Label
        "name (device)" of the loaded model.
    """

    def __init__(self, host: SamWidget, expanded: bool = False) -> None:
        self.host = host
        self.model_combo = ComboBox(label="model", choices=_model_choices())
        self.checkpoint_edit = FileEdit(
            label="checkpoint", mode="r", filter="*.pth *.pt *.ckpt", visible=False
        )
        self.device_combo = ComboBox(label="device", choices=_device_choices())
        self.load_button = PushButton(text="Load model")
        self.model_label = Label(label="loaded", value="no model")
        elide_width(self.model_label)
        super().__init__("Model", [self.model_combo, self.checkpoint_edit, self.device_combo,
                                   self.load_button, self.model_label], expanded=expanded)
        self.model_combo.changed.connect(self._on_model_choice)
        self.load_button.changed.connect(lambda _=None: host.load_model())

    def chosen_name(self) -> str | None:
        """The model name, or the checkpoint file's path; ``None`` (warned) when the file is
        still to be chosen."""
        name = self.model_combo.value
        if name == CHECKPOINT_CHOICE:
            path = str(self.checkpoint_edit.value or "")
            if not path or path == ".":
                show_warning("Choose a checkpoint file first.")
                return None
            name = path
        return name

    def show_loaded(self, name: str, device: str) -> None:
        self.model_label.value = f"{name} ({device})"
        self.collapsible.setText(f"Model: {name}")

    def model_set(self, name: str, model) -> None:
        """A model is in use: show it, bring back the prompt layers, decode again."""
        host = self.host
        host.warned.discard("no-model")
        adapt_to_model(host, model)  # SAM 2: grey out and say what works only with SAM
        self.show_loaded(name, str(getattr(model, "device", "cpu")))
        host.restore_prompt_layers()
        host.loop.schedule("model")

    def load(self, name: str | None = None, checkpoint: str | None = None,
             device: str | None = None) -> None:
        """See :meth:`SamWidget.load_model`."""
        host = self.host
        if name is None:
            name = self.chosen_name()
            if name is None:
                return
        if device is None:
            device = self.device_combo.value
        device = None if device in (None, "auto") else device
        self.load_button.enabled = False
        host.set_busy(True)
        host.set_status(f"Loading model '{name}'{_download_note(name)}...")
        host.session.set_refine(bool(host.refine_masks.value))
        host.session.load_model(name, checkpoint, device, self._on_model_loaded)

    @guarded
    def _on_model_loaded(self, name: str, error: BaseException | None, applied: bool) -> None:
        host = self.host
        self.load_button.enabled = True
        host.set_busy(host.session.job is not None)
        if error is not None:
            host.set_status(f"Loading model '{name}' failed.")
            notify_error(f"Could not load model '{name}': {error}")
        elif applied:
            self.model_set(name, host.session.predictor.model)
            show_info(f"Segment Anything: model '{name}' loaded.")

    def _on_model_choice(self, value=None) -> None:
        self.checkpoint_edit.visible = self.model_combo.value == CHECKPOINT_CHOICE
