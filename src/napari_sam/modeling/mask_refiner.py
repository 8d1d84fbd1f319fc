"""A small convolutional network that redraws a mask's boundary at the slice's resolution.

SAM's masks come out at a quarter of the model's input resolution and are upsampled
bilinearly: at the default model's 512 px input, a 1024 px slice gets one mask pixel per 4 x 4
slice pixels, so a nucleus of 5 px radius is drawn with a handful of coarse pixels and its
blurred halo. The refiner looks at a crop of the slice around one mask, resampled to a fixed
``crop_size`` square, together with the upsampled logits, and adds a correction to the logits
(the "finer mask path" of docs/default-model.md). It is optional: official checkpoints have
none, and with a zero last layer (its initial state) it changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MaskRefiner"]


class MaskRefiner(nn.Module):
    """Residual correction of mask logits from the image around the mask.

    Parameters
    ----------
    width : int
        Channels of the hidden layers.
    dilations : sequence of int
        One residual 3 x 3 convolution per entry, with that dilation (the receptive field
        grows with the sum: 33 px of the crop for the defaults).
    crop_size : int
        Side ``S`` of the square crops the refiner works on.
    """

    #: Input channels: the crop's gray values scaled by the slice's intensity range and by the
    #: crop's own 1-99 % range, the logits / 10, and log(crop side / S) as a constant plane.
    in_chans: int = 4

    def __init__(self, width: int = 32, dilations: Sequence[int] = (1, 2, 4, 8, 1),
                 crop_size: int = 64) -> None:
        super().__init__()
        self.crop_size = int(crop_size)
        self.inp = nn.Conv2d(self.in_chans, width, 3, padding=1)
        self.body = nn.ModuleList(
            nn.Conv2d(width, width, 3, padding=int(d), dilation=int(d)) for d in dilations
        )
        self.out = nn.Conv2d(width, 1, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, crops: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
        """Correction to add to the logits.

        Parameters
        ----------
        crops : torch.Tensor, shape (B, 3, S, S)
            Per mask: gray by the slice's range, gray by the crop's range (both in [0, 1]), and
            the mask's logits divided by 10 and clipped to [-2, 2].
        log_scale : torch.Tensor, shape (B,)
            ``log(side / S)`` of each crop's side in slice pixels: how much it was resampled.

        Returns
        -------
        torch.Tensor, shape (B, 1, S, S)
            Logit corrections in the crop frame.
        """
        b, _, h, w = crops.shape
        scale = log_scale.to(crops.dtype).view(b, 1, 1, 1).expand(b, 1, h, w)
        # channels-last activations and weights: oneDNN's convolutions run ~2x faster on CPUs
        x = torch.cat([crops, scale], dim=1).contiguous(memory_format=torch.channels_last)
        x = F.relu(_conv(self.inp, x))
        for conv in self.body:
            x = F.relu(x + _conv(conv, x))
        return _conv(self.out, x).contiguous()


def _conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` with its weight in the channels-last layout (a copy of a few kB)."""
    weight = conv.weight.contiguous(memory_format=torch.channels_last)
    return F.conv2d(x, weight, conv.bias, conv.stride, conv.padding, conv.dilation)
