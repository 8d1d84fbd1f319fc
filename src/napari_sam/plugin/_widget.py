"""The "Segment Anything" dock widget: prompts in napari layers, SAM masks as a preview, commit
into a Labels layer.

The widget owns no segmentation logic: prompts are read from layers by :mod:`._layers`, masks
come from :class:`napari_sam.engine.predictor.SamPredictor`, embeddings are kept in an
:class:`napari_sam.engine.embedding_cache.EmbeddingCache`. What lives here is the wiring: which plane
is on screen, one background worker at a time for the image encoder, the preview, and turning
every failure into one napari notification.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    Label,
    ProgressBar,
    PushButton,
    RadioButtons,
)
from napari.layers import Image, Labels, Points, Shapes
from napari.qt.threading import create_worker
from napari.utils.colormaps import DirectLabelColormap
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import QTimer

from ..engine.tiling import is_large
from ._colors import NEGATIVE_COLOR, POSITIVE_COLOR, PREVIEW_COLOR, committed_colormap
from ._label_ids import max_label
from ._layers import (
    Plane,
    PlanePrompts,
    PromptError,
    affine_between,
    assemble_objects,
    current_plane,
    image_level0,
    image_spatial_shape,
    mask_prompts_from_labels,
    paint_mask,
    plane_layer_translate,
    points_on_plane,
    shapes_on_plane,
    transform_kwargs,
)
from ._notify import notify_error
from ._stack import anchor_masks, paint_label_stack, paint_stack, plane_at, volume_view
from ._tasks import TaskRunner
from ._text import TextSection
from ._workers import (
    build_model_worker,
    compute_embedding,
    prefetch,
    segment_objects,
    segment_tiled,
    tiled_predictor,
)

if TYPE_CHECKING:  # pragma: no cover
    import napari

    from ..engine.embedding_cache import EmbeddingCache
    from ..engine.predictor import SamPredictor

__all__ = ["KEY_CLEAR", "KEY_COMMIT", "KEY_PROPAGATE", "KEY_TOGGLE", "SamWidget"]

logger = logging.getLogger(__name__)

#: Toggle positive / negative for the next points.
KEY_TOGGLE = "N"
#: Commit the preview into the result Labels layer ("keep").
KEY_COMMIT = "K"
#: Clear the prompts of the current slice.
KEY_CLEAR = "Q"
#: Propagate the previewed objects (or the selected label) along the stack axis.
KEY_PROPAGATE = "Shift-P"

POINTS_NAME = "SAM points"
BOXES_NAME = "SAM boxes"
PREVIEW_NAME = "SAM preview"
LABELS_NAME = "SAM labels"
AUTOMATIC_NAME = "SAM automatic"
#: "everything from" choices -> AutomaticParams.point_source
AUTO_PROMPTS = {"bright blobs": "blobs", "regular grid": "grid"}
#: Loaded when the widget opens (shipped inside the package: no download).
DEFAULT_MODEL = "default"
#: More objects than this on one slice are not decoded (each costs a decoder pass).
MAX_OBJECTS = 100

CHECKPOINT_CHOICE = "checkpoint file..."
_NEW_LAYER = "__new__"
_NO_LAYER = "__none__"
_DEBOUNCE_VIEW_MS = 60
#: Slices on each side of the current one embedded in the background while the user looks.
PREFETCH_SLICES = 2


def _guarded(method: Callable) -> Callable:
    """Run a Qt/napari callback; report any failure as one notification instead of a traceback."""

    @functools.wraps(method)
    def wrapper(self: SamWidget, *args: Any, **kwargs: Any) -> Any:
        if self._closed:
            return None
        try:
            return method(self, *args, **kwargs)
        except RuntimeError as exc:
            if "has been deleted" in str(exc):  # the Qt side is gone (viewer closed)
                self._closed = True
                return None
            logger.exception("Segment Anything: %s failed", method.__name__)
            notify_error(f"Segment Anything: {exc}")
        except Exception as exc:  # the user sees the message, the log the rest
            logger.exception("Segment Anything: %s failed", method.__name__)
            notify_error(f"Segment Anything: {exc}")
        return None

    return wrapper


@dataclass
class Preview:
    """The masks decoded for the prompts of one plane, not yet committed.

    Attributes
    ----------
    image : napari.layers.Image
    plane : Plane
    masks : list of numpy.ndarray of bool, shape (H, W)
        One per object, in the order of :func:`._layers.assemble_objects`.
    scores : list of float
        SAM's predicted IoU of each mask.
    mask_objects : dict
        ``{label value: digest}`` of the mask-prompt layer's objects used.
    prompts : list of dict
        The prompts of each object (keyword arguments of :meth:`SamPredictor.segment`).
    """

    image: Image
    plane: Plane
    masks: list[np.ndarray]
    scores: list[float]
    mask_objects: dict[int, str] = field(default_factory=dict)
    prompts: list[dict] = field(default_factory=list)

    @property
    def label_image(self) -> np.ndarray:
        """The masks as one ``(H, W)`` label image (object ``i`` is ``i + 1``; first one wins)."""
        out = np.zeros(self.plane.shape, dtype=np.uint8)
        for i, mask in enumerate(self.masks):
            out[mask & (out == 0)] = i + 1
        return out

    @property
    def mask(self) -> np.ndarray:
        """Union of all masks, ``(H, W)`` bool."""
        return self.label_image > 0


@dataclass
class _Job:
    """The embedding worker's task."""

    key: tuple
    image_uid: Any
    image_name: str
    plane_label: str
    model_token: int
    cancelled: bool = False


def _model_choices() -> list[str]:
    try:
        from .. import list_models

        names = list(list_models())
    except Exception:  # the widget still opens; loading reports the problem
        logger.exception("listing the models failed")
        names = []
    return [*names, CHECKPOINT_CHOICE]


def _device_choices() -> list[str]:
    try:
        from ..models.device import available_devices

        return ["auto", *available_devices()]
    except Exception:
        logger.exception("listing the devices failed")
        return ["auto", "cpu"]


