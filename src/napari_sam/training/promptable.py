"""SAM's promptable-segmentation training scheme (Kirillov et al. 2023, section 3 and appendix A).

Per image the encoder runs once; per object a first prompt is drawn (a point uniform in the mask
or the mask's box with noise), then refinement rounds add a point sampled uniformly from the error
region (positive in false negatives, negative in false positives) and feed the previous low-res
logits back as the mask prompt; a few final rounds add no point. The loss is focal + dice (20:1)
on the predicted mask (the best of the three for an ambiguous single point) plus the MSE of the
IoU head against the true IoU.

All tensors here are in the model-input frame: images ``(3, S, S)``, masks ``(M, S, S)`` with
``S = model.img_size``, points ``(x, y)`` as SAM's prompt encoder takes them.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.files import atomic_path
from ..engine.decoding import OUTSIDE_LOGIT
from ..modeling import Sam
from .data import prepare_example
from .losses import dice_loss, focal_loss, image_resolution_iou, iou_ranking_loss
from .simulation import noisy_boxes, sample_error_points, sample_points_in_masks

__all__ = [
    "TrainConfig",
    "object_windows",
    "save_atomic",
    "train",
    "train_step",
    "with_input_size",
]


@dataclass
class TrainConfig:
    """Settings of a training or fine-tuning run (saved into every checkpoint).

    The paper uses 8 sampled refinement rounds plus 2 without new points; the defaults here are
    smaller so that training on a laptop CPU makes progress, and are recorded in the checkpoint.
    With ``backprop_all_rounds=False`` only the first and the last round carry gradients; the
    rounds in between only simulate the user's corrections (about 3x cheaper per round).
    From random weights, the paper's 20:1 focal:dice ratio first drives every logit negative and
    training stalls there for hundreds of steps; the focal weight therefore ramps linearly from 1
    to ``focal_weight`` over ``focal_ramp_steps`` (0 disables the ramp).
    For an ambiguous prompt only the best of the three outputs is trained, as in the paper;
    ``other_outputs_weight`` > 0 adds that fraction of the mean loss of the other two, which
    keeps them from dying (near-zero logits that the IoU head may still learn to pick; see
    docs/default-model.md, phase 8). ``iou_rank_weight`` > 0 adds, for ambiguous prompts,
    :func:`~napari_sam.training.losses.iou_ranking_loss` on the three outputs' predicted IoUs:
    the viewer keeps the highest, so their order matters more than their values.
    ``interior_click_fraction`` of the objects get their first point in the deep interior
    (:func:`~napari_sam.training.simulation.sample_points_in_masks`), where users click.
    ``window_fraction`` > 0 decodes the objects of that fraction of the images as the viewer's
    propagation and segment everything do (:func:`~napari_sam.engine.decoding.decode_windows`):
    each against a window of the image embedding around it, ``window_tokens`` on a side (drawn
    per image, grown to hold the largest object, whole grid when larger); the decoder and its
    IoU head then learn to work without the tokens beyond the window. ``small_object_bias``
    favours small objects when an image has more than ``objects_per_image``
    (:func:`~napari_sam.training.data.prepare_example`).
    """

    steps: int = 1000
    lr: float = 4e-4
    weight_decay: float = 0.01
    warmup_steps: int = 100
    objects_per_image: int = 8
    refine_rounds: int = 3
    maskonly_rounds: int = 1
    backprop_all_rounds: bool = False
    box_probability: float = 0.5
    box_noise: float = 0.1
    box_noise_max: float = 20.0
    focal_weight: float = 20.0
    focal_ramp_steps: int = 300
    dice_weight: float = 1.0
    iou_weight: float = 1.0
    other_outputs_weight: float = 0.0
    iou_rank_weight: float = 0.0
    interior_click_fraction: float = 0.0
    window_fraction: float = 0.0
    window_tokens: tuple[int, int] = (16, 32)
    min_object_pixels: int = 4
    small_object_bias: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 100
    log_every: int = 10
    extra: dict = field(default_factory=dict)


# -- the step ----------------------------------------------------------------------------------


def _decode_all(model: Sam, features, points, boxes, mask_input, windows=None):
    """Prompt encoder + mask decoder returning all four outputs: (M, 4, 4h, 4w), (M, 4).

    ``windows`` (``(origins (M, 2), side)`` in tokens) decodes each object against its window
    of ``features``, as :func:`~napari_sam.engine.decoding.decode_windows` does at inference
    (features, positional encoding and mask prompt cropped; positions stay absolute); the
    logits beyond the window are ``OUTSIDE_LOGIT``.
    """
    pe = model.prompt_encoder.get_dense_pe()
    if windows is None:
        sparse, dense = model.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
        return model.mask_decoder.predict_masks(
            image_embeddings=features, image_pe=pe, sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
        )
    origins, side = windows
    h, w = features.shape[-2:]
    cut = [(slice(a, a + side), slice(c, c + side)) for a, c in origins.tolist()]
    crops = torch.stack([features[0][:, r, c] for r, c in cut])
    pe_crops = torch.stack([pe[0][:, r, c] for r, c in cut])
    sparse, dense = model.prompt_encoder(points=points, boxes=boxes, masks=None)
    if mask_input is None:
        dense = dense[..., :side, :side].expand(len(cut), -1, -1, -1)
    else:  # the mask prompt's downscaling is local (kernel = stride): cropping it is exact
        m_crops = torch.stack([mask_input[b, :, 4 * r.start:4 * r.stop, 4 * c.start:4 * c.stop]
                               for b, (r, c) in enumerate(cut)])
        dense = model.prompt_encoder.mask_downscaling(m_crops)
    low, iou = model.mask_decoder.predict_masks(
        image_embeddings=crops, image_pe=pe_crops, sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
    )
    full = low.new_full((low.shape[0], low.shape[1], 4 * h, 4 * w), OUTSIDE_LOGIT)
    for b, (r, c) in enumerate(cut):
        full[b, :, 4 * r.start:4 * r.stop, 4 * c.start:4 * c.stop] = low[b]
    return full, iou


def object_windows(masks: torch.Tensor, grid: tuple[int, int], side: int,
                   generator: torch.Generator) -> tuple[torch.Tensor, int] | None:
    """Windows of the token grid around each object, as the viewer's windowed decoding takes.

    Parameters
    ----------
    masks : torch.Tensor, shape (M, S, S), bool
        The objects in the model-input frame.
    grid : (int, int)
        The embedding's token grid ``(h, w)``.
    side : int
        Requested window side in tokens; grown to hold the largest object's box plus a token
        of margin on each side.
    generator : torch.Generator
        Jitters each window's position by up to a quarter of the free space around the object.

    Returns
    -------
    (origins, side) or None
        ``origins`` ``(M, 2)`` are the windows' top-left tokens ``(row, col)``; None when the
        window would cover the whole grid.
    """
    h, w = grid
    token = masks.shape[-1] / w
    boxes = []
    for m in masks:
        rows = torch.nonzero(m.any(1))[:, 0]
        cols = torch.nonzero(m.any(0))[:, 0]
        boxes.append((int(rows[0]) / token, (int(rows[-1]) + 1) / token,
                      int(cols[0]) / token, (int(cols[-1]) + 1) / token))
    extent = max(max(b[1] - b[0], b[3] - b[2]) for b in boxes)
    side = max(side, math.ceil(extent) + 2)
    if side >= min(h, w):
        return None
    origins = []
    for r0, r1, c0, c1 in boxes:
        start = []
        for lo, hi, size in ((r0, r1, h), (c0, c1, w)):
            free = side - (hi - lo)
            jitter = (float(torch.rand(1, generator=generator)) - 0.5) * free / 2
            start.append(int(np.clip(round((lo + hi) / 2 - side / 2 + jitter), 0, size - side)))
        origins.append(start)
    return torch.tensor(origins, dtype=torch.long), side


def train_step(
    model: Sam,
    pixels: torch.Tensor,
    masks: torch.Tensor,
    config: TrainConfig,
    generator: torch.Generator,
    step: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of one image with its objects under SAM's simulated interactive prompting.

    Parameters
    ----------
    model : Sam
    pixels : torch.Tensor, shape (3, h, w), float in [0, 255]
    masks : torch.Tensor, shape (M, S, S), bool
        Ground-truth objects (already subsampled to at most ``config.objects_per_image``).

    Returns
    -------
    loss : torch.Tensor, scalar
    stats : dict
        ``loss``, ``iou_first`` (mean IoU after the first prompt), ``iou_last``.
    """
    focal_weight = config.focal_weight
    if step is not None and step < config.focal_ramp_steps:
        focal_weight = 1.0 + (config.focal_weight - 1.0) * step / config.focal_ramp_steps
    device = model.device
    masks = masks.to(device)
    m = masks.shape[0]
    S = model.img_size
    features = model.image_encoder(model.preprocess(pixels[None].to(device)))
    low = 4 * features.shape[-1]
    factor = S // low
    # The loss lives in the decoder's low-res frame with soft (area-fraction) targets: 4x fewer
    # pixels than the input frame, which keeps CPU training affordable.
    target = F.avg_pool2d(masks[:, None].float(), factor)[:, 0] if factor > 1 else masks.float()
    target_bool = target > 0.5

    windows = None
    if config.window_fraction and float(torch.rand(1, generator=generator)) < config.window_fraction:
        lo, hi = config.window_tokens
        side = int(torch.randint(lo, hi + 1, (1,), generator=generator))
        windows = object_windows(masks.cpu(), tuple(features.shape[-2:]), side, generator)
    use_box = torch.rand(m, generator=generator) < config.box_probability
    boxes = noisy_boxes(masks.cpu(), generator, config.box_noise, config.box_noise_max).to(device)
    pts = sample_points_in_masks(masks.cpu(), generator,
                                 config.interior_click_fraction).to(device)
    # Box objects carry a padding point (label -1) so that all objects batch together.
    coords = pts[:, None, :]
    labels = torch.where(use_box.to(device), -1, 1).long()[:, None]
    use_box_d = use_box.to(device)

    total = torch.zeros((), device=device)
    n_grad = 0
    n_rounds = 1 + config.refine_rounds + config.maskonly_rounds
    mask_input = None
    ious = []
    for r in range(n_rounds):
        with_grad = config.backprop_all_rounds or r in (0, n_rounds - 1)
        with torch.set_grad_enabled(with_grad and torch.is_grad_enabled()):
            round_loss, round_iou, chosen_low = _round(
                model, features, coords, labels, boxes, mask_input, use_box_d, target,
                masks, first=r == 0, config=config, focal_weight=focal_weight, windows=windows,
            )
        if with_grad:
            total = total + round_loss
            n_grad += 1
        ious.append(round_iou)
        if r == n_rounds - 1:
            break
        mask_input = chosen_low[:, None]
        if r < config.refine_rounds:
            pred = (chosen_low > 0).cpu()
            new_pts, new_lab = sample_error_points(pred, target_bool.cpu(), generator)
            # low-res pixel -> input pixel (centre of the low-res cell)
            new_pts = (new_pts + 0.5) * factor - 0.5
            coords = torch.cat([coords, new_pts.to(device)[:, None]], dim=1)
            labels = torch.cat([labels, new_lab.to(device)[:, None]], dim=1)
    loss = total / n_grad
    return loss, {"loss": float(loss.detach()), "iou_first": ious[0], "iou_last": ious[-1]}


