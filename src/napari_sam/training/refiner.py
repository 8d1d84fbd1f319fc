"""Training the mask refiner (:class:`napari_sam.modeling.MaskRefiner`) of a frozen model.

Two stages, both cheap on a CPU because the image encoder and decoder only run forward:

1. :func:`simulate_refiner_examples`: the frozen model segments objects of training images
   from simulated prompts, the way users and the evaluation protocol prompt it (a point at the
   object's deepest pixel, a point anywhere in it, a noisy box, or a point and one corrective
   click with the mask fed back), through :class:`napari_sam.engine.zoom.ZoomPredictor` as the
   ``evaluate`` command does. Each mask gives one example: the refiner's input crop
   (:func:`napari_sam.engine.refine.crop_features`) and the object's true mask resampled to the crop
   (area fractions).
2. :func:`train_refiner`: epochs over these examples (random flips and transposes), loss =
   binary cross-entropy + dice of the refined logits against the true mask, AdamW with a cosine
   schedule; a tenth of the examples is held out and its IoU reported per epoch.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.files import atomic_path
from ..engine.refine import _resample, crop_features, mask_crop_box, slice_gray
from ..evaluation.interactive import farthest_point, next_click
from ..modeling import MaskRefiner, Sam
from .losses import dice_loss
from .promptable import save_atomic

__all__ = ["RefinerExamples", "attach_refiner", "simulate_refiner_examples", "train_refiner"]

#: Prompt kinds drawn with equal probability per object.
PROMPT_KINDS = ("deepest point", "random point", "box", "two clicks")


@dataclass
class RefinerExamples:
    """Examples for the refiner, ``N`` masks with crops of side ``S``.

    Attributes
    ----------
    crops : numpy.ndarray, shape (N, 3, S, S), float16
        :func:`napari_sam.engine.refine.crop_features` of each mask.
    log_scales : numpy.ndarray, shape (N,), float32
    targets : numpy.ndarray, shape (N, S, S), float16
        The object's true mask resampled to the crop (fraction of each crop pixel inside).
    base_iou : numpy.ndarray, shape (N,), float32
        IoU of the model's (unrefined) mask with the object, at the image's resolution.
    """

    crops: np.ndarray
    log_scales: np.ndarray
    targets: np.ndarray
    base_iou: np.ndarray

    def __len__(self) -> int:
        return len(self.crops)

    def save(self, path: str | os.PathLike) -> None:
        with atomic_path(path, suffix=".npz") as tmp:
            np.savez(tmp, crops=self.crops, log_scales=self.log_scales, targets=self.targets,
                     base_iou=self.base_iou)

    @classmethod
    def load(cls, path: str | os.PathLike) -> RefinerExamples:
        with np.load(path, allow_pickle=False) as d:
            return cls(d["crops"], d["log_scales"], d["targets"], d["base_iou"])


def attach_refiner(model: Sam, refiner: MaskRefiner | None = None) -> MaskRefiner:
    """Give ``model`` a refiner (a fresh one, which changes nothing, unless given); returns it."""
    refiner = MaskRefiner() if refiner is None else refiner
    model.mask_refiner = refiner.to(model.device)
    return model.mask_refiner


def simulate_refiner_examples(
    model: Sam,
    examples: Iterator[tuple[np.ndarray, np.ndarray]],
    n_images: int,
    seed: int = 0,
    objects_per_image: int = 10,
    crop_size: int = 64,
    progress: Callable[[int, int], None] | None = None,
) -> RefinerExamples:
    """Masks of the frozen ``model`` from simulated prompts, as refiner examples.

    Parameters
    ----------
    model : Sam
        Its own refiner, if any, is not used (the examples are of SAM's upsampled masks).
    examples : iterator of (image (H, W[, 3]), labels (H, W))
        For example :func:`napari_sam.training.synthetic_examples`.
    n_images : int
        Images drawn from ``examples``.
    seed : int
        Seeds the choice of objects and prompts.
    objects_per_image : int
        At most this many objects (of at least 6 px) prompted per image.
    crop_size : int
        The refiner's ``crop_size``.
    progress : callable, optional
        ``progress(done, n_images)`` after each image.
    """
    from ..engine.preprocess import estimate_intensity_range
    from ..engine.zoom import ZoomPredictor

    rng = np.random.default_rng(seed)
    predictor = ZoomPredictor(model, refine=False)
    crops, scales, targets, base = [], [], [], []
    for done in range(n_images):
        image, labels = next(examples)
        # scaled as the predictors scale it: uint8 RGB as it is, anything else by its range
        rgb8 = image.ndim == 3 and image.dtype == np.uint8
        intensity_range = None if rgb8 else estimate_intensity_range(image)
        gray = torch.from_numpy(slice_gray(image, intensity_range))
        predictor.set_image(image, intensity_range)
        ids = np.unique(labels)
        ids = ids[ids > 0]
        for oid in rng.permutation(ids)[:objects_per_image]:
            gt = labels == oid
            if np.count_nonzero(gt) < 6:
                continue
            logits = _simulated_logits(predictor, gt, rng)
            box = mask_crop_box(logits)
            if box is None:
                continue
            r0, c0, r1, c1 = box
            crop, log_scale = crop_features(gray[r0:r1, c0:c1],
                                            torch.from_numpy(logits[r0:r1, c0:c1]), crop_size)
            target = _resample(torch.from_numpy(gt[r0:r1, c0:c1].astype(np.float32))[None],
                               crop_size)
            pred = logits > 0
            inter = np.count_nonzero(pred & gt)
            crops.append(crop.numpy().astype(np.float16))
            scales.append(log_scale)
            targets.append(target[0].numpy().astype(np.float16))
            base.append(inter / max(np.count_nonzero(pred | gt), 1))
        if progress is not None:
            progress(done + 1, n_images)
    s = crop_size
    return RefinerExamples(
        np.asarray(crops, dtype=np.float16).reshape(-1, 3, s, s),
        np.asarray(scales, dtype=np.float32),
        np.asarray(targets, dtype=np.float16).reshape(-1, s, s),
        np.asarray(base, dtype=np.float32),
    )


def _simulated_logits(predictor, gt, rng) -> np.ndarray:
    """Logits ``(H, W)`` of one object from a prompt of a random :data:`PROMPT_KINDS` kind."""
    kind = PROMPT_KINDS[int(rng.integers(len(PROMPT_KINDS)))]
    rows, cols = np.nonzero(gt)
    if kind == "box":
        r0, r1, c0, c1 = rows.min(), rows.max(), cols.min(), cols.max()
        side = np.array([r1 - r0, c1 - c0, r1 - r0, c1 - c0], dtype=np.float64)
        noise = np.clip(rng.normal(0.0, 1.0, 4) * 0.1 * side, -20, 20)
        box = np.array([r0, c0, r1, c1], dtype=np.float64) + noise
        logits, _, _ = predictor.predict(box=box, multimask=False, return_logits=True)
        return logits[0]
    if kind == "random point":
        j = int(rng.integers(len(rows)))
        point = (rows[j], cols[j])
    else:
        point = farthest_point(gt)
    logits, scores, low = predictor.predict(np.array([point], dtype=np.float64), np.array([1]),
                                            multimask=True, return_logits=True)
    best = int(np.argmax(scores))
    if kind == "two clicks":
        click = next_click(logits[best] > 0, gt)
        if click is not None:
            points = np.array([point, click[0]], dtype=np.float64)
            refined, _, _ = predictor.predict(points, np.array([1, click[1]]), None,
                                              low[best][None], multimask=False,
                                              return_logits=True)
            return refined[0]
    return logits[best]


def _loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy + dice, ``(B, 1, S, S)`` logits against area-fraction targets."""
    return F.binary_cross_entropy_with_logits(logits, target) + dice_loss(logits, target).mean()


def _iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    p, t = (logits > 0).flatten(1), (target > 0.5).flatten(1)
    return (p & t).sum(1).float() / (p | t).sum(1).clamp(min=1).float()


def resume_state(state_path: str | os.PathLike | None, name: str, module: torch.nn.Module,
                 optimizer: torch.optim.Optimizer, counter: str) -> tuple[int, list[dict]]:
    """Load a training loop's resumable state into ``module`` and ``optimizer``.

    The state file (an untrusted file: ``weights_only``) holds ``{name: module state,
    "optimizer": ..., counter: int, "log": [dict, ...]}``. Returns ``(counter, log)``, or
    ``(0, [])`` when ``state_path`` is None or does not exist.
    """
    if state_path is None or not Path(state_path).exists():
        return 0, []
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    module.load_state_dict(state[name])
    optimizer.load_state_dict(state["optimizer"])
    return int(state[counter]), [dict(e) for e in state["log"]]


def train_refiner(
    refiner: MaskRefiner,
    data: RefinerExamples,
    epochs: int = 8,
    lr: float = 2e-3,
    batch_size: int = 64,
    seed: int = 0,
    state_path: str | os.PathLike | None = None,
    progress: Callable[[int, int, dict], None] | None = None,
) -> list[dict]:
    """Train ``refiner`` in place on ``data``.

    Parameters
    ----------
    refiner : MaskRefiner
    data : RefinerExamples
        At least 10 examples (a tenth is held out for the per-epoch validation IoU).
    epochs, lr, batch_size, seed
        AdamW (weight decay 1e-4), lr on a cosine schedule over all steps.
    state_path : path, optional
        Resumable state (refiner, optimizer, epoch, log) written after every epoch; an existing
        one is resumed.
    progress : callable, optional
        ``progress(epoch, epochs, stats)`` after every epoch, with ``stats`` the log entry.

    Returns
    -------
    list of dict
        Per epoch: ``epoch``, ``loss`` (mean over its steps), ``val_iou`` (refined) and
        ``val_iou_before`` (the model's masks, in the same crop frame).
    """
    if len(data) < 10:
        raise ValueError(f"too few examples to train the refiner: {len(data)} (need >= 10)")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    perm = torch.randperm(len(data), generator=gen)
    n_val = len(data) // 10
    val, train = perm[:n_val], perm[n_val:]
    crops = torch.from_numpy(data.crops.astype(np.float32))
    scales = torch.from_numpy(data.log_scales.astype(np.float32))
    targets = torch.from_numpy(data.targets.astype(np.float32))[:, None]
    device = next(refiner.parameters()).device
    optimizer = torch.optim.AdamW(refiner.parameters(), lr=lr, weight_decay=1e-4)
    per_epoch = max(1, len(train) // batch_size)
    total = epochs * per_epoch
    start, log = resume_state(state_path, "refiner", refiner, optimizer, "epoch")

    def evaluate() -> tuple[float, float]:
        refiner.eval()
        refined, before = [], []
        with torch.no_grad():
            for k in range(0, n_val, 256):
                idx = val[k:k + 256]
                x = crops[idx].to(device)
                y = x[:, 2:3] * 10.0 + refiner(x, scales[idx].to(device))
                refined.append(_iou(y.cpu(), targets[idx]))
                before.append(_iou(x[:, 2:3].cpu(), targets[idx]))
        refiner.train()
        return float(torch.cat(refined).mean()), float(torch.cat(before).mean())

    refiner.train()
    for epoch in range(start, epochs):
        g = torch.Generator().manual_seed(seed + 1 + epoch)
        order = train[torch.randperm(len(train), generator=g)]
        losses = []
        for j in range(per_epoch):
            step = epoch * per_epoch + j
            idx = order[j * batch_size:(j + 1) * batch_size]
            x, t = crops[idx], targets[idx]
            flips = torch.rand(3, generator=g)
            if flips[0] < 0.5:
                x, t = x.flip(-1), t.flip(-1)
            if flips[1] < 0.5:
                x, t = x.flip(-2), t.flip(-2)
            if flips[2] < 0.5:
                x, t = x.transpose(-1, -2), t.transpose(-1, -2)
            for group in optimizer.param_groups:
                group["lr"] = float(lr * 0.5 * (1 + np.cos(np.pi * step / total)))
            x, t = x.to(device), t.to(device)
            loss = _loss(x[:, 2:3] * 10.0 + refiner(x, scales[idx].to(device)), t)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        val_iou, before = evaluate()
        entry = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "val_iou": val_iou,
                 "val_iou_before": before}
        log.append(entry)
        if state_path is not None:
            save_atomic({"refiner": refiner.state_dict(), "optimizer": optimizer.state_dict(),
                         "epoch": epoch + 1, "log": log}, state_path)
        if progress is not None:
            progress(epoch + 1, epochs, entry)
    refiner.eval()
    return log
