"""The Hiera trunk of SAM 2's image encoder: a hierarchical vision transformer.

Four stages of transformer blocks; at the first block of each later stage the queries are
max-pooled 2x2, halving the resolution and doubling the width. Most blocks attend inside
non-overlapping windows, a few globally. The trunk returns the output of every stage, finest
first, channels-first.

Parameter names follow Meta's ``sam2`` package so its checkpoints load unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Hiera", "HieraBlock", "MultiScaleAttention", "PatchEmbed"]


class PatchEmbed(nn.Module):
    """A strided convolution from pixels to tokens: ``(B, C_in, H, W) -> (B, H/4, W/4, C)``.

    Parameters
    ----------
    embed_dim : int
        Width ``C`` of the tokens.
    in_chans : int
        Channels of the image.
    """

    def __init__(self, embed_dim: int, in_chans: int = 3) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=7, stride=4, padding=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, H, W) -> (B, H/4, W/4, C)`` (channels-last)."""
        return self.proj(x).permute(0, 2, 3, 1)


def _pool(x: torch.Tensor, pool: nn.Module | None) -> torch.Tensor:
    """Max-pool a channels-last ``(B, H, W, C)`` map (identity without ``pool``)."""
    if pool is None:
        return x
    return pool(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


def _to_windows(x: torch.Tensor, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """``(B, H, W, C)`` -> ``(B * nWindows, size, size, C)``, zero-padding to whole windows.

    Returns the windows and the padded ``(Hp, Wp)``.
    """
    b, h, w, c = x.shape
    ph, pw = (-h) % size, (-w) % size
    if ph or pw:
        x = F.pad(x, (0, 0, 0, pw, 0, ph))
    hp, wp = h + ph, w + pw
    x = x.view(b, hp // size, size, wp // size, size, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, size, size, c), (hp, wp)


def _from_windows(
    windows: torch.Tensor, size: int, padded: tuple[int, int], hw: tuple[int, int]
) -> torch.Tensor:
    """Inverse of :func:`_to_windows`: ``(B * nWindows, size, size, C) -> (B, H, W, C)``."""
    hp, wp = padded
    h, w = hw
    b = windows.shape[0] // ((hp // size) * (wp // size))
    x = windows.reshape(b, hp // size, wp // size, size, size, -1).permute(0, 1, 3, 2, 4, 5)
    x = x.reshape(b, hp, wp, -1)
    return x[:, :h, :w] if (hp > h or wp > w) else x


class MultiScaleAttention(nn.Module):
    """Multi-head self-attention whose queries may be pooled (a stage's first block).

    Parameters
    ----------
    dim, dim_out : int
        Input and output widths.
    num_heads : int
        Attention heads (divide ``dim_out``).
    q_pool : nn.Module, optional
        Pooling applied to the queries; the output then has the pooled resolution.
    """

    def __init__(self, dim: int, dim_out: int, num_heads: int, q_pool: nn.Module | None = None):
        super().__init__()
        if dim_out % num_heads:
            raise ValueError(f"num_heads ({num_heads}) must divide dim_out ({dim_out})")
        self.dim, self.dim_out, self.num_heads = dim, dim_out, num_heads
        self.q_pool = q_pool
        self.qkv = nn.Linear(dim, dim_out * 3)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, dim) -> (B, H', W', dim_out)`` with ``H', W'`` pooled or not."""
        b, h, w, _ = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1)
        q, k, v = qkv.unbind(2)  # (B, HW, heads, d)
        if self.q_pool is not None:
            q = _pool(q.reshape(b, h, w, -1), self.q_pool)
            h, w = q.shape[1:3]
            q = q.reshape(b, h * w, self.num_heads, -1)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.proj(out.transpose(1, 2).reshape(b, h, w, -1))


class _GeluMLP(nn.Module):
    """Two linear layers with a GELU between, parameters ``layers.0`` and ``layers.1``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(dim, hidden), nn.Linear(hidden, dim)])
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers[1](self.act(self.layers[0](x)))


class HieraBlock(nn.Module):
    """One Hiera block: (windowed) attention and an MLP, both residual, pre-norm.

    Parameters
    ----------
    dim, dim_out : int
        Input and output widths; when they differ the shortcut is projected (and pooled).
    num_heads : int
        Attention heads.
    q_stride : (int, int), optional
        Query pooling of a stage's first block.
    window_size : int
        Attention window side; 0 for global attention.
    mlp_ratio : float
        Hidden width of the MLP relative to ``dim_out``.
    """

    def __init__(
        self,
        dim: int,
        dim_out: int,
        num_heads: int,
        q_stride: tuple[int, int] | None = None,
        window_size: int = 0,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        self.dim, self.dim_out = dim, dim_out
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.window_size = window_size
        self.q_stride = q_stride
        self.pool = nn.MaxPool2d(kernel_size=q_stride, stride=q_stride) if q_stride else None
        self.attn = MultiScaleAttention(dim, dim_out, num_heads, q_pool=self.pool)
        self.norm2 = nn.LayerNorm(dim_out, eps=1e-6)
        self.mlp = _GeluMLP(dim_out, int(dim_out * mlp_ratio))
        if dim != dim_out:
            self.proj = nn.Linear(dim, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, dim) -> (B, H', W', dim_out)``."""
        shortcut = x
        x = self.norm1(x)
        if self.dim != self.dim_out:
            shortcut = _pool(self.proj(x), self.pool)
        size = self.window_size
        if size > 0:
            hw = x.shape[1:3]
            x, padded = _to_windows(x, size)
        x = self.attn(x)
        if size > 0:
            if self.q_stride:
                # the windows shrank with the queries: unpartition at the pooled resolution
                size = size // self.q_stride[0]
                hw = shortcut.shape[1:3]
                padded = (hw[0] + (-hw[0]) % size, hw[1] + (-hw[1]) % size)
            x = _from_windows(x, size, padded, hw)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class Hiera(nn.Module):
    """The hierarchical trunk.

    Parameters
    ----------
    embed_dim : int
        Width of the first stage (doubled at every later stage).
    num_heads : int
        Heads of the first stage (doubled at every later stage).
    stages : sequence of int
        Blocks per stage.
    global_att_blocks : sequence of int
        Indices of the blocks that attend globally.
    window_pos_embed_bkg_spatial_size : (int, int)
        Size of the background positional embedding (interpolated to the token grid).
    window_spec : sequence of int
        Attention window side per stage.
    q_pool : int
        Number of stage transitions that pool the queries.
    q_stride : (int, int)
        Pooling stride at those transitions.
    """

    def __init__(
        self,
        embed_dim: int = 96,
        num_heads: int = 1,
        stages: tuple[int, ...] = (2, 3, 16, 3),
        global_att_blocks: tuple[int, ...] = (12, 16, 20),
        window_pos_embed_bkg_spatial_size: tuple[int, int] = (14, 14),
        window_spec: tuple[int, ...] = (8, 4, 14, 7),
        q_pool: int = 3,
        q_stride: tuple[int, int] = (2, 2),
    ) -> None:
        super().__init__()
        if len(stages) != len(window_spec):
            raise ValueError(f"stages {stages} and window_spec {window_spec} differ in length")
        if not 0 <= q_pool < len(stages):
            raise ValueError(f"q_pool must be in [0, {len(stages) - 1}], got {q_pool}")
        self.window_spec = tuple(window_spec)
        self.stage_ends = [sum(stages[: i + 1]) - 1 for i in range(len(stages))]
        pool_blocks = [end + 1 for end in self.stage_ends[:-1]][:q_pool]
        self.patch_embed = PatchEmbed(embed_dim)
        self.global_att_blocks = tuple(global_att_blocks)
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_dim, *window_pos_embed_bkg_spatial_size))
        self.pos_embed_window = nn.Parameter(
            torch.zeros(1, embed_dim, self.window_spec[0], self.window_spec[0])
        )
        self.blocks = nn.ModuleList()
        stage, dim = 0, embed_dim
        for i in range(sum(stages)):
            # the first block of a stage keeps the previous stage's window (before pooling)
            window = 0 if i in self.global_att_blocks else self.window_spec[stage]
            dim_out = dim
            if i - 1 in self.stage_ends:
                dim_out, num_heads, stage = dim * 2, num_heads * 2, stage + 1
            self.blocks.append(
                HieraBlock(
                    dim,
                    dim_out,
                    num_heads,
                    q_stride=tuple(q_stride) if i in pool_blocks else None,
                    window_size=window,
                )
            )
            dim = dim_out
        self.channel_list = [self.blocks[i].dim_out for i in self.stage_ends[::-1]]

    def _pos_embed(self, hw: tuple[int, int]) -> torch.Tensor:
        """The positional embedding of an ``(h, w)`` token grid, channels-last ``(1, h, w, C)``."""
        pos = F.interpolate(self.pos_embed, size=hw, mode="bicubic")
        reps = [a // b for a, b in zip(pos.shape, self.pos_embed_window.shape, strict=True)]
        return (pos + self.pos_embed_window.tile(reps)).permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(B, 3, H, W)`` -> the output of every stage, ``(B, C_s, H / 4 / 2^s, W / 4 / 2^s)``.

        The list is ordered finest stage first.
        """
        x = self.patch_embed(x)
        x = x + self._pos_embed(x.shape[1:3])
        outputs = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.stage_ends:
                outputs.append(x.permute(0, 3, 1, 2))
        return outputs
