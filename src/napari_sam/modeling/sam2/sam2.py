"""SAM 2 assembled: image encoder, prompt encoder, mask decoder, memory encoder and attention.

:class:`Sam2` decodes prompts on one image (:meth:`Sam2.decode`) and tracks objects through the
frames of a video or the slices of a stack (:meth:`Sam2.track_step`) against a
:class:`MemoryBank` of earlier frames. Parameter names follow Meta's ``sam2`` package, so its
released ``sam2.1_hiera_*.pt`` checkpoints (their ``"model"`` entry) load unchanged.

Coordinates are ``(x, y)`` pixels of the ``image_size`` square model input.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..common import MLP
from .heads import (
    BOX_BOTTOM_RIGHT,
    BOX_TOP_LEFT,
    Sam2MaskDecoder,
    Sam2PromptEncoder,
    sam2_two_way_transformer,
)
from .image_encoder import Sam2ImageEncoder
from .memory import MemoryAttention, MemoryEncoder
from .memory_select import memory_tokens

__all__ = ["NO_OBJ_SCORE", "FrameFeatures", "FrameMemory", "MemoryBank", "Sam2", "SamHeadsOutput"]

#: Mask logit written where the object score says the object is absent.
NO_OBJ_SCORE = -1024.0


@dataclass
class FrameFeatures:
    """The image encoder's output for one frame (batch of one or expanded to the objects).

    Attributes
    ----------
    high_res : list of torch.Tensor
        Projected stride-4 ``(B, C/8, 4h, 4w)`` and stride-8 ``(B, C/4, 2h, 2w)`` features.
    embed : torch.Tensor, shape (B, C, h, w)
        Stride-16 features (no memory).
    pos : torch.Tensor, shape (B, C, h, w)
        Their sine positional encoding.
    """

    high_res: list[torch.Tensor]
    embed: torch.Tensor
    pos: torch.Tensor

    def expand(self, n: int) -> FrameFeatures:
        """The same features viewed as a batch of ``n`` (no copy)."""
        return FrameFeatures(
            [x.expand(n, -1, -1, -1) for x in self.high_res],
            self.embed.expand(n, -1, -1, -1),
            self.pos.expand(n, -1, -1, -1),
        )

    def nbytes(self) -> int:
        """Bytes held (for a size-bounded cache)."""
        return sum(t.element_size() * t.nelement() for t in (*self.high_res, self.embed, self.pos))


@dataclass
class FrameMemory:
    """What tracking keeps of one frame for one object (or a batch ``B`` of objects).

    Attributes
    ----------
    mask_logits : torch.Tensor, shape (B, 1, 4h, 4w)
        The chosen mask's low-resolution logits.
    obj_ptr : torch.Tensor, shape (B, C)
        The object pointer.
    object_score : torch.Tensor, shape (B, 1)
        Object presence logit.
    features, pos : torch.Tensor, shape (B, mem_dim, h, w), optional
        The encoded memory (stored in bfloat16, as Meta's tracker does) and its positional
        encoding; ``None`` until the memory encoder has run.
    iou : torch.Tensor, shape (B,), optional
        The predicted IoU of the chosen mask.
    """

    mask_logits: torch.Tensor
    obj_ptr: torch.Tensor
    object_score: torch.Tensor
    features: torch.Tensor | None = None
    pos: torch.Tensor | None = None
    iou: torch.Tensor | None = None


@dataclass
class MemoryBank:
    """One object's tracking memory: conditioning (prompted) and other tracked frames."""

    cond: dict[int, FrameMemory] = field(default_factory=dict)
    non_cond: dict[int, FrameMemory] = field(default_factory=dict)


@dataclass
class SamHeadsOutput:
    """Output of :meth:`Sam2.decode` for ``B`` prompts; ``M`` is 3 (multimask) or 1.

    ``multi_logits`` (B, M, 4h, 4w), ``ious`` (B, M), ``best_logits`` (B, 1, 4h, 4w),
    ``obj_ptr`` (B, C), ``object_score`` (B, 1).
    """

    multi_logits: torch.Tensor
    ious: torch.Tensor
    best_logits: torch.Tensor
    obj_ptr: torch.Tensor
    object_score: torch.Tensor


class Sam2(nn.Module):
    """SAM 2.1 (inference).

    Parameters
    ----------
    image_encoder : Sam2ImageEncoder
    memory_attention : MemoryAttention
    memory_encoder : MemoryEncoder
    image_size : int
        Side of the square model input (1024 for the released models).
    num_maskmem : int
        Spatial memories attended: the conditioning frames plus ``num_maskmem - 1`` recent ones.
    max_obj_ptrs_in_encoder : int
        Object pointers attended (frames within this distance).
    backbone_stride : int
        Stride of the coarsest kept image level.
    """

    mask_threshold = 0.0
    #: ImageNet statistics of the input, in [0, 1] units, RGB.
    pixel_mean = (0.485, 0.456, 0.406)
    pixel_std = (0.229, 0.224, 0.225)

    def __init__(
        self,
        image_encoder: Sam2ImageEncoder,
        memory_attention: MemoryAttention,
        memory_encoder: MemoryEncoder,
        image_size: int = 1024,
        num_maskmem: int = 7,
        max_obj_ptrs_in_encoder: int = 16,
        backbone_stride: int = 16,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.memory_attention = memory_attention
        self.memory_encoder = memory_encoder
        self.hidden_dim = c = image_encoder.neck.d_model
        out_proj = memory_encoder.out_proj
        self.mem_dim = m = out_proj.weight.shape[0] if hasattr(out_proj, "weight") else c
        self.image_size = image_size
        self.backbone_stride = backbone_stride
        self.num_maskmem = num_maskmem
        self.max_obj_ptrs_in_encoder = max_obj_ptrs_in_encoder
        # SAM 2.1's scaling of the mask fed to the memory encoder (sigmoid * 20 - 10)
        self.sigmoid_scale_for_mem_enc, self.sigmoid_bias_for_mem_enc = 20.0, -10.0

        self.mask_downsample = nn.Conv2d(1, 1, kernel_size=4, stride=4)
        self.maskmem_tpos_enc = nn.Parameter(torch.zeros(num_maskmem, 1, 1, m))
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, c))
        self.no_mem_pos_enc = nn.Parameter(torch.zeros(1, 1, c))
        self.no_obj_ptr = nn.Parameter(torch.zeros(1, c))
        self.no_obj_embed_spatial = nn.Parameter(torch.zeros(1, m))
        for p in (self.maskmem_tpos_enc, self.no_mem_embed, self.no_mem_pos_enc,
                  self.no_obj_ptr, self.no_obj_embed_spatial):
            nn.init.trunc_normal_(p, std=0.02)
        side = image_size // backbone_stride
        self.sam_prompt_encoder = Sam2PromptEncoder(
            embed_dim=c, image_embedding_size=(side, side),
            input_image_size=(image_size, image_size), mask_in_chans=16,
        )
        self.sam_mask_decoder = Sam2MaskDecoder(
            transformer_dim=c, transformer=sam2_two_way_transformer(c)
        )
        self.obj_ptr_proj = MLP(c, c, c, 3)
        self.obj_ptr_tpos_proj = nn.Linear(c, m)

    @property
    def device(self) -> torch.device:
        return self.no_mem_embed.device

    # ---- images -------------------------------------------------------------------------

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` RGB in [0, 255] -> ``(B, 3, S, S)`` normalised model input.

        The image is resized to the square input (not padded; SAM 2's convention), bilinear
        with antialiasing.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
        x = images.float() / 255.0
        s = self.image_size
        if x.shape[-2:] != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        mean = x.new_tensor(self.pixel_mean).view(1, 3, 1, 1)
        std = x.new_tensor(self.pixel_std).view(1, 3, 1, 1)
        return (x - mean) / std

    def forward_image(self, x: torch.Tensor) -> FrameFeatures:
        """Encode normalised ``(B, 3, S, S)`` images (see :meth:`preprocess`)."""
        s = self.image_size
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, s, s):
            raise ValueError(f"the image encoder takes (B, 3, {s}, {s}), got {tuple(x.shape)}")
        out = self.image_encoder(x)
        fpn = self.sam_mask_decoder.project_high_res(out["backbone_fpn"])
        return FrameFeatures(fpn[:2], fpn[2], out["vision_pos_enc"][2])

    # ---- SAM heads ----------------------------------------------------------------------

    def decode(
        self,
        image_embed: torch.Tensor,
        high_res: list[torch.Tensor],
        coords: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        mask_inputs: torch.Tensor | None = None,
        multimask_output: bool = False,
        blank_absent: bool = True,
    ) -> SamHeadsOutput:
        """Run the prompt encoder and the mask decoder for ``B`` prompts.

        Parameters
        ----------
        image_embed : torch.Tensor, shape (B or 1, C, h, w)
            Stride-16 features (with memory, or plus ``no_mem_embed`` for a lone image).
        high_res : list of torch.Tensor
            See :class:`FrameFeatures`.
        coords : torch.Tensor, shape (B, N, 2), optional
            Points ``(x, y)`` in model-input pixels; a box is two points labelled 2 and 3.
        labels : torch.Tensor, shape (B, N), optional
            1 positive, 0 negative, 2/3 box corners, -1 padding.
        mask_inputs : torch.Tensor, shape (B, 1, H', W'), optional
            A mask prompt (logits), resized to ``4h x 4w`` when needed.
        multimask_output : bool
            Three candidates (the best by predicted IoU is ``best_logits``).
        blank_absent : bool
            Where the object score is <= 0, set every logit to ``NO_OBJ_SCORE`` (tracking);
            Meta's image predictor leaves them.
        """
        b = image_embed.shape[0] if coords is None else coords.shape[0]
        device = image_embed.device
        if coords is None:
            coords = torch.zeros(b, 1, 2, device=device)
            labels = -torch.ones(b, 1, dtype=torch.int32, device=device)
        if mask_inputs is not None:
            size = self.sam_prompt_encoder.mask_input_size
            if tuple(mask_inputs.shape[-2:]) != size:
                mask_inputs = F.interpolate(
                    mask_inputs.float(), size=size, mode="bilinear", align_corners=False,
                    antialias=True,
                )
        sparse, dense = self.sam_prompt_encoder((coords, labels), None, mask_inputs)
        logits, ious, tokens, obj_score = self.sam_mask_decoder(
            image_embed, self.sam_prompt_encoder.get_dense_pe(), sparse, dense,
            multimask_output=multimask_output, high_res_features=high_res,
        )
        present = obj_score > 0
        if blank_absent:
            logits = torch.where(present[:, None, None], logits, NO_OBJ_SCORE)
        logits = logits.float()
        token = tokens[:, 0]
        if multimask_output:
            best = ious.argmax(dim=-1)
            rows = torch.arange(b, device=device)
            best_logits = logits[rows, best][:, None]
            if tokens.shape[1] > 1:
                token = tokens[rows, best]
        else:
            best_logits = logits
        present = present.float()
        obj_ptr = present * self.obj_ptr_proj(token) + (1 - present) * self.no_obj_ptr
        return SamHeadsOutput(logits, ious, best_logits, obj_ptr, obj_score)

    def _mask_as_output(self, features: FrameFeatures, mask: torch.Tensor) -> SamHeadsOutput:
        """A given binary mask ``(B, 1, S, S)`` becomes the output (logits -10 / +10)."""
        high = mask.float() * 20.0 - 10.0
        low = F.interpolate(
            high, size=(high.shape[-2] // 4, high.shape[-1] // 4), mode="bilinear",
            align_corners=False, antialias=True,
        )
        ptr = self.decode(
            features.embed, features.high_res, mask_inputs=self.mask_downsample(mask.float())
        ).obj_ptr
        present = (mask.flatten(1).float() > 0).any(dim=1, keepdim=True).float()
        ptr = present * ptr + (1 - present) * self.no_obj_ptr
        ious = mask.new_ones(mask.shape[0], 1).float()
        return SamHeadsOutput(low, ious, low, ptr, present * 20.0 - 10.0)

    # ---- memory -------------------------------------------------------------------------

    def encode_memory(
        self,
        embed: torch.Tensor,
        high_res_logits: torch.Tensor,
        object_score: torch.Tensor,
        binarize: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Memory of a frame: ``embed`` (B, C, h, w) and mask logits (B, 1, S, S) ->
        features and positional encoding, both ``(B, mem_dim, h, w)``.

        ``binarize`` (prompted frames) encodes the thresholded mask the user saw, otherwise
        its sigmoid; either is then scaled to [-10, 10].
        """
        mask = (high_res_logits > 0).float() if binarize else torch.sigmoid(high_res_logits)
        mask = mask * self.sigmoid_scale_for_mem_enc + self.sigmoid_bias_for_mem_enc
        feats, pos = self.memory_encoder(embed, mask, skip_mask_sigmoid=True)
        absent = 1.0 - (object_score > 0).float()
        feats = feats + absent[..., None, None] * self.no_obj_embed_spatial[..., None, None]
        return feats, pos

    def condition_on_memory(
        self,
        features: FrameFeatures,
        frame_idx: int,
        bank: MemoryBank | None,
        num_frames: int | None,
        reverse: bool = False,
    ) -> torch.Tensor:
        """The frame's stride-16 features attended to ``bank`` -> ``(B, C, h, w)``.

        Without a bank (a conditioning frame seen for the first time) ``no_mem_embed`` is
        added instead.
        """
        b, c, h, w = features.embed.shape
        if bank is None:
            return features.embed + self.no_mem_embed.view(1, c, 1, 1)
        memory, memory_pos, n_ptr = memory_tokens(self, frame_idx, bank, num_frames, reverse, b)
        curr = features.embed.flatten(2).transpose(1, 2)
        curr_pos = features.pos.flatten(2).transpose(1, 2)
        out = self.memory_attention(curr, curr_pos, memory, memory_pos, n_ptr)
        return out.transpose(1, 2).reshape(b, c, h, w)

    def track_step(
        self,
        features: FrameFeatures,
        frame_idx: int,
        bank: MemoryBank,
        *,
        is_init_cond_frame: bool,
        coords: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        mask_inputs: torch.Tensor | None = None,
        num_frames: int | None = None,
        reverse: bool = False,
        run_mem_encoder: bool = True,
        prev_mask_logits: torch.Tensor | None = None,
    ) -> FrameMemory:
        """Segment one frame for ``B`` objects, given their prompts and memory bank.

        Parameters
        ----------
        features : FrameFeatures
            The frame's features, batch ``B``.
        bank : MemoryBank
            The objects' memory of other frames (not used on an initial conditioning frame).
        is_init_cond_frame : bool
            A prompted frame never tracked before: decoded like SAM, without memory.
        coords, labels : torch.Tensor, optional
            Point prompts ``(B, N, 2)``/``(B, N)`` in model-input pixels.
        mask_inputs : torch.Tensor, shape (B, 1, S, S), optional
            A binary mask prompt, used as the output directly.
        num_frames : int, optional
            Frames in the video (bounds the object pointers).
        reverse : bool
            Tracking towards earlier frames.
        run_mem_encoder : bool
            Encode the result into ``features``/``pos`` of the returned memory.
        prev_mask_logits : torch.Tensor, optional
            Earlier low-resolution logits of this frame, a mask prompt for correction clicks.
        """
        if mask_inputs is not None:
            out = self._mask_as_output(features, mask_inputs)
            high = mask_inputs.float() * 20.0 - 10.0
        else:
            pix = self.condition_on_memory(
                features, frame_idx, None if is_init_cond_frame else bank, num_frames, reverse
            )
            n_points = 0 if labels is None else labels.shape[1]
            out = self.decode(
                pix, features.high_res, coords, labels, mask_inputs=prev_mask_logits,
                multimask_output=n_points <= 1,
            )
            high = self.upsample(out.best_logits)
        memory = FrameMemory(out.best_logits, out.obj_ptr, out.object_score,
                             iou=out.ious.max(dim=-1).values)
        if run_mem_encoder and self.num_maskmem > 0:
            feats, pos = self.encode_memory(
                features.embed, high, out.object_score, binarize=coords is not None
            )
            memory.features, memory.pos = feats.to(torch.bfloat16), pos
        return memory

    def upsample(self, low_logits: torch.Tensor) -> torch.Tensor:
        """Low-resolution logits ``(B, M, 4h, 4w)`` -> the model input's ``(B, M, S, S)``."""
        s = self.image_size
        return F.interpolate(low_logits, size=(s, s), mode="bilinear", align_corners=False)

    def prompt_points(
        self,
        coords: torch.Tensor | None,
        labels: torch.Tensor | None,
        boxes: torch.Tensor | None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Points and boxes as SAM 2's point list: a box's corners first (labels 2, 3).

        ``coords`` (B, N, 2), ``labels`` (B, N), ``boxes`` (B, 4) ``x0, y0, x1, y1`` in
        model-input pixels -> ``(B, N', 2)`` coords and int32 ``(B, N')`` labels.
        """
        if boxes is None:
            return coords, None if labels is None else labels.to(torch.int32)
        corners = boxes.reshape(-1, 2, 2).float()
        corner_labels = torch.tensor(
            [[BOX_TOP_LEFT, BOX_BOTTOM_RIGHT]], dtype=torch.int32, device=boxes.device
        ).expand(corners.shape[0], -1)
        if coords is None:
            return corners, corner_labels
        return torch.cat([corners, coords], 1), torch.cat([corner_labels, labels.to(torch.int32)], 1)