def _round(model, features, coords, labels, boxes, mask_input, use_box, target, masks,
           *, first: bool, config: TrainConfig, focal_weight: float, windows=None):
    """Decode every object once; return its loss, the mean IoU and the chosen low-res logits.

    ``target`` is the soft low-res target of the mask losses, ``masks`` the objects at the
    input's resolution (the IoU head's target, :func:`image_resolution_iou`).
    """
    m, low = target.shape[0], target.shape[-1]
    device = features.device
    rows = torch.arange(m, device=device)
    out_logits = torch.empty((m, 4, low, low), device=device)
    out_iou = torch.empty((m, 4), device=device)
    # The prompt encoder takes a box for all objects of a call or for none: two groups.
    for sel, with_box in ((use_box, True), (~use_box, False)):
        idx = torch.nonzero(sel)[:, 0]
        if len(idx) == 0:
            continue
        lo, io = _decode_all(
            model,
            features,
            (coords[idx], labels[idx]),
            boxes[idx] if with_box else None,
            None if mask_input is None else mask_input[idx],
            None if windows is None else (windows[0][idx.cpu()], windows[1]),
        )
        out_logits[idx] = lo
        out_iou[idx] = io
    tgt = target[:, None].expand_as(out_logits)
    per_mask = focal_weight * focal_loss(out_logits, tgt)
    per_mask = per_mask + config.dice_weight * dice_loss(out_logits, tgt)
    with torch.no_grad():
        true_iou = image_resolution_iou(out_logits, masks)
    iou_loss = F.mse_loss(out_iou, true_iou, reduction="none")
    # Ambiguous prompt (one point, no box, first round): best of the three multimask outputs;
    # otherwise the single-output token (index 0), as SAM does for richer prompts.
    ambiguous = (~use_box) & first
    multi_best = per_mask[:, 1:].argmin(-1) + 1
    chosen = torch.where(ambiguous, multi_best, torch.zeros_like(multi_best))
    mask_term = per_mask[rows, chosen]
    if config.other_outputs_weight:
        others = (per_mask[:, 1:].sum(-1) - per_mask[rows, multi_best]) / 2
        mask_term = mask_term + torch.where(
            ambiguous, config.other_outputs_weight * others, torch.zeros_like(others))
    iou_term = torch.where(ambiguous, iou_loss[:, 1:].mean(-1), iou_loss[:, 0])
    if config.iou_rank_weight:
        rank = iou_ranking_loss(out_iou[:, 1:], true_iou[:, 1:])
        iou_term = iou_term + torch.where(
            ambiguous, config.iou_rank_weight * rank, torch.zeros_like(rank))
    round_loss = (mask_term + config.iou_weight * iou_term).mean()
    return round_loss, float(true_iou[rows, chosen].mean()), out_logits[rows, chosen].detach()


