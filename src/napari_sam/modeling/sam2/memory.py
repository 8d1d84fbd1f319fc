"""SAM 2's memory: the memory encoder and the memory attention.

The memory encoder fuses a frame's image features with its predicted mask into a compact
memory (``mem_dim`` channels at the stride-16 resolution). The memory attention conditions the
current frame's features on a bank of such memories and object pointers, with rotary position
encodings (RoPE) on the spatial tokens.

Parameter names follow Meta's ``sam2`` package. Inference only: no dropout.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..common import LayerNorm2d
from .image_encoder import PositionEmbeddingSine

__all__ = [
    "CXBlock",
    "Fuser",
    "MaskDownSampler",
    "MemoryAttention",
    "MemoryAttentionLayer",
    "MemoryEncoder",
    "RoPEAttention",
]


class MaskDownSampler(nn.Module):
    """Reduce a mask by ``total_stride`` with stride-2 convolutions, then project.

    ``(B, 1, H, W) -> (B, embed_dim, H / total_stride, W / total_stride)``; each step
    multiplies the channels by 4 (conv 3x3 stride 2, LayerNorm2d, GELU).
    """

    def __init__(self, embed_dim: int = 256, total_stride: int = 16) -> None:
        super().__init__()
        steps = round(math.log2(total_stride))
        if 2**steps != total_stride:
            raise ValueError(f"total_stride must be a power of 2, got {total_stride}")
        self.encoder = nn.Sequential()
        chans = 1
        for _ in range(steps):
            self.encoder.append(nn.Conv2d(chans, chans * 4, kernel_size=3, stride=2, padding=1))
            self.encoder.append(LayerNorm2d(chans * 4))
            self.encoder.append(nn.GELU())
            chans *= 4
        self.encoder.append(nn.Conv2d(chans, embed_dim, kernel_size=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)


class CXBlock(nn.Module):
    """A ConvNeXt block: depthwise 7x7 conv, LayerNorm2d, pointwise MLP (4x), layer scale."""

    def __init__(self, dim: int = 256) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = LayerNorm2d(dim)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(1e-6 * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B, C, H, W)``."""
        y = self.norm(self.dwconv(x)).permute(0, 2, 3, 1)
        y = self.gamma * self.pwconv2(self.act(self.pwconv1(y)))
        return x + y.permute(0, 3, 1, 2)


