"""Simulated interactive prompts of SAM's training scheme: points in masks, corrective clicks in
the error region, noisy boxes. Points are ``(x, y)`` in the model-input frame, as SAM's prompt
encoder takes them."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["masks_to_boxes", "noisy_boxes", "sample_error_points", "sample_points_in_masks"]


def sample_points_in_masks(masks: torch.Tensor, generator: torch.Generator,
                           interior_fraction: float = 0.0) -> torch.Tensor:
    """One point inside each mask: uniformly, or for some objects in its deep interior.

    Parameters
    ----------
    masks : torch.Tensor, shape (M, H, W), bool
        Non-empty masks.
    generator : torch.Generator
    interior_fraction : float
        This fraction of the objects (drawn at random) get their point from the mask's deep
        interior: pixels at least half the largest distance to the background. Users click
        there, and the evaluation protocol's first click is the innermost pixel; uniform points
        fall near the edge as often as not, where the candidate that takes the neighbour too
        is the better one. 0 (the paper's sampling) draws no extra random numbers.

    Returns
    -------
    torch.Tensor, shape (M, 2), float
        ``(x, y)`` pixel coordinates.
    """
    m, h, w = masks.shape
    weights = masks.reshape(m, -1).float()
    if interior_fraction > 0:
        inner = torch.rand(m, generator=generator) < interior_fraction
        for i in torch.nonzero(inner)[:, 0].tolist():
            weights[i] = _deep_interior(masks[i]).reshape(-1).float()
    empty = weights.sum(-1) == 0
    weights[empty] = 1.0
    idx = torch.multinomial(weights, 1, generator=generator)[:, 0]
    return torch.stack([(idx % w).float(), (idx // w).float()], dim=-1)


def _deep_interior(mask: torch.Tensor) -> torch.Tensor:
    """The pixels of ``mask`` (H, W) at least half its largest distance to the background (the
    image border counts as background)."""
    from scipy import ndimage

    rows = torch.nonzero(mask.any(1))[:, 0]
    cols = torch.nonzero(mask.any(0))[:, 0]
    out = torch.zeros_like(mask)
    if len(rows) == 0:
        return out
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    crop = np.pad(mask[r0:r1, c0:c1].cpu().numpy(), 1)
    dist = ndimage.distance_transform_edt(crop)[1:-1, 1:-1]
    out[r0:r1, c0:c1] = torch.from_numpy(dist >= 0.5 * dist.max())
    return out


def sample_error_points(
    pred: torch.Tensor, target: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A corrective click per object, uniform in the error region of the previous prediction.

    Parameters
    ----------
    pred, target : torch.Tensor, shape (M, H, W), bool

    Returns
    -------
    points : torch.Tensor, shape (M, 2)
        ``(x, y)``.
    labels : torch.Tensor, shape (M,), int64
        1 where the point fell in a false negative, 0 in a false positive, -1 (a padding point
        that the prompt encoder ignores) where the prediction had no error.
    """
    error = pred ^ target
    points = sample_points_in_masks(error, generator)
    x, y = points[:, 0].long(), points[:, 1].long()
    rows = torch.arange(len(points))
    labels = target[rows, y, x].long()
    labels[error.flatten(1).sum(-1) == 0] = -1
    return points, labels


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight ``(x0, y0, x1, y1)`` boxes of ``(M, H, W)`` masks."""
    m, h, w = masks.shape
    ys = torch.arange(h, device=masks.device)
    xs = torch.arange(w, device=masks.device)
    any_row = masks.any(-1)
    any_col = masks.any(-2)
    big = torch.tensor(10**9, device=masks.device)
    y0 = torch.where(any_row, ys, big).min(-1).values
    y1 = torch.where(any_row, ys, -big).max(-1).values
    x0 = torch.where(any_col, xs, big).min(-1).values
    x1 = torch.where(any_col, xs, -big).max(-1).values
    return torch.stack([x0, y0, x1, y1], dim=-1).float()


def noisy_boxes(
    masks: torch.Tensor, generator: torch.Generator, noise: float = 0.1, noise_max: float = 20.0
) -> torch.Tensor:
    """The masks' boxes with Gaussian noise of ``noise`` x side length, at most ``noise_max`` px."""
    boxes = masks_to_boxes(masks)
    side = torch.stack(
        [boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]] * 2, dim=-1
    ).clamp(min=1.0)
    jitter = torch.randn(boxes.shape, generator=generator) * noise * side
    jitter = jitter.clamp(-noise_max, noise_max)
    h, w = masks.shape[-2:]
    out = boxes + jitter
    out[:, 0::2] = out[:, 0::2].clamp(0, w - 1)
    out[:, 1::2] = out[:, 1::2].clamp(0, h - 1)
    x0, x1 = torch.minimum(out[:, 0], out[:, 2]), torch.maximum(out[:, 0], out[:, 2])
    y0, y1 = torch.minimum(out[:, 1], out[:, 3]), torch.maximum(out[:, 1], out[:, 3])
    return torch.stack([x0, y0, x1, y1], dim=-1)
