"""The "Segment Anything" dock widget: prompts in napari layers, SAM masks as a preview, commit
into a Labels layer.

The widget is thin: its state and background work (model, predictor, embeddings, preview,
jobs) live in a Qt-free :class:`~.session.SamSession`; the prompt and preview layers are kept by
:class:`~._prompt_layers.PromptLayers`; :class:`~._preview_loop.PreviewLoop` keeps the preview
up to date with the plane on screen; the rows are grouped in collapsible sections, each in its
own module (:mod:`._model_section`, :mod:`._prompt_section`, :mod:`._stack_section`,
:mod:`._text`). What lives here is the assembly and the wiring: the viewer's events, the model,
commit and clear, and turning every failure into one notification.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import Container, Label, ProgressBar
from napari.layers import Image, Labels, Points, Shapes
from napari.qt.threading import create_worker
from napari.utils.notifications import show_info, show_warning

from ._colors import NEGATIVE_COLOR, POSITIVE_COLOR, PREVIEW_COLOR, committed_colormap
from ._label_ids import max_label
from ._layers import (
    Plane,
    PromptError,
    current_plane,
    image_level0,
    image_spatial_shape,
    mask_prompts_from_labels,
    paint_mask,
    transform_kwargs,
)
from ._model_section import ModelSection
from ._notify import guarded, notify_error
from ._preview_loop import PreviewLoop
from ._prompt_layers import PromptLayers
from ._prompt_section import KEY_CLEAR, KEY_COMMIT, KEY_TOGGLE, LABELS_NAME, PromptSection
from ._section import elide_width
from ._stack_section import AUTOMATIC_NAME, KEY_PROPAGATE, StackSection
from ._tasks import TaskRunner
from ._text import TextSection
from .session import Preview, SamSession

if TYPE_CHECKING:  # pragma: no cover
    import napari

    from ..engine.embedding_cache import EmbeddingCache
    from ..engine.predictor import SamPredictor

__all__ = [
    "AUTOMATIC_NAME", "DEFAULT_MODEL", "KEY_CLEAR", "KEY_COMMIT", "KEY_PROPAGATE", "KEY_TOGGLE",
    "LABELS_NAME", "NEGATIVE_COLOR", "POSITIVE_COLOR", "PREVIEW_COLOR", "Preview", "SamWidget",
]

logger = logging.getLogger(__name__)

#: Loaded when the widget opens (shipped inside the package: no download).
DEFAULT_MODEL = "default"
_DEBOUNCE_VIEW_MS = 60


def _qt_runner(fn: Callable, args: tuple, on_done: Callable[[Any], None]):
    """The session's runner: ``fn(*args)`` in a napari thread worker, ``on_done(result)`` on the
    GUI thread (worker bodies return their errors, never raise)."""
    worker = create_worker(fn, *args, _start_thread=False, _ignore_errors=True)
    worker.returned.connect(on_done)
    worker.start()
    return worker


class SamWidget(Container):
    """Interactive Segment Anything on the displayed 2D slice of an image layer.

    Prompts are points in the "SAM points" layer (positive / negative, toggled with
    ``N``), rectangles (box prompts), polygons and ellipses (mask prompts) in the "SAM boxes"
    layer, and optionally the objects of a rough Labels layer (``mask_combo``). Every change of
    the prompts on the current slice re-decodes in the background into the "SAM preview" layer;
    ``K`` (or ``commit_button``) writes the preview into the target Labels layer with fresh ids,
    undoably; ``Q`` (or ``clear_button``) drops the slice's prompts.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
    load_default : bool
        Load the built-in default model in the background as the widget opens (it ships inside
        the package), so that the first click segments. Tests that set their own model pass
        False.

    Attributes
    ----------
    session : SamSession
        Model, predictor, embeddings, preview and background jobs (Qt-free).
    model_section, prompts, stack, text : Section
        The collapsible sections; their sub-widgets are also attributes of the widget:
        ``model_combo, checkpoint_edit, device_combo, load_button, model_label`` (model),
        ``target_combo, mask_combo, point_mode, overwrite_checkbox, zoom_small, refine_masks,
        commit_button, clear_button`` (prompts), ``axis_combo, auto_scope, auto_prompts,
        propagate_button, auto_button, disk_cache, precompute_button`` (stack).
    image_combo : ComboBox
    progress_bar, status_label
    tasks : TaskRunner
        The long jobs (propagation, segment everything, precompute, text), with cancel.
    """

    def __init__(self, viewer: napari.viewer.Viewer, load_default: bool = True) -> None:
        super().__init__(labels=False)
        self.viewer = viewer
        self.closed = False
        self.session = SamSession(runner=_qt_runner)
        self.prompt_layers = PromptLayers(viewer, self._on_prompts_changed)
        self._image: Image | None = None
        self.status_sticky = False
        self._warned: set[str] = set()
        self._build()
        self.loop = PreviewLoop(self)
        viewer.layers.events.inserted.connect(self._on_layers_changed)
        viewer.layers.events.removed.connect(self._on_layer_removed)
        viewer.dims.events.current_step.connect(self._on_view_changed)
        viewer.dims.events.order.connect(self._on_view_changed)
        viewer.dims.events.ndisplay.connect(self._on_ndisplay)
        self._keys = {KEY_TOGGLE: self.toggle_point_mode, KEY_COMMIT: self.commit,
                      KEY_CLEAR: self.clear, KEY_PROPAGATE: self.propagate}
        for key, action in self._keys.items():
            viewer.bind_key(key, _key_handler(action), overwrite=True)
        self.native.destroyed.connect(self._on_destroyed)

        existing = [layer for layer in self.labels_layers() if layer.name == LABELS_NAME]
        if existing:  # reopened widget: keep writing into the same result layer
            self.target_combo.value = existing[-1]
        self._on_image_changed(self.image_combo.value)
        self.set_status("Load a model to start." if self.image else "Open an image.")
        if load_default and DEFAULT_MODEL in self.model_combo.choices:
            # the built-in model needs no download: ready to click as soon as the widget opens
            self.model_combo.value = DEFAULT_MODEL
            self.load_model(DEFAULT_MODEL)

    def _build(self) -> None:
        """The rows: the image, the four sections, the progress of the current work."""
        from magicgui.widgets import ComboBox

        self.image_combo = ComboBox(label="image", choices=self._image_choices)
        self.model_section = ModelSection(self)
        self.prompts = PromptSection(self)
        self.stack = StackSection(self)
        self.text = TextSection(self)
        # the sections' rows, as attributes of the widget (scripts and tests drive them)
        for section, names in (
            (self.model_section, ("model_combo", "checkpoint_edit", "device_combo",
                                  "load_button", "model_label")),
            (self.prompts, ("target_combo", "mask_combo", "point_mode", "overwrite_checkbox",
                            "zoom_small", "refine_masks", "commit_button", "clear_button")),
            (self.stack, ("axis_combo", "auto_scope", "auto_prompts", "propagate_button",
                          "auto_button", "disk_cache", "precompute_button")),
        ):
            for name in names:
                setattr(self, name, getattr(section, name))
        self.progress_bar = ProgressBar(label="", min=0, max=1, value=0, visible=False)
        self.status_label = Label(label="status", value="")
        elide_width(self.status_label)
        self.tasks = TaskRunner(on_busy=self._on_task_busy)
        self.extend([Container(widgets=[self.image_combo], labels=True), self.model_section,
                     self.prompts, self.stack, self.text, self.progress_bar, self.status_label,
                     self.tasks])
        self.zoom_small.changed.connect(lambda _: self.loop.schedule("prompts"))
        self.refine_masks.changed.connect(self._on_refine_changed)
        self.point_mode.changed.connect(self._on_point_mode)
        self.image_combo.changed.connect(self._on_image_changed)
        self.mask_combo.changed.connect(self._on_mask_source_changed)
        self.disk_cache.changed.connect(lambda _=None: self.session.drop_embedders())

    # -- public API ----------------------------------------------------------------------------

    @property
    def image(self) -> Image | None:
        """The image layer being segmented."""
        layer = self.image_combo.value
        return layer if isinstance(layer, Image) and layer in self.viewer.layers else None

    @property
    def points_layer(self) -> Points | None:
        """The "SAM points" prompt layer (feature ``positive``: True / False)."""
        return self.prompt_layers.points

    @property
    def shapes_layer(self) -> Shapes | None:
        """The "SAM boxes" prompt layer: rectangles, polygons, ellipses."""
        return self.prompt_layers.shapes

    @property
    def preview_layer(self) -> Labels | None:
        """The "SAM preview" layer, holding only the plane of the current preview."""
        return self.prompt_layers.preview

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

    @property
    def predictor(self) -> SamPredictor | None:
        """The predictor of the loaded model."""
        return self.session.predictor

    @property
    def model_name(self) -> str | None:
        return self.session.model_name

    @property
    def cache(self) -> EmbeddingCache:
        """Embeddings by ``(image layer id, plane, model token)``."""
        return self.session.cache

    @property
    def preview(self) -> Preview | None:
        """The masks currently shown in the "SAM preview" layer."""
        return self.session.preview

    @property
    def prefetch_slices(self) -> int:
        """Slices on each side of the current one embedded in the background (0: off)."""
        return self.session.prefetch_slices

    @prefetch_slices.setter
    def prefetch_slices(self, value: int) -> None:
        self.session.prefetch_slices = int(value)

    @property
    def is_prefetching(self) -> bool:
        """Whether neighbouring slices are being embedded in the background."""
        return self.session.is_prefetching

    @property
    def stack_axis(self) -> int | None:
        """The data axis propagation and "all slices" run along (``None`` for a 2D image)."""
        return self.stack.axis

    @property
    def is_busy(self) -> bool:
        """Whether an embedding, a decode, a model load, a job or a refresh is pending."""
        return self.session.busy or self.tasks.busy or self.loop.pending

    def set_model(self, model: Any, name: str = "model") -> None:
        """Use ``model`` (a :class:`napari_sam.modeling.Sam`) from now on.

        Embeddings of the previous model are dropped; labels and prompts are kept.
        """
        self.session.set_refine(bool(self.refine_masks.value))
        self.session.set_model(model, name)
        self._warned.discard("no-model")
        self.model_section.show_loaded(name, str(getattr(model, "device", "cpu")))
        self._restore_prompt_layers()
        self.loop.schedule("model")

    def load_model(self, name: str | None = None, checkpoint: str | None = None,
                   device: str | None = None) -> None:
        """Build a model in a background worker and :meth:`set_model` it when ready.

        Parameters default to the widget's choices. Failures (unknown name, missing weights,
        no network) are shown as one notification with the weights module's message.
        """
        if name is None:
            name = self.model_section.chosen_name()
            if name is None:
                return
        if device is None:
            device = self.device_combo.value
        device = None if device in (None, "auto") else device
        self.load_button.enabled = False
        self.set_busy(True)
        self.set_status(f"Loading model '{name}'...")
        self.session.set_refine(bool(self.refine_masks.value))
        self.session.load_model(name, checkpoint, device, self._on_model_loaded)

    @guarded
    def _on_model_loaded(self, name: str, error: BaseException | None, applied: bool) -> None:
        self.load_button.enabled = True
        self.set_busy(self.session.job is not None)
        if error is not None:
            self.set_status(f"Loading model '{name}' failed.")
            notify_error(f"Could not load model '{name}': {error}")
        elif applied:
            model = self.session.predictor.model
            self._warned.discard("no-model")
            self.model_section.show_loaded(name, str(getattr(model, "device", "cpu")))
            self._restore_prompt_layers()
            self.loop.schedule("model")
            show_info(f"Segment Anything: model '{name}' loaded.")

    def toggle_point_mode(self) -> None:
        """Switch the next points between positive and negative."""
        self._restore_prompt_layers()
        self.point_mode.value = "negative" if self.point_mode.value == "positive" else "positive"

    def refresh(self) -> None:
        """Re-read the prompts of the current slice and decode them now (for scripts: returns
        once the preview is there, the viewer's events running meanwhile)."""
        self.loop.refresh_now()
        self.wait_decoded()

    @guarded
    def commit(self) -> list[int]:
        """Write the preview into the target Labels layer with fresh ids (one undo step).

        Pixels of other objects are kept unless ``overwrite_checkbox`` is on. The prompts of the
        slice are cleared afterwards.

        Returns
        -------
        list of int
            The ids written (empty if nothing was committed).
        """
        self.wait_decoded()  # commit what the prompts ask for, not an older preview
        image, preview = self.image, self.preview
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
            self.consumed_for(self.mask_source, image, preview.plane).update(
                preview.mask_objects)
        self.prompt_layers.remove_on(image, preview.plane)
        self.drop_preview()
        target.selected_label = ids[-1]
        self.prompt_layers.activate_points()
        self.set_status(
            f"Committed object{'s' if len(ids) > 1 else ''} {', '.join(map(str, ids))} "
            f"into '{target.name}' ({preview.plane.label()}). Ctrl+Z on that layer undoes it.",
            sticky=True,
        )
        return ids

    def _commit_target(self, image, preview) -> Labels | None:
        """The layer a commit of ``preview`` writes into, or ``None`` (the user was told why)."""
        if self.viewer.dims.ndisplay != 2:
            show_warning("Segment Anything commits on 2D slices: switch the viewer to 2D display.")
            return None
        if image is None:
            show_warning("No image layer: open an image and choose it in the widget.")
            return None
        if preview is None or preview.empty:
            if preview is not None:
                message = "The preview is empty: SAM found no object for these prompts."
            elif self.session.job is not None and self.has_prompts():
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
        return target if target is not None else self.new_labels_layer(image)

    @guarded
    def clear(self) -> None:
        """Drop the prompts of the current slice and the preview."""
        image = self.image
        if image is None:
            show_warning("No image layer: nothing to clear.")
            return
        self._restore_prompt_layers()
        try:
            plane = current_plane(image, self.viewer.dims)
        except PromptError as exc:
            show_warning(str(exc))
            return
        if self.mask_source is not None:
            consumed = self.consumed_for(self.mask_source, image, plane)
            for value, _, digest in mask_prompts_from_labels(self.mask_source, image, plane):
                consumed[value] = digest
        self.prompt_layers.remove_on(image, plane)
        self.drop_preview()
        self.set_status(f"Cleared the prompts of {plane.label()}.", sticky=True)

    @guarded
    def precompute(self) -> bool:
        """Embed every slice along :attr:`stack_axis` in the background (progress, cancel).

        With ``disk_cache`` on, the embeddings are written to the store as they are computed:
        a cancelled or interrupted run resumes where it stopped.
        """
        return self.stack.precompute()

    @guarded
    def propagate(self) -> bool:
        """Propagate objects from the current slice along :attr:`stack_axis`, in the background.

        The objects are those of the preview (each gets a fresh id, as with a commit). Without
        a preview, the selected label of the target layer is extended: every slice where it
        already exists is an anchor, the slices between anchors are filled from both ends and
        the object is followed beyond them until it ends. The result is written as one undo
        step, without touching other objects unless ``overwrite_checkbox`` is on; cancelling
        keeps the slices already done. Returns whether a propagation was started.
        """
        return self.stack.propagate()

    @guarded
    def segment_everything(self, scope: str | None = None) -> bool:
        """Automatic segmentation ("segment everything") in the background.

        ``scope`` is "this slice" or "all slices" (every slice along :attr:`stack_axis`,
        linked into 3D objects); default ``auto_scope``. The objects go into the
        "SAM automatic" Labels layer with fresh ids, as one undo step. Returns whether a run
        was started.
        """
        return self.stack.segment_everything(scope)

    def embedder(self, image: Image, plane: Plane):
        """The :class:`~napari_sam.engine.embedding_store.StackEmbedder` of ``image``'s planes like
        ``plane`` (same displayed axes) with the current model.

        With ``disk_cache`` on, embeddings are kept in a zarr store in the cache folder
        (``$NAPARI_SAM_CACHE`` or the user cache), named by the image content, the model and
        the preprocessing: reopening the same image later needs no recompute.
        """
        coarsest = None
        if image.multiscale and not (image.rgb and np.dtype(image.dtype) == np.uint8):
            coarsest = image.data[-1]  # one range for the whole pyramid, from its smallest level
        return self.session.embedder(image.unique_id, image_level0(image), plane.axes,
                                     rgb=bool(image.rgb), coarsest=coarsest,
                                     disk=bool(self.disk_cache.value))

    # -- what the sections use -------------------------------------------------------------------

    def job_image(self) -> Image | None:
        """The image a background job can start on, else say why (one notification)."""
        if self.tasks.busy:
            show_info(f"Another job is running ({self.tasks.context.title}): wait or cancel it.")
            return None
        image = self.image
        if image is None:
            show_warning("No image layer: open an image and choose it in the widget.")
        return image

    def labels_layers(self) -> list[Labels]:
        """The viewer's Labels layers but the preview."""
        return [layer for layer in self.viewer.layers
                if isinstance(layer, Labels) and layer is not self.preview_layer]

    def new_labels_layer(self, image: Image) -> Labels:
        """A zero "SAM labels" layer on the image's grid, just above it, made the target."""
        labels = Labels(np.zeros(image_spatial_shape(image), dtype=np.int32), name=LABELS_NAME,
                        colormap=committed_colormap(), **transform_kwargs(image))
        self.viewer.layers.insert(self.viewer.layers.index(image) + 1, labels)
        self.target_combo.value = labels
        return labels

    def set_status(self, text: str, sticky: bool = False) -> None:
        """Show ``text``; a ``sticky`` one (the outcome of an action) is not replaced by the
        idle hint, only by the next real message."""
        self.status_label.value = text
        self.status_sticky = sticky

    def report_task_error(self, error: BaseException) -> None:
        self.set_status("The job failed (see the notification); nothing was written.")
        notify_error(f"Segment Anything: {error}")

    def drop_preview(self) -> None:
        if self.session.preview is not None:
            self.session.preview = None
            self.prompt_layers.show(None)

    def wait_decoded(self, timeout: float = 10.0) -> None:
        """Let a running decode deliver its preview (what a commit is about to write)."""
        self.loop.wait_decoded(timeout)

    # -- layers ------------------------------------------------------------------------------

    def _image_choices(self, _widget=None) -> list[tuple[str, Image]]:
        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Image)]

    @guarded
    def _on_layers_changed(self, event=None) -> None:
        self.reset_choices()
        if self.image_combo.value is not self._image:
            self._on_image_changed(self.image_combo.value)

    @guarded
    def _on_layer_removed(self, event) -> None:
        layer = event.value
        self.prompt_layers.forget(layer)
        if isinstance(layer, Image):
            uid = layer.unique_id
            self.session.forget_image(uid)
            job = self.tasks.context
            if job is not None and job.owner == uid and not job.cancelled():
                self.tasks.cancel()  # its bodies poll this every slice or batch
                show_warning(f"Image layer '{layer.name}' was removed: '{job.title}' is cancelled.")
            if self.session.cancel_embedding_of(uid):
                show_warning(
                    f"Image layer '{layer.name}' was removed while its embedding was being "
                    "computed: the computation is discarded (no labels were touched)."
                )
            if self.preview is not None and self.preview.image is layer:
                self.drop_preview()
        self._on_layers_changed()

    @guarded
    def _on_image_changed(self, layer=None) -> None:
        image = layer if isinstance(layer, Image) else None
        if self._image is not None and self._image is not image:
            self.prompt_layers.disconnect(self._image)
        self._image = image
        self.session.preview = None
        self.prompt_layers.show(None)
        if image is None:
            self.set_status("Open an image.")
            return
        self.prompt_layers.connect(image, image.events.data, self._on_image_data)
        self.axis_combo.reset_choices()
        self._ensure_prompt_layers(image)
        self.loop.schedule("view")

    def _on_image_data(self, event=None) -> None:
        if self._image is not None:
            self.session.forget_image(self._image.unique_id)
            self.drop_preview()
            self.loop.schedule("view")

    def _ensure_prompt_layers(self, image: Image) -> None:
        if self.prompt_layers.ensure(image, self.point_mode.value == "positive"):
            self.reset_choices()

    def _restore_prompt_layers(self) -> None:
        """Bring back prompt layers the user deleted, when the widget is used again."""
        if self._image is not None and self._image in self.viewer.layers:
            self._ensure_prompt_layers(self._image)

    def consumed_for(self, source: Labels, image: Image, plane: Plane) -> dict[int, str]:
        return self.session.consumed_for(source.unique_id, image.unique_id, plane.key)

    def has_prompts(self) -> bool:
        return self.prompt_layers.has_prompts() or self.mask_source is not None

    # -- events --------------------------------------------------------------------------------

    def _on_prompts_changed(self, event=None) -> None:
        action = getattr(event, "action", None)
        if action is not None and str(getattr(action, "value", action)) in (
            "adding", "removing", "changing",
        ):
            return  # wait for the completed edit
        self.loop.schedule("prompts")

    def _on_view_changed(self, event=None) -> None:
        if getattr(event, "type", None) == "order":
            self.axis_combo.reset_choices()
        self.loop.schedule("view", _DEBOUNCE_VIEW_MS)

    def _on_mask_source_changed(self, value=None) -> None:
        source = self.mask_source
        if source is not None:
            self.prompt_layers.connect(source, source.events.paint, self._on_prompts_changed)
            self.prompt_layers.connect(source, source.events.data, self._on_prompts_changed)
        self.loop.schedule("prompts")

    @guarded
    def _on_ndisplay(self, event=None) -> None:
        self.axis_combo.reset_choices()
        if self.viewer.dims.ndisplay == 2:
            self._warned.discard("3d")
            self._warned.discard("axes")
        self.loop.schedule("view")

    @guarded
    def _on_refine_changed(self, value=None) -> None:
        """The preview is decoded again with or without the mask refiner."""
        self.session.set_refine(bool(self.refine_masks.value))
        self.loop.schedule("prompts")

    @guarded
    def _on_point_mode(self, value=None) -> None:
        positive = self.point_mode.value == "positive"
        if self.points_layer is not None:
            self.points_layer.feature_defaults = {"positive": positive}
        self.set_status(f"Next points are {'positive' if positive else 'negative'}.")

    def _on_task_busy(self, busy: bool) -> None:
        self.stack.set_enabled(not busy)
        self.text.find_button.enabled = not busy
        if not busy:
            self.prompt_layers.activate_points()

    def _on_destroyed(self, *args) -> None:
        self.closed = True
        try:
            for key in self._keys:
                self.viewer.bind_key(key, None)
            self.viewer.layers.events.inserted.disconnect(self._on_layers_changed)
            self.viewer.layers.events.removed.disconnect(self._on_layer_removed)
            self.viewer.dims.events.current_step.disconnect(self._on_view_changed)
            self.viewer.dims.events.order.disconnect(self._on_view_changed)
            self.viewer.dims.events.ndisplay.disconnect(self._on_ndisplay)
            if self.tasks.context is not None:
                self.tasks.context.cancel()
            self.session.close()
            self.text.close()
            self.prompt_layers.disconnect_all()
        except Exception:  # the viewer may be half torn down already
            logger.debug("disconnecting the widget failed", exc_info=True)

    # -- feedback --------------------------------------------------------------------------------

    def set_busy(self, busy: bool) -> None:
        self.progress_bar.visible = busy
        # min == max: Qt draws an indeterminate ("busy") bar
        self.progress_bar.max = 0 if busy else 1

    def forget_warnings(self, keep: tuple[str, ...] = ()) -> None:
        """Warn again about everything but ``keep`` (the plane on screen changed)."""
        self._warned = {w for w in self._warned if w in keep}

    def warn_once(self, tag: str, message: str) -> None:
        if tag in self._warned:
            return
        self._warned.add(tag)
        show_warning(message)


def _key_handler(action: Callable[[], Any]) -> Callable:
    def handler(viewer) -> None:
        action()

    handler.__name__ = getattr(action, "__name__", "sam_action")
    handler.__doc__ = getattr(action, "__doc__", None)
    return handler
