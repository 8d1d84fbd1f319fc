"""The losses of SAM's training scheme and the IoU head's target (model-input frame)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["dice_loss", "focal_loss", "image_resolution_iou", "iou_ranking_loss", "mask_iou"]


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25,
               gamma: float = 2.0) -> torch.Tensor:
    """Sigmoid focal loss per mask, averaged over pixels: ``(..., H, W) -> (...)``."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    alpha_t = alpha * target + (1 - alpha) * (1 - target)
    return (alpha_t * loss).flatten(-2).mean(-1)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft dice loss per mask: ``(..., H, W) -> (...)``."""
    p = torch.sigmoid(logits).flatten(-2)
    t = target.flatten(-2)
    return 1 - (2 * (p * t).sum(-1) + eps) / (p.sum(-1) + t.sum(-1) + eps)


def iou_ranking_loss(predicted: torch.Tensor, true: torch.Tensor,
                     temperature: float = 0.05) -> torch.Tensor:
    """How badly the IoU head ranks the candidates of one prompt: ``(..., K) -> (...)``.

    The viewer keeps the candidate with the highest predicted IoU, so what matters for a click
    is the order of the predictions, which the mean squared error alone does not teach (a head
    can be calibrated on average and still prefer, for touching nuclei, the candidate that
    takes the neighbour too). The loss is the cross-entropy of ``softmax(predicted /
    temperature)`` against the truly best candidate, weighted by the margin of that candidate
    over the runner-up: near ties cost nothing.

    Parameters
    ----------
    predicted, true : torch.Tensor, shape (..., K)
        Predicted and true IoUs of the K candidates; ``true`` carries no gradient.
    temperature : float
        A prediction gap of ``temperature`` is one unit of logit.
    """
    top = true.topk(2, dim=-1).values
    margin = top[..., 0] - top[..., 1]
    best = true.argmax(-1)
    ce = F.cross_entropy((predicted / temperature).flatten(0, -2), best.flatten(),
                         reduction="none")
    return margin * ce.view(best.shape)


def mask_iou(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU of boolean masks ``(..., H, W) -> (...)``; 1 where both are empty."""
    inter = (pred & target).flatten(-2).sum(-1).float()
    union = (pred | target).flatten(-2).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def image_resolution_iou(low_res_logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The IoU that the IoU head must predict: of the mask a user gets, at the input's resolution.

    The predictor upsamples the decoder's low-res logits bilinearly to the model input and
    thresholds them at 0; the IoU of that mask with the object is the target. (Scored in the
    low-res frame instead, a 24 px nucleus is 6 cells wide and its IoU comes out far lower than
    the user's mask has: the head learnt to under-predict, and absolute score thresholds then
    rejected good masks.)

    Parameters
    ----------
    low_res_logits : torch.Tensor, shape (M, K, h, w)
    masks : torch.Tensor, shape (M, H, W), bool
        The objects in the model input's frame; ``H / h == W / w`` is an integer.

    Returns
    -------
    torch.Tensor, shape (M, K)
    """
    size = masks.shape[-2:]
    up = F.interpolate(low_res_logits, size=size, mode="bilinear", align_corners=False) > 0
    return mask_iou(up, masks[:, None].expand_as(up))
