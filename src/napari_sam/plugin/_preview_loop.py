"""Keeping the preview up to date with the plane on screen and its prompts.

:class:`PreviewLoop` runs whenever the viewer's slice, the prompts, the model or an embedding
change (debounced by a timer on the GUI thread): it finds the plane on screen, has the
:class:`~.session.SamSession` embed it (and prefetch its neighbours) or decode its prompts in the
background -- whole, or in tiles for large planes and "zoom in on small objects" -- and shows the
result in the preview layer. The GUI thread never waits for the encoder or the decoder.
"""

from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtCore import QTimer

from ..engine.tiling import is_large
from ._layers import Plane, PromptError, assemble_objects, current_plane, image_level0
from ._notify import guarded, notify_error
from ._prompt_section import KEY_CLEAR, KEY_COMMIT
from ._sam2 import sam2_loaded
from ._stack import plane_at
from ._stack_section import lead_index
from ._workers import tiled_predictor
from .session import EmbeddingJob, Preview

if TYPE_CHECKING:  # pragma: no cover
    from napari.layers import Image

    from ._widget import SamWidget
    from .session import DecodeResult

__all__ = ["MAX_OBJECTS", "PreviewLoop"]

#: More objects than this on one slice are not decoded (each costs a decoder pass).
MAX_OBJECTS = 100