# -- the loop ----------------------------------------------------------------------------------


def _lr_at(step: int, config: TrainConfig) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def save_atomic(obj, path: str | os.PathLike) -> None:
    """``torch.save`` through a temporary file: an interrupted save never truncates ``path``."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def train(
    model: Sam,
    examples: Iterator[tuple[np.ndarray, np.ndarray]],
    config: TrainConfig,
    out: str | os.PathLike,
    *,
    resume: bool = True,
    progress: Callable[[int, int, dict], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[dict]:
    """Train ``model`` in place on ``examples`` and write its weights to ``out``.

    A resumable training state (model, optimizer, step, config, log) is kept beside ``out`` as
    ``<out>.state.pt`` every ``config.checkpoint_every`` steps; with ``resume`` a run restarts from
    it. The final file ``out`` holds the model's state dict only (loadable with ``build_model``).

    Parameters
    ----------
    model : Sam
    examples : iterator of (image (H, W[, 3]), labels (H, W))
        Training images with instance labels, drawn as needed (one per step).
    config : TrainConfig
    out : path
    resume : bool
    progress : callable, optional
        ``progress(step, total, stats)`` after each step.
    should_stop : callable, optional
        Polled every step; when it returns True the state is saved and training stops early.

    Returns
    -------
    list of dict
        The log: one dict of stats per logged step.
    """
    out = Path(out)
    state_path = out.with_name(out.name + ".state.pt")
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=config.lr,
        weight_decay=config.weight_decay,
    )
    step, log = 0, []
    if resume and state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, log = int(state["step"]), json.loads(state["log"])
        generator.manual_seed(config.seed + step)
        rng = np.random.default_rng(config.seed + step)

    def save_state():
        save_atomic(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "step": step,
                "config": json.dumps(asdict(config)),
                "log": json.dumps(log),
            },
            state_path,
        )

    model.train()
    t0 = time.perf_counter()
    window: list[dict] = []
    while step < config.steps:
        image, labels = next(examples)
        pixels, masks = prepare_example(image, labels, model.img_size, config.min_object_pixels,
                                        config.objects_per_image, rng,
                                        config.small_object_bias)
        if len(masks) == 0:
            continue
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, config)
        loss, stats = train_step(model, pixels, masks, config, generator, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        step += 1
        window.append(stats)
        if step % config.log_every == 0 or step == config.steps:
            entry = {k: float(np.mean([s[k] for s in window])) for k in window[0]}
            entry.update(step=step, lr=_lr_at(step - 1, config),
                         seconds=round(time.perf_counter() - t0, 1))
            log.append(entry)
            window = []
        if progress is not None:
            progress(step, config.steps, stats)
        if step % config.checkpoint_every == 0:
            save_state()
        if should_stop is not None and should_stop():
            save_state()
            break
    model.eval()
    if step >= config.steps:
        save_atomic(model.state_dict(), out)
        save_state()
    return log


def with_input_size(model: Sam, config, img_size: int) -> Sam:
    """A copy of ``model`` for another input size (same weights, position embedding resampled).

    The absolute position embedding is resized bicubically to the new patch grid; windowed
    attention is size-independent and the global blocks' relative position tables are resampled
    by the encoder itself. Used to train cheaply at a small input size and deploy at a larger one.
    """
    import dataclasses

    from ..models.build import build_sam

    new_config = dataclasses.replace(config, img_size=img_size)
    new = build_sam(new_config)
    state = model.state_dict()
    grid = new_config.image_embedding_size
    pos = state["image_encoder.pos_embed"].permute(0, 3, 1, 2)
    pos = F.interpolate(pos, size=(grid, grid), mode="bicubic", align_corners=False)
    state["image_encoder.pos_embed"] = pos.permute(0, 2, 3, 1).contiguous()
    for key, value in new.state_dict().items():
        if key.endswith(("rel_pos_h", "rel_pos_w")) and state[key].shape != value.shape:
            t = state[key].T[None]
            state[key] = F.interpolate(t, size=value.shape[0], mode="linear")[0].T.contiguous()
    new.load_state_dict(state)
    return new.to(model.device)