class Fuser(nn.Module):
    """A stack of :class:`CXBlock`."""

    def __init__(self, dim: int = 256, num_layers: int = 2) -> None:
        super().__init__()
        self.layers = nn.ModuleList(CXBlock(dim) for _ in range(num_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class MemoryEncoder(nn.Module):
    """Encode a frame's features and its mask into a memory.

    Parameters
    ----------
    out_dim : int
        Channels ``mem_dim`` of the memory.
    in_dim : int
        Channels of the image features.
    """

    def __init__(self, out_dim: int = 64, in_dim: int = 256) -> None:
        super().__init__()
        self.mask_downsampler = MaskDownSampler(in_dim, total_stride=16)
        self.pix_feat_proj = nn.Conv2d(in_dim, in_dim, kernel_size=1)
        self.fuser = Fuser(in_dim, num_layers=2)
        self.position_encoding = PositionEmbeddingSine(out_dim)
        self.out_proj = nn.Conv2d(in_dim, out_dim, kernel_size=1) if out_dim != in_dim else nn.Identity()

    def forward(
        self, pix_feat: torch.Tensor, masks: torch.Tensor, skip_mask_sigmoid: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Memory of ``B`` frames/objects.

        Parameters
        ----------
        pix_feat : torch.Tensor, shape (B, in_dim, h, w)
            Stride-16 image features (without memory conditioning).
        masks : torch.Tensor, shape (B, 1, 16h, 16w)
            Mask logits (or, with ``skip_mask_sigmoid``, values already squashed).

        Returns
        -------
        features : torch.Tensor, shape (B, out_dim, h, w)
        pos : torch.Tensor, shape (B, out_dim, h, w)
            Their sine positional encoding.
        """
        if not skip_mask_sigmoid:
            masks = torch.sigmoid(masks)
        x = self.pix_feat_proj(pix_feat) + self.mask_downsampler(masks)
        x = self.out_proj(self.fuser(x))
        return x, self.position_encoding(x)


def rope_angles(dim: int, end_x: int, end_y: int, theta: float = 10000.0) -> torch.Tensor:
    """Rotation angles of axial 2D RoPE for an ``end_y x end_x`` grid in row-major order.

    Returns
    -------
    torch.Tensor, shape (end_x * end_y, dim / 2)
        First ``dim / 4`` angles rotate by the column index, the others by the row index.
    """
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 4)[: dim // 4].float() / dim))
    t = torch.arange(end_x * end_y, dtype=torch.float32)
    t_x, t_y = t % end_x, torch.div(t, end_x, rounding_mode="floor")
    return torch.cat([torch.outer(t_x, freqs), torch.outer(t_y, freqs)], dim=-1)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive channel pairs of ``x`` (..., N, d) by angles given as (N, d/2)."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    a, b = pairs[..., 0], pairs[..., 1]
    out = torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1)
    return out.flatten(-2).to(x.dtype)


class RoPEAttention(nn.Module):
    """Multi-head attention with axial rotary position encoding on queries and keys.

    The queries are a square grid of tokens; the keys are ``r`` such grids (``r`` memory
    frames, when ``rope_k_repeat``) followed by ``num_k_exclude_rope`` tokens without position
    (the object pointers).

    Parameters
    ----------
    embedding_dim : int
        Width of the queries and of the output.
    num_heads : int
        Heads.
    kv_in_dim : int, optional
        Width of the keys and values (``embedding_dim`` when not given).
    rope_theta : float
        RoPE base.
    rope_k_repeat : bool
        Keys are whole repeats of the query grid.
    """

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        kv_in_dim: int | None = None,
        rope_theta: float = 10000.0,
        rope_k_repeat: bool = False,
    ) -> None:
        super().__init__()
        if embedding_dim % num_heads:
            raise ValueError(f"num_heads ({num_heads}) must divide embedding_dim ({embedding_dim})")
        kv_in_dim = embedding_dim if kv_in_dim is None else kv_in_dim
        self.embedding_dim, self.num_heads = embedding_dim, num_heads
        self.internal_dim = embedding_dim
        self.q_proj = nn.Linear(embedding_dim, embedding_dim)
        self.k_proj = nn.Linear(kv_in_dim, embedding_dim)
        self.v_proj = nn.Linear(kv_in_dim, embedding_dim)
        self.out_proj = nn.Linear(embedding_dim, embedding_dim)
        self.rope_theta = rope_theta
        self.rope_k_repeat = rope_k_repeat
        self._angles: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}

    def _cos_sin(self, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (n, str(device))
        if key not in self._angles:
            side = math.isqrt(n)
            if side * side != n:
                raise ValueError(f"RoPE attention needs a square grid of queries, got {n} tokens")
            with torch.inference_mode(False):  # cached: usable outside inference mode too
                angles = rope_angles(self.internal_dim // self.num_heads, side, side,
                                     self.rope_theta)
                self._angles[key] = (angles.cos().to(device), angles.sin().to(device))
        return self._angles[key]

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_k_exclude_rope: int = 0
    ) -> torch.Tensor:
        """``q`` (B, Nq, C), ``k``/``v`` (B, Nk, C_kv) -> (B, Nq, C)."""
        q, k, v = self._heads(self.q_proj(q)), self._heads(self.k_proj(k)), self._heads(self.v_proj(v))
        nq = q.shape[-2]
        cos, sin = self._cos_sin(nq, q.device)
        q = _rotate(q, cos, sin)
        n_rope = k.shape[-2] - num_k_exclude_rope
        if n_rope > 0:
            if n_rope != nq:
                if not self.rope_k_repeat or n_rope % nq:
                    raise ValueError(f"{n_rope} positioned keys for {nq} queries")
                reps = n_rope // nq
                cos, sin = cos.repeat(reps, 1), sin.repeat(reps, 1)
            k = torch.cat([_rotate(k[:, :, :n_rope], cos, sin), k[:, :, n_rope:]], dim=2)
        out = F.scaled_dot_product_attention(q, k, v)
        b, _, n, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, self.internal_dim))


class MemoryAttentionLayer(nn.Module):
    """Self-attention of the frame, cross-attention to the memory, an MLP; pre-norm, residual.

    As configured in SAM 2.1: no positional encoding in the self-attention nor on the
    cross-attention's queries; the memory's positional encoding is added to its keys.
    """

    def __init__(self, d_model: int = 256, dim_feedforward: int = 2048, kv_in_dim: int = 64) -> None:
        super().__init__()
        self.self_attn = RoPEAttention(d_model, num_heads=1)
        self.cross_attn_image = RoPEAttention(d_model, 1, kv_in_dim=kv_in_dim, rope_k_repeat=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(
        self, tgt: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor, num_k_exclude_rope: int = 0
    ) -> torch.Tensor:
        """``tgt`` (B, N, C), ``memory`` and ``pos`` (B, M, C_mem) -> (B, N, C)."""
        x = self.norm1(tgt)
        tgt = tgt + self.self_attn(x, x, x)
        x = self.norm2(tgt)
        tgt = tgt + self.cross_attn_image(x, memory + pos, memory, num_k_exclude_rope)
        x = self.norm3(tgt)
        return tgt + self.linear2(F.relu(self.linear1(x)))


class MemoryAttention(nn.Module):
    """Condition a frame's stride-16 features on the memory bank.

    Parameters
    ----------
    d_model : int
        Width of the image features.
    num_layers : int
        Number of :class:`MemoryAttentionLayer`.
    mem_dim : int
        Width of the memory tokens.
    """

    def __init__(self, d_model: int = 256, num_layers: int = 4, mem_dim: int = 64) -> None:
        super().__init__()
        self.d_model = d_model
        self.layers = nn.ModuleList(
            MemoryAttentionLayer(d_model, kv_in_dim=mem_dim) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model)

    def forward(
        self,
        curr: torch.Tensor,
        curr_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        num_obj_ptr_tokens: int = 0,
    ) -> torch.Tensor:
        """Batch-first tokens.

        Parameters
        ----------
        curr, curr_pos : torch.Tensor, shape (B, h*w, C)
            The frame's features and their positional encoding (row-major, square grid).
        memory, memory_pos : torch.Tensor, shape (B, M, mem_dim)
            Spatial memories (whole grids of ``h*w`` tokens), then ``num_obj_ptr_tokens``
            object-pointer tokens.

        Returns
        -------
        torch.Tensor, shape (B, h*w, C)
        """
        x = curr + 0.1 * curr_pos
        for layer in self.layers:
            x = layer(x, memory, memory_pos, num_k_exclude_rope=num_obj_ptr_tokens)
        return self.norm(x)