class PreviewLoop:
    """The refresh loop of a :class:`~._widget.SamWidget` (see the module docstring).

    Attributes
    ----------
    timer : QTimer
        Single-shot; pending while a refresh is scheduled.
    """

    def __init__(self, host: SamWidget) -> None:
        self.host = host
        self._pending: set[str] = set()
        self._plane_key: tuple | None = None
        self._polarity_checked: set = set()  # (image, model token) looked at for brightfield
        self.timer = QTimer(host.native)
        self.timer.setSingleShot(True)
        self.timer.timeout.connect(self._on_timer)

    @property
    def pending(self) -> bool:
        """Whether a refresh is scheduled."""
        return not self.host.closed and self.timer.isActive()

    def refresh_now(self) -> None:
        """Re-read the prompts of the plane on screen and decode them now."""
        self.timer.stop()
        self._pending.add("prompts")
        self._on_timer()

    def schedule(self, reason: str, delay_ms: int = 0) -> None:
        if self.host.closed:
            return
        self._pending.add(reason)
        if not self.timer.isActive() or delay_ms == 0:
            self.timer.start(delay_ms)

    @guarded
    def _on_timer(self) -> None:
        reasons, self._pending = self._pending, set()
        self.update(user_action="prompts" in reasons)

    def _current_plane(self, image: Image, user_action: bool) -> Plane | None:
        """The plane on screen, or ``None`` when SAM cannot take it (status and warnings)."""
        try:
            plane = current_plane(image, self.host.viewer.dims)
        except PromptError as exc:
            self.host.drop_preview()
            self.host.set_status(str(exc))
            # a plane SAM cannot take is worth saying at once; the rest only when prompting
            if exc.kind == "size":
                self.host.warn_once(f"size:{image.unique_id}", str(exc))
            elif user_action:
                self.host.warn_once(exc.kind, str(exc))
            return None
        key_plane = (image.unique_id, plane.key)
        if key_plane != self._plane_key:
            self._plane_key = key_plane
            self.host.forget_warnings(keep=("no-model", "3d"))
            self.host.drop_preview()
        return plane

    def update(self, user_action: bool) -> None:
        """Bring the preview up to date with the current slice and prompts."""
        session, image = self.host.session, self.host.image
        if image is None:
            self.host.drop_preview()
            if user_action and self.host.has_prompts():
                self.host.warn_once("no-image", "No image layer: open an image to segment.")
            self.host.set_status("Open an image.")
            return
        plane = self._current_plane(image, user_action)
        if plane is None:
            return
        if session.predictor is None:
            if session.model_loading:
                self.host.set_status("Loading the model: prompts are decoded as soon as it is "
                                     "ready.")
            else:
                self.host.set_status("Load a model to start.")
                if user_action:
                    self.host.warn_once("no-model", "No SAM model is loaded: choose one and "
                                                    "press 'Load model'.")
            return
        key = (image.unique_id, plane.key, session.model_token)
        if key in session.failed:
            self.host.set_status("The embedding of this slice failed (see the notification).")
            return
        if sam2_loaded(self.host):  # no tiles nor zoom: the slice is embedded whole
            if is_large(plane.shape, session.predictor.model.image_size):
                self.host.warn_once("sam2:large", f"{plane.label()} is {plane.shape[0]} x "
                                    f"{plane.shape[1]} px: SAM 2 embeds it whole, resized to its "
                                    "input (tiles need a SAM model); small objects may be lost.")
        elif self._is_large(plane) or self.host.zoom_small.value:
            self._decode_tiled(image, plane, (*key, bool(self.host.zoom_small.value),
                                              bool(self.host.refine_masks.value)))
            return
        if session.cache.get(key) is None:
            self._warn_if_brightfield(image, plane)
            self._request_embedding(image, plane, key)
            return
        if session.embedding_key != key:
            # the plane's pixels too: the default model's refiner redraws masks from them
            session.use_embedding(key, np.asarray(image_level0(image)[plane.indexer()]))
        self._decode(image, plane)

    def _warn_if_brightfield(self, image: Image, plane: Plane) -> None:
        """The default model has only seen bright objects on a dark background: say so, once
        per image, when its first plane looks like brightfield or H&E."""
        seen = (image.unique_id, self.host.session.model_token)
        if self.host.model_name != "default" or seen in self._polarity_checked:
            return
        self._polarity_checked.add(seen)
        from ..engine.preprocess import bright_background

        if bright_background(np.asarray(image_level0(image)[plane.indexer()])):
            self.host.warn_once(
                f"brightfield:{image.unique_id}",
                f"'{image.name}' looks like dark objects on a bright background (brightfield, "
                "H&E): the default model has only seen bright objects on a dark background and "
                "fails on such images. Invert the image first (for 8-bit RGB: "
                "viewer.add_image(255 - image)), or load SAM's vit_b or a micro-sam model.")

    def _request_embedding(self, image: Image, plane: Plane, key: tuple) -> None:
        """Start the embedding of the plane on screen unless one is running (then it is asked
        for next)."""
        running = self.host.session.job
        if running is not None:
            if running.key != key:
                self.host.set_status(f"Waiting for the embedding of {running.plane_label}, "
                                     f"then {plane.label()}...")
            return
        job = EmbeddingJob(key, image.unique_id, image.name, plane.label(),
                           self.host.session.model_token, index=lead_index(plane))
        self.host.set_busy(True)
        self.host.set_status(f"Computing the embedding of {plane.label()} of '{image.name}'...")
        self.host.session.request_embedding(job, self.host.embedder(image, plane),
                                            self._on_embedding_ready)

    @guarded
    def _on_embedding_ready(self, job: EmbeddingJob, error: BaseException | None) -> None:
        self.host.set_busy(self.host.session.model_loading)
        if error is not None:
            notify_error(f"Computing the SAM embedding of '{job.image_name}' ({job.plane_label}) "
                         f"failed: {error}")
        self.schedule("embedding")
        self.start_prefetch()

    def start_prefetch(self) -> None:
        """Embed the neighbouring slices of the current one in the background, while idle."""
        session, image = self.host.session, self.host.image
        if self.host.closed or session.predictor is None or image is None:
            return
        if session.task is not None:  # a long job uses the model: no prefetch meanwhile
            return
        try:
            plane = current_plane(image, self.host.viewer.dims)
        except PromptError:
            return
        axis = self.host.stack_axis
        if axis is None or axis not in plane.not_displayed:
            return
        i, n = plane.index[axis], plane.spatial_shape[axis]
        order = [i + d for k in range(1, session.prefetch_slices + 1) for d in (k, -k)]
        indices = [lead_index(plane_at(plane, axis, j)) for j in order if 0 <= j < n]
        if indices and not session.is_prefetching and session.job is None:
            session.start_prefetch(self.host.embedder(image, plane), indices)

    # -- decoding and preview --------------------------------------------------------------------

    def _plane_objects(self, image: Image, plane: Plane):
        """The objects prompted on ``plane`` and the prompts, or ``None`` (status updated)."""
        source = self.host.mask_source
        consumed = self.host.consumed_for(source, image, plane) if source is not None else {}
        prompts = self.host.prompt_layers.collect(image, plane, source, consumed)
        for problem in prompts.problems:
            self.host.warn_once(problem, problem)
        objects = assemble_objects(prompts)
        if len(objects) > MAX_OBJECTS:
            self.host.warn_once("too-many", f"{len(objects)} objects on this slice: only the "
                                f"first {MAX_OBJECTS} are previewed. Commit them, then continue.")
            objects = objects[:MAX_OBJECTS]
        if not objects:
            self.host.drop_preview()
            hint = ("Add a positive point: negative points alone do not make an object."
                    if len(prompts.points) else f"Ready on {plane.label()}: click a point or draw "
                    "a box.")
            if not self.host.status_sticky:  # keep "committed ..." / "propagated ..." readable
                self.host.set_status(hint)
            return None
        return objects, prompts

    def _decode(self, image: Image, plane: Plane) -> None:
        """Decode the slice's prompts in a worker: the GUI thread never waits for the decoder.
        Prompts changed meanwhile are decoded again when it returns."""
        if self.host.session.defer_decode(tiled=False):
            return
        found = self._plane_objects(image, plane)
        if found is not None:
            objects, prompts = found
            self.host.session.decode(objects, functools.partial(
                self._on_decoded, image, plane, prompts, objects, False))

    @guarded
    def _on_decoded(self, image, plane, prompts, objects, tiled: bool,
                    result: DecodeResult) -> None:
        self.host.set_busy(self.host.session.job is not None or self.host.session.model_loading)
        if result.again:  # the prompts changed while decoding: the newest ones count
            self.update(user_action=False)
            return
        if result.error is not None:
            what = f"decoding '{image.name}' ({plane.label()}) in tiles" if tiled else "decoding"
            notify_error(f"Segment Anything: {what} failed: {result.error}")
            return
        if result.stale or image is not self.host.image:
            return  # another slice, model or image by now
        self._set_preview(image, plane, result.masks, result.scores, prompts, objects)
        if tiled:
            n, how = len(result.masks), ("decoded in tiles" if self._is_large(plane)
                                         else "zoomed in on small objects")
            self.host.set_status(f"Preview of {n} object{'s' if n > 1 else ''} on "
                                 f"{plane.label()}, {how}. {KEY_COMMIT}: commit, {KEY_CLEAR}: "
                                 "clear.")

    def wait_decoded(self, timeout: float = 10.0) -> None:
        """Let a running decode deliver its preview (what a commit is about to write)."""
        from qtpy.QtWidgets import QApplication

        end = time.monotonic() + timeout
        while (self.host.session.decoding or self.timer.isActive()) and time.monotonic() < end:
            if self.timer.isActive():
                self.timer.stop()
                self._on_timer()
            QApplication.processEvents()
            time.sleep(0.005)

    def _set_preview(self, image, plane, masks, scores, prompts, objects) -> None:
        preview = Preview(image, plane, masks, scores, dict(prompts.mask_digests),
                          prompts=list(objects))
        self.host.session.preview = preview
        self.host.prompt_layers.show(preview)
        if preview.empty:
            self.host.set_status(f"SAM found no object for these prompts on {plane.label()}: "
                                 "add or move points, or draw a box.")
            return
        self.host.set_status(
            f"Preview of {len(masks)} object{'s' if len(masks) > 1 else ''} on {plane.label()} "
            f"(score {', '.join(f'{s:.2f}' for s in scores[:5])}). "
            f"{KEY_COMMIT}: commit, {KEY_CLEAR}: clear."
        )

    # -- large planes: decoded in tiles ------------------------------------------------------

    def _is_large(self, plane: Plane) -> bool:
        """Planes this much larger than the model input are embedded as overlapping tiles
        (resizing them whole would shrink small objects away)."""
        return is_large(plane.shape, self.host.predictor.model.img_size)

    def _decode_tiled(self, image: Image, plane: Plane, key: tuple) -> None:
        """Decode the plane's prompts with a :class:`~napari_sam.engine.tiling.TiledPredictor` in a
        worker: only the tiles under the prompts are embedded, objects across tile borders come
        out whole."""
        if self.host.session.defer_decode(tiled=True):
            return
        found = self._plane_objects(image, plane)
        if found is None:
            return
        objects, prompts = found
        from ..engine.tiling import TiledPredictor

        make = functools.partial(  # built in the worker: it reads the whole plane
            tiled_predictor, TiledPredictor, self.host.predictor.model, image_level0(image),
            plane.indexer(), zoom=bool(self.host.zoom_small.value), rgb=bool(image.rgb),
            intensity_range=self.host.session.intensity_range(image.unique_id),
            store="auto" if self.host.disk_cache.value else None, model_name=self.host.model_name,
            refine=bool(self.host.refine_masks.value),
        )
        self.host.set_busy(True)
        if self._is_large(plane):
            self.host.set_status(f"{plane.label()} is {plane.shape[0]} x {plane.shape[1]} px: "
                                 "decoding in tiles (only the tiles under the prompts are "
                                 "embedded, once)...")
        else:
            self.host.set_status(f"Zooming in on small objects of {plane.label()} (the crops "
                                 "under the prompts are embedded, once)...")
        self.host.session.decode_tiled(key, make, objects, functools.partial(
            self._on_decoded, image, plane, prompts, objects, True))
