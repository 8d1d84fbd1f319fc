"""The "Segment Anything" dock widget: prompts in napari layers, SAM masks as a preview, commit
into a Labels layer.

The widget is thin: its state and background work (model, predictor, embeddings, preview,
jobs) live in a Qt-free :class:`~.session.SamSession`; the prompt and preview layers are kept by
:class:`~._prompt_layers.PromptLayers`; :class:`~._preview_loop.PreviewLoop` keeps the preview
up to date with the plane on screen; the rows are grouped in collapsible sections, each in its
own module (:mod:`._model_section`, :mod:`._prompt_section`, :mod:`._stack_section`,
:mod:`._text`), which also hold what their buttons do (load, commit and clear, stack jobs, text
search). What lives here is the assembly and the wiring: the viewer's events, the public API,
and turning every failure into one notification. All background work, the long jobs included,
is started and cancelled by the session (:mod:`._tasks` shows the long job's progress).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import Container, Label, ProgressBar
from napari.layers import Image, Labels, Points, Shapes
from napari.utils.notifications import show_info, show_warning

from ._colors import NEGATIVE_COLOR, POSITIVE_COLOR, PREVIEW_COLOR, committed_colormap
from ._layers import Plane, image_level0, image_spatial_shape, transform_kwargs
from ._model_section import ModelSection
from ._notify import guarded, notify_error
from ._preview_loop import PreviewLoop
from ._prompt_layers import PromptLayers
from ._prompt_section import KEY_CLEAR, KEY_COMMIT, KEY_TOGGLE, LABELS_NAME, PromptSection
from ._section import elide_width
from ._stack_section import AUTOMATIC_NAME, KEY_PROPAGATE, StackSection
from ._tasks import TaskPanel, qt_runner
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
    tasks : TaskPanel
        Progress and *Cancel* of the session's long job (propagation, segment everything,
        precompute, text search).
    """

    def __init__(self, viewer: napari.viewer.Viewer, load_default: bool = True) -> None:
        super().__init__(labels=False)
        self.viewer = viewer
        self.closed = False
        self.session = SamSession(runner=qt_runner)
        self.prompt_layers = PromptLayers(viewer, self.on_prompts_changed)
        self._image: Image | None = None
        self.status_sticky = False
        self.warned: set[str] = set()  # tags of the warnings shown (each once per plane)
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
                            "zoom_small", "refine_masks", "snap_objects", "commit_button",
                            "clear_button")),
            (self.stack, ("axis_combo", "auto_scope", "auto_prompts", "propagate_button",
                          "auto_button", "disk_cache", "precompute_button")),
        ):
            for name in names:
                setattr(self, name, getattr(section, name))
        self.progress_bar = ProgressBar(label="", min=0, max=1, value=0, visible=False)
        self.status_label = Label(label="status", value="")
        elide_width(self.status_label)
        self.tasks = TaskPanel(self.session, on_busy=self._on_task_busy)
        self.extend([Container(widgets=[self.image_combo], labels=True), self.model_section,
                     self.prompts, self.stack, self.text, self.progress_bar, self.status_label,
                     self.tasks])
        self.image_combo.changed.connect(self._on_image_changed)
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
        return self.prompts.target_layer

    @property
    def mask_source(self) -> Labels | None:
        """The Labels layer whose objects are mask prompts, if one is chosen."""
        return self.prompts.mask_source

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
        return self.session.busy or self.session.task is not None or self.loop.pending

    def set_model(self, model: Any, name: str = "model") -> None:
        """Use ``model`` (a :class:`napari_sam.modeling.Sam`) from now on.

        Embeddings of the previous model are dropped; labels and prompts are kept.
        """
        self.session.set_refine(bool(self.refine_masks.value))
        self.session.set_model(model, name)
        self.prompts.apply_snap()
        self.model_section.model_set(name, model)

    def load_model(self, name: str | None = None, checkpoint: str | None = None,
                   device: str | None = None) -> None:
        """Build a model in a background worker and :meth:`set_model` it when ready.

        Parameters default to the widget's choices. Failures (unknown name, missing weights,
        no network) are shown as one notification with the weights module's message.
        """
        self.model_section.load(name, checkpoint, device)

    def toggle_point_mode(self) -> None:
        """Switch the next points between positive and negative."""
        self.prompts.toggle_point_mode()

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
        return self.prompts.commit()

    @guarded
    def clear(self) -> None:
        """Drop the prompts of the current slice and the preview."""
        self.prompts.clear()

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
        if self.session.task is not None:
            show_info(f"Another job is running ({self.session.task.title}): wait or cancel it.")
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
            job = self.session.cancel_task(owner=uid)  # its bodies poll this every slice
            if job is not None:
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

    def restore_prompt_layers(self) -> None:
        """Bring back prompt layers the user deleted, when the widget is used again."""
        if self._image is not None and self._image in self.viewer.layers:
            self._ensure_prompt_layers(self._image)

    def consumed_for(self, source: Labels, image: Image, plane: Plane) -> dict[int, str]:
        return self.session.consumed_for(source.unique_id, image.unique_id, plane.key)

    def has_prompts(self) -> bool:
        return self.prompt_layers.has_prompts() or self.mask_source is not None

    # -- events --------------------------------------------------------------------------------

    def on_prompts_changed(self, event=None) -> None:
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

    @guarded
    def _on_ndisplay(self, event=None) -> None:
        self.axis_combo.reset_choices()
        if self.viewer.dims.ndisplay == 2:
            self.warned.discard("3d")
            self.warned.discard("axes")
        self.loop.schedule("view")

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
            self.session.close()  # cancels the long job too
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
        self.warned = {w for w in self.warned if w in keep}

    def warn_once(self, tag: str, message: str) -> None:
        if tag in self.warned:
            return
        self.warned.add(tag)
        show_warning(message)


def _key_handler(action: Callable[[], Any]) -> Callable:
    def handler(viewer) -> None:
        action()

    handler.__name__ = getattr(action, "__name__", "sam_action")
    handler.__doc__ = getattr(action, "__doc__", None)
    return handler
