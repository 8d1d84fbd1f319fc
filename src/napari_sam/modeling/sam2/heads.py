"""SAM 2's prompt encoder and mask decoder.

The prompt encoder is SAM's, with box corners also accepted as labelled points (labels 2 and 3,
how SAM 2's video tracker passes boxes). The mask decoder adds to SAM's: an object-score token
and head (is the object present at all?), high-resolution skip features from the image
encoder's stride-4 and stride-8 levels, a sigmoid on the IoU head, and the dynamic choice of
a multimask candidate when the single-output mask is unstable.
"""

from __future__ import annotations

import torch
from torch import nn

from ..common import MLP, LayerNorm2d
from ..prompt_encoder import PromptEncoder
from ..transformer import TwoWayTransformer

__all__ = ["BOX_BOTTOM_RIGHT", "BOX_TOP_LEFT", "Sam2MaskDecoder", "Sam2PromptEncoder",
           "sam2_two_way_transformer"]

#: Point labels of a box's corners when a box is passed as two points.
BOX_TOP_LEFT, BOX_BOTTOM_RIGHT = 2, 3


class Sam2PromptEncoder(PromptEncoder):
    """SAM's prompt encoder accepting point labels -1, 0, 1, 2 (box top-left), 3 (bottom-right)."""

    point_labels = (0, 1, 2, 3)


def sam2_two_way_transformer(embedding_dim: int = 256) -> TwoWayTransformer:
    """The two-way transformer of SAM 2's decoder (depth 2, 8 heads, MLP 2048).

    SAM 2 names the token MLP's layers ``mlp.layers.{0,1}`` (SAM: ``mlp.lin1/lin2``); the
    computation is the same (ReLU between two linear layers).
    """
    transformer = TwoWayTransformer(depth=2, embedding_dim=embedding_dim, num_heads=8, mlp_dim=2048)
    for layer in transformer.layers:
        layer.mlp = MLP(embedding_dim, 2048, embedding_dim, 2)
    return transformer