class SamWidget(Container):
    """Interactive Segment Anything on the displayed 2D slice of an image layer.

    Prompts are points in the "SAM points" layer (positive / negative, toggled with
    ``N``), rectangles (box prompts), polygons and ellipses (mask prompts) in the "SAM boxes"
    layer, and optionally the objects of a rough Labels layer (``mask_combo``). Every change of
    the prompts on the current slice re-decodes at once into the "SAM preview" layer;
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
    image_combo, model_combo, checkpoint_edit, device_combo, load_button, target_combo,
    mask_combo, point_mode, overwrite_checkbox, commit_button, clear_button, progress_bar,
    status_label, model_label
        The sub-widgets (magicgui widgets; ``.value`` reads and sets them).
    predictor : SamPredictor or None
        The predictor of the loaded model.
    cache : EmbeddingCache
        Embeddings by ``(image layer id, plane, model)``.
    preview : Preview or None
        The masks currently shown in the "SAM preview" layer.
    """

    def __init__(self, viewer: napari.viewer.Viewer, load_default: bool = True) -> None:
        super().__init__(labels=True)
        from ..engine.embedding_cache import EmbeddingCache

        self.viewer = viewer
        self.predictor: SamPredictor | None = None
        self.model_name: str | None = None
        self.cache: EmbeddingCache = EmbeddingCache()
        self._embedders: dict[tuple, Any] = {}
        self._prefetch_worker = None
        #: Slices on each side of the current one embedded in the background (0: off).
        self.prefetch_slices = PREFETCH_SLICES
        self._prefetch_cancel: threading.Event | None = None
        self.preview: Preview | None = None

        self._closed = False
        self._model_token = 0
        self._model_loading = False
        self._load_generation = 0
        self._embedding_key: tuple | None = None
        self._job: _Job | None = None
        self._worker = None
        self._model_worker = None
        self._ranges: dict[Any, tuple[float, float] | None] = {}
        self._failed: set[tuple] = set()
        self._warned: set[str] = set()
        self._plane_key: tuple | None = None
        self._consumed: dict[tuple, dict[int, str]] = {}
        self._connected_layers: dict[int, tuple] = {}
        self._points: Points | None = None
        self._shapes: Shapes | None = None
        self._preview_layer: Labels | None = None
        self._image: Image | None = None
        self._pending_reasons: set[str] = set()
        self._status_sticky = False
        self._tiled: dict[tuple, Any] = {}
        self._tiled_worker = None
        self._tiled_again = False
        self._decode_worker = None
        self._decode_again = False
        self._generation = 0  # bumped whenever cached embeddings are dropped

        # -- sub-widgets ---------------------------------------------------------------------
        self.image_combo = ComboBox(label="image", choices=self._image_choices)
        self.model_combo = ComboBox(label="model", choices=_model_choices())
        self.checkpoint_edit = FileEdit(
            label="checkpoint", mode="r", filter="*.pth *.pt *.ckpt", visible=False
        )
        self.device_combo = ComboBox(label="device", choices=_device_choices())
        self.load_button = PushButton(text="Load model")
        self.model_label = Label(label="loaded", value="no model")
        self.target_combo = ComboBox(label="write into", choices=self._target_choices)
        self.mask_combo = ComboBox(label="mask prompt", choices=self._mask_choices)
        self.point_mode = RadioButtons(
            label=f"points ({KEY_TOGGLE})",
            choices=["positive", "negative"],
            value="positive",
            orientation="horizontal",
        )
        self.overwrite_checkbox = CheckBox(text="overwrite existing objects", value=False)
        self.zoom_small = CheckBox(
            text="zoom in on small objects",
            value=False,
            tooltip="When the slice's objects are small for the model (radius below ~10 px at "
                    "its input), decode prompts in magnified crops of the slice (each crop "
                    "embedded once, when a prompt first needs it)",
        )
        self.refine_masks = CheckBox(
            text="refine mask edges",
            value=True,
            tooltip="Redraw each mask at the image's resolution with the model's mask refiner "
                    "(the default model has one; SAM's own masks come out at a quarter of its "
                    "input size). Used for previews and segment everything",
        )
        self.disk_cache = CheckBox(text="keep embeddings on disk", value=True)
        self.precompute_button = PushButton(text="Precompute stack")
        self.commit_button = PushButton(text=f"Commit ({KEY_COMMIT})")
        self.clear_button = PushButton(text=f"Clear slice ({KEY_CLEAR})")
        self.progress_bar = ProgressBar(label="", min=0, max=1, value=0, visible=False)
        self.status_label = Label(label="status", value="")
        self._actions = Container(
            widgets=[self.commit_button, self.clear_button], layout="horizontal", labels=False
        )
        # -- stacks: propagation and segment everything --
        self.axis_combo = ComboBox(label="stack axis", choices=self._axis_choices)
        self.propagate_button = PushButton(text=f"Propagate ({KEY_PROPAGATE})")
        self.auto_scope = ComboBox(
            label="everything on", choices=["this slice", "all slices"], value="this slice"
        )
        self.auto_prompts = ComboBox(
            label="everything from",
            choices=list(AUTO_PROMPTS),
            value=next(iter(AUTO_PROMPTS)),
            tooltip="Where segment everything puts its point prompts: one on each bright blob "
                    "(fluorescent nuclei and cells: fast), or SAM's regular grid (any image, "
                    "e.g. dark objects on a bright background: slower)",
        )
        self.auto_button = PushButton(text="Segment everything")
        self._stack_actions = Container(
            widgets=[self.propagate_button, self.auto_button], layout="horizontal", labels=False
        )
        self._cache_actions = Container(
            widgets=[self.disk_cache, self.precompute_button], layout="horizontal", labels=False
        )
        self.tasks = TaskRunner(on_busy=self._on_task_busy)
        self.text = TextSection(self)
        self.extend(
            [
                self.image_combo,
                self.model_combo,
                self.checkpoint_edit,
                self.device_combo,
                self.load_button,
                self.model_label,
                self.target_combo,
                self.mask_combo,
                self.point_mode,
                self.overwrite_checkbox,
                self.zoom_small,
                self.refine_masks,
                self._actions,
                self.axis_combo,
                self.auto_scope,
                self.auto_prompts,
                self._stack_actions,
                self._cache_actions,
                self.text,
                self.progress_bar,
                self.status_label,
                self.tasks,
            ]
        )
        self.status_label.native.setWordWrap(True)

        self._timer = QTimer(self.native)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self._on_timer)

        self.model_combo.changed.connect(self._on_model_choice)
        self.load_button.changed.connect(self._on_load_clicked)
        self.commit_button.changed.connect(self._on_commit_clicked)
        self.clear_button.changed.connect(self._on_clear_clicked)
        self.propagate_button.changed.connect(self._on_propagate_clicked)
        self.auto_button.changed.connect(self._on_auto_clicked)
        self.precompute_button.changed.connect(self._on_precompute_clicked)
        self.disk_cache.changed.connect(self._on_disk_cache_changed)
        self.zoom_small.changed.connect(lambda _: self._schedule("prompts"))
        self.refine_masks.changed.connect(self._on_refine_changed)
        self.point_mode.changed.connect(self._on_point_mode)
        self.image_combo.changed.connect(self._on_image_changed)
        self.mask_combo.changed.connect(self._on_mask_source_changed)

        viewer.layers.events.inserted.connect(self._on_layers_changed)
        viewer.layers.events.removed.connect(self._on_layer_removed)
        viewer.dims.events.current_step.connect(self._on_view_changed)
        viewer.dims.events.order.connect(self._on_view_changed)
        viewer.dims.events.ndisplay.connect(self._on_ndisplay)
        self._keys = {
            KEY_TOGGLE: self.toggle_point_mode,
            KEY_COMMIT: self.commit,
            KEY_CLEAR: self.clear,
            KEY_PROPAGATE: self.propagate,
        }
        for key, action in self._keys.items():
            viewer.bind_key(key, _key_handler(action), overwrite=True)
        self.native.destroyed.connect(self._on_destroyed)

        existing = [layer for layer in self._labels_layers() if layer.name == LABELS_NAME]
        if existing:  # reopened widget: keep writing into the same result layer
            self.target_combo.value = existing[-1]
        self._on_image_changed(self.image_combo.value)
        self._set_status("Load a model to start." if self.image else "Open an image.")
        if load_default and DEFAULT_MODEL in self.model_combo.choices:
            # the built-in model needs no download: ready to click as soon as the widget opens
            self.model_combo.value = DEFAULT_MODEL
            self.load_model(DEFAULT_MODEL)

    # -- public API ----------------------------------------------------------------------------

    @property
    def image(self) -> Image | None:
        """The image layer being segmented."""
        layer = self.image_combo.value
        return layer if isinstance(layer, Image) and layer in self.viewer.layers else None

    @property
    def points_layer(self) -> Points | None:
        """The "SAM points" prompt layer (feature ``positive``: True / False)."""
        return self._points

    @property
    def shapes_layer(self) -> Shapes | None:
        """The "SAM boxes" prompt layer: rectangles, polygons, ellipses."""
        return self._shapes

    @property
    def preview_layer(self) -> Labels | None:
        """The "SAM preview" layer, holding only the plane of the current preview."""
        return self._preview_layer

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
    def is_busy(self) -> bool:
        """Whether an embedding is being computed, a model loaded, or a refresh pending."""
        return (
            self._job is not None
            or self._tiled_worker is not None
            or self._decode_worker is not None
            or self._model_loading
            or self.tasks.busy
            or (not self._closed and self._timer.isActive())
        )

    def set_model(self, model: Any, name: str = "model") -> None:
        """Use ``model`` (a :class:`napari_sam.modeling.Sam`) from now on.

        Embeddings of the previous model are dropped; labels and prompts are kept.
        """
        from ..engine.predictor import SamPredictor

        self.predictor = SamPredictor(model, refine=bool(self.refine_masks.value))
        self.model_name = name
        self._model_token += 1
        self._embedding_key = None
        self.cache.clear()
        self._drop_embedders()
        self._failed.clear()
        self._warned.discard("no-model")
        device = getattr(model, "device", "cpu")
        self.model_label.value = f"{name} ({device})"
        self._restore_prompt_layers()
        self._schedule("model")

    def load_model(
        self,
        name: str | None = None,
        checkpoint: str | None = None,
        device: str | None = None,
    ) -> None:
        """Build a model in a background worker and :meth:`set_model` it when ready.

        Parameters default to the widget's choices. Failures (unknown name, missing weights,
        no network) are shown as one notification with the weights module's message.
        """
        if name is None:
            name = self.model_combo.value
            if name == CHECKPOINT_CHOICE:
                path = str(self.checkpoint_edit.value or "")
                if not path or path == ".":
                    show_warning("Choose a checkpoint file first.")
                    return
                name = path
        if device is None:
            device = self.device_combo.value
        device = None if device in (None, "auto") else device
        self._model_loading = True
        self.load_button.enabled = False
        self._set_busy(True)
        self._set_status(f"Loading model '{name}'...")
        worker = create_worker(
            build_model_worker, name, checkpoint, device, _start_thread=False, _ignore_errors=True
        )
        # the newest request wins: a load started earlier (the default model's, at opening)
        # or a model set meanwhile makes this result stale
        self._load_generation += 1
        ticket = (self._load_generation, self._model_token)
        worker.returned.connect(functools.partial(self._on_model_loaded, name, ticket))
        self._model_worker = worker
        worker.start()

    def toggle_point_mode(self) -> None:
        """Switch the next points between positive and negative."""
        self._restore_prompt_layers()
        self.point_mode.value = "negative" if self.point_mode.value == "positive" else "positive"

    def refresh(self) -> None:
        """Re-read the prompts of the current slice and decode them now (for scripts: returns
        once the preview is there, the viewer's events running meanwhile)."""
        self._timer.stop()
        self._pending_reasons.add("prompts")
        self._on_timer()
        self.wait_decoded()

    @_guarded
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
        if self.viewer.dims.ndisplay != 2:
            show_warning("Segment Anything commits on 2D slices: switch the viewer to 2D display.")
            return []
        image = self.image
        if image is None:
            show_warning("No image layer: open an image and choose it in the widget.")
            return []
        preview = self.preview
        if preview is None or not any(m.any() for m in preview.masks):
            if preview is not None:
                message = "The preview is empty: SAM found no object for these prompts."
            elif self._job is not None and self._has_prompts():
                message = "This slice is still being prepared: commit when the preview appears."
            else:
                message = "Nothing to commit: place a point or draw a box on this slice first."
            show_warning(message)
            return []
        target = self.target_layer
        if target is not None and target is self.mask_source:
            show_warning(
                f"'{target.name}' is both the mask prompt and the target: choose another "
                "target layer (or 'new layer')."
            )
            return []
        if target is None:
            target = self._new_labels_layer(image)
        current = max_label(target)
        dtype = np.asarray(target.data[(0,) * target.ndim]).dtype
        if np.issubdtype(dtype, np.integer) and current + len(preview.masks) > np.iinfo(dtype).max:
            notify_error(
                f"Labels layer '{target.name}' ({dtype}) has no free ids left: "
                "choose another target layer."
            )
            return []
        overwrite = bool(self.overwrite_checkbox.value)
        ids: list[int] = []
        next_id = current + 1
        with target.block_history():
            for mask in preview.masks:
                if paint_mask(target, image, preview.plane, mask, next_id, overwrite):
                    ids.append(next_id)
                    next_id += 1
        if not ids:
            show_warning(
                "Nothing was written: the preview lies entirely on existing objects "
                "(tick 'overwrite existing objects' to replace them)."
            )
            return []
        if preview.mask_objects and self.mask_source is not None:
            self._consumed_for(self.mask_source, image, preview.plane).update(preview.mask_objects)
        self._remove_prompts(image, preview.plane)
        self.preview = None
        self._show_preview(None)
        target.selected_label = ids[-1]
        self._activate_points()
        self._set_status(
            f"Committed object{'s' if len(ids) > 1 else ''} {', '.join(map(str, ids))} "
            f"into '{target.name}' ({preview.plane.label()}). Ctrl+Z on that layer undoes it.",
            sticky=True,
        )
        return ids

    @_guarded
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
            consumed = self._consumed_for(self.mask_source, image, plane)
            for value, _, digest in mask_prompts_from_labels(self.mask_source, image, plane):
                consumed[value] = digest
        self._remove_prompts(image, plane)
        self.preview = None
        self._show_preview(None)
        self._set_status(f"Cleared the prompts of {plane.label()}.", sticky=True)

    # -- embeddings: one StackEmbedder per (image, plane axes, model) ----------------------------

    def embedder(self, image: Image, plane: Plane):
        """The :class:`~napari_sam.engine.embedding_store.StackEmbedder` of ``image``'s planes like
        ``plane`` (same displayed axes) with the current model.

        With ``disk_cache`` on, embeddings are kept in a zarr store in the cache folder
        (``$NAPARI_SAM_CACHE`` or the user cache), named by the image content, the model and
        the preprocessing: reopening the same image later needs no recompute.
        """
        from ..engine.embedding_store import StackEmbedder

        uid = image.unique_id
        key = (uid, plane.axes, self._model_token)
        embedder = self._embedders.get(key)
        if embedder is None:
            intensity_range = self._ranges.get(uid)
            if intensity_range is None and image.multiscale:
                from ..engine.preprocess import estimate_intensity_range

                # one range for the whole pyramid, from its (small) coarsest level
                if not (image.rgb and np.dtype(image.dtype) == np.uint8):
                    intensity_range = estimate_intensity_range(image.data[-1])
                    self._ranges[uid] = intensity_range
            embedder = StackEmbedder(
                self.predictor.model,
                image_level0(image),
                axes=plane.axes,
                rgb=bool(image.rgb),
                intensity_range=intensity_range,
                store="auto" if self.disk_cache.value else None,
                model_name=self.model_name,
            )
            self._embedders[key] = embedder
        return embedder

    def _drop_embedders(self, uid=None) -> None:
        self._stop_prefetch()
        self._generation += 1
        for key in [k for k in self._embedders if uid is None or k[0] == uid]:
            del self._embedders[key]
        for key in [k for k in self._tiled if uid is None or k[0] == uid]:
            del self._tiled[key]

    def _start_prefetch(self) -> None:
        """Embed the neighbouring slices of the current one in the background, while idle."""
        if self._closed or self._prefetch_worker is not None or self._job is not None:
            return
        if self.predictor is None or self.tasks.busy:
            return
        image = self.image
        if image is None:
            return
        try:
            plane = current_plane(image, self.viewer.dims)
        except PromptError:
            return
        axis = self.stack_axis
        if axis is None or axis not in plane.not_displayed:
            return
        i, n = plane.index[axis], plane.spatial_shape[axis]
        order = [i + d for k in range(1, self.prefetch_slices + 1) for d in (k, -k)]
        indices = [_lead_index(plane_at(plane, axis, j)) for j in order if 0 <= j < n]
        if not indices:
            return
        cancel = threading.Event()
        worker = create_worker(
            prefetch,
            self.embedder(image, plane),
            indices,
            cancel.is_set,
            _start_thread=False,
            _ignore_errors=True,
        )
        worker.finished.connect(functools.partial(self._on_prefetch_done, worker))
        self._prefetch_worker, self._prefetch_cancel = worker, cancel
        worker.start()

    @property
    def is_prefetching(self) -> bool:
        """Whether neighbouring slices are being embedded in the background."""
        return self._prefetch_worker is not None

    def _stop_prefetch(self) -> None:
        if self._prefetch_cancel is not None:
            self._prefetch_cancel.set()

    def _on_prefetch_done(self, worker) -> None:
        if self._prefetch_worker is worker:
            self._prefetch_worker, self._prefetch_cancel = None, None

    @_guarded
    def precompute(self) -> bool:
        """Embed every slice along :attr:`stack_axis` in the background (progress, cancel).

        With ``disk_cache`` on, the embeddings are written to the store as they are computed:
        a cancelled or interrupted run resumes where it stopped.
        """
        context = self._stack_context("precompute")
        if context is None:
            return False
        image, plane, axis = context
        self._stop_prefetch()
        embedder = self.embedder(image, plane)
        indices = [
            _lead_index(plane_at(plane, axis, j)) for j in range(plane.spatial_shape[axis])
        ]

        def body(ctx):
            ctx.progress(0, len(indices), "checking the cache")
            return embedder.precompute(indices, progress=ctx.progress, cancelled=ctx.cancelled)

        def done(computed, cancelled):
            self._ranges.setdefault(image.unique_id, embedder.intensity_range)
            where = embedder.store_path
            state = "cancelled after computing" if cancelled else "computed"
            self._set_status(
                f"Precompute {state} {computed} slice embedding{'s' if computed != 1 else ''} "
                f"along axis {axis}" + (f" (stored in {where})." if where else "."),
                sticky=True,
            )

        return self.tasks.start(
            f"Embedding the slices along axis {axis}", body, done, self._on_task_error,
            owner=image.unique_id,
        )

    # -- stacks: propagation and segment everything ------------------------------------------------

    @property
    def stack_axis(self) -> int | None:
        """The data axis propagation and "all slices" run along (``None`` for a 2D image)."""
        value = self.axis_combo.value
        return value if isinstance(value, int) else None

    @_guarded
    def propagate(self) -> bool:
        """Propagate objects from the current slice along :attr:`stack_axis`, in the background.

        The objects are those of the preview (each gets a fresh id, as with a commit). Without
        a preview, the selected label of the target layer is extended: every slice where it
        already exists is an anchor, the slices between anchors are filled from both ends and
        the object is followed beyond them until it ends. The result is written as one undo
        step, without touching other objects unless ``overwrite_checkbox`` is on; cancelling
        keeps the slices already done.

        Returns
        -------
        bool
            Whether a propagation was started.
        """
        context = self._stack_context("propagate")
        if context is None:
            return False
        image, plane, axis = context
        from ..workflows.propagation import Seed

        target = self.target_layer
        preview = self.preview
        index = plane.index[axis]
        seeds: list = []
        values: dict[int, int] = {}
        if (
            preview is not None
            and preview.image is image
            and preview.plane == plane
            and any(m.any() for m in preview.masks)
        ):
            mode = "preview"
            for k, mask in enumerate(preview.masks):
                if not mask.any():
                    continue
                prompt = preview.prompts[k] if k < len(preview.prompts) else {}
                seeds.append(
                    Seed(
                        object_id=k + 1,  # ids start at 1
                        index=index,
                        points=prompt.get("points"),
                        labels=prompt.get("labels"),
                        box=prompt.get("box"),
                        mask=mask,
                    )
                )
        elif target is not None and int(target.selected_label) > 0:
            mode = "label"
            value = int(target.selected_label)
            anchors = anchor_masks(target, image, plane, axis, value)
            if not anchors:
                show_warning(
                    f"Label {value} of '{target.name}' is on no slice of this stack: prompt an "
                    "object (or select a label that exists) before propagating."
                )
                return False
            values[value] = value
            seeds = [Seed(object_id=value, index=i, mask=m) for i, m in anchors.items()]
        else:
            show_warning(
                "Nothing to propagate: prompt an object on this slice (its preview is "
                "propagated), or select an existing label in the target layer."
            )
            return False

        model = self.predictor.model
        embed, embedder = self._stack_embedder(image, plane, axis)
        n = plane.spatial_shape[axis]
        data = image_level0(image)
        time_axis = _is_time_axis(image, axis)

        def slice_image(i: int) -> np.ndarray:
            return np.asarray(data[plane_at(plane, axis, i).indexer()])

        def body(ctx):
            from ..workflows.propagation import PropagationParams, propagate

            # cells do not shrink towards the ends of a time-lapse as nuclei do in z
            params = PropagationParams(max_regrowth=None) if time_axis else PropagationParams()
            embed(index)  # the seed slice first: it fixes the stack's intensity range
            return propagate(
                model,
                embed,
                n,
                seeds,
                params=params,
                progress=ctx.progress,
                cancelled=ctx.cancelled,
                slice_image=slice_image,
                intensity_range=embedder.intensity_range,
            )

        seed_masks = {s.object_id: s.mask for s in seeds if s.index == index}
        done = functools.partial(
            self._on_propagated, image, plane, axis, mode, values, seed_masks
        )
        what = f"{len(seeds)} object{'s' if len(seeds) > 1 else ''}" if mode == "preview" else (
            f"label {next(iter(values))} ({len(seeds)} anchor slice{'s' if len(seeds) > 1 else ''})"
        )
        self._set_status(f"Propagating {what} along axis {axis}...")
        return self.tasks.start(
            f"Propagating along axis {axis}", body, done, self._on_task_error,
            owner=image.unique_id,
        )

    @_guarded
    def _on_propagated(
        self, image, plane, axis, mode, values, seed_masks, result, cancelled
    ) -> None:
        if image not in self.viewer.layers:
            show_warning("The image was removed during propagation: nothing was written.")
            return
        from ..workflows.mask_stack import MaskStack

        # copies that keep each mask as its bounding box (MaskStack): whole masks of every
        # object and slice may not fit in memory
        masks = {k: MaskStack(v) if not isinstance(v, MaskStack) else v.copy()
                 for k, v in result.masks.items()}
        if mode == "preview":
            for k, mask in seed_masks.items():  # the slice the user saw keeps the preview
                masks.setdefault(k, MaskStack())[plane.index[axis]] = mask
        masks = {k: v for k, v in masks.items() if any(m.any() for m in v.values())}
        if not masks:
            show_warning("Propagation found nothing to write.")
            return
        target = self.target_layer
        if target is None:
            target = self._new_labels_layer(image)
        if mode == "preview":
            start = max_label(target) + 1
            values = {k: start + i for i, k in enumerate(sorted(masks))}
        objects = {values[k]: v for k, v in masks.items()}
        written = paint_stack(
            target, image, plane, axis, objects, bool(self.overwrite_checkbox.value)
        )
        if mode == "preview" and written:
            self._remove_prompts(image, plane)
            if self.preview is not None and self.preview.plane == plane:
                self.preview = None
                self._show_preview(None)
        if not written:
            show_warning(
                "Nothing was written: the propagated masks lie on existing objects "
                "(tick 'overwrite existing objects' to replace them)."
            )
            return
        spans = ", ".join(
            f"{v}: slices {min(s)}-{max(s)}" for v, s in sorted(written.items())
        )
        state = "cancelled; kept" if cancelled or not result.complete else "wrote"
        self._set_status(
            f"Propagation {state} {spans} along axis {axis} in '{target.name}'. "
            "Ctrl+Z on that layer undoes it.",
            sticky=True,
        )
        target.refresh()

    @_guarded
    def segment_everything(self, scope: str | None = None) -> bool:
        """Automatic segmentation ("segment everything") in the background.

        Parameters
        ----------
        scope : {"this slice", "all slices"}, optional
            The current slice, or every slice along :attr:`stack_axis` (linked into 3D objects).
            Defaults to ``auto_scope``.

        The objects go into the "SAM automatic" Labels layer (created if needed) with fresh
        ids, as one undo step; other layers are never touched.

        Returns
        -------
        bool
            Whether a run was started.
        """
        scope = scope or self.auto_scope.value
        context = self._stack_context("segment everything", need_axis=scope == "all slices")
        if context is None:
            return False
        image, plane, axis = context
        model = self.predictor.model
        if axis is None:
            axis = plane.not_displayed[-1] if plane.not_displayed else None
        data = image_level0(image)
        embed, embedder = self._stack_embedder(image, plane, axis)
        from ..workflows.automatic import AutomaticParams

        params = AutomaticParams(point_source=AUTO_PROMPTS[self.auto_prompts.value],
                                 refine=bool(self.refine_masks.value))
        if scope == "all slices":

            def body(ctx):
                from ..workflows.automatic import segment_everything_nd

                volume = volume_view(image, plane, axis)
                return segment_everything_nd(
                    model,
                    volume,
                    axis=0,
                    params=params,
                    intensity_range=embedder.intensity_range,
                    embed=embed,
                    progress=ctx.progress,
                    cancelled=ctx.cancelled,
                )

            title = f"Segmenting everything along axis {axis}"
        else:

            def body(ctx):
                from ..workflows.automatic import segment_everything

                emb = embed(plane.index[axis] if axis is not None else 0)
                return segment_everything(
                    model,
                    np.asarray(data[plane.indexer()]),
                    params=params,
                    intensity_range=embedder.intensity_range,
                    embedding=emb,
                    progress=ctx.progress,
                    cancelled=ctx.cancelled,
                )

            title = f"Segmenting everything on {plane.label()}"
        done = functools.partial(self._on_automatic, image, plane, axis, scope)
        self._set_status(f"{title}...")
        return self.tasks.start(title, body, done, self._on_task_error, owner=image.unique_id)

    @_guarded
    def _on_automatic(self, image, plane, axis, scope, labels, cancelled) -> None:
        if image not in self.viewer.layers:
            show_warning("The image was removed during the run: nothing was written.")
            return
        labels = np.asarray(labels)
        if scope == "all slices":
            stack = labels
        else:
            stack = labels[None]
            axis = None
        ids = [int(v) for v in np.unique(stack) if v != 0]
        if not ids:
            show_warning("Segment everything found no object.")
            return
        layer = self._automatic_layer(image)
        start = max_label(layer) + 1
        remap = np.zeros(int(stack.max()) + 1, dtype=np.int64)
        remap[ids] = np.arange(start, start + len(ids))
        # label planes as they are (axis None: the one plane itself), no mask per object
        planes = {i: remap[stack[i]] for i in range(stack.shape[0])}
        paint_label_stack(layer, image, plane, axis, planes)
        state = "cancelled; kept" if cancelled else "found"
        self._set_status(
            f"Segment everything {state} {len(ids)} object{'s' if len(ids) > 1 else ''} in "
            f"'{layer.name}' ({'all slices' if scope == 'all slices' else plane.label()}). "
            "Ctrl+Z on that layer undoes it; use it as target or mask prompt.",
            sticky=True,
        )
        layer.refresh()

    def _automatic_layer(self, image: Image) -> Labels:
        for layer in self._labels_layers():
            if layer.name == AUTOMATIC_NAME and layer.ndim == len(image_spatial_shape(image)):
                return layer
        layer = Labels(
            np.zeros(image_spatial_shape(image), dtype=np.int32),
            name=AUTOMATIC_NAME,
            colormap=committed_colormap(),
            **transform_kwargs(image),
        )
        self.viewer.layers.insert(self.viewer.layers.index(image) + 1, layer)
        # the text search looks among segment everything's objects from now on
        self.text.candidates_combo.reset_choices()
        self.text.candidates_combo.value = layer
        return layer

    def _job_image(self) -> Image | None:
        """The image a background job can start on, else say why (one notification)."""
        if self.tasks.busy:
            show_info(f"Another job is running ({self.tasks.context.title}): wait or cancel it.")
            return None
        image = self.image
        if image is None:
            show_warning("No image layer: open an image and choose it in the widget.")
        return image

    def _stack_context(self, what: str, need_axis: bool = True):
        """``(image, plane, axis)`` when a stack job can start, else warn and return ``None``."""
        image = self._job_image()
        if image is None:
            return None
        if self.predictor is None:
            show_warning("No SAM model is loaded: choose one and press 'Load model'.")
            return None
        try:
            plane = current_plane(image, self.viewer.dims)
        except PromptError as exc:
            show_warning(str(exc))
            return None
        axis = self.stack_axis
        if axis is not None and axis not in plane.not_displayed:
            self.axis_combo.reset_choices()
            axis = self.stack_axis
        if need_axis and axis is None:
            show_warning(
                f"Cannot {what} across slices: '{image.name}' is a 2D image (no stack axis)."
            )
            return None
        return image, plane, axis

    def _axis_choices(self, _widget=None) -> list[tuple[str, int]]:
        image = self.image if hasattr(self, "image_combo") else None
        if image is None or self.viewer.dims.ndisplay != 2:
            return []
        try:
            plane = current_plane(image, self.viewer.dims)
        except PromptError:
            return []
        names = list(getattr(image, "axis_labels", None) or [])
        choices = []
        for a in plane.not_displayed:
            label = str(names[a]) if a < len(names) else ""
            # napari's default labels are axis numbers ("0", "-3"): show only real names
            name = f" ({label})" if label and not label.lstrip("-").isdigit() else ""
            choices.append((f"axis {a}{name}, {plane.spatial_shape[a]} slices", a))
        # the axis just above the plane first: z of (t, z, y, x), t of (t, y, x)
        return choices[::-1]

    def _stack_embedder(self, image: Image, plane: Plane, axis: int | None):
        """``(embed, embedder)``: ``embed(i)`` gives the plane ``i`` of ``image`` through
        ``plane`` along ``axis``, from the image's :meth:`embedder`.

        Safe to call from a worker thread (the embedder has its own predictor; the widget's
        stays untouched). ``embedder.intensity_range`` is the stack's normalisation, estimated
        once, in the worker that first needs it.
        """
        embedder = self.embedder(image, plane)

        def embed(i: int):
            p = plane if axis is None else plane_at(plane, axis, i)
            return embedder.get(_lead_index(p))

        return embed, embedder

    def _on_task_error(self, error: BaseException) -> None:
        self._set_status("The job failed (see the notification); nothing was written.")
        notify_error(f"Segment Anything: {error}")


    # -- layers ------------------------------------------------------------------------------

    def _image_choices(self, _widget=None) -> list[tuple[str, Image]]:
        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Image)]

    def _labels_layers(self) -> list[Labels]:
        return [
            layer
            for layer in self.viewer.layers
            if isinstance(layer, Labels) and layer is not self._preview_layer
        ]

    def _target_choices(self, _widget=None) -> list[tuple[str, Any]]:
        return [(f"new layer '{LABELS_NAME}'", _NEW_LAYER)] + [
            (layer.name, layer) for layer in self._labels_layers()
        ]

    def _mask_choices(self, _widget=None) -> list[tuple[str, Any]]:
        return [("none", _NO_LAYER)] + [(layer.name, layer) for layer in self._labels_layers()]

    @_guarded
    def _on_layers_changed(self, event=None) -> None:
        self.reset_choices()
        if self.image_combo.value is not self._image:
            self._on_image_changed(self.image_combo.value)

    @_guarded
    def _on_layer_removed(self, event) -> None:
        layer = event.value
        if layer is self._points:
            self._points = None
        elif layer is self._shapes:
            self._shapes = None
        elif layer is self._preview_layer:
            self._preview_layer = None
        self._disconnect_layer(layer)
        if isinstance(layer, Image):
            uid = layer.unique_id
            self.cache.discard(lambda key: key[0] == uid)
            self._drop_embedders(uid)
            self._ranges.pop(uid, None)
            job = self.tasks.context
            if job is not None and job.owner == uid and not job.cancelled():
                self.tasks.cancel()  # its bodies poll this every slice or batch
                show_warning(f"Image layer '{layer.name}' was removed: '{job.title}' is cancelled.")
            if self._job is not None and self._job.image_uid == uid and not self._job.cancelled:
                self._job.cancelled = True
                show_warning(
                    f"Image layer '{layer.name}' was removed while its embedding was being "
                    "computed: the computation is discarded (no labels were touched)."
                )
            if self.preview is not None and self.preview.image is layer:
                self.preview = None
                self._show_preview(None)
        self._on_layers_changed()

    @_guarded
    def _on_image_changed(self, layer=None) -> None:
        image = layer if isinstance(layer, Image) else None
        if self._image is not None and self._image is not image:
            self._disconnect_layer(self._image)
        self._image = image
        self.preview = None
        self._show_preview(None)
        if image is None:
            self._set_status("Open an image.")
            return
        self._connect(image, image.events.data, self._on_image_data)
        self.axis_combo.reset_choices()
        self._ensure_prompt_layers(image)
        self._schedule("view")

    def _on_image_data(self, event=None) -> None:
        image = self._image
        if image is None:
            return
        uid = image.unique_id
        self.cache.discard(lambda key: key[0] == uid)
        self._drop_embedders(uid)
        self._ranges.pop(uid, None)
        self._failed = {k for k in self._failed if k[0] != uid}
        self._embedding_key = None
        self._drop_preview()
        self._schedule("view")

    def _ensure_prompt_layers(self, image: Image) -> None:
        """Create (or reuse) the preview, the "SAM boxes" and the "SAM points" layers."""
        kwargs = transform_kwargs(image)
        spatial = image_spatial_shape(image)
        size = float(np.clip(0.025 * max(spatial[-2:]), 3.0, 40.0))

        if not self._usable(self._preview_layer, image):
            self._preview_layer = self._find(PREVIEW_NAME, Labels, image.ndim)
            if self._preview_layer is None:
                shape = (1,) * (len(spatial) - 2) + tuple(spatial[-2:])
                self._preview_layer = self.viewer.add_labels(
                    np.zeros(shape, dtype=np.uint8),
                    name=PREVIEW_NAME,
                    opacity=0.55,
                    blending="translucent",
                    # one colour for every previewed object: unmistakable for committed labels
                    colormap=DirectLabelColormap(
                        color_dict={None: PREVIEW_COLOR, 0: "transparent"}
                    ),
                    **kwargs,
                )
            self._preview_layer.editable = False
            self.reset_choices()

        if not self._usable(self._shapes, image):
            self._shapes = self._find(BOXES_NAME, Shapes, image.ndim)
            if self._shapes is None:
                self._shapes = self.viewer.add_shapes(
                    ndim=image.ndim,
                    name=BOXES_NAME,
                    edge_color="yellow",
                    face_color="transparent",
                    edge_width=max(size / 4, 0.5),
                    **kwargs,
                )
        self._connect(self._shapes, self._shapes.events.data, self._on_prompts_changed)

        if not self._usable(self._points, image):
            self._points = self._find(POINTS_NAME, Points, image.ndim)
            if self._points is None:
                self._points = self.viewer.add_points(
                    ndim=image.ndim,
                    name=POINTS_NAME,
                    features={"positive": np.zeros(0, dtype=bool)},
                    feature_defaults={"positive": True},
                    face_color="positive",
                    face_color_cycle={True: POSITIVE_COLOR, False: NEGATIVE_COLOR},
                    border_color="white",
                    size=size,
                    **kwargs,
                )
                self._points.mode = "add"
            elif "positive" not in self._points.features:
                n = len(self._points.data)
                self._points.features = {"positive": np.ones(n, dtype=bool)}
                self._points.face_color = "positive"
                self._points.face_color_cycle = {True: POSITIVE_COLOR, False: NEGATIVE_COLOR}
            self._points.feature_defaults = {"positive": self.point_mode.value == "positive"}
        self._connect(self._points, self._points.events.data, self._on_prompts_changed)
        self._connect(self._points, self._points.events.features, self._on_prompts_changed)

    def _activate_points(self) -> None:
        """Make the points layer the active one, in add mode: the next click is a prompt again
        (a new or written Labels layer would otherwise take the click)."""
        if self._points is not None and self._points in self.viewer.layers:
            self.viewer.layers.selection.active = self._points
            self._points.mode = "add"

    def _restore_prompt_layers(self) -> None:
        """Bring back prompt layers the user deleted, when the widget is used again."""
        if self._image is not None and self._image in self.viewer.layers:
            self._ensure_prompt_layers(self._image)

    def _usable(self, layer, image: Image) -> bool:
        return layer is not None and layer in self.viewer.layers and layer.ndim == image.ndim

    def _find(self, name: str, kind: type, ndim: int):
        """An existing layer of ``kind`` called ``name``; an empty one of another ndim is dropped."""
        for layer in list(self.viewer.layers):
            if layer.name == name and isinstance(layer, kind):
                if layer.ndim == ndim:
                    return layer
                empty = (
                    not np.asarray(layer.data).any()
                    if isinstance(layer, Labels)
                    else len(layer.data) == 0
                )
                if empty:
                    self.viewer.layers.remove(layer)
                    return None
                return layer
        return None

    def _new_labels_layer(self, image: Image) -> Labels:
        """A zero Labels layer on the image's grid, placed just above the image."""
        labels = Labels(
            np.zeros(image_spatial_shape(image), dtype=np.int32),
            name=LABELS_NAME,
            colormap=committed_colormap(),
            **transform_kwargs(image),
        )
        index = self.viewer.layers.index(image) + 1
        self.viewer.layers.insert(index, labels)
        self.target_combo.value = labels
        return labels

    def _connect(self, layer, emitter, callback) -> None:
        entry = self._connected_layers.setdefault(id(layer), (layer, []))
        if any(e is emitter for e, _ in entry[1]):
            return
        emitter.connect(callback)
        entry[1].append((emitter, callback))

    def _disconnect_layer(self, layer) -> None:
        entry = self._connected_layers.pop(id(layer), None)
        if entry is None:
            return
        for emitter, callback in entry[1]:
            emitter.disconnect(callback)

    def _consumed_for(self, source: Labels, image: Image, plane: Plane) -> dict[int, str]:
        return self._consumed.setdefault((source.unique_id, image.unique_id, plane.key), {})

    def _remove_prompts(self, image: Image, plane: Plane) -> None:
        """Delete the points and shapes lying on ``plane``."""
        for layer in (self._points, self._shapes):
            if layer is None or len(layer.data) == 0:
                continue
            a, b = affine_between(layer, image, plane.world_point)
            if isinstance(layer, Points):
                coords = np.asarray(layer.data, dtype=float) @ a.T + b
                on = np.flatnonzero(plane.on_plane(coords))
            else:
                on = [
                    i
                    for i, verts in enumerate(layer.data)
                    if plane.on_plane(np.asarray(verts, dtype=float) @ a.T + b).all()
                ]
            if len(on):
                layer.remove(list(map(int, on)))

    def _has_prompts(self) -> bool:
        return (
            any(layer is not None and len(layer.data) > 0 for layer in (self._points, self._shapes))
            or self.mask_source is not None
        )

    # -- events --------------------------------------------------------------------------------

    def _on_prompts_changed(self, event=None) -> None:
        action = getattr(event, "action", None)
        if action is not None and str(getattr(action, "value", action)) in (
            "adding",
            "removing",
            "changing",
        ):
            return  # wait for the completed edit
        self._schedule("prompts")

    def _on_view_changed(self, event=None) -> None:
        if getattr(event, "type", None) == "order":
            self.axis_combo.reset_choices()
        self._schedule("view", _DEBOUNCE_VIEW_MS)

    def _on_mask_source_changed(self, value=None) -> None:
        source = self.mask_source
        if source is not None:
            self._connect(source, source.events.paint, self._on_prompts_changed)
            self._connect(source, source.events.data, self._on_prompts_changed)
        self._schedule("prompts")

    @_guarded
    def _on_ndisplay(self, event=None) -> None:
        self.axis_combo.reset_choices()
        if self.viewer.dims.ndisplay == 2:
            self._warned.discard("3d")
            self._warned.discard("axes")
        self._schedule("view")

    @_guarded
    def _on_refine_changed(self, value=None) -> None:
        """The preview is decoded again with or without the mask refiner."""
        if self.predictor is not None:
            self.predictor.refine = bool(self.refine_masks.value)
        self._schedule("prompts")

    @_guarded
    def _on_point_mode(self, value=None) -> None:
        positive = self.point_mode.value == "positive"
        if self._points is not None:
            self._points.feature_defaults = {"positive": positive}
        self._set_status(f"Next points are {'positive' if positive else 'negative'}.")

    @_guarded
    def _on_model_choice(self, value=None) -> None:
        self.checkpoint_edit.visible = self.model_combo.value == CHECKPOINT_CHOICE

    @_guarded
    def _on_load_clicked(self, value=None) -> None:
        self.load_model()

    def _on_commit_clicked(self, value=None) -> None:
        self.commit()

    def _on_clear_clicked(self, value=None) -> None:
        self.clear()

    def _on_propagate_clicked(self, value=None) -> None:
        self.propagate()

    def _on_auto_clicked(self, value=None) -> None:
        self.segment_everything()

    def _on_precompute_clicked(self, value=None) -> None:
        self.precompute()

    @_guarded
    def _on_disk_cache_changed(self, value=None) -> None:
        self._drop_embedders()

    def _on_task_busy(self, busy: bool) -> None:
        self.propagate_button.enabled = not busy
        self.auto_button.enabled = not busy
        self.precompute_button.enabled = not busy
        self.text.find_button.enabled = not busy
        if not busy:
            self._activate_points()

    def _on_destroyed(self, *args) -> None:
        self._closed = True
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
            self._stop_prefetch()
            self.text.close()
            for layer_id in list(self._connected_layers):
                self._disconnect_layer(self._connected_layers[layer_id][0])
        except Exception:  # the viewer may be half torn down already
            logger.debug("disconnecting the widget failed", exc_info=True)

    # -- the refresh loop ------------------------------------------------------------------------

    def _schedule(self, reason: str, delay_ms: int = 0) -> None:
        if self._closed:
            return
        self._pending_reasons.add(reason)
        if not self._timer.isActive() or delay_ms == 0:
            self._timer.start(delay_ms)

    @_guarded
    def _on_timer(self) -> None:
        reasons, self._pending_reasons = self._pending_reasons, set()
        self._update(user_action="prompts" in reasons)

    def _update(self, user_action: bool) -> None:
        """Bring the preview up to date with the current slice and prompts."""
        image = self.image
        if image is None:
            self._drop_preview()
            if user_action and self._has_prompts():
                self._warn_once("no-image", "No image layer: open an image to segment.")
            self._set_status("Open an image.")
            return
        try:
            plane = current_plane(image, self.viewer.dims)
        except PromptError as exc:
            self._drop_preview()
            self._set_status(str(exc))
            # a plane SAM cannot take is worth saying at once; the rest only when prompting
            if exc.kind == "size":
                self._warn_once(f"size:{image.unique_id}", str(exc))
            elif user_action:
                self._warn_once(exc.kind, str(exc))
            return
        key_plane = (image.unique_id, plane.key)
        if key_plane != self._plane_key:
            self._plane_key = key_plane
            self._warned = {w for w in self._warned if w in ("no-model", "3d")}
            self._drop_preview()
        if self.predictor is None:
            if self._model_loading:
                self._set_status("Loading the model: prompts are decoded as soon as it is ready.")
            else:
                self._set_status("Load a model to start.")
                if user_action:
                    self._warn_once(
                        "no-model",
                        "No SAM model is loaded: choose one and press 'Load model'.",
                    )
            return
        key = (image.unique_id, plane.key, self._model_token)
        if key in self._failed:
            self._set_status("The embedding of this slice failed (see the notification).")
            return
        if self._is_large(plane) or self.zoom_small.value:
            self._decode_tiled(image, plane, (*key, bool(self.zoom_small.value),
                                              bool(self.refine_masks.value)))
            return
        embedding = self.cache.get(key)
        if embedding is None:
            self._request_embedding(image, plane, key)
            return
        if self._embedding_key != key:
            # the plane's pixels too: the default model's refiner redraws masks from them
            pixels = np.asarray(image_level0(image)[plane.indexer()])
            self.predictor.set_embedding(embedding, pixels, self._ranges.get(image.unique_id))
            self._embedding_key = key
        self._decode(image, plane)

    def _request_embedding(self, image: Image, plane: Plane, key: tuple) -> None:
        """Start the worker for ``key`` unless one is running (then it is asked for next)."""
        if self._job is not None:
            if self._job.key != key:
                self._set_status(
                    f"Waiting for the embedding of {self._job.plane_label}, then {plane.label()}..."
                )
            return
        self._stop_prefetch()
        uid = image.unique_id
        embedder = self.embedder(image, plane)
        job = _Job(key, uid, image.name, plane.label(), self._model_token)
        self._job = job
        self._set_busy(True)
        self._set_status(f"Computing the embedding of {plane.label()} of '{image.name}'...")
        worker = create_worker(
            compute_embedding,
            embedder,
            _lead_index(plane),
            _start_thread=False,
            _ignore_errors=True,
        )
        worker.returned.connect(functools.partial(self._on_embedding_ready, job))
        self._worker = worker
        worker.start()

    @_guarded
    def _on_embedding_ready(self, job: _Job, result) -> None:
        embedding, intensity_range, error = result
        self._job = None
        self._worker = None
        self._set_busy(self._model_loading)
        if job.cancelled or job.model_token != self._model_token:
            pass  # the image was removed (already reported) or the model replaced
        elif error is not None:
            self._failed.add(job.key)
            notify_error(
                f"Computing the SAM embedding of '{job.image_name}' ({job.plane_label}) "
                f"failed: {error}"
            )
        else:
            self._ranges[job.image_uid] = intensity_range
            self.cache.put(job.key, embedding)
        self._schedule("embedding")
        self._start_prefetch()

    @_guarded
    def _on_model_loaded(self, name: str, ticket: tuple[int, int], result) -> None:
        model, error = result
        if ticket[0] != self._load_generation:
            return  # a newer load is running; it reports
        self._model_loading = False
        self._model_worker = None
        self.load_button.enabled = True
        self._set_busy(self._job is not None)
        if ticket[1] != self._model_token and error is None:
            return  # a model was set while this one loaded: keep it
        if error is not None:
            self._set_status(f"Loading model '{name}' failed.")
            notify_error(f"Could not load model '{name}': {error}")
            return
        self.set_model(model, name)
        show_info(f"Segment Anything: model '{name}' loaded.")

    # -- decoding and preview --------------------------------------------------------------------

    def _collect_prompts(self, image: Image, plane: Plane) -> PlanePrompts:
        prompts = PlanePrompts()
        if self._points is not None and self._points in self.viewer.layers:
            rc, labels, idx, problems = points_on_plane(self._points, image, plane)
            prompts.points, prompts.labels, prompts.point_indices = rc, labels, idx
            prompts.problems += problems
        if self._shapes is not None and self._shapes in self.viewer.layers:
            shapes, problems = shapes_on_plane(self._shapes, image, plane)
            prompts.shapes = shapes
            prompts.problems += problems
        source = self.mask_source
        if source is not None:
            skip = self._consumed_for(source, image, plane)
            for value, shape, digest in mask_prompts_from_labels(source, image, plane, skip):
                prompts.masks.append((value, shape))
                prompts.mask_digests[value] = digest
        return prompts

    def _plane_objects(self, image: Image, plane: Plane):
        """The objects prompted on ``plane`` and the prompts, or ``None`` (status updated)."""
        prompts = self._collect_prompts(image, plane)
        for problem in prompts.problems:
            self._warn_once(problem, problem)
        objects = assemble_objects(prompts)
        if len(objects) > MAX_OBJECTS:
            self._warn_once(
                "too-many",
                f"{len(objects)} objects on this slice: only the first {MAX_OBJECTS} are "
                "previewed. Commit them, then continue.",
            )
            objects = objects[:MAX_OBJECTS]
        if not objects:
            self._drop_preview()
            hint = (
                "Add a positive point: negative points alone do not make an object."
                if len(prompts.points)
                else f"Ready on {plane.label()}: click a point or draw a box."
            )
            if not self._status_sticky:  # keep "committed ..." / "propagated ..." readable
                self._set_status(hint)
            return None
        return objects, prompts

    def _decode(self, image: Image, plane: Plane) -> None:
        """Decode the slice's prompts in a worker: the GUI thread never waits for the decoder.
        Prompts changed meanwhile are decoded again when it returns."""
        if self._decode_worker is not None:
            self._decode_again = True
            return
        found = self._plane_objects(image, plane)
        if found is None:
            return
        objects, prompts = found
        ticket = (self._generation, self._model_token, self._embedding_key)
        worker = create_worker(segment_objects, self.predictor, objects,
                               _start_thread=False, _ignore_errors=True)
        worker.returned.connect(functools.partial(
            self._on_decoded, image, plane, prompts, objects, ticket))
        self._decode_worker = worker
        worker.start()

    @_guarded
    def _on_decoded(self, image, plane, prompts, objects, ticket, result) -> None:
        masks, scores, error = result
        self._decode_worker = None
        if self._decode_again:  # the prompts changed while decoding: the newest ones count
            self._decode_again = False
            self._update(user_action=False)
            return
        if error is not None:
            notify_error(f"Segment Anything: decoding failed: {error}")
            return
        current = (self._generation, self._model_token, self._embedding_key)
        if image is not self.image or ticket != current:
            return  # another slice, model or image by now
        self._set_preview(image, plane, masks, scores, prompts, objects)

    def wait_decoded(self, timeout: float = 10.0) -> None:
        """Let a running decode deliver its preview (what a commit is about to write)."""
        from qtpy.QtWidgets import QApplication

        end = time.monotonic() + timeout
        while (self._decode_worker is not None or self._timer.isActive()) \
                and time.monotonic() < end:
            if self._timer.isActive():
                self._timer.stop()
                self._on_timer()
            QApplication.processEvents()
            time.sleep(0.005)

    def _set_preview(self, image, plane, masks, scores, prompts, objects) -> None:
        self.preview = Preview(
            image, plane, masks, scores, dict(prompts.mask_digests), prompts=list(objects)
        )
        self._show_preview(self.preview)
        if not any(m.any() for m in masks):
            self._set_status(
                f"SAM found no object for these prompts on {plane.label()}: "
                "add or move points, or draw a box."
            )
            return
        self._set_status(
            f"Preview of {len(masks)} object{'s' if len(masks) > 1 else ''} on {plane.label()} "
            f"(score {', '.join(f'{s:.2f}' for s in scores[:5])}). "
            f"{KEY_COMMIT}: commit, {KEY_CLEAR}: clear."
        )

    # -- large planes: decoded in tiles ------------------------------------------------------

    def _is_large(self, plane: Plane) -> bool:
        """Planes this much larger than the model input are embedded as overlapping tiles
        (resizing them whole would shrink small objects away)."""
        return is_large(plane.shape, self.predictor.model.img_size)

    def _decode_tiled(self, image: Image, plane: Plane, key: tuple) -> None:
        """Decode the plane's prompts with a :class:`~napari_sam.engine.tiling.TiledPredictor` in a
        worker: only the tiles under the prompts are embedded, objects across tile borders come
        out whole."""
        if self._tiled_worker is not None:
            self._tiled_again = True  # the prompts changed meanwhile: decode again after
            return
        found = self._plane_objects(image, plane)
        if found is None:
            return
        objects, prompts = found
        tiled = self._tiled.get(key)
        if tiled is None:
            from ..engine.tiling import TiledPredictor

            data, indexer = image_level0(image), plane.indexer()
            tiled = functools.partial(  # built in the worker: it reads the whole plane
                tiled_predictor,
                TiledPredictor,
                self.predictor.model,
                data,
                indexer,
                zoom=bool(self.zoom_small.value),
                rgb=bool(image.rgb),
                intensity_range=self._ranges.get(image.unique_id),
                store="auto" if self.disk_cache.value else None,
                model_name=self.model_name,
                refine=bool(self.refine_masks.value),
            )
        self._set_busy(True)
        if self._is_large(plane):
            self._set_status(
                f"{plane.label()} is {plane.shape[0]} x {plane.shape[1]} px: decoding in tiles "
                "(only the tiles under the prompts are embedded, once)..."
            )
        else:
            self._set_status(
                f"Zooming in on small objects of {plane.label()} (the crops under the prompts "
                "are embedded, once)..."
            )
        worker = create_worker(
            segment_tiled, tiled, objects, _start_thread=False, _ignore_errors=True
        )
        worker.returned.connect(
            functools.partial(
                self._on_tiled, image, plane, key, prompts, objects, self._generation
            )
        )
        self._tiled_worker = worker
        worker.start()

    @_guarded
    def _on_tiled(self, image, plane, key, prompts, objects, generation, result) -> None:
        tiled, masks, scores, error = result
        self._tiled_worker = None
        if tiled is not None and generation == self._generation:
            self._tiled[key] = tiled  # (not if the data or model changed meanwhile)
        self._set_busy(self._job is not None or self._model_loading)
        if self._tiled_again:
            self._tiled_again = False
            self._schedule("prompts")
            return
        if error is not None:
            self._failed.add(key)
            notify_error(f"Decoding '{image.name}' ({plane.label()}) in tiles failed: {error}")
            return
        if image is not self.image:
            return
        self._set_preview(image, plane, masks, scores, prompts, objects)
        how = "decoded in tiles" if self._is_large(plane) else "zoomed in on small objects"
        self._set_status(
            f"Preview of {len(masks)} object{'s' if len(masks) > 1 else ''} on {plane.label()}"
            f", {how}. {KEY_COMMIT}: commit, {KEY_CLEAR}: clear."
        )

    def _drop_preview(self) -> None:
        if self.preview is not None:
            self.preview = None
            self._show_preview(None)

    def _show_preview(self, preview: Preview | None) -> None:
        layer = self._preview_layer
        if layer is None or layer not in self.viewer.layers:
            return
        if preview is None:
            if np.asarray(layer.data).any():
                layer.data = np.zeros_like(np.asarray(layer.data))
            return
        plane = preview.plane
        shape = [1] * plane.ndim
        shape[plane.axes[0]], shape[plane.axes[1]] = plane.shape
        data = preview.label_image.reshape(shape)
        if layer.ndim != plane.ndim:
            return
        image = preview.image
        for name in ("scale", "rotate", "shear"):  # the image may have changed since creation
            if not np.allclose(getattr(layer, name), getattr(image, name)):
                setattr(layer, name, np.asarray(getattr(image, name)))
        if not np.allclose(layer.affine.affine_matrix, image.affine.affine_matrix):
            layer.affine = image.affine.affine_matrix
        translate = plane_layer_translate(image, plane)
        if not np.allclose(layer.translate, translate):
            layer.translate = translate
        layer.data = data

    # -- feedback --------------------------------------------------------------------------------

    def _set_status(self, text: str, sticky: bool = False) -> None:
        """Show ``text``; a ``sticky`` one (the outcome of an action) is not replaced by the
        idle hint, only by the next real message."""
        self.status_label.value = text
        self._status_sticky = sticky

    def _set_busy(self, busy: bool) -> None:
        self.progress_bar.visible = busy
        # min == max: Qt draws an indeterminate ("busy") bar
        self.progress_bar.max = 0 if busy else 1

    def _warn_once(self, tag: str, message: str) -> None:
        if tag in self._warned:
            return
        self._warned.add(tag)
        show_warning(message)


def _is_time_axis(image: Image, axis: int) -> bool:
    """Whether the layer names ``axis`` as time ("t", "time", "frame")."""
    labels = list(getattr(image, "axis_labels", None) or [])
    name = str(labels[axis]).strip().lower() if axis < len(labels) else ""
    return name in ("t", "time", "frame", "frames")


def _lead_index(plane: Plane) -> tuple[int, ...]:
    """The plane's position along its non-displayed axes, ascending (a StackEmbedder index)."""
    return tuple(int(plane.index[a]) for a in plane.not_displayed)


def _key_handler(action: Callable[[], Any]) -> Callable:
    def handler(viewer) -> None:
        action()

    handler.__name__ = getattr(action, "__name__", "sam_action")
    handler.__doc__ = getattr(action, "__doc__", None)
    return handler
