"""TinyViT, the small image encoder of MobileSAM (Zhang et al. 2023), distilled from SAM's ViT-H.

A hierarchical network: a convolutional stem (stride 4), one stage of inverted-residual
convolutions (MBConv), then three stages of transformer blocks with windowed attention and a
learned per-head bias over the window's relative offsets. Stages are joined by "patch merging"
convolutions; the last one keeps the resolution, so a ``1024`` px input gives the ``64 x 64``
grid of SAM, and SAM's neck turns it into the ``(B, 256, 64, 64)`` image embedding. The prompt
encoder and mask decoder are SAM's unchanged.

Parameter names and shapes follow MobileSAM's release, so its ``mobile_sam.pt`` loads as it is
(the unused ImageNet classifier ``norm_head`` / ``head`` of TinyViT is part of that file and is
kept for that reason). Batch norms run in eval mode with their stored statistics.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .common import check_encoder_input, encoder_neck

__all__ = [
    "ConvBN",
    "MBConv",
    "PatchMerging",
    "TinyViT",
    "TinyViTBlock",
    "WindowBiasAttention",
]

#: Strides of the patch-merging convolutions between the four stages (MobileSAM keeps the
#: resolution before the last stage, for an overall stride of 4 * 2 * 2 * 1 = 16).
MERGE_STRIDES = (2, 2, 1)
#: Classes of the ImageNet head that TinyViT was pre-trained with (unused, kept for loading).
_HEAD_CLASSES = 1000


class ConvBN(nn.Sequential):
    """A bias-free convolution followed by batch normalisation (``c``, ``bn``).

    Parameters
    ----------
    in_chans, out_chans : int
        Channels in and out.
    kernel_size, stride, padding, groups : int
        As in :class:`torch.nn.Conv2d`.
    """

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        kernel_size: int = 1,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
    ) -> None:
        super().__init__()
        self.add_module(
            "c",
            nn.Conv2d(in_chans, out_chans, kernel_size, stride, padding, groups=groups, bias=False),
        )
        self.add_module("bn", nn.BatchNorm2d(out_chans))


class _Stem(nn.Module):
    """Two stride-2 3 x 3 convolutions: ``(B, 3, H, W) -> (B, dim, H / 4, W / 4)``."""

    def __init__(self, in_chans: int, dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            ConvBN(in_chans, dim // 2, 3, 2, 1),
            nn.GELU(),
            ConvBN(dim // 2, dim, 3, 2, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual block: expand (1 x 1), depthwise 3 x 3, project (1 x 1), add, GELU.

    Parameters
    ----------
    dim : int
        Channels in and out.
    expand_ratio : float
        Width of the hidden layer relative to ``dim``.
    """

    def __init__(self, dim: int, expand_ratio: float = 4.0) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = ConvBN(dim, hidden)
        self.conv2 = ConvBN(hidden, hidden, 3, 1, 1, groups=hidden)
        self.conv3 = ConvBN(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B, C, H, W)``."""
        y = F.gelu(self.conv1(x))
        y = F.gelu(self.conv2(y))
        return F.gelu(self.conv3(y) + x)


class PatchMerging(nn.Module):
    """Change width (1 x 1), downsample (depthwise 3 x 3, stride 1 or 2), mix (1 x 1).

    Parameters
    ----------
    dim, out_dim : int
        Channels in and out.
    stride : int
        Stride of the depthwise convolution.
    """

    def __init__(self, dim: int, out_dim: int, stride: int = 2) -> None:
        super().__init__()
        self.conv1 = ConvBN(dim, out_dim)
        self.conv2 = ConvBN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B, out_dim, H / stride, W / stride)`` (rounded up)."""
        x = F.gelu(self.conv1(x))
        x = F.gelu(self.conv2(x))
        return self.conv3(x)


