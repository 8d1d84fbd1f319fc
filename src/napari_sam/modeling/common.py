"""Small building blocks shared by the image encoder, the prompt encoder and the mask decoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MLP", "LayerNorm2d", "MLPBlock", "check_encoder_input", "encoder_neck"]


class MLPBlock(nn.Module):
    """The two-layer feed-forward block of a transformer layer: ``lin2(act(lin1(x)))``.

    Parameters
    ----------
    embedding_dim : int
        Size of the input and output features ``C``.
    mlp_dim : int
        Size of the hidden layer.
    act : type of nn.Module
        Activation between the two layers.
    """

    def __init__(self, embedding_dim: int, mlp_dim: int, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., C) -> (..., C)``."""
        hidden = self.lin1(x)
        if type(self.act) is nn.GELU and not torch.is_grad_enabled():
            # In place: the hidden layer is the largest activation of a ViT block (4C per token).
            hidden = torch.ops.aten.gelu_(hidden, approximate=self.act.approximate)
        else:
            hidden = self.act(hidden)
        return self.lin2(hidden)


class MLP(nn.Module):
    """A plain multi-layer perceptron with ReLU between its layers (none after the last).

    Parameters
    ----------
    input_dim, hidden_dim, output_dim : int
        Feature sizes of the input, of every hidden layer and of the output.
    num_layers : int
        Number of linear layers (at least 1).
    sigmoid_output : bool
        Apply a sigmoid to the output.
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        output_dim: int,
        num_layers: int,
        sigmoid_output: bool = False,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"an MLP needs at least one layer, got num_layers={num_layers}")
        sizes_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        sizes_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(
            nn.Linear(n, k) for n, k in zip(sizes_in, sizes_out, strict=True)
        )
        self.sigmoid_output = sigmoid_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., input_dim) -> (..., output_dim)``."""
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = F.relu(x)
        return torch.sigmoid(x) if self.sigmoid_output else x


class LayerNorm2d(nn.Module):
    """Layer normalisation over the channel axis of a channels-first image tensor.

    Each pixel's ``C`` values are normalised to zero mean and unit variance, then scaled and
    shifted per channel.

    Parameters
    ----------
    num_channels : int
        ``C``.
    eps : float
        Added to the variance for numerical stability.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B, C, H, W)``, in the input's memory format.

        One fused ``layer_norm`` over the channels-last view (the same biased variance, ``eps``
        inside the square root): about 9x faster on a CPU than the five elementwise passes of
        the textbook form, which the mask decoder's upscaling paid on every click.
        """
        y = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)
        y = y.permute(0, 3, 1, 2)
        if x.is_contiguous() and not y.is_contiguous():
            y = y.contiguous()  # a channels-first input gets a channels-first output
        return y


def encoder_neck(in_chans: int, out_chans: int) -> nn.Sequential:
    """SAM's encoder neck: 1x1 conv, LayerNorm2d, 3x3 conv, LayerNorm2d (no biases).

    Shared by the ViT and TinyViT encoders; the ``neck.0`` ... ``neck.3`` keys of the released
    checkpoints come from this layout.
    """
    return nn.Sequential(
        nn.Conv2d(in_chans, out_chans, kernel_size=1, bias=False),
        LayerNorm2d(out_chans),
        nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
        LayerNorm2d(out_chans),
    )


def check_encoder_input(x: torch.Tensor, in_chans: int, img_size: int) -> None:
    """Raise a clear error unless ``x`` is ``(B, in_chans, img_size, img_size)``."""
    expected = (in_chans, img_size, img_size)
    if x.ndim != 4 or tuple(x.shape[1:]) != expected:
        raise ValueError(
            f"the image encoder takes (B, {expected[0]}, {expected[1]}, {expected[2]}) "
            f"images, got shape {tuple(x.shape)}; resize and pad with Sam.preprocess first"
        )
