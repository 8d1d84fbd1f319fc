"""Clicks on one 2D slice with a SAM 2 model: :class:`Sam2Predictor`, :class:`SamPredictor`'s
``set_image`` / ``predict`` / ``segment`` for :class:`~napari_sam.modeling.sam2.Sam2`.

As Meta's ``SAM2ImagePredictor``: the slice is resized to the model's square input (not
padded), the stride-16 features get ``no_mem_embed`` (a lone image is a frame without memory),
and a box is passed as two corner points before the clicks.

Coordinates are napari's ``(row, col)`` in slice pixels; boxes ``(row0, col0, row1, col1)``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from ..modeling.sam2 import FrameFeatures, Sam2
from .postprocess import keep_prompted_pieces
from .predictor import SamPredictor
from .preprocess import to_rgb_uint8_range
from .prompts import MASK_PROMPT_LOGIT

__all__ = ["Sam2Embedding", "Sam2Predictor", "predictor_for"]


@dataclass(frozen=True)
class Sam2Embedding:
    """SAM 2's image-encoder output for one 2D slice, as the plugin's caches hold it (the
    counterpart of :class:`~napari_sam.engine.predictor.ImageEmbedding`).

    Attributes
    ----------
    features : FrameFeatures
        Batch of one: the stride-16 ``embed`` and ``pos`` ``(1, C, h, w)`` and the two
        high-resolution levels ``(1, C/8, 4h, 4w)`` and ``(1, C/4, 2h, 2w)``, float32.
    original_size : (int, int)
        ``(H, W)`` of the slice that was embedded.
    img_size : int
        Side of the model's square input.
    """

    features: FrameFeatures
    original_size: tuple[int, int]
    img_size: int

    @property
    def nbytes(self) -> int:
        """Bytes held by all feature levels (what a size-bounded LRU counts)."""
        return self.features.nbytes()


def predictor_for(model, **kwargs):
    """A :class:`Sam2Predictor` for a SAM 2 model, else a :class:`SamPredictor` (``kwargs``
    go to the latter)."""
    return Sam2Predictor(model) if isinstance(model, Sam2) else SamPredictor(model, **kwargs)


class Sam2Predictor:
    """Embed a 2D slice once with SAM 2, then decode prompts on it cheaply.

    Parameters
    ----------
    model : Sam2
    """

    def __init__(self, model: Sam2) -> None:
        if not isinstance(model, Sam2):
            raise TypeError(f"Sam2Predictor needs a SAM 2 model, got {type(model).__name__}")
        self.model = model
        self._lock = threading.Lock()
        self._features: FrameFeatures | None = None
        self._hw: tuple[int, int] | None = None

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def is_image_set(self) -> bool:
        return self._features is not None

    @property
    def original_size(self) -> tuple[int, int] | None:
        """``(H, W)`` of the current slice."""
        return self._hw

    @property
    def refine(self) -> bool:
        """Always ``False``: SAM 2 has no mask refiner (setting it is ignored)."""
        return False

    @refine.setter
    def refine(self, value: bool) -> None:
        pass

    @property
    def refines(self) -> bool:
        """Always ``False``: masks are SAM 2's upsampled ones."""
        return False

    def compute_embedding(
        self, image: npt.ArrayLike, intensity_range: tuple[float, float] | None = None
    ) -> Sam2Embedding:
        """Run the image encoder on a slice ``(H, W)`` or ``(H, W, 3)`` without changing the
        predictor's state (intensities mapped from ``intensity_range`` to [0, 255], as
        :class:`SamPredictor` does; default: the slice's own robust range)."""
        rgb = torch.from_numpy(to_rgb_uint8_range(image, intensity_range))
        with torch.inference_mode():
            x = self.model.preprocess(rgb.permute(2, 0, 1)[None].to(self.device))
            feats = self.model.forward_image(x)
        hw = (int(rgb.shape[0]), int(rgb.shape[1]))
        return Sam2Embedding(feats, hw, int(self.model.image_size))

    def set_image(
        self, image: npt.ArrayLike, intensity_range: tuple[float, float] | None = None
    ) -> None:
        """Embed a slice ``(H, W)`` or ``(H, W, 3)`` and decode against it from now on."""
        self.set_embedding(self.compute_embedding(image, intensity_range))

    def set_embedding(self, embedding: Sam2Embedding, image: npt.ArrayLike | None = None,
                      intensity_range: tuple[float, float] | None = None) -> None:
        """Use a :class:`Sam2Embedding` computed earlier (``image`` and ``intensity_range``,
        which :class:`SamPredictor` takes for its refiner, are ignored)."""
        if not isinstance(embedding, Sam2Embedding):
            raise TypeError(f"a SAM 2 predictor needs a Sam2Embedding, got "
                            f"{type(embedding).__name__} (an embedding of another model?)")
        self.set_features(embedding.features, embedding.original_size)

    def set_features(self, features: FrameFeatures, shape_hw: tuple[int, int]) -> None:
        """Use features computed elsewhere (e.g. a tracker's cache) for a slice of ``shape_hw``."""
        with self._lock:
            self._features = features
            self._hw = (int(shape_hw[0]), int(shape_hw[1]))

    def _require(self) -> tuple[FrameFeatures, tuple[int, int]]:
        with self._lock:
            if self._features is None:
                raise RuntimeError("no image: call set_image() before predict()")
            return self._features, self._hw

    def _xy(self, rc: np.ndarray, hw: tuple[int, int]) -> torch.Tensor:
        s = self.model.image_size
        h, w = hw
        xy = np.stack([rc[..., 1] * (s / w), rc[..., 0] * (s / h)], axis=-1).astype(np.float32)
        return torch.from_numpy(xy).to(self.device)

    def mask_to_logits(self, mask: npt.ArrayLike, frame=None) -> npt.NDArray[np.float32]:
        """A binary ``(H, W)`` mask of the slice -> a ``(1, 4h, 4w)`` mask prompt (+-10);
        ``frame`` is ignored (as by :meth:`SamPredictor.mask_to_logits`)."""
        _, hw = self._require()
        m = np.asarray(mask)
        if m.shape != hw:
            raise ValueError(f"mask shape {m.shape} does not match the slice shape {hw}")
        side = self.model.sam_prompt_encoder.mask_input_size
        t = torch.from_numpy((m != 0).astype(np.float32))[None, None]
        t = F.interpolate(t, size=side, mode="area")
        return ((t[0] * 2.0 - 1.0) * MASK_PROMPT_LOGIT).numpy()

    def _prompts(self, points, labels, box, hw):
        """(coords (B, N, 2), labels (B, N)) in SAM 2's point list, and the batch size."""
        boxes = None if box is None or np.size(box) == 0 else np.asarray(box, np.float32)
        pts = None if points is None or np.size(points) == 0 else np.asarray(points, np.float32)
        batched = (boxes is not None and boxes.ndim == 2) or (pts is not None and pts.ndim == 3)
        b = boxes.shape[0] if boxes is not None and boxes.ndim == 2 else (
            pts.shape[0] if pts is not None and pts.ndim == 3 else 1)
        coords = labs = None
        if pts is not None:
            if pts.shape[-1] != 2:
                raise ValueError(f"points must have shape (N, 2) or (B, N, 2), got {pts.shape}")
            pts = np.broadcast_to(pts.reshape(-1 if pts.ndim == 3 else 1, *pts.shape[-2:]),
                                  (b, *pts.shape[-2:]))
            lab = np.ones(pts.shape[:2]) if labels is None else np.asarray(labels)
            lab = np.broadcast_to(lab.reshape(-1 if lab.ndim == 2 else 1, lab.shape[-1]),
                                  pts.shape[:2])
            coords = self._xy(pts, hw)
            labs = torch.tensor(np.array(lab), dtype=torch.int32, device=self.device)
        tboxes = None
        if boxes is not None:
            corners = boxes.reshape(-1, 2, 2)  # (row, col) corners
            tboxes = self._xy(corners, hw).reshape(-1, 4)
            if tboxes.shape[0] != b:
                tboxes = tboxes.expand(b, -1)
        coords, labs = self.model.prompt_points(coords, labs, tboxes)
        return coords, labs, batched, b

    def _decode(self, points, labels, box, mask_input, multimask):
        feats, hw = self._require()
        coords, labs, batched, _b = self._prompts(points, labels, box, hw)
        masks = None
        if mask_input is not None:
            m = np.asarray(mask_input, np.float32)
            if m.shape == hw:
                m = self.mask_to_logits(m)
            masks = torch.from_numpy(m.reshape(-1, 1, *m.shape[-2:])).to(self.device)
        with torch.inference_mode():
            embed = feats.embed + self.model.no_mem_embed.view(1, -1, 1, 1)
            out = self.model.decode(embed, feats.high_res, coords, labs, masks, multimask,
                                    blank_absent=False)
        return out, hw, batched

    def _full(self, low: torch.Tensor, hw) -> torch.Tensor:
        return F.interpolate(low, size=hw, mode="bilinear", align_corners=False)

    def predict(
        self,
        points: npt.ArrayLike | None = None,
        labels: npt.ArrayLike | None = None,
        box: npt.ArrayLike | None = None,
        mask_input: npt.ArrayLike | None = None,
        multimask: bool = True,
        return_logits: bool = False,
    ) -> tuple[npt.NDArray, npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """Decode masks on the current slice; as :meth:`SamPredictor.predict`.

        Returns
        -------
        masks : numpy.ndarray, shape (K, H, W) or (B, K, H, W)
            bool (float32 logits with ``return_logits``); ``K`` 3 with ``multimask``, else 1.
        scores : numpy.ndarray, shape (K,) or (B, K)
            Predicted IoU.
        low_res_logits : numpy.ndarray, shape (K, 4h, 4w) or (B, K, 4h, 4w)
            Clamped to [-32, 32], usable as the next call's ``mask_input``.
        """
        out, hw, batched = self._decode(points, labels, box, mask_input, multimask)
        full = self._full(out.multi_logits, hw)
        masks = full.cpu().numpy() if return_logits else (full > 0).cpu().numpy()
        scores = out.ious.float().cpu().numpy()
        low = out.multi_logits.clamp(-32.0, 32.0).cpu().numpy()
        if not batched:
            return masks[0], scores[0], low[0]
        return masks, scores, low

    def segment(
        self,
        points: npt.ArrayLike | None = None,
        labels: npt.ArrayLike | None = None,
        box: npt.ArrayLike | None = None,
        mask_input: npt.ArrayLike | None = None,
    ) -> tuple[npt.NDArray[np.bool_], float, npt.NDArray[np.float32]]:
        """One mask for one object; as :meth:`SamPredictor.segment` (a lone point decodes the
        three candidates and keeps the best; pieces holding no positive point are dropped)."""
        n_points = 0 if points is None else int(np.size(points) // 2)
        ambiguous = n_points == 1 and (box is None or np.size(box) == 0) and mask_input is None
        out, hw, _ = self._decode(points, labels, box, mask_input, ambiguous)
        best = int(out.ious[0].argmax())
        low = out.multi_logits[:1, best : best + 1]
        mask = (self._full(low, hw) > 0)[0, 0].cpu().numpy()
        mask = keep_prompted_pieces(mask, points, labels, box)
        return mask, float(out.ious[0, best]), low[0].clamp(-32.0, 32.0).cpu().numpy()