class WindowBiasAttention(nn.Module):
    """Pre-norm multi-head self-attention within a window, with a learned relative-offset bias.

    Every head learns one scalar per offset ``(|dy|, |dx|)`` between two tokens of a
    ``window x window`` window; it is added to the attention logits.

    Parameters
    ----------
    dim : int
        Token width; ``num_heads`` must divide it.
    num_heads : int
        Attention heads.
    window_size : int
        Side of the (square) window, in tokens.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"num_heads ({num_heads}) must divide the token width ({dim})")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.window_size = window_size
        self.norm = nn.LayerNorm(dim)
        # Per head, the projection holds [q | k | v] side by side (not all q's first).
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window_size * window_size))
        # Offset (|dy|, |dx|) of tokens i and j (row-major in the window) -> table column.
        yy, xx = torch.meshgrid(
            torch.arange(window_size), torch.arange(window_size), indexing="ij"
        )
        yy, xx = yy.flatten(), xx.flatten()
        index = (yy[:, None] - yy[None, :]).abs() * window_size + (xx[:, None] - xx[None, :]).abs()
        self.register_buffer("bias_index", index, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, N, C) -> (B, N, C)`` for ``N = window_size**2`` tokens in row-major order."""
        b, n, _ = x.shape
        qkv = self.qkv(self.norm(x)).view(b, n, self.num_heads, 3 * self.head_dim)
        q, k, v = qkv.transpose(1, 2).split(self.head_dim, dim=-1)  # (B, heads, N, head_dim)
        bias = self.attention_biases[:, self.bias_index].to(q.dtype)  # (heads, N, N)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class _Mlp(nn.Module):
    """Pre-norm feed-forward block: ``fc2(gelu(fc1(norm(x))))``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Windowed attention and an MLP, each with a residual, with a depthwise 3 x 3 conv between.

    Parameters
    ----------
    dim : int
        Token width.
    num_heads : int
        Attention heads.
    window_size : int
        Side of the attention windows; the grid is zero-padded to whole windows.
    mlp_ratio : float
        Hidden width of the MLP relative to ``dim``.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.window_size = window_size
        self.attn = WindowBiasAttention(dim, num_heads, window_size)
        self.local_conv = ConvBN(dim, dim, 3, 1, 1, groups=dim)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, C) -> (B, H, W, C)``."""
        b, h, w, c = x.shape
        ws = self.window_size
        # Padding comes before the attention's layer norm, as in the trained model: the padded
        # tokens enter the attention as normalised zeros (the norm's bias).
        pad_h, pad_w = -h % ws, -w % ws
        y = F.pad(x, (0, 0, 0, pad_w, 0, pad_h)) if pad_h or pad_w else x
        nh, nw = (h + pad_h) // ws, (w + pad_w) // ws
        y = y.view(b, nh, ws, nw, ws, c).transpose(2, 3).reshape(b * nh * nw, ws * ws, c)
        y = self.attn(y)
        y = y.view(b, nh, nw, ws, ws, c).transpose(2, 3).reshape(b, nh * ws, nw * ws, c)
        x = x + y[:, :h, :w]
        x = self.local_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # no residual here
        return x + self.mlp(x)


class _ConvStage(nn.Module):
    def __init__(self, dim: int, depth: int, out_dim: int, stride: int, expand_ratio: float):
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio) for _ in range(depth))
        self.downsample = PatchMerging(dim, out_dim, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B, out_dim, H', W')``."""
        for block in self.blocks:
            x = block(x)
        return self.downsample(x)


class _AttentionStage(nn.Module):
    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        out_dim: int | None,
        stride: int,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TinyViTBlock(dim, num_heads, window_size, mlp_ratio) for _ in range(depth)
        )
        self.downsample = None if out_dim is None else PatchMerging(dim, out_dim, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B, C', H', W')`` (channels first in and out)."""
        x = x.permute(0, 2, 3, 1)
        for block in self.blocks:
            x = block(x)
        x = x.permute(0, 3, 1, 2)
        return x if self.downsample is None else self.downsample(x)


