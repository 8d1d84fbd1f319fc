"""The widget's "Stack" section: propagate objects along an axis, precompute the embeddings of
every slice, segment everything on a slice or a whole stack. Each runs as the session's long
job (:meth:`~.session.SamSession.start_task`: progress, cancel) and writes its result as one
undo step."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, PushButton
from napari.layers import Labels
from napari.utils.notifications import show_info, show_warning

from ._colors import committed_colormap
from ._label_ids import max_label
from ._layers import (
    Plane,
    PromptError,
    current_plane,
    image_level0,
    image_spatial_shape,
    transform_kwargs,
)
from ._sam2 import refuse_sam2
from ._section import Section
from ._stack import anchor_masks, paint_label_stack, paint_stack, plane_at, volume_view

if TYPE_CHECKING:  # pragma: no cover
    from napari.layers import Image

    from ._widget import SamWidget

__all__ = ["AUTOMATIC_NAME", "AUTO_PROMPTS", "KEY_PROPAGATE", "StackSection", "lead_index"]

AUTOMATIC_NAME = "SAM automatic"
#: "everything from" choices -> AutomaticParams.point_source
AUTO_PROMPTS = {"instance decoder": "decoder", "bright blobs": "blobs", "regular grid": "grid"}
#: Used when "instance decoder" is chosen and the model has none.
DECODER_FALLBACK = "bright blobs"
#: Propagate the previewed objects (or the selected label) along the stack axis.
KEY_PROPAGATE = "Shift-P"


def lead_index(plane: Plane) -> tuple[int, ...]:
    """The plane's position along its non-displayed axes, ascending (a StackEmbedder index)."""
    return tuple(int(plane.index[a]) for a in plane.not_displayed)


def _is_time_axis(image: Image, axis: int) -> bool:
    """Whether the layer names ``axis`` as time ("t", "time", "frame")."""
    labels = list(getattr(image, "axis_labels", None) or [])
    name = str(labels[axis]).strip().lower() if axis < len(labels) else ""
    return name in ("t", "time", "frame", "frames")


def _propagation_params(time_axis: bool):
    """The viewer's :class:`PropagationParams`: along a time axis cells may shrink and grow
    again (no regrowth stop) and move (no half-maximum outline, which joins an object's masks
    into one 3D piece); along z the defaults."""
    from ..workflows.propagation import PropagationParams

    if time_axis:
        return PropagationParams(max_regrowth=None, outline="model")
    return PropagationParams()


