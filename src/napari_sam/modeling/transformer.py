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
        prepared: dict | None = None,
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
        prepared : dict, optional
            :meth:`prepare` of a batch-of-one image and its encoding, which are then not read
            (pass None for them): the first layer's image-side work is done once per image.

        Returns
        -------
        queries : torch.Tensor, shape (B, N, C)
            The updated tokens.
        keys : torch.Tensor, shape (B, h * w, C)
            The updated image tokens, in row-major order.
        """
        queries, layers = point_embedding, self.layers
        if prepared is None:
            # Contiguous once here, rather than copied by every projection of the image tokens.
            keys = image_embedding.flatten(2).transpose(1, 2).contiguous()  # (B, h*w, C)
            key_pe = image_pe.flatten(2).transpose(1, 2).contiguous()
        else:
            key_pe = prepared["key_pe"]
            queries, keys = layers[0].forward_prepared(queries, point_embedding, prepared)
            layers = layers[1:]
        for layer in layers:
            queries, keys = layer(queries, keys, query_pe=point_embedding, key_pe=key_pe)
        q = queries + point_embedding
        k = keys + key_pe
        queries = queries + self.final_attn_token_to_image(q=q, k=k, v=keys)
        return self.norm_final_attn(queries), keys

    def prepare(self, image_embedding: torch.Tensor, image_pe: torch.Tensor) -> dict:
        """What the first layer computes from one image alone, for :meth:`forward`'s
        ``prepared``: the image tokens and their encoding ``(1, h*w, C)``, and the first
        layer's projections of them (``(heads, h*w, C' / heads)`` each). A predictor keeps it
        per slice: every click on the slice then skips that work (~a fifth of a decode).

        Parameters
        ----------
        image_embedding, image_pe : torch.Tensor, shape (1, C, h, w)
        """
        if image_embedding.shape[0] != 1 or self.layers[0].skip_first_layer_pe is False:
            raise ValueError("prepare() takes one image and a first layer without query PE")
        keys = image_embedding.flatten(2).transpose(1, 2).contiguous()
        key_pe = image_pe.flatten(2).transpose(1, 2).contiguous()
        first = self.layers[0]
        k = keys + key_pe
        t2i, i2t = first.cross_attn_token_to_image, first.cross_attn_image_to_token
        return {"keys": keys, "key_pe": key_pe,
                "t2i_k": t2i._split_heads(t2i.k_proj(k))[0],
                "t2i_v": t2i._split_heads(t2i.v_proj(keys))[0],
                "i2t_q": i2t._split_heads(i2t.q_proj(k))[0]}


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

    def forward_prepared(self, queries: torch.Tensor, query_pe: torch.Tensor, prepared: dict
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` of the first layer on an image given by
        :meth:`TwoWayTransformer.prepare` (shared by the ``B`` prompts); keys ``(B, h*w, C)``."""
        queries = self.norm1(self.self_attn(q=queries, k=queries, v=queries))
        t2i = self.cross_attn_token_to_image._projected_keys(
            queries + query_pe, prepared["t2i_k"], prepared["t2i_v"])
        queries = self.norm2(queries + t2i)
        queries = self.norm3(queries + self.mlp(queries))
        i2t = self.cross_attn_image_to_token._projected_queries(
            prepared["i2t_q"], queries + query_pe, queries)
        return queries, self.norm4(prepared["keys"] + i2t)


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
        projected once, then broadcast. When one side has a few tokens and the other many (the
        decoder's cross-attentions: ~7 prompt tokens, 4096 image tokens), the projections of
        the many tokens are folded into the few (:meth:`_few_queries`, :meth:`_few_keys`)
        whenever that costs fewer multiplications: the same attention, the products grouped
        differently.
        """
        bq, nq, c = q.shape
        bk, nk, _ = k.shape
        b, ci, heads = max(bq, bk), self.internal_dim, self.num_heads
        # multiplications per token of the longer side, folded vs projected
        if nq < nk and b * heads * nq * c < bk * c * ci + b * ci * nq:
            return self._few_queries(q, k, v)
        if nk < nq and 2 * b * heads * nk * c < bq * c * ci + b * ci * (2 * nk + c):
            return self._few_keys(q, k, v)
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

    def _few_queries(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` for a few queries and many keys, without projecting the keys.

        Per head ``h``: ``q_h k_proj(k)_h^T = (q_h W_k,h) k^T + const`` (the key bias adds the
        same to every score of a query, which the softmax ignores), and
        ``softmax(.) v_proj(v)_h = (softmax(.) v) W_v,h^T + b_v,h`` (the weights sum to one).
        """
        heads, ci = self.num_heads, self.internal_dim
        d = ci // heads
        bq, nq, c = q.shape
        b = max(bq, k.shape[0])
        qh = self._split_heads(self.q_proj(q))  # (Bq, heads, Nq, d)
        folded = qh @ self.k_proj.weight.view(heads, d, c) * d**-0.5  # (Bq, heads, Nq, C)
        folded = folded.reshape(bq, heads * nq, c)
        scores = _matmul(folded, k.transpose(1, 2))  # (B, heads * Nq, Nk)
        mixed = _matmul(scores.softmax(dim=-1), v).view(b, heads, nq, c)  # (B, heads, Nq, C)
        out = mixed @ self.v_proj.weight.view(heads, d, c).transpose(1, 2)  # (B, heads, Nq, d)
        out = out + self.v_proj.bias.view(1, heads, 1, d)
        return self.out_proj(out.transpose(1, 2).reshape(b, nq, ci))

    def _few_keys(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` for many queries and a few keys, without projecting the queries.

        Per head ``h``: ``q_proj(q)_h k_h^T = q (W_q,h^T k_h^T) + b_q,h k_h^T``, and the output
        projection of ``softmax(.) v_h`` is ``softmax(.) (v_h W_o,h^T)``: every product with the
        many queries has ``heads * Nk`` columns instead of the attention's width.
        """
        heads, ci = self.num_heads, self.internal_dim
        d = ci // heads
        bq, nq, c = q.shape
        bk, nk, _ = k.shape
        b = max(bq, bk)
        kh = self._split_heads(self.k_proj(k))  # (Bk, heads, Nk, d)
        vh = self._split_heads(self.v_proj(v))
        scale = d**-0.5
        w_q = self.q_proj.weight.view(heads, d, c)
        keys = (kh @ w_q * scale).reshape(bk, heads * nk, c)  # (Bk, heads * Nk, C)
        shift = (kh @ self.q_proj.bias.view(heads, d, 1) * scale).reshape(bk, 1, heads * nk)
        # scores with the queries last: a softmax over a short last axis is ~40x slower on CPUs
        scores = _matmul(keys, q.transpose(1, 2)) + shift.transpose(1, 2)  # (B, heads*Nk, Nq)
        weights = scores.view(b, heads, nk, nq).softmax(dim=2).view(b, heads * nk, nq)
        w_o = self.out_proj.weight.view(c, heads, d).permute(1, 2, 0)  # (heads, d, C)
        values = (vh @ w_o).reshape(bk, heads * nk, c)  # (Bk, heads * Nk, C)
        return _matmul(weights.transpose(1, 2), values) + self.out_proj.bias

    def _projected_keys(self, q: torch.Tensor, kh: torch.Tensor, vh: torch.Tensor
                        ) -> torch.Tensor:
        """:meth:`forward` of queries ``(B, Nq, C)`` on keys and values already projected and
        split into heads, ``(heads, Nk, d)``, shared by the batch."""
        b, nq, _ = q.shape
        heads, _, d = kh.shape
        qh = self.q_proj(q).view(b * nq, heads, d).transpose(0, 1)  # (heads, B * Nq, d)
        out = F.scaled_dot_product_attention(qh, kh, vh)
        return self.out_proj(out.transpose(0, 1).reshape(b, nq, heads * d))

    def _projected_queries(self, qh: torch.Tensor, k: torch.Tensor, v: torch.Tensor
                           ) -> torch.Tensor:
        """:meth:`forward` of queries already projected and split into heads, ``(heads, Nq,
        d)`` shared by the batch, on keys and values ``(B, Nk, C)``; the output projection is
        folded into the values as in :meth:`_few_keys`. Returns ``(B, Nq, C)``."""
        heads, nq, d = qh.shape
        b, nk, c = k.shape
        kh = self.k_proj(k).view(b * nk, heads, d).transpose(0, 1)  # (heads, B * Nk, d)
        scores = kh @ qh.transpose(1, 2) * d**-0.5  # (heads, B * Nk, Nq): softmax not last
        weights = scores.view(heads, b, nk, nq).softmax(dim=2).transpose(0, 1)
        vh = self.v_proj(v).view(b, nk, heads, d)
        w_o = self.out_proj.weight.view(c, heads, d)
        values = torch.einsum("bkhd,chd->bhkc", vh, w_o).reshape(b, heads * nk, c)
        weights = weights.reshape(b, heads * nk, nq)
        return weights.transpose(1, 2) @ values + self.out_proj.bias


def _matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for ``(Ba, n, m)`` and ``(Bb, m, p)`` with ``Ba``, ``Bb`` equal or 1, without
    materialising a broadcast batch of the larger operand."""
    if a.shape[0] == b.shape[0]:
        return a @ b
    if b.shape[0] == 1:
        return a @ b[0]
    n, m = a.shape[1:]
    return (a[0] @ b.transpose(0, 1).reshape(m, -1)).view(n, b.shape[0], -1).transpose(0, 1)
