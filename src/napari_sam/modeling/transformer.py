"""The two-way transformer of SAM's mask decoder.

Prompt tokens and image tokens update each other: tokens attend to themselves, tokens attend to
the image, and the image attends back to the tokens, in every layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import MLPBlock

__all__ = ["Attention", "TwoWayAttentionBlock", "TwoWayTransformer"]


class TwoWayTransformer(nn.Module):
    """A stack of :class:`TwoWayAttentionBlock` and a final token-to-image attention.

    Parameters
    ----------
    depth : int
        Number of two-way blocks.
    embedding_dim : int
        Width ``C`` of the tokens and of the image embedding.
    num_heads : int
        Attention heads; must divide ``embedding_dim / attention_downsample_rate``.
    mlp_dim : int
        Hidden width of the token MLPs.
    activation : type of nn.Module
        Activation of the token MLPs.
    attention_downsample_rate : int
        The cross-attentions project to ``embedding_dim / attention_downsample_rate`` channels.
    """

    def __init__(
        self,
        depth: int,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
    ) -> None:
        super().__init__()
        self.depth = depth
        self.embedding_dim = embedding_dim
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim=embedding_dim,
                num_heads=num_heads,
                mlp_dim=mlp_dim,
                activation=activation,
                attention_downsample_rate=attention_downsample_rate,
                skip_first_layer_pe=(i == 0),
            )
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(
        self,
        image_embedding: torch.Tensor,
        image_pe: torch.Tensor,
        point_embedding: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the two-way transformer.

        Parameters
        ----------
        image_embedding : torch.Tensor, shape (B, C, h, w) or (1, C, h, w)
            The image to attend to. With a batch of one for ``B`` prompts, the image tokens are
            projected once in the first layer (they are the same for every prompt until the
            first image-to-token attention), which saves about a third of the decoder's time
            when many prompts share one image (segment everything, propagation).
        image_pe : torch.Tensor, shape (B, C, h, w) or (1, C, h, w)
            Its positional encoding.
        point_embedding : torch.Tensor, shape (B, N, C)
            The query tokens (output tokens and prompt tokens); also their positional encoding.

        Returns
        -------
        queries : torch.Tensor, shape (B, N, C)
            The updated tokens.
        keys : torch.Tensor, shape (B, h * w, C)
            The updated image tokens, in row-major order.
        """
        # Contiguous once here, rather than copied by every projection of the image tokens.
        keys = image_embedding.flatten(2).transpose(1, 2).contiguous()  # (B, h*w, C)
        key_pe = image_pe.flatten(2).transpose(1, 2).contiguous()
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, query_pe=point_embedding, key_pe=key_pe)
        q = queries + point_embedding
        k = keys + key_pe
        queries = queries + self.final_attn_token_to_image(q=q, k=k, v=keys)
        return self.norm_final_attn(queries), keys


class TwoWayAttentionBlock(nn.Module):
    """One layer of the two-way transformer.

    In order: self-attention of the tokens, cross-attention of the tokens to the image, an MLP
    on the tokens, cross-attention of the image to the tokens. Each step is residual and
    followed by a LayerNorm.

    Parameters
    ----------
    embedding_dim : int
        Width ``C``.
    num_heads : int
        Attention heads.
    mlp_dim : int
        Hidden width of the token MLP.
    activation : type of nn.Module
        Activation of the token MLP.
    attention_downsample_rate : int
        Channel reduction inside the cross-attentions.
    skip_first_layer_pe : bool
        Leave the positional encoding out of the self-attention, and replace the tokens by its
        output instead of adding it (SAM's first layer).
    """

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int = 2048,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
        skip_first_layer_pe: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, activation)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        query_pe: torch.Tensor,
        key_pe: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Update ``queries`` (B, N, C) and ``keys`` (B, h*w, C); the PEs have the same shapes."""
        if self.skip_first_layer_pe:
            queries = self.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q=q, k=q, v=queries)
        queries = self.norm1(queries)

        q = queries + query_pe
        k = keys + key_pe  # the keys do not change until the last step: used twice
        queries = self.norm2(queries + self.cross_attn_token_to_image(q=q, k=k, v=keys))

        queries = self.norm3(queries + self.mlp(queries))

        q = queries + query_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(q=k, k=q, v=queries))
        return queries, keys


class Attention(nn.Module):
    """Multi-head attention whose projections may shrink the channels first.

    Parameters
    ----------
    embedding_dim : int
        Width ``C`` of the inputs and of the output.
    num_heads : int
        Attention heads; must divide ``embedding_dim / downsample_rate``.
    downsample_rate : int
        Queries, keys and values are projected to ``embedding_dim / downsample_rate`` channels.
    """

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        if downsample_rate < 1 or embedding_dim % downsample_rate:
            raise ValueError(
                f"downsample_rate ({downsample_rate}) must divide embedding_dim ({embedding_dim})"
            )
        self.embedding_dim = embedding_dim
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads:
            raise ValueError(
                f"num_heads ({num_heads}) must divide the attention width ({self.internal_dim} "
                f"= {embedding_dim} / {downsample_rate})"
            )
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.v_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, N, C') -> (B, heads, N, C' / heads)``."""
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attend from ``q`` (B, Nq, C) to ``k``, ``v`` (B, Nk, C); returns (B, Nq, C).

        A batch of one in ``q`` or in ``k``/``v`` is shared by the other's batch: it is
        projected once, then broadcast.
        """
        q = self._split_heads(self.q_proj(q))
        k = self._split_heads(self.k_proj(k))
        v = self._split_heads(self.v_proj(v))
        b = max(q.shape[0], k.shape[0])
        if q.shape[0] != b:
            q = q.expand(b, -1, -1, -1)
        if k.shape[0] != b:
            k, v = k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, Nq, C' / heads)
        b, _, n, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, self.internal_dim))
