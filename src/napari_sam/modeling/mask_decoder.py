"""SAM's mask decoder: output tokens read the image through the two-way transformer.

Learned output tokens (one IoU token and ``num_multimask_outputs + 1`` mask tokens) are decoded
together with the prompt tokens. Each mask token drives a small hypernetwork MLP whose output is
dotted with the upscaled image embedding to give one mask; the IoU token predicts each mask's
quality. Mask 0 is the single-output mask (for unambiguous prompts), masks ``1..K`` the
multimask candidates (for an ambiguous prompt such as one point).
"""

from __future__ import annotations

import torch
from torch import nn

from .common import MLP, LayerNorm2d

__all__ = ["MaskDecoder"]


class MaskDecoder(nn.Module):
    """Predict masks and their quality from an image embedding and prompt embeddings.

    Parameters
    ----------
    transformer_dim : int
        Width ``C`` of the image embedding, the prompt tokens and the transformer (a multiple of
        8).
    transformer : nn.Module
        A :class:`~napari_sam.modeling.transformer.TwoWayTransformer` of width ``C``.
    num_multimask_outputs : int
        Number ``K`` of candidate masks for ambiguous prompts.
    activation : type of nn.Module
        Activation of the upscaling convolutions.
    iou_head_depth : int
        Number of layers of the IoU prediction MLP.
    iou_head_hidden_dim : int
        Hidden width of the IoU prediction MLP.
    """

    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: nn.Module,
        num_multimask_outputs: int = 3,
        activation: type[nn.Module] = nn.GELU,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        if transformer_dim % 8:
            raise ValueError(f"transformer_dim must be a multiple of 8, got {transformer_dim}")
        if num_multimask_outputs < 1:
            raise ValueError(f"num_multimask_outputs must be >= 1, got {num_multimask_outputs}")
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.num_mask_tokens = num_multimask_outputs + 1

        self.iou_token = nn.Embedding(1, transformer_dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)

        # Two stride-2 transposed convs: embedding resolution x4, channels / 8.
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            activation(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            activation(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3)
            for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(
            transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth
        )

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
        prepared: dict | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode masks for a batch of ``B`` prompts.

        Parameters
        ----------
        image_embeddings : torch.Tensor, shape (1, C, h, w) or (B, C, h, w)
            One image embedding shared by all ``B`` prompts, or one per prompt.
        image_pe : torch.Tensor, shape (1, C, h, w) or (B, C, h, w)
            Positional encoding of the embedding (:meth:`PromptEncoder.get_dense_pe`), or one
            per prompt (windows of it, with one window of the embedding per prompt).
        sparse_prompt_embeddings : torch.Tensor, shape (B, N, C)
            Point and box tokens from the prompt encoder.
        dense_prompt_embeddings : torch.Tensor, shape (B, C, h, w) or (1, C, h, w)
            Mask-prompt embedding from the prompt encoder.
        multimask_output : bool
            Return the ``K`` candidate masks instead of the single-output mask.
        prepared : dict, optional
            :meth:`prepare` of this (batch-of-one) image, its encoding and the no-mask dense
            embedding; the image, encoding and dense embedding passed are then used for their
            shapes only.

        Returns
        -------
        masks : torch.Tensor, shape (B, K or 1, 4h, 4w)
            Mask logits at four times the embedding resolution.
        iou_pred : torch.Tensor, shape (B, K or 1)
            Predicted IoU of each mask.
        """
        masks, iou_pred = self.predict_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings,
            prepared
        )
        selected = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, selected], iou_pred[:, selected]

    def prepare(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor,
                dense_prompt_embeddings: torch.Tensor) -> dict:
        """The decoder's work that depends on the image only, for ``prepared``
        (:meth:`TwoWayTransformer.prepare`): one image ``(1, C, h, w)``, its encoding, and the
        dense embedding of "no mask" (``(1, C, h, w)`` or an expanded view)."""
        return self.transformer.prepare(image_embeddings + dense_prompt_embeddings[:1],
                                        image_pe)

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        prepared: dict | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All ``K + 1`` masks ``(B, K + 1, 4h, 4w)`` and IoU predictions ``(B, K + 1)``.

        See :meth:`forward` for the parameters.
        """
        if sparse_prompt_embeddings.ndim != 3:
            raise ValueError(
                "sparse_prompt_embeddings must have shape (B, N, C), "
                f"got {tuple(sparse_prompt_embeddings.shape)}"
            )
        if image_embeddings.ndim != 4:
            raise ValueError(
                "image_embeddings must have shape (B, C, h, w), "
                f"got {tuple(image_embeddings.shape)}"
            )
        bs = sparse_prompt_embeddings.shape[0]
        if image_embeddings.shape[0] not in (1, bs):
            raise ValueError(
                f"{image_embeddings.shape[0]} image embeddings for {bs} prompts: pass one "
                "embedding for all prompts or one per prompt"
            )

        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens[None].expand(bs, -1, -1)
        tokens = torch.cat([output_tokens, sparse_prompt_embeddings], dim=1)

        # One image embedding serves every prompt of the batch. Without mask prompts the dense
        # embedding is the same for every prompt (an expanded view): then the image tokens
        # stay a batch of one into the transformer, which projects them once.
        shared = image_embeddings.shape[0] == 1 and (
            dense_prompt_embeddings.shape[0] == 1 or dense_prompt_embeddings.stride(0) == 0
        )
        _, c, h, w = image_embeddings.shape
        b = bs
        if prepared is not None:  # image, encoding and dense embedding are in it
            hs, src = self.transformer(None, None, tokens, prepared=prepared)
        else:
            if shared:
                src = image_embeddings + dense_prompt_embeddings[:1]
                pos_src = image_pe
            else:
                src = image_embeddings.expand(bs, -1, -1, -1) + dense_prompt_embeddings
                pos_src = image_pe.expand(bs, -1, -1, -1)
            hs, src = self.transformer(src, pos_src, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]

        # src is (B, h*w, C): viewed as a channels-last image without a copy. The transposed
        # convolutions are several times faster on CPUs in that layout.
        grid = src.reshape(b, h, w, c).permute(0, 3, 1, 2)
        upscaled = self.output_upscaling(grid.contiguous(memory_format=torch.channels_last))
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
            dim=1,
        )  # (B, K + 1, C / 8)
        b, c, h, w = upscaled.shape
        pixels = upscaled.permute(0, 2, 3, 1).reshape(b, h * w, c)  # free if channels-last
        masks = (hyper_in @ pixels.transpose(1, 2)).reshape(b, -1, h, w)
        iou_pred = self.iou_prediction_head(iou_token_out)
        return masks, iou_pred