class TinyViT(nn.Module):
    """MobileSAM's image encoder: TinyViT (5M parameters in its published size) and SAM's neck.

    Parameters
    ----------
    img_size : int
        Side ``S`` of the square input; a multiple of 16 (the overall stride).
    in_chans : int
        Channels of the input image.
    embed_dims : sequence of 4 int
        Width of each stage.
    depths : sequence of 4 int
        Blocks per stage (MBConv blocks in the first, transformer blocks in the others).
    num_heads : sequence of 4 int
        Attention heads per stage (the first, convolutional, stage ignores its entry).
    window_sizes : sequence of 4 int
        Attention window side per stage (the first entry is ignored).
    mlp_ratio : float
        Hidden width of the transformer MLPs relative to the stage width.
    mbconv_expand_ratio : float
        Hidden width of the MBConv blocks relative to the first stage's width.
    out_chans : int
        Channels of the output embedding (the neck's width).

    Notes
    -----
    MobileSAM's published configuration (``vit_t``) is the default: widths ``(64, 128, 160,
    320)``, depths ``(2, 2, 6, 2)``, heads ``(2, 4, 5, 10)``, windows ``(7, 7, 14, 7)``.
    """

    def __init__(
        self,
        img_size: int = 1024,
        in_chans: int = 3,
        embed_dims: Sequence[int] = (64, 128, 160, 320),
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (2, 4, 5, 10),
        window_sizes: Sequence[int] = (7, 7, 14, 7),
        mlp_ratio: float = 4.0,
        mbconv_expand_ratio: float = 4.0,
        out_chans: int = 256,
    ) -> None:
        super().__init__()
        stages = len(MERGE_STRIDES) + 1
        for name, values in (
            ("embed_dims", embed_dims),
            ("depths", depths),
            ("num_heads", num_heads),
            ("window_sizes", window_sizes),
        ):
            if len(values) != stages:
                raise ValueError(f"{name} needs {stages} values (one per stage), got {values}")
        if img_size <= 0 or img_size % self.patch_size:
            raise ValueError(f"img_size must be a positive multiple of 16, got {img_size}")
        for dim, heads in zip(embed_dims[1:], num_heads[1:], strict=True):
            if heads <= 0 or dim % heads:
                raise ValueError(f"num_heads ({heads}) must divide the stage width ({dim})")
        if any(w <= 0 for w in window_sizes[1:]):
            raise ValueError(f"window sizes must be positive, got {window_sizes}")
        self.img_size = img_size
        self.in_chans = in_chans

        self.patch_embed = _Stem(in_chans, embed_dims[0])
        layers: list[nn.Module] = [
            _ConvStage(
                embed_dims[0], depths[0], embed_dims[1], MERGE_STRIDES[0], mbconv_expand_ratio
            )
        ]
        for i in range(1, stages):
            last = i == stages - 1
            layers.append(
                _AttentionStage(
                    embed_dims[i],
                    depths[i],
                    num_heads[i],
                    window_sizes[i],
                    mlp_ratio,
                    out_dim=None if last else embed_dims[i + 1],
                    stride=1 if last else MERGE_STRIDES[i],
                )
            )
        self.layers = nn.ModuleList(layers)
        # TinyViT's ImageNet classifier: unused here, but part of MobileSAM's checkpoint.
        self.norm_head = nn.LayerNorm(embed_dims[-1])
        self.head = nn.Linear(embed_dims[-1], _HEAD_CLASSES)
        self.neck = encoder_neck(embed_dims[-1], out_chans)

    #: Overall stride from input pixels to embedding cells.
    patch_size = 16

    @property
    def embedding_size(self) -> int:
        """Side of the output embedding grid, ``img_size // 16``."""
        return self.img_size // self.patch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed a batch of preprocessed images.

        Parameters
        ----------
        x : torch.Tensor, shape (B, in_chans, img_size, img_size)
            Normalised and padded images, channels first (see :meth:`Sam.preprocess`).

        Returns
        -------
        torch.Tensor, shape (B, out_chans, img_size // 16, img_size // 16)
        """
        check_encoder_input(x, self.in_chans, self.img_size)
        # Channels-last throughout: the convolutions are faster on CPUs in that layout, and the
        # attention stages' (B, H, W, C) token grids are then views, not copies.
        x = self.patch_embed(x.contiguous(memory_format=torch.channels_last))
        for layer in self.layers:
            x = layer(x)
        return self.neck(x)