class StackSection(Section):
    """Stack axis, propagation, segment everything and precompute, bound to a SamWidget.

    Attributes
    ----------
    axis_combo, auto_scope, auto_prompts : ComboBox
    propagate_button, auto_button, precompute_button : PushButton
    disk_cache : CheckBox
        Keep embeddings in a zarr store in the cache folder.
    """

    def __init__(self, host: SamWidget) -> None:
        self.host = host
        self.axis_combo = ComboBox(label="stack axis", choices=self._axis_choices)
        self.propagate_button = PushButton(text=f"Propagate ({KEY_PROPAGATE})")
        self.auto_scope = ComboBox(
            label="everything on", choices=["this slice", "all slices"], value="this slice"
        )
        self.auto_prompts = ComboBox(
            label="everything from", choices=list(AUTO_PROMPTS), value=next(iter(AUTO_PROMPTS)),
            tooltip="How segment everything finds the objects: the model's instance decoder "
                    "(foreground and distance maps, one pass per slice: fastest; the default "
                    "model and micro-sam's models have one; otherwise bright blobs), point "
                    "prompts on each bright blob (fluorescent nuclei and cells), or SAM's "
                    "regular grid of point prompts (any image, e.g. dark objects on a bright "
                    "background: slowest)",
        )
        self.auto_button = PushButton(text="Segment everything")
        self.disk_cache = CheckBox(text="keep embeddings on disk", value=True)
        self.precompute_button = PushButton(text="Precompute stack")
        row = functools.partial(Container, layout="horizontal", labels=False)
        super().__init__("Stack: propagate, segment everything", [
            self.axis_combo, self.auto_scope, self.auto_prompts,
            row(widgets=[self.propagate_button, self.auto_button]),
            row(widgets=[self.disk_cache, self.precompute_button]),
        ])
        self.propagate_button.changed.connect(lambda _=None: host.propagate())
        self.auto_button.changed.connect(lambda _=None: host.segment_everything())
        self.precompute_button.changed.connect(lambda _=None: host.precompute())

    @property
    def axis(self) -> int | None:
        value = self.axis_combo.value
        return value if isinstance(value, int) else None

    def set_enabled(self, enabled: bool) -> None:
        for button in (self.propagate_button, self.auto_button, self.precompute_button):
            button.enabled = enabled

    def _axis_choices(self, _widget=None) -> list[tuple[str, int]]:
        image = self.host.image
        if image is None or self.host.viewer.dims.ndisplay != 2:
            return []
        try:
            plane = current_plane(image, self.host.viewer.dims)
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

    def context(self, what: str, need_axis: bool = True):
        """``(image, plane, axis)`` when a stack job can start, else warn and return ``None``."""
        host = self.host
        image = host.job_image()
        if image is None:
            return None
        if host.predictor is None:
            show_warning("No SAM model is loaded: choose one and press 'Load model'.")
            return None
        try:
            plane = current_plane(image, host.viewer.dims)
        except PromptError as exc:
            show_warning(str(exc))
            return None
        axis = self.axis
        if axis is not None and axis not in plane.not_displayed:
            self.axis_combo.reset_choices()
            axis = self.axis
        if need_axis and axis is None:
            show_warning(
                f"Cannot {what} across slices: '{image.name}' is a 2D image (no stack axis)."
            )
            return None
        return image, plane, axis

    def stack_embedder(self, image: Image, plane: Plane, axis: int | None):
        """``(embed, embedder)``: ``embed(i)`` gives the plane ``i`` of ``image`` through
        ``plane`` along ``axis`` (safe in a worker thread: the embedder has its own predictor)."""
        embedder = self.host.embedder(image, plane)

        def embed(i: int):
            p = plane if axis is None else plane_at(plane, axis, i)
            return embedder.get(lead_index(p))

        return embed, embedder

    # -- precompute -----------------------------------------------------------------------------

    def precompute(self) -> bool:
        """See :meth:`SamWidget.precompute`."""
        context = self.context("precompute")
        if context is None or refuse_sam2(self.host, "Precompute stack (embeddings on disk)"):
            return False
        image, plane, axis = context
        host = self.host
        host.session.stop_prefetch()
        embedder = host.embedder(image, plane)
        indices = [lead_index(plane_at(plane, axis, j)) for j in range(plane.spatial_shape[axis])]

        def body(ctx):
            ctx.progress(0, len(indices), "checking the cache")
            return embedder.precompute(indices, progress=ctx.progress, cancelled=ctx.cancelled)

        def done(computed, cancelled):
            host.session.remember_range(image.unique_id, embedder.intensity_range)
            where = embedder.store_path
            state = "cancelled after computing" if cancelled else "computed"
            host.set_status(
                f"Precompute {state} {computed} slice embedding{'s' if computed != 1 else ''} "
                f"along axis {axis}" + (f" (stored in {where})." if where else "."),
                sticky=True,
            )

        return host.tasks.start(f"Embedding the slices along axis {axis}", body, done,
                                host.report_task_error, owner=image.unique_id)

    # -- propagation --------------------------------------------------------------------------

    def _seeds(self, image, plane, axis):
        """``(mode, seeds, values)`` of a propagation from ``plane``, or ``None`` (warned)."""
        from ..workflows.propagation import Seed

        target, preview = self.host.target_layer, self.host.preview
        index = plane.index[axis]
        if (preview is not None and preview.image is image and preview.plane == plane
                and not preview.empty):
            seeds = []
            for k, mask in enumerate(preview.masks):
                if mask.any():
                    prompt = preview.prompts[k] if k < len(preview.prompts) else {}
                    seeds.append(Seed(object_id=k + 1, index=index, points=prompt.get("points"),
                                      labels=prompt.get("labels"), box=prompt.get("box"),
                                      mask=mask))
            return "preview", seeds, {}
        if target is not None and int(target.selected_label) > 0:
            value = int(target.selected_label)
            anchors = anchor_masks(target, image, plane, axis, value)
            if not anchors:
                show_warning(
                    f"Label {value} of '{target.name}' is on no slice of this stack: prompt an "
                    "object (or select a label that exists) before propagating."
                )
                return None
            return "label", [Seed(object_id=value, index=i, mask=m)
                             for i, m in anchors.items()], {value: value}
        show_warning(
            "Nothing to propagate: prompt an object on this slice (its preview is "
            "propagated), or select an existing label in the target layer."
        )
        return None

    def propagate(self) -> bool:
        """See :meth:`SamWidget.propagate`."""
        context = self.context("propagate")
        if context is None:
            return False
        image, plane, axis = context
        found = self._seeds(image, plane, axis)
        if found is None:
            return False
        mode, seeds, values = found
        host = self.host
        model = host.predictor.model
        embed, embedder = self.stack_embedder(image, plane, axis)
        index, n = plane.index[axis], plane.spatial_shape[axis]
        data = image_level0(image)
        time_axis = _is_time_axis(image, axis)

        def slice_image(i: int) -> np.ndarray:
            return np.asarray(data[plane_at(plane, axis, i).indexer()])

        def body(ctx):
            from ..workflows.propagation import propagate

            params = _propagation_params(time_axis)
            embed(index)  # the seed slice first: it fixes the stack's intensity range
            return propagate(model, embed, n, seeds, params=params, progress=ctx.progress,
                             cancelled=ctx.cancelled, slice_image=slice_image,
                             intensity_range=embedder.intensity_range)

        seed_masks = {s.object_id: s.mask for s in seeds if s.index == index}
        done = functools.partial(self._propagated, image, plane, axis, mode, values, seed_masks)
        s = "s" if len(seeds) > 1 else ""
        what = f"{len(seeds)} object{s}" if mode == "preview" else (
            f"label {next(iter(values))} ({len(seeds)} anchor slice{s})"
        )
        host.set_status(f"Propagating {what} along axis {axis}...")
        return host.tasks.start(f"Propagating along axis {axis}", body, done,
                                host.report_task_error, owner=image.unique_id)

    def _propagated(self, image, plane, axis, mode, values, seed_masks, result, cancelled):
        host = self.host
        if image not in host.viewer.layers:
            show_warning("The image was removed during propagation: nothing was written.")
            return
        from ..workflows.mask_stack import MaskStack

        # copies that keep each mask as its bounding box (MaskStack): whole masks of every
        # object and slice may not fit in memory
        masks = {k: v.copy() if isinstance(v, MaskStack) else MaskStack(v)
                 for k, v in result.masks.items()}
        if mode == "preview":
            for k, mask in seed_masks.items():  # the slice the user saw keeps the preview
                masks.setdefault(k, MaskStack())[plane.index[axis]] = mask
        masks = {k: v for k, v in masks.items() if any(m.any() for m in v.values())}
        if not masks:
            show_warning("Propagation found nothing to write.")
            return
        target = host.target_layer
        if target is None:
            target = host.new_labels_layer(image)
        if mode == "preview":
            start = max_label(target) + 1
            values = {k: start + i for i, k in enumerate(sorted(masks))}
        objects = {values[k]: v for k, v in masks.items()}
        written = paint_stack(target, image, plane, axis, objects,
                              bool(host.overwrite_checkbox.value))
        if mode == "preview" and written:
            host.prompt_layers.remove_on(image, plane)
            if host.preview is not None and host.preview.plane == plane:
                host.drop_preview()
        if not written:
            show_warning(
                "Nothing was written: the propagated masks lie on existing objects "
                "(tick 'overwrite existing objects' to replace them)."
            )
            return
        spans = ", ".join(f"{v}: slices {min(s)}-{max(s)}" for v, s in sorted(written.items()))
        state = "cancelled; kept" if cancelled or not result.complete else "wrote"
        host.set_status(
            f"Propagation {state} {spans} along axis {axis} in '{target.name}'. "
            "Ctrl+Z on that layer undoes it.",
            sticky=True,
        )
        target.refresh()

    # -- segment everything -------------------------------------------------------------------

    def segment_everything(self, scope: str | None = None) -> bool:
        """See :meth:`SamWidget.segment_everything`."""
        scope = scope or self.auto_scope.value
        context = self.context("segment everything", need_axis=scope == "all slices")
        if context is None or refuse_sam2(self.host, "Segment everything"):
            return False
        image, plane, axis = context
        host = self.host
        model = host.predictor.model
        if axis is None:
            axis = plane.not_displayed[-1] if plane.not_displayed else None
        data = image_level0(image)
        embed, embedder = self.stack_embedder(image, plane, axis)
        from ..workflows.automatic import AutomaticParams

        source = AUTO_PROMPTS[self.auto_prompts.value]
        use_decoder = source == "decoder" and getattr(model, "instance_decoder", None) is not None
        if source == "decoder" and not use_decoder:
            source = AUTO_PROMPTS[DECODER_FALLBACK]
            show_info(f"This model has no instance decoder: segment everything puts point "
                      f"prompts on {DECODER_FALLBACK} instead.")
        params = None if use_decoder else AutomaticParams(point_source=source,
                                                         refine=bool(host.refine_masks.value))
        every = scope == "all slices"

        def body(ctx):
            from ..workflows import automatic

            common = {"params": params, "intensity_range": embedder.intensity_range,
                      "progress": ctx.progress, "cancelled": ctx.cancelled}
            if use_decoder:  # the model's instance decoder (default model, micro-sam's models),
                from ..workflows import instance_decoder as automatic  # same calls, its defaults
            if every:
                return automatic.segment_everything_nd(
                    model, volume_view(image, plane, axis), axis=0, embed=embed, **common)
            emb = embed(plane.index[axis] if axis is not None else 0)
            return automatic.segment_everything(
                model, np.asarray(data[plane.indexer()]), embedding=emb, **common)

        title = (f"Segmenting everything along axis {axis}" if every
                 else f"Segmenting everything on {plane.label()}")
        done = functools.partial(self.write_automatic, image, plane, axis, scope)
        host.set_status(f"{title}...")
        return host.tasks.start(title, body, done, host.report_task_error,
                                owner=image.unique_id)

    def write_automatic(self, image, plane, axis, scope, labels, cancelled) -> None:
        """Write segment everything's ``labels`` (a label stack along ``axis`` for "all
        slices", else one ``(H, W)`` plane) into the "SAM automatic" layer with fresh ids."""
        host = self.host
        if image not in host.viewer.layers:
            show_warning("The image was removed during the run: nothing was written.")
            return
        labels = np.asarray(labels)
        stack = labels if scope == "all slices" else labels[None]
        axis = axis if scope == "all slices" else None
        ids = [int(v) for v in np.unique(stack) if v != 0]
        if not ids:
            show_warning("Segment everything found no object.")
            return
        layer = self.automatic_layer(image)
        start = max_label(layer) + 1
        remap = np.zeros(int(stack.max()) + 1, dtype=np.int64)
        remap[ids] = np.arange(start, start + len(ids))
        # label planes as they are (axis None: the one plane itself), no mask per object
        paint_label_stack(layer, image, plane, axis,
                          {i: remap[stack[i]] for i in range(stack.shape[0])})
        state = "cancelled; kept" if cancelled else "found"
        host.set_status(
            f"Segment everything {state} {len(ids)} object{'s' if len(ids) > 1 else ''} in "
            f"'{layer.name}' ({'all slices' if scope == 'all slices' else plane.label()}). "
            "Ctrl+Z on that layer undoes it; use it as target or mask prompt.",
            sticky=True,
        )
        layer.refresh()

    def automatic_layer(self, image: Image) -> Labels:
        """The "SAM automatic" Labels layer on ``image``'s grid (created above it if needed)."""
        host = self.host
        for layer in host.labels_layers():
            if layer.name == AUTOMATIC_NAME and layer.ndim == len(image_spatial_shape(image)):
                return layer
        layer = Labels(np.zeros(image_spatial_shape(image), dtype=np.int32), name=AUTOMATIC_NAME,
                       colormap=committed_colormap(), **transform_kwargs(image))
        host.viewer.layers.insert(host.viewer.layers.index(image) + 1, layer)
        # the text search looks among segment everything's objects from now on
        host.text.candidates_combo.reset_choices()
        host.text.candidates_combo.value = layer
        return layer
