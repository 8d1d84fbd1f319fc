"""SAM's prompt encoder: points and boxes become sparse tokens, a mask becomes a dense map.

Coordinates are SAM's model-input frame: ``(x, y)`` in pixels of the padded ``img_size`` square
(``x`` along the columns). Callers holding ``(row, col)`` data swap the axes first.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .common import LayerNorm2d

__all__ = ["PositionEmbeddingRandom", "PromptEncoder"]

#: Point labels: a padding token, a negative (background) and a positive (foreground) point.
NOT_A_POINT, NEGATIVE_POINT, POSITIVE_POINT = -1, 0, 1


class PromptEncoder(nn.Module):
    """Encode point, box and mask prompts for the mask decoder.

    Parameters
    ----------
    embed_dim : int
        Width ``C`` of the prompt embeddings (the mask decoder's width).
    image_embedding_size : (int, int)
        ``(h, w)`` of the image embedding.
    input_image_size : (int, int)
        ``(H, W)`` of the padded model input, in pixels; point coordinates are relative to it.
    mask_in_chans : int
        Hidden channels of the mask downscaling convolutions (a multiple of 4).
    activation : type of nn.Module
        Activation of the mask downscaling convolutions.

    Attributes
    ----------
    point_labels : tuple of int
        The point labels that take a type embedding (label ``k``: ``point_embeddings[k]``);
        other labels get none (``NOT_A_POINT`` its own). SAM's points are 0 (negative) and 1
        (positive); box corners are embedded by the box path.
    """

    point_labels: tuple[int, ...] = (NEGATIVE_POINT, POSITIVE_POINT)

    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: tuple[int, int],
        input_image_size: tuple[int, int],
        mask_in_chans: int,
        activation: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        if embed_dim % 2:
            raise ValueError(f"embed_dim must be even (sin and cos halves), got {embed_dim}")
        if mask_in_chans < 4 or mask_in_chans % 4:
            raise ValueError(f"mask_in_chans must be a positive multiple of 4, got {mask_in_chans}")
        self.embed_dim = embed_dim
        self.image_embedding_size = (int(image_embedding_size[0]), int(image_embedding_size[1]))
        self.input_image_size = (int(input_image_size[0]), int(input_image_size[1]))
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)

        # Learned type embeddings: negative point, positive point, box top-left, box bottom-right.
        self.num_point_embeddings = 4
        self.point_embeddings = nn.ModuleList(
            nn.Embedding(1, embed_dim) for _ in range(self.num_point_embeddings)
        )
        self.not_a_point_embed = nn.Embedding(1, embed_dim)

        # Mask prompts come at 4x the embedding resolution and are reduced by two stride-2 convs.
        self.mask_input_size = (4 * self.image_embedding_size[0], 4 * self.image_embedding_size[1])
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            activation(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            activation(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of every cell of the image embedding.

        Returns
        -------
        torch.Tensor, shape (1, C, h, w)
        """
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed a batch of ``B`` prompts (one object each).

        Parameters
        ----------
        points : (torch.Tensor, torch.Tensor), optional
            ``coords`` of shape (B, N, 2), ``(x, y)`` in input-image pixels, and ``labels`` of
            shape (B, N): 1 positive, 0 negative, -1 padding (ignored).
        boxes : torch.Tensor, shape (B, 4), optional
            Boxes ``(x0, y0, x1, y1)`` in input-image pixels.
        masks : torch.Tensor, shape (B, 1, 4h, 4w), optional
            Mask logits at four times the image-embedding resolution (``B`` may be 1 for all).

        Returns
        -------
        sparse : torch.Tensor, shape (B, N', C)
            One token per point and two per box (its corners). Points without a box get one
            padding token appended, as in SAM's training.
        dense : torch.Tensor, shape (B, C, h, w)
            The embedded mask, or the learned "no mask" embedding everywhere.
        """
        bs = self._batch_size(points, boxes, masks)
        device = self.point_embeddings[0].weight.device
        dtype = self.point_embeddings[0].weight.dtype
        tokens = [torch.empty((bs, 0, self.embed_dim), device=device, dtype=dtype)]
        if points is not None:
            coords, labels = points
            tokens.append(self._embed_points(coords, labels, pad=boxes is None))
        if boxes is not None:
            tokens.append(self._embed_boxes(boxes))
        sparse = torch.cat(tokens, dim=1)

        if masks is not None:
            dense = self.mask_downscaling(masks.to(dtype))
        else:
            h, w = self.image_embedding_size
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(bs, -1, h, w)
        return sparse, dense

    def _batch_size(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> int:
        """Check the prompts' shapes and return their common batch size."""
        sizes = {}
        if points is not None:
            if not isinstance(points, (tuple, list)) or len(points) != 2:
                raise ValueError("points must be a (coords, labels) pair of tensors")
            coords, labels = points
            if coords.ndim != 3 or coords.shape[-1] != 2:
                raise ValueError(
                    f"point coords must have shape (B, N, 2), got {tuple(coords.shape)}"
                )
            if tuple(labels.shape) != tuple(coords.shape[:2]):
                raise ValueError(
                    f"point labels must have shape (B, N) = {tuple(coords.shape[:2])}, "
                    f"got {tuple(labels.shape)}"
                )
            sizes["points"] = coords.shape[0]
        if boxes is not None:
            if (
                boxes.ndim not in (2, 3)
                or boxes.shape[-1] != 4
                or (boxes.ndim == 3 and boxes.shape[1] != 1)
            ):
                raise ValueError(f"boxes must have shape (B, 4), got {tuple(boxes.shape)}")
            sizes["boxes"] = boxes.shape[0]
        if masks is not None:
            expected = (1, *self.mask_input_size)
            if masks.ndim != 4 or tuple(masks.shape[1:]) != expected:
                raise ValueError(
                    f"masks must have shape (B, 1, {expected[1]}, {expected[2]}), "
                    f"got {tuple(masks.shape)}"
                )
        if len(set(sizes.values())) > 1:
            raise ValueError(f"the prompts disagree on the batch size: {sizes}")
        if sizes:
            bs = next(iter(sizes.values()))
        else:
            bs = 1 if masks is None else masks.shape[0]
        if masks is not None and masks.shape[0] not in (1, bs):
            raise ValueError(f"{masks.shape[0]} mask prompts for a batch of {bs} prompts")
        return bs

    def _embed_points(self, coords: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        """``(B, N, 2)`` coords and ``(B, N)`` labels -> ``(B, N [+ 1], C)`` tokens."""
        coords = coords + 0.5  # pixel centres
        if pad:
            coords = torch.cat([coords, coords.new_zeros((coords.shape[0], 1, 2))], dim=1)
            labels = torch.cat([labels, labels.new_full((labels.shape[0], 1), NOT_A_POINT)], dim=1)
        emb = self.pe_layer.forward_with_coords(coords, self.input_image_size)
        labels = labels[..., None]
        emb = torch.where(labels == NOT_A_POINT, self.not_a_point_embed.weight, emb)
        for label in self.point_labels:  # label k takes the k-th type embedding
            emb = emb + torch.where(labels == label, self.point_embeddings[label].weight, 0.0)
        return emb

    def _embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """``(B, 4)`` boxes ``(x0, y0, x1, y1)`` -> ``(B, 2, C)`` corner tokens."""
        corners = (boxes + 0.5).reshape(-1, 2, 2)  # pixel centres
        emb = self.pe_layer.forward_with_coords(corners, self.input_image_size)
        corner_types = torch.cat([self.point_embeddings[2].weight, self.point_embeddings[3].weight])
        return emb + corner_types


class PositionEmbeddingRandom(nn.Module):
    """Positional encoding with random spatial frequencies (random Fourier features).

    A point ``p`` in ``[0, 1]^2`` is encoded as ``[sin(2 pi f), cos(2 pi f)]`` with
    ``f = (2 p - 1) @ G`` and a fixed Gaussian matrix ``G`` of shape ``(2, num_pos_feats)``.

    Parameters
    ----------
    num_pos_feats : int
        Number of frequencies; the encoding has ``2 * num_pos_feats`` channels.
    scale : float, optional
        Standard deviation of the frequencies (1 when not positive or not given).
    """

    def __init__(self, num_pos_feats: int = 64, scale: float | None = None) -> None:
        super().__init__()
        if scale is None or scale <= 0.0:
            scale = 1.0
        # Part of the checkpoint: the official weights fix these frequencies.
        self.register_buffer(
            "positional_encoding_gaussian_matrix", scale * torch.randn((2, num_pos_feats))
        )

    def _pe_encoding(self, coords: torch.Tensor) -> torch.Tensor:
        """``(..., 2)`` coordinates ``(x, y)`` in ``[0, 1]`` -> ``(..., 2 * num_pos_feats)``."""
        matrix = self.positional_encoding_gaussian_matrix
        freqs = (2 * coords.float() - 1) @ matrix.float()
        freqs = 2 * math.pi * freqs
        return torch.cat([torch.sin(freqs), torch.cos(freqs)], dim=-1).to(matrix.dtype)

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        """Encode the centres of an ``(h, w)`` grid.

        Returns
        -------
        torch.Tensor, shape (2 * num_pos_feats, h, w)
        """
        h, w = size
        device = self.positional_encoding_gaussian_matrix.device
        y = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
        x = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
        grid = torch.stack(torch.broadcast_tensors(x[None, :], y[:, None]), dim=-1)  # (h, w, 2)
        return self._pe_encoding(grid).permute(2, 0, 1)

    def forward_with_coords(
        self, coords: torch.Tensor, image_size: tuple[int, int]
    ) -> torch.Tensor:
        """Encode points given in pixels.

        Parameters
        ----------
        coords : torch.Tensor, shape (B, N, 2)
            ``(x, y)`` in pixels of an image of ``image_size``.
        image_size : (int, int)
            ``(H, W)`` of that image.

        Returns
        -------
        torch.Tensor, shape (B, N, 2 * num_pos_feats)
        """
        h, w = image_size
        size_xy = torch.tensor([w, h], dtype=torch.float32, device=coords.device)
        return self._pe_encoding(coords.float() / size_xy)
