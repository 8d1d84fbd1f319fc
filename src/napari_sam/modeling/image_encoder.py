"""SAM's image encoder: a plain ViT with windowed and global attention (ViTDet style) and a neck.

The encoder turns a normalised, padded ``(B, 3, S, S)`` image (``S = img_size``) into a
``(B, out_chans, S / patch_size, S / patch_size)`` embedding. Most blocks attend within
non-overlapping ``window_size x window_size`` windows of patches; the blocks listed in
``global_attn_indexes`` attend over the whole patch grid. Attention logits carry decomposed
relative position embeddings (MViTv2): one table for row offsets, one for column offsets.

Attention runs through :func:`torch.nn.functional.scaled_dot_product_attention`, with the
relative-position term passed as an additive float mask, so fused kernels are used where torch
has them. The mask is built and consumed in small pieces (a few heads, or a few query rows of one
head, at a time): the ``N x N`` attention of the global blocks is never held in memory, and each
piece of the mask is still in the CPU cache when the attention kernel reads it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .common import MLPBlock, check_encoder_input, encoder_neck

__all__ = [
    "EncoderBlock",
    "ImageEncoderViT",
    "PatchEmbed",
    "RelPosAttention",
    "decomposed_rel_pos_bias",
    "relative_position_table",
    "rel_pos_attention",
    "window_merge",
    "window_split",
]

#: Largest piece of the relative-position bias materialised at once, in bytes (see
#: rel_pos_attention). Small enough for a CPU's L2/L3 cache; a few MB of mask per kernel call is
#: plenty to keep the attention kernels efficient.
_BIAS_BUDGET_BYTES = 4 * 2**20


class ImageEncoderViT(nn.Module):
    """Vision transformer backbone of SAM.

    Parameters
    ----------
    img_size : int
        Side ``S`` of the square input image, in pixels.
    patch_size : int
        Side of the square patches; ``S`` must be a multiple of it.
    in_chans : int
        Channels of the input image.
    embed_dim : int
        Token width of the transformer.
    depth : int
        Number of transformer blocks.
    num_heads : int
        Attention heads per block; must divide ``embed_dim``.
    mlp_ratio : float
        Hidden width of each block's MLP, relative to ``embed_dim``.
    out_chans : int
        Channels of the output embedding (the neck's width).
    qkv_bias : bool
        Learn a bias for the query, key and value projections.
    norm_layer : type of nn.Module
        Normalisation layer of the blocks (SAM uses ``LayerNorm`` with ``eps=1e-6``).
    act_layer : type of nn.Module
        Activation of the blocks' MLPs.
    use_abs_pos : bool
        Add a learned absolute position embedding to the patch grid.
    use_rel_pos : bool
        Add decomposed relative position embeddings to the attention logits.
    rel_pos_zero_init : bool
        Start the relative position tables at zero (otherwise a small random normal).
    window_size : int
        Side of the attention windows, in patches (0: every block is global).
    global_attn_indexes : sequence of int
        Indices of the blocks that attend over the whole patch grid.
    """

    def __init__(
        self,
        img_size: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_chans: int = 256,
        qkv_bias: bool = True,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        act_layer: type[nn.Module] = nn.GELU,
        use_abs_pos: bool = True,
        use_rel_pos: bool = False,
        rel_pos_zero_init: bool = True,
        window_size: int = 0,
        global_attn_indexes: Sequence[int] = (),
    ) -> None:
        super().__init__()
        if img_size <= 0 or patch_size <= 0 or img_size % patch_size:
            raise ValueError(
                f"img_size ({img_size}) must be a positive multiple of patch_size ({patch_size})"
            )
        if embed_dim % num_heads:
            raise ValueError(f"num_heads ({num_heads}) must divide embed_dim ({embed_dim})")
        bad = [i for i in global_attn_indexes if not 0 <= i < depth]
        if bad:
            raise ValueError(f"global_attn_indexes {bad} are outside the {depth} blocks")
        if window_size < 0:
            raise ValueError(f"window_size must be >= 0, got {window_size}")

        self.img_size = img_size
        self.patch_size = patch_size
        self.in_chans = in_chans
        grid = img_size // patch_size

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.pos_embed: nn.Parameter | None = None
        if use_abs_pos:
            self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))

        global_blocks = set(global_attn_indexes)
        self.blocks = nn.ModuleList(
            EncoderBlock(
                dim=embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                norm_layer=norm_layer,
                act_layer=act_layer,
                use_rel_pos=use_rel_pos,
                rel_pos_zero_init=rel_pos_zero_init,
                window_size=0 if i in global_blocks else window_size,
                input_size=(grid, grid),
            )
            for i in range(depth)
        )
        self.neck = encoder_neck(embed_dim, out_chans)

    @property
    def embedding_size(self) -> int:
        """Side of the output embedding grid, ``img_size // patch_size``."""
        return self.img_size // self.patch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed a batch of preprocessed images.

        Parameters
        ----------
        x : torch.Tensor, shape (B, in_chans, img_size, img_size)
            Normalised and padded images, channels first (see :meth:`Sam.preprocess`).

        Returns
        -------
        torch.Tensor, shape (B, out_chans, img_size // patch_size, img_size // patch_size)
        """
        check_encoder_input(x, self.in_chans, self.img_size)
        x = self.patch_embed(x)  # (B, h, w, C)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))


class PatchEmbed(nn.Module):
    """Cut the image into non-overlapping patches and project each to ``embed_dim``.

    Parameters
    ----------
    patch_size : int
        Side of the square patches (kernel and stride of the projection).
    in_chans : int
        Channels of the input image.
    embed_dim : int
        Width of the patch tokens.
    """

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_chans, H, W) -> (B, H / patch, W / patch, embed_dim)`` (channels last)."""
        # A channels-last convolution makes the token grid contiguous. A permuted view instead
        # would pass its strides on to every later activation (through the residual adds), and
        # each layer norm and linear layer would then copy its input.
        x = self.proj(x.contiguous(memory_format=torch.channels_last))
        return x.permute(0, 2, 3, 1).contiguous()


class EncoderBlock(nn.Module):
    """A pre-norm transformer block with windowed or global attention.

    Parameters
    ----------
    dim : int
        Token width.
    num_heads : int
        Attention heads.
    mlp_ratio : float
        Hidden width of the MLP relative to ``dim``.
    qkv_bias : bool
        Learn a bias for the query, key and value projections.
    norm_layer, act_layer : type of nn.Module
        Normalisation layer and MLP activation.
    use_rel_pos : bool
        Add decomposed relative position embeddings to the attention logits.
    rel_pos_zero_init : bool
        Start the relative position tables at zero.
    window_size : int
        Side of the attention windows in tokens; 0 for global attention.
    input_size : (int, int)
        ``(h, w)`` of the token grid; sizes the relative position tables of global blocks.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        act_layer: type[nn.Module] = nn.GELU,
        use_rel_pos: bool = False,
        rel_pos_zero_init: bool = True,
        window_size: int = 0,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.norm1 = norm_layer(dim)
        self.attn = RelPosAttention(
            dim,
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            use_rel_pos=use_rel_pos,
            rel_pos_zero_init=rel_pos_zero_init,
            input_size=(window_size, window_size) if window_size > 0 else input_size,
        )
        self.norm2 = norm_layer(dim)
        self.mlp = MLPBlock(embedding_dim=dim, mlp_dim=int(dim * mlp_ratio), act=act_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, h, w, C) -> (B, h, w, C)``."""
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            h, w = x.shape[1], x.shape[2]
            windows, padded_hw = window_split(x, self.window_size)
            x = window_merge(self.attn(windows), self.window_size, padded_hw, (h, w))
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class RelPosAttention(nn.Module):
    """Multi-head self-attention over a 2D token grid, with decomposed relative positions.

    Parameters
    ----------
    dim : int
        Token width; ``num_heads`` must divide it.
    num_heads : int
        Attention heads.
    qkv_bias : bool
        Learn a bias for the query, key and value projections.
    use_rel_pos : bool
        Add decomposed relative position embeddings to the attention logits.
    rel_pos_zero_init : bool
        Start the relative position tables at zero.
    input_size : (int, int), optional
        ``(h, w)`` of the token grid the tables are sized for (required with ``use_rel_pos``).
        Other grid sizes work too: the tables are then linearly interpolated.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        use_rel_pos: bool = False,
        rel_pos_zero_init: bool = True,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"num_heads ({num_heads}) must divide the token width ({dim})")
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            if input_size is None:
                raise ValueError("input_size is needed to size the relative position tables")
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))
            if not rel_pos_zero_init:
                nn.init.trunc_normal_(self.rel_pos_h, std=0.02)
                nn.init.trunc_normal_(self.rel_pos_w, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, h, w, C) -> (B, h, w, C)``; every token attends to every token of its grid."""
        b, h, w, _ = x.shape
        # (B, h*w, 3*C) -> three (B, heads, h*w, head_dim)
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if not self.use_rel_pos:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            out = rel_pos_attention(q, k, v, self.rel_pos_h, self.rel_pos_w, (h, w))
        out = out.transpose(1, 2).reshape(b, h, w, -1)
        return self.proj(out)


def rel_pos_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    size: tuple[int, int],
) -> torch.Tensor:
    """Self-attention over an ``h x w`` token grid with decomposed relative positions.

    Equal to ``scaled_dot_product_attention(q, k, v, decomposed_rel_pos_bias(q, ...))``, but the
    ``(heads, N, N)`` bias is never built whole: only the small ``(heads, N, h)`` and
    ``(heads, N, w)`` factors are, and the bias is expanded from them piece by piece (several
    heads, or several query rows of one head, at most :data:`_BIAS_BUDGET_BYTES` at a time).
    Every query is still attended in one kernel call over all keys, so the result is the same.

    Parameters
    ----------
    q, k, v : torch.Tensor, shape (B, heads, h * w, head_dim)
        Queries, keys and values in row-major order of the grid.
    rel_pos_h, rel_pos_w : torch.Tensor, shape (L, head_dim)
        Relative position tables along the rows and the columns.
    size : (int, int)
        ``(h, w)`` of the grid.

    Returns
    -------
    torch.Tensor, shape (B, heads, h * w, head_dim)
    """
    h, w = size
    b, n, length, dim = q.shape
    table_h = relative_position_table(h, h, rel_pos_h).to(q.dtype)  # (h, h, C)
    table_w = relative_position_table(w, w, rel_pos_w).to(q.dtype)  # (w, w, C)
    grid_q = q.reshape(b, n, h, w, dim)
    rel_h = torch.einsum("bnhwc,hkc->bnhwk", grid_q, table_h).reshape(b * n, length, h)
    rel_w = torch.einsum("bnhwc,wkc->bnhwk", grid_q, table_w).reshape(b * n, length, w)
    q, k, v = (t.reshape(b * n, length, -1) for t in (q, k, v))

    per_query = length * q.element_size()
    if length * per_query <= _BIAS_BUDGET_BYTES:  # whole heads, several at a time
        heads_step, rows = max(1, _BIAS_BUDGET_BYTES // (length * per_query)), length
    else:  # query rows of one head
        heads_step, rows = 1, max(1, _BIAS_BUDGET_BYTES // per_query)
    # Without autograd, one buffer is reused for every piece of the bias (no allocations).
    reuse = not torch.is_grad_enabled()
    buffer = q.new_empty(min(heads_step, b * n) * min(rows, length) * length) if reuse else None
    out = q.new_empty(b * n, length, v.shape[-1])
    for i in range(0, b * n, heads_step):
        heads = slice(i, i + heads_step)
        for r in range(0, length, rows):
            queries = slice(r, r + rows)
            a = rel_h[heads, queries, :, None]  # (n', r', h, 1)
            c = rel_w[heads, queries, None, :]  # (n', r', 1, w)
            shape = (a.shape[0], a.shape[1], h, w)
            if buffer is not None:
                bias = torch.add(a, c, out=buffer[: math.prod(shape)].view(shape))
            else:
                bias = a + c
            out[heads, queries] = F.scaled_dot_product_attention(
                q[heads, queries], k[heads], v[heads], bias.view(shape[0], shape[1], length)
            )
    return out.view(b, n, length, -1)


def window_split(x: torch.Tensor, window_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Cut a token grid into non-overlapping windows, zero-padding it to a whole number of them.

    Parameters
    ----------
    x : torch.Tensor, shape (B, H, W, C)
    window_size : int

    Returns
    -------
    windows : torch.Tensor, shape (B * nH * nW, window_size, window_size, C)
        Windows in row-major order of the window grid, image by image.
    padded_hw : (int, int)
        ``(Hp, Wp)``, the padded grid size, ``nH = Hp / window_size``, ``nW = Wp / window_size``.
    """
    b, h, w, c = x.shape
    pad_h = -h % window_size
    pad_w = -w % window_size
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window_size, window_size, wp // window_size, window_size, c)
    windows = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, c)
    return windows, (hp, wp)


def window_merge(
    windows: torch.Tensor,
    window_size: int,
    padded_hw: tuple[int, int],
    hw: tuple[int, int],
) -> torch.Tensor:
    """Inverse of :func:`window_split`: reassemble the windows and drop the padding.

    Parameters
    ----------
    windows : torch.Tensor, shape (B * nH * nW, window_size, window_size, C)
    window_size : int
    padded_hw : (int, int)
        ``(Hp, Wp)`` as returned by :func:`window_split`.
    hw : (int, int)
        ``(H, W)`` of the grid before padding.

    Returns
    -------
    torch.Tensor, shape (B, H, W, C)
    """
    hp, wp = padded_hw
    h, w = hw
    nh, nw = hp // window_size, wp // window_size
    b = windows.shape[0] // (nh * nw)
    x = windows.view(b, nh, nw, window_size, window_size, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    if hp > h or wp > w:
        x = x[:, :h, :w, :].contiguous()
    return x


def relative_position_table(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Look up the embedding of every query-key offset along one axis.

    Parameters
    ----------
    q_size, k_size : int
        Number of query and key positions along the axis.
    rel_pos : torch.Tensor, shape (L, C)
        Embeddings of the offsets ``-(L // 2) .. L // 2``. When ``L != 2 * max(q_size, k_size)
        - 1`` the table is first resampled linearly to that length.

    Returns
    -------
    torch.Tensor, shape (q_size, k_size, C)
        Entry ``[i, j]`` embeds the offset between query ``i`` and key ``j`` (positions of the
        shorter axis are stretched to the longer one's scale).
    """
    length = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != length:
        # (L, C) -> (1, C, L) -> resample -> (length, C)
        rel_pos = F.interpolate(rel_pos.T[None], size=length, mode="linear")[0].T
    q_scale = max(k_size / q_size, 1.0)
    k_scale = max(q_size / k_size, 1.0)
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * q_scale
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * k_scale
    offsets = (q_coords - k_coords) + (k_size - 1) * k_scale
    return rel_pos[offsets.long()]


def decomposed_rel_pos_bias(
    q: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    q_size: tuple[int, int],
    k_size: tuple[int, int],
) -> torch.Tensor:
    """Additive attention bias of decomposed relative position embeddings (MViTv2).

    The bias between query ``(qy, qx)`` and key ``(ky, kx)`` is
    ``q . Rh[qy, ky] + q . Rw[qx, kx]``, computed from the unscaled query.

    Parameters
    ----------
    q : torch.Tensor, shape (B, heads, q_h * q_w, head_dim)
        Queries, in row-major order of the query grid.
    rel_pos_h, rel_pos_w : torch.Tensor, shape (L, head_dim)
        Relative position tables along the rows (height) and the columns (width).
    q_size, k_size : (int, int)
        ``(h, w)`` of the query and the key grids.

    Returns
    -------
    torch.Tensor, shape (B, heads, q_h * q_w, k_h * k_w)
        To be added to ``q @ k^T / sqrt(head_dim)`` (an ``attn_mask`` for scaled dot-product
        attention).
    """
    q_h, q_w = q_size
    k_h, k_w = k_size
    table_h = relative_position_table(q_h, k_h, rel_pos_h).to(q.dtype)  # (q_h, k_h, C)
    table_w = relative_position_table(q_w, k_w, rel_pos_w).to(q.dtype)  # (q_w, k_w, C)
    b, n = q.shape[:2]
    grid_q = q.reshape(b, n, q_h, q_w, -1)
    # einsum may return permuted strides, which the broadcast sum would inherit and the final
    # reshape would then copy: a full extra pass over the (large) bias in global blocks.
    rel_h = torch.einsum("bnhwc,hkc->bnhwk", grid_q, table_h).contiguous()  # (B, n, q_h, q_w, k_h)
    rel_w = torch.einsum("bnhwc,wkc->bnhwk", grid_q, table_w).contiguous()  # (B, n, q_h, q_w, k_w)
    bias = rel_h[..., :, None] + rel_w[..., None, :]  # (B, heads, q_h, q_w, k_h, k_w)
    return bias.reshape(b, n, q_h * q_w, k_h * k_w)