class Sam2MaskDecoder(nn.Module):
    """Predict masks, their IoU and an object score from image and prompt embeddings.

    Parameters
    ----------
    transformer_dim : int
        Width ``C`` of the embeddings (a multiple of 8).
    transformer : nn.Module
        The two-way transformer (:func:`sam2_two_way_transformer`).
    num_multimask_outputs : int
        Number ``K`` of candidate masks.
    iou_head_depth, iou_head_hidden_dim : int
        Layers and hidden width of the IoU head.
    use_high_res_features : bool
        Add the stride-4 and stride-8 features into the upscaling path (``conv_s0``,
        ``conv_s1`` project them; :meth:`project_high_res` does it once per image).
    iou_prediction_use_sigmoid : bool
        Apply a sigmoid to the IoU head.
    pred_obj_scores, pred_obj_scores_mlp : bool
        Predict an object-presence logit, with a 3-layer MLP (else a linear layer).
    use_multimask_token_for_obj_ptr : bool
        With multimask output, return the candidates' tokens (else the single-mask token).
    dynamic_multimask_via_stability : bool
        For single-mask output at inference, fall back to the best candidate when the
        single mask's stability (IoU of its masks thresholded at +-delta) is below ``thresh``.
    dynamic_multimask_stability_delta, dynamic_multimask_stability_thresh : float
    """

    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: nn.Module,
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
        use_high_res_features: bool = True,
        iou_prediction_use_sigmoid: bool = True,
        pred_obj_scores: bool = True,
        pred_obj_scores_mlp: bool = True,
        use_multimask_token_for_obj_ptr: bool = True,
        dynamic_multimask_via_stability: bool = True,
        dynamic_multimask_stability_delta: float = 0.05,
        dynamic_multimask_stability_thresh: float = 0.98,
    ) -> None:
        super().__init__()
        if transformer_dim % 8:
            raise ValueError(f"transformer_dim must be a multiple of 8, got {transformer_dim}")
        c = transformer_dim
        self.transformer_dim = c
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, c)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, c)
        self.pred_obj_scores = pred_obj_scores
        if pred_obj_scores:
            self.obj_score_token = nn.Embedding(1, c)
        self.use_multimask_token_for_obj_ptr = use_multimask_token_for_obj_ptr
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(c, c // 4, kernel_size=2, stride=2),
            LayerNorm2d(c // 4),
            nn.GELU(),
            nn.ConvTranspose2d(c // 4, c // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.use_high_res_features = use_high_res_features
        if use_high_res_features:
            self.conv_s0 = nn.Conv2d(c, c // 8, kernel_size=1)
            self.conv_s1 = nn.Conv2d(c, c // 4, kernel_size=1)
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(c, c, c // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(
            c, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth,
            sigmoid_output=iou_prediction_use_sigmoid,
        )
        if pred_obj_scores:
            self.pred_obj_score_head = MLP(c, c, 1, 3) if pred_obj_scores_mlp else nn.Linear(c, 1)
        self.dynamic_multimask_via_stability = dynamic_multimask_via_stability
        self.dynamic_multimask_stability_delta = dynamic_multimask_stability_delta
        self.dynamic_multimask_stability_thresh = dynamic_multimask_stability_thresh

    def project_high_res(self, fpn: list[torch.Tensor]) -> list[torch.Tensor]:
        """Project the stride-4 and stride-8 levels of ``fpn`` (finest first) with
        ``conv_s0`` / ``conv_s1``; the other levels are returned as they are."""
        if not self.use_high_res_features:
            return list(fpn)
        return [self.conv_s0(fpn[0]), self.conv_s1(fpn[1]), *fpn[2:]]

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
        high_res_features: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decode a batch of ``B`` prompts on ``B`` (or one shared) image embeddings.

        Parameters
        ----------
        image_embeddings : torch.Tensor, shape (B or 1, C, h, w)
        image_pe : torch.Tensor, shape (1, C, h, w)
        sparse_prompt_embeddings : torch.Tensor, shape (B, N, C)
        dense_prompt_embeddings : torch.Tensor, shape (B, C, h, w)
        multimask_output : bool
            Return the ``K`` candidates instead of the single-output mask.
        high_res_features : [torch.Tensor, torch.Tensor], optional
            Projected stride-4 ``(B or 1, C/8, 4h, 4w)`` and stride-8 ``(B or 1, C/4, 2h, 2w)``
            features (required with ``use_high_res_features``).

        Returns
        -------
        masks : torch.Tensor, shape (B, K or 1, 4h, 4w)
            Mask logits.
        iou_pred : torch.Tensor, shape (B, K or 1)
        tokens : torch.Tensor, shape (B, K or 1, C)
            The mask tokens behind the returned masks (the object pointer's source).
        object_score_logits : torch.Tensor, shape (B, 1)
            Object presence logit (10 when the model does not predict it).
        """
        masks, iou_pred, mask_tokens, obj_logits = self.predict_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings,
            high_res_features,
        )
        if multimask_output:
            masks, iou_pred = masks[:, 1:], iou_pred[:, 1:]
        elif self.dynamic_multimask_via_stability and not self.training:
            masks, iou_pred = self._stable_or_best(masks, iou_pred)
        else:
            masks, iou_pred = masks[:, :1], iou_pred[:, :1]
        if multimask_output and self.use_multimask_token_for_obj_ptr:
            tokens = mask_tokens[:, 1:]
        else:
            # the single-mask token, even after one click: tracking was trained on it
            tokens = mask_tokens[:, :1]
        return masks, iou_pred, tokens, obj_logits

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        high_res_features: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """All ``K + 1`` masks ``(B, K+1, 4h, 4w)``, IoUs ``(B, K+1)``, mask tokens
        ``(B, K+1, C)`` and object logits ``(B, 1)``; see :meth:`forward`."""
        if sparse_prompt_embeddings.ndim != 3:
            raise ValueError(
                "sparse_prompt_embeddings must have shape (B, N, C), "
                f"got {tuple(sparse_prompt_embeddings.shape)}"
            )
        bs = sparse_prompt_embeddings.shape[0]
        if image_embeddings.ndim != 4 or image_embeddings.shape[0] not in (1, bs):
            raise ValueError(
                f"image_embeddings must have shape (1 or {bs}, C, h, w), "
                f"got {tuple(image_embeddings.shape)}"
            )
        if self.use_high_res_features and (high_res_features is None or len(high_res_features) != 2):
            raise ValueError("this decoder needs the two projected high-resolution feature maps")
        first = [self.obj_score_token.weight] if self.pred_obj_scores else []
        output_tokens = torch.cat([*first, self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens[None].expand(bs, -1, -1), sparse_prompt_embeddings], 1)
        src = image_embeddings.expand(bs, -1, -1, -1) + dense_prompt_embeddings
        pos_src = image_pe.expand(bs, -1, -1, -1)
        b, c, h, w = src.shape
        hs, src = self.transformer(src, pos_src, tokens)
        s = len(first)
        iou_token_out = hs[:, s]
        mask_tokens_out = hs[:, s + 1 : s + 1 + self.num_mask_tokens]

        grid = src.transpose(1, 2).reshape(b, c, h, w)
        if self.use_high_res_features:
            up1, norm, act1, up2, act2 = self.output_upscaling
            feat_s0, feat_s1 = high_res_features
            upscaled = act1(norm(up1(grid) + feat_s1))
            upscaled = act2(up2(upscaled) + feat_s0)
        else:
            upscaled = self.output_upscaling(grid)
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
            dim=1,
        )  # (B, K + 1, C / 8)
        b, c8, hh, ww = upscaled.shape
        masks = (hyper_in @ upscaled.reshape(b, c8, hh * ww)).reshape(b, -1, hh, ww)
        iou_pred = self.iou_prediction_head(iou_token_out)
        if self.pred_obj_scores:
            obj_logits = self.pred_obj_score_head(hs[:, 0])
        else:
            obj_logits = iou_pred.new_full((iou_pred.shape[0], 1), 10.0)
        return masks, iou_pred, mask_tokens_out, obj_logits

    def stability_scores(self, mask_logits: torch.Tensor) -> torch.Tensor:
        """IoU of ``logits > delta`` and ``logits > -delta`` per mask: ``(B, M, H, W) -> (B, M)``."""
        flat = mask_logits.flatten(-2)
        delta = self.dynamic_multimask_stability_delta
        inter = (flat > delta).sum(-1).float()
        union = (flat > -delta).sum(-1).float()
        return torch.where(union > 0, inter / union, 1.0)

    def _stable_or_best(
        self, masks: torch.Tensor, iou_pred: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The single-output mask where stable, else the candidate with the best IoU."""
        best = iou_pred[:, 1:].argmax(dim=-1)
        rows = torch.arange(masks.shape[0], device=masks.device)
        best_masks = masks[:, 1:][rows, best][:, None]
        best_iou = iou_pred[:, 1:][rows, best][:, None]
        stable = self.stability_scores(masks[:, :1]) >= self.dynamic_multimask_stability_thresh
        out_masks = torch.where(stable[..., None, None], masks[:, :1], best_masks)
        out_iou = torch.where(stable, iou_pred[:, :1], best_iou)
        return out_masks, out_iou
