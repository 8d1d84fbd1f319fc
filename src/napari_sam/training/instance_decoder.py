"""Training an instance-segmentation decoder
(:class:`~napari_sam.modeling.instance_decoder.InstanceDecoder`) for a frozen model.

The decoder predicts, from the image embedding, the foreground and each pixel's normalised
distances to its object's centre and boundary; :mod:`napari_sam.workflows.instance_decoder`
turns them into instances by a seeded watershed (micro-sam's ``InstanceSegmentationWithDecoder``).
The targets follow torch_em's ``PerObjectDistanceTransform`` as micro-sam trains with it
(:func:`decoder_targets`), the loss is its ``DiceBasedDistanceLoss`` (:func:`decoder_loss`).

The image encoder stays frozen, so each training view is embedded once
(:func:`decoder_examples`) and the decoder alone is trained on the cached embeddings
(:func:`train_instance_decoder`): cheap on a CPU. A view is an image as the viewer embeds it:
the whole image resized to the model input, and its 2 x 2 overlapping crops (what segment
everything zooms into for small objects), plus optional 2 x 2 mosaics of images (objects seen
at half the scale). Flips and rotations are not used: they are not symmetries of an embedding.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from scipy import ndimage

from ..engine.predictor import SamPredictor
from ..engine.preprocess import estimate_intensity_range
from ..modeling import Sam
from ..modeling.instance_decoder import InstanceDecoder
from ..workflows.instance_decoder import zoom_boxes
from .promptable import save_atomic
from .refiner import resume_state

__all__ = [
    "DecoderExamples",
    "attach_instance_decoder",
    "decoder_examples",
    "decoder_loss",
    "decoder_targets",
    "train_instance_decoder",
    "view_boxes",
]

_EPS = 1e-7


def decoder_targets(labels: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """The decoder's targets for an instance label image, as torch_em's
    ``PerObjectDistanceTransform`` (distances, boundary distances, foreground) computes them.

    Each connected piece of each label is an object. Per object: the centre is its centroid
    (rounded; the pixel farthest from its boundary when the centroid lies outside it); the centre
    distance is the Euclidean distance to the centre, divided by its maximum over the object
    (0 at the centre, 1 at the farthest pixel); the boundary distance is ``m - d`` divided by
    ``m``, with ``d`` the distance to the nearest inner-boundary pixel
    (``find_boundaries(mode="inner")``, which also separates touching objects) and ``m`` its
    maximum over the object (0 at the deepest pixel, 1 on the boundary). Outside objects both
    distances are 1 and the foreground 0.

    Parameters
    ----------
    labels : array-like of int, shape (H, W)
        0 background, one id per object.

    Returns
    -------
    numpy.ndarray, float32, shape (3, H, W)
        Foreground, centre distances, boundary distances.
    """
    from skimage.measure import label
    from skimage.segmentation import find_boundaries

    lab = np.asarray(labels)
    if lab.ndim != 2 or lab.dtype.kind not in "iub":
        raise ValueError(f"labels must be an integer (H, W) image, got {lab.dtype} {lab.shape}")
    lab = label(lab.astype(np.int64), background=0)
    out = np.ones((3, *lab.shape), dtype=np.float32)
    out[0] = lab > 0
    boundaries = find_boundaries(lab, mode="inner")
    for k, bb in enumerate(ndimage.find_objects(lab), start=1):
        if bb is None:
            continue
        mask = lab[bb] == k
        rows, cols = np.nonzero(mask)
        center = (round(float(rows.mean())), round(float(cols.mean())))
        bd = ndimage.distance_transform_edt(~boundaries[bb]).astype(np.float32)
        bd[~mask] = 0
        deepest = np.unravel_index(int(np.argmax(bd)), bd.shape)
        if not mask[center]:
            center = deepest
        rr, cc = np.indices(mask.shape, dtype=np.float32)
        cd = np.hypot(rr - center[0], cc - center[1])
        cd[~mask] = 0
        bdist = bd[deepest] - bd
        bdist[~mask] = 0
        region = out[1:, bb[0], bb[1]]
        region[0][mask] = (cd / (cd.max() + _EPS))[mask]
        region[1][mask] = (bdist / (np.abs(bdist).max() + _EPS))[mask]
    return out


def _dice(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """1 - dice score over the whole batch (torch_em's ``DiceLoss`` of one channel)."""
    num = (p * t).sum()
    den = (p * p).sum() + (t * t).sum()
    return 1.0 - 2.0 * num / den.clamp(min=_EPS)


def decoder_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """micro-sam's loss (torch_em's ``DiceBasedDistanceLoss(mask_distances_in_bg=True)``).

    Dice loss of the foreground, plus dice losses of the centre and boundary distances with
    both prediction and target multiplied by the true foreground.

    Parameters
    ----------
    pred, target : torch.Tensor, shape (B, 3, H, W)
        The decoder's sigmoid outputs and :func:`decoder_targets`.

    Returns
    -------
    torch.Tensor, scalar
        In [0, 3].
    """
    if pred.shape != target.shape or pred.ndim != 4 or pred.shape[1] != 3:
        raise ValueError(f"expected two (B, 3, H, W) tensors, got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")
    fg = target[:, 0:1]
    return (_dice(pred[:, 0:1], fg) + _dice(pred[:, 1:2] * fg, target[:, 1:2] * fg)
            + _dice(pred[:, 2:3] * fg, target[:, 2:3] * fg))


def view_boxes(hw: tuple[int, int], overlap: float = 0.25) -> list[tuple[int, int, int, int]]:
    """``(r0, c0, r1, c1)`` of the whole image and its 2 x 2 overlapping crops
    (:func:`napari_sam.workflows.instance_decoder.zoom_boxes`: what decoder mode zooms into)."""
    return [(0, 0, *hw), *zoom_boxes(hw, overlap)]


@dataclass
class DecoderExamples:
    """Cached training views: ``N`` embeddings and their targets in the decoder's output frame.

    Attributes
    ----------
    embeddings : torch.Tensor, float16, shape (N, C, h, w)
        The frozen image encoder's output for each view.
    targets : torch.Tensor, uint8, shape (N, 3, s h, s w)
        :func:`decoder_targets` of each view's labels (resized, nearest, to the part of the
        model input the view fills, zero-padded like the input), times 255; ``s`` is the
        decoder's upscale.
    """

    embeddings: torch.Tensor
    targets: torch.Tensor

    def __len__(self) -> int:
        return len(self.embeddings)


def _mosaics(images: Sequence[np.ndarray], labels: Sequence[np.ndarray], side: int = 512):
    """2 x 2 mosaics of the top-left ``side`` squares of consecutive images (grayscale)."""
    out = []
    for k in range(0, len(images) - 3, 4):
        group = list(range(k, k + 4))
        s = min([side] + [min(images[i].shape[:2]) for i in group])
        if any(images[i].ndim != 2 for i in group):
            continue
        # each tile scaled to [0, 1] by its own range, so that one bright image does not
        # darken the others
        tiles = []
        for i in group:
            lo, hi = estimate_intensity_range(images[i])
            tiles.append(np.clip((images[i][:s, :s].astype(np.float32) - lo) / max(hi - lo, 1e-6),
                                 0, 1))
        labs = [labels[i][:s, :s].astype(np.int64) for i in group]
        offset = 0
        for j, lab in enumerate(labs):
            labs[j] = np.where(lab > 0, lab + offset, 0)
            offset = int(labs[j].max())
        img = np.block([[tiles[0], tiles[1]], [tiles[2], tiles[3]]])
        lab = np.block([[labs[0], labs[1]], [labs[2], labs[3]]])
        out.append((img, lab))
    return out


def decoder_examples(
    model: Sam,
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    upscale: int = 8,
    crops: bool = True,
    mosaics: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> DecoderExamples:
    """Embed each training view once and compute its targets.

    Parameters
    ----------
    model : Sam
        The frozen model (its image encoder).
    images : sequence of numpy.ndarray, each (H, W) or (H, W, 3)
    labels : sequence of numpy.ndarray, each (H, W) int
    upscale : int
        The decoder's output pixels per embedding pixel (:attr:`InstanceDecoder.upscale`).
    crops : bool
        Also the 2 x 2 overlapping crops of each image (:func:`view_boxes`), normalised by the
        whole image's intensity range as segment everything does.
    mosaics : bool
        Also 2 x 2 mosaics of consecutive images (objects at half the whole image's scale).
    progress : callable, optional
        ``progress(done, total)`` after each view.

    Returns
    -------
    DecoderExamples
    """
    if len(images) != len(labels) or not images:
        raise ValueError(f"need as many label images as images (>= 1), got {len(images)} and "
                         f"{len(labels)}")
    views = []
    for img, lab in zip(images, labels, strict=True):
        if img.shape[:2] != lab.shape:
            raise ValueError(f"image {img.shape} and labels {lab.shape} differ in shape")
        rgb8 = img.ndim == 3 and img.dtype == np.uint8
        rng = None if rgb8 else estimate_intensity_range(img)
        boxes = view_boxes(img.shape[:2]) if crops else view_boxes(img.shape[:2])[:1]
        views += [(img[r0:r1, c0:c1], lab[r0:r1, c0:c1], rng) for r0, c0, r1, c1 in boxes]
    if mosaics:
        views += [(img, lab, (0.0, 1.0)) for img, lab in _mosaics(images, labels)]
    predictor = SamPredictor(model)
    embs, targets = [], []
    for done, (img, lab, rng) in enumerate(views, start=1):
        emb = predictor.compute_embedding(img, rng)
        embs.append(emb.features[0].to(torch.float16))
        out = emb.features.shape[-1] * upscale
        geometry = emb.geometry  # as the slice went into the model (its upscale cap too)
        h, w = (round(s * out / model.img_size) for s in geometry.input_size)
        rows = np.minimum((np.arange(h) + 0.5) * lab.shape[0] / h, lab.shape[0] - 1).astype(int)
        cols = np.minimum((np.arange(w) + 0.5) * lab.shape[1] / w, lab.shape[1] - 1).astype(int)
        t = np.zeros((3, out, out), dtype=np.float32)
        t[1:] = 1.0
        t[:, :h, :w] = decoder_targets(lab[rows][:, cols])
        targets.append(torch.from_numpy(np.round(t * 255).astype(np.uint8)))
        if progress is not None:
            progress(done, len(views))
    return DecoderExamples(torch.stack(embs), torch.stack(targets))


def attach_instance_decoder(model: Sam, initial_features: int = 8,
                            upscale: int = 8) -> InstanceDecoder:
    """Give ``model`` a fresh instance decoder for its embedding width; returns it."""
    decoder = InstanceDecoder(model.prompt_encoder.embed_dim, 3, initial_features,
                              upscale=upscale)
    model.instance_decoder = decoder.to(next(model.parameters()).device)
    return model.instance_decoder


def train_instance_decoder(
    decoder: InstanceDecoder,
    data: DecoderExamples,
    steps: int = 3000,
    lr: float = 1e-3,
    batch_size: int = 4,
    crop: int | None = 32,
    seed: int = 0,
    log_every: int = 100,
    state_path: str | os.PathLike | None = None,
    progress: Callable[[int, int, dict], None] | None = None,
) -> list[dict]:
    """Train ``decoder`` in place on cached embeddings (the image encoder is not run).

    Parameters
    ----------
    decoder : InstanceDecoder
    data : DecoderExamples
        From :func:`decoder_examples` with the decoder's upscale.
    steps : int
        Adam steps, lr on a cosine schedule.
    lr, batch_size, seed
    crop : int or None
        Each step trains on a random ``crop x crop`` window of each embedding (and the matching
        window of its targets): cheaper steps, more of them. None: whole embeddings.
    log_every : int
        One log entry (and a state save) per this many steps.
    state_path : path, optional
        Resumable state (decoder, optimizer, step, log); an existing one is resumed.
    progress : callable, optional
        ``progress(step, steps, entry)`` after each log entry.

    Returns
    -------
    list of dict
        ``step`` and ``loss`` (mean over the entry's steps).
    """
    if steps < 1 or batch_size < 1 or log_every < 1 or lr <= 0:
        raise ValueError("steps, batch_size and log_every must be >= 1 and lr > 0")
    if len(data) < 1:
        raise ValueError("no training examples")
    n, _, eh, ew = data.embeddings.shape
    s = decoder.upscale
    if data.targets.shape[-2:] != (eh * s, ew * s):
        raise ValueError(f"targets {tuple(data.targets.shape)} are not in the decoder's output "
                         f"frame ({eh * s} x {ew * s}) of embeddings {tuple(data.embeddings.shape)}")
    c = min(crop or max(eh, ew), eh, ew)
    device = next(decoder.parameters()).device
    optimizer = torch.optim.Adam(decoder.parameters(), lr=lr)
    start, log = resume_state(state_path, "decoder", decoder, optimizer, "step")
    decoder.train()
    losses = []
    for step in range(start, steps):
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        idx = torch.randint(n, (batch_size,), generator=g)
        r = torch.randint(eh - c + 1, (batch_size,), generator=g)
        q = torch.randint(ew - c + 1, (batch_size,), generator=g)
        x = torch.stack([data.embeddings[i, :, a:a + c, b:b + c]
                         for i, a, b in zip(idx.tolist(), r.tolist(), q.tolist())])
        t = torch.stack([data.targets[i, :, a * s:(a + c) * s, b * s:(b + c) * s]
                         for i, a, b in zip(idx.tolist(), r.tolist(), q.tolist())])
        for group in optimizer.param_groups:
            group["lr"] = float(lr * 0.5 * (1 + np.cos(np.pi * step / steps)))
        loss = decoder_loss(decoder(x.to(device, torch.float32)),
                            t.to(device, torch.float32) / 255.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if (step + 1) % log_every == 0 or step + 1 == steps:
            entry = {"step": step + 1, "loss": float(np.mean(losses))}
            log.append(entry)
            losses = []
            if state_path is not None:
                save_atomic({"decoder": decoder.state_dict(), "optimizer": optimizer.state_dict(),
                             "step": step + 1, "log": log}, state_path)
            if progress is not None:
                progress(step + 1, steps, entry)
    decoder.eval()
    return log
