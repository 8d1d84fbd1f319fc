"""Model configurations, the registry of SAM sizes, and building a network from a config.

>>> from napari_sam.models.configs import build_sam, tiny_config
>>> toy = build_sam(tiny_config())  # random weights, for tests
>>> toy.img_size
64
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial

from torch import nn

from ..modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TinyViT,
    TwoWayTransformer,
)
from ..modeling.sam import IMAGENET_MEAN, IMAGENET_STD
from .microsam import MICROSAM_MODELS

__all__ = [
    "MICROSAM_MODELS",
    "MODEL_ALIASES",
    "MODEL_CONFIGS",
    "SamConfig",
    "build_sam",
    "list_models",
    "resolve_model_name",
    "tiny_config",
]


@dataclass(frozen=True, kw_only=True)
class SamConfig:
    """Hyperparameters of one SAM architecture.

    The encoder fields have no defaults; everything else defaults to the published SAM values.
    Derive variants with :func:`dataclasses.replace`.

    Attributes
    ----------
    img_size : int
        Side of the square model input, in pixels.
    patch_size : int
        Side of the ViT patches; ``img_size`` must be a multiple of it.
    encoder_embed_dim, encoder_depth, encoder_num_heads : int
        Width, number of blocks and attention heads of the image encoder.
    encoder_global_attn_indexes : tuple of int
        Encoder blocks with global attention (the others use windows).
    window_size : int
        Side of the attention windows, in patches.
    encoder_mlp_ratio : float
        Hidden width of the encoder MLPs relative to ``encoder_embed_dim``.
    prompt_embed_dim : int
        Width of the image embedding, the prompt tokens and the mask decoder (multiple of 8).
    mask_in_chans : int
        Hidden channels of the mask-prompt downscaling (multiple of 4).
    decoder_depth, decoder_mlp_dim, decoder_num_heads : int
        Layers, MLP width and heads of the mask decoder's two-way transformer.
    num_multimask_outputs : int
        Candidate masks for ambiguous prompts.
    iou_head_depth, iou_head_hidden_dim : int
        Layers and hidden width of the IoU prediction head.
    pixel_mean, pixel_std : tuple of float
        RGB normalisation of 0..255 pixels.
    encoder_type : {"vit", "tiny_vit"}
        SAM's plain ViT, or MobileSAM's hierarchical TinyViT. For ``"tiny_vit"`` the four
        ``stage_*`` fields describe the encoder; ``encoder_embed_dim``, ``encoder_depth`` and
        ``encoder_num_heads`` must then equal the last stage's width, the total number of blocks
        and the last stage's heads, ``encoder_global_attn_indexes`` must be empty, and
        ``patch_size`` must be 16 (TinyViT's overall stride).
    stage_dims, stage_depths, stage_num_heads, stage_window_sizes : tuple of int
        Width, blocks, attention heads and window side of TinyViT's four stages (the first,
        convolutional, stage has no attention: its heads and window entries are unused).
    max_input_noise : float or None
        Pixel noise (standard deviation as a fraction of the intensity range, at the model's
        input scale) up to which the model works as trained. Slices that are noisier are
        smoothed before encoding (:func:`napari_sam.engine.preprocess.denoise_input`). None (the
        official models): never.
    max_input_upscale : float or None
        Largest magnification from slice pixels to model-input pixels. A slice whose longest
        side is under ``img_size / max_input_upscale`` is resized by this factor only and padded
        to the input (:class:`napari_sam.engine.preprocess.ResizeGeometry`), instead of being
        stretched to fill it: magnified 8x, a 61 px slice's small nuclei are out of what the
        default model learnt. None (the official models): SAM's rule, the longest side always
        fills the input.
    """

    img_size: int = 1024
    patch_size: int = 16
    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    window_size: int = 14
    encoder_mlp_ratio: float = 4.0
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    pixel_mean: tuple[float, ...] = IMAGENET_MEAN
    pixel_std: tuple[float, ...] = IMAGENET_STD
    encoder_type: str = "vit"
    stage_dims: tuple[int, ...] = ()
    stage_depths: tuple[int, ...] = ()
    stage_num_heads: tuple[int, ...] = ()
    stage_window_sizes: tuple[int, ...] = ()
    max_input_noise: float | None = None
    max_input_upscale: float | None = None

    def __post_init__(self) -> None:
        # Lists are accepted (and stored as tuples, so configs stay hashable).
        for name in (
            "encoder_global_attn_indexes", "pixel_mean", "pixel_std", "stage_dims",
            "stage_depths", "stage_num_heads", "stage_window_sizes",
        ):  # fmt: skip
            object.__setattr__(self, name, tuple(getattr(self, name)))
        positive = (
            "img_size", "patch_size", "encoder_embed_dim", "encoder_depth", "encoder_num_heads",
            "prompt_embed_dim", "mask_in_chans", "decoder_depth", "decoder_mlp_dim",
            "decoder_num_heads", "num_multimask_outputs", "iou_head_depth", "iou_head_hidden_dim",
        )  # fmt: skip
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"SamConfig.{name} must be a positive int, got {value!r}")
        if self.img_size % self.patch_size:
            raise ValueError(
                f"img_size ({self.img_size}) must be a multiple of patch_size ({self.patch_size})"
            )
        if self.encoder_embed_dim % self.encoder_num_heads:
            raise ValueError(
                f"encoder_num_heads ({self.encoder_num_heads}) must divide encoder_embed_dim "
                f"({self.encoder_embed_dim})"
            )
        bad = [i for i in self.encoder_global_attn_indexes if not 0 <= i < self.encoder_depth]
        if bad:
            raise ValueError(
                f"encoder_global_attn_indexes {bad} are outside the {self.encoder_depth} blocks"
            )
        up = self.max_input_upscale
        if up is not None and (isinstance(up, bool) or not isinstance(up, (int, float))
                               or not up >= 1):
            raise ValueError(f"max_input_upscale must be None or a number >= 1, got {up!r}")
        if not isinstance(self.window_size, int) or self.window_size < 0:
            raise ValueError(f"window_size must be an int >= 0, got {self.window_size!r}")
        if self.prompt_embed_dim % 8:
            raise ValueError(
                f"prompt_embed_dim must be a multiple of 8, got {self.prompt_embed_dim}"
            )
        if (self.prompt_embed_dim // 2) % self.decoder_num_heads:
            raise ValueError(
                f"decoder_num_heads ({self.decoder_num_heads}) must divide prompt_embed_dim / 2 "
                f"({self.prompt_embed_dim // 2}, the width of the decoder's cross-attention)"
            )
        if self.mask_in_chans % 4:
            raise ValueError(f"mask_in_chans must be a multiple of 4, got {self.mask_in_chans}")
        if len(self.pixel_mean) != 3 or len(self.pixel_std) != 3:
            raise ValueError("pixel_mean and pixel_std need one value per RGB channel")
        if self.encoder_type == "tiny_vit":
            self._check_tiny_vit()
        elif self.encoder_type != "vit":
            raise ValueError(f"encoder_type must be 'vit' or 'tiny_vit', got {self.encoder_type!r}")

    def _check_tiny_vit(self) -> None:
        stages = (self.stage_dims, self.stage_depths, self.stage_num_heads, self.stage_window_sizes)
        if any(len(s) != 4 for s in stages):
            raise ValueError("a tiny_vit encoder needs 4 values in each stage_* field")
        if any(not isinstance(v, int) or v <= 0 for s in stages for v in s):
            raise ValueError("the stage_* fields of a tiny_vit encoder must be positive ints")
        derived = {
            "encoder_embed_dim": self.stage_dims[-1],
            "encoder_depth": sum(self.stage_depths),
            "encoder_num_heads": self.stage_num_heads[-1],
            "patch_size": 16,
        }
        for name, value in derived.items():
            if getattr(self, name) != value:
                raise ValueError(
                    f"a tiny_vit encoder needs {name}={value} (from its stages), "
                    f"got {getattr(self, name)}"
                )
        if self.encoder_global_attn_indexes:
            raise ValueError("a tiny_vit encoder has no global attention blocks")
        bad = [(d, h) for d, h in zip(self.stage_dims[1:], self.stage_num_heads[1:]) if d % h]
        if bad:
            raise ValueError(f"stage_num_heads must divide stage_dims, not for {bad}")

    @property
    def image_embedding_size(self) -> int:
        """Side of the image embedding, ``img_size // patch_size`` (64 for SAM)."""
        return self.img_size // self.patch_size

    @property
    def low_res_mask_size(self) -> int:
        """Side of the decoder's mask logits and of mask prompts, 4x the embedding (256)."""
        return 4 * self.image_embedding_size


#: The published SAM sizes (Kirillov et al. 2023), by registry name.
MODEL_CONFIGS: dict[str, SamConfig] = {
    "vit_b": SamConfig(
        encoder_embed_dim=768,
        encoder_depth=12,
        encoder_num_heads=12,
        encoder_global_attn_indexes=(2, 5, 8, 11),
    ),
    "vit_l": SamConfig(
        encoder_embed_dim=1024,
        encoder_depth=24,
        encoder_num_heads=16,
        encoder_global_attn_indexes=(5, 11, 17, 23),
    ),
    "vit_h": SamConfig(
        encoder_embed_dim=1280,
        encoder_depth=32,
        encoder_num_heads=16,
        encoder_global_attn_indexes=(7, 15, 23, 31),
    ),
}

#: The project's own small model (same architecture family, trained here with SAM's scheme on
#: synthetic microscopy; see docs/default-model.md). A 512 px input with 8 px patches gives the
#: same 64 x 64 embedding grid as SAM, at a fraction of ViT-B's cost.
DEFAULT_CONFIG = SamConfig(
    img_size=512,
    patch_size=8,
    encoder_embed_dim=128,
    encoder_depth=4,
    encoder_num_heads=4,
    # no global-attention block: it cost ~half of the encoder's time and measured no gain
    # (docs/default-model.md, phase 3); the mask decoder attends over the whole embedding anyway
    encoder_global_attn_indexes=(),
    window_size=16,
    prompt_embed_dim=128,
    mask_in_chans=16,
    decoder_mlp_dim=512,
    decoder_num_heads=4,
    iou_head_hidden_dim=128,
    # trained on synthetic images up to ~0.035 noise; at 0.05-0.10 (low-light held-out images)
    # smoothing first raised one-click mIoU from 0.80 to 0.86 (docs/default-model.md)
    max_input_noise=0.04,
    # a slice under 256 px is magnified 2x and padded, not stretched to 512 px: one-click mIoU on
    # 128 px crops of the real validation images 0.725 -> 0.848 (docs/default-model.md, v0.23)
    max_input_upscale=2.0,
)
#: MobileSAM (Zhang et al. 2023): TinyViT-5M distilled from SAM's ViT-H encoder, with SAM's
#: prompt encoder and mask decoder. Its released ``mobile_sam.pt`` loads unchanged.
VIT_T_CONFIG = SamConfig(
    encoder_type="tiny_vit",
    stage_dims=(64, 128, 160, 320),
    stage_depths=(2, 2, 6, 2),
    stage_num_heads=(2, 4, 5, 10),
    stage_window_sizes=(7, 7, 14, 7),
    encoder_embed_dim=320,
    encoder_depth=12,
    encoder_num_heads=10,
    encoder_global_attn_indexes=(),
    window_size=7,
)
# smallest first
MODEL_CONFIGS = {"default": DEFAULT_CONFIG, "vit_t": VIT_T_CONFIG, **MODEL_CONFIGS}
#: micro-sam's fine-tuned models (Archit et al. 2025): SAM's architectures unchanged (the same
#: config objects), other weights, and an instance-segmentation decoder (see
#: napari_sam.models.weights). A checkpoint's type is detected as the plain SAM name.
MODEL_CONFIGS.update({name: MODEL_CONFIGS[name[:5]] for name in MICROSAM_MODELS})

#: Other names :func:`build_model` accepts.
MODEL_ALIASES: dict[str, str] = {}


def tiny_config(img_size: int = 64, **overrides) -> SamConfig:
    """A very small configuration for tests and experiments.

    Every part of SAM is there, at toy sizes: an 8 x 8 patch grid for the default 64 px input
    (patches of 8 px), 32-wide tokens, two encoder blocks (one windowed, one global) and a
    two-layer decoder. A forward pass takes milliseconds on a CPU.

    Parameters
    ----------
    img_size : int
        Side of the model input (a multiple of the patch size, 8 by default).
    **overrides
        Any other :class:`SamConfig` field.

    Returns
    -------
    SamConfig
    """
    values = dict(
        img_size=img_size,
        patch_size=8,
        encoder_embed_dim=32,
        encoder_depth=2,
        encoder_num_heads=2,
        encoder_global_attn_indexes=(1,),
        window_size=4,
        prompt_embed_dim=32,
        mask_in_chans=8,
        decoder_depth=2,
        decoder_mlp_dim=64,
        decoder_num_heads=2,
        iou_head_depth=3,
        iou_head_hidden_dim=32,
    )
    unknown = set(overrides) - {f.name for f in dataclasses.fields(SamConfig)}
    if unknown:
        raise TypeError(f"tiny_config() got unknown SamConfig fields: {sorted(unknown)}")
    values.update(overrides)
    return SamConfig(**values)


def build_sam(config: SamConfig) -> Sam:
    """Build a SAM model with random weights, in eval mode.

    Parameters
    ----------
    config : SamConfig
        For example ``MODEL_CONFIGS["vit_b"]`` or :func:`tiny_config`.

    Returns
    -------
    Sam
        On the current default device (the CPU unless a ``torch.device`` context is active).
    """
    if not isinstance(config, SamConfig):
        raise TypeError(f"build_sam() takes a SamConfig, got {type(config).__name__}")
    embed = config.image_embedding_size
    image_encoder = _build_image_encoder(config)
    prompt_encoder = PromptEncoder(
        embed_dim=config.prompt_embed_dim,
        image_embedding_size=(embed, embed),
        input_image_size=(config.img_size, config.img_size),
        mask_in_chans=config.mask_in_chans,
    )
    mask_decoder = MaskDecoder(
        transformer_dim=config.prompt_embed_dim,
        transformer=TwoWayTransformer(
            depth=config.decoder_depth,
            embedding_dim=config.prompt_embed_dim,
            num_heads=config.decoder_num_heads,
            mlp_dim=config.decoder_mlp_dim,
        ),
        num_multimask_outputs=config.num_multimask_outputs,
        iou_head_depth=config.iou_head_depth,
        iou_head_hidden_dim=config.iou_head_hidden_dim,
    )
    model = Sam(
        image_encoder,
        prompt_encoder,
        mask_decoder,
        pixel_mean=config.pixel_mean,
        pixel_std=config.pixel_std,
    )
    model.max_input_noise = config.max_input_noise
    model.max_input_upscale = config.max_input_upscale
    return model.eval()


def _build_image_encoder(config: SamConfig) -> nn.Module:
    if config.encoder_type == "tiny_vit":
        return TinyViT(
            img_size=config.img_size,
            embed_dims=config.stage_dims,
            depths=config.stage_depths,
            num_heads=config.stage_num_heads,
            window_sizes=config.stage_window_sizes,
            mlp_ratio=config.encoder_mlp_ratio,
            out_chans=config.prompt_embed_dim,
        )
    return ImageEncoderViT(
        img_size=config.img_size,
        patch_size=config.patch_size,
        embed_dim=config.encoder_embed_dim,
        depth=config.encoder_depth,
        num_heads=config.encoder_num_heads,
        mlp_ratio=config.encoder_mlp_ratio,
        out_chans=config.prompt_embed_dim,
        qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        use_rel_pos=True,
        window_size=config.window_size,
        global_attn_indexes=config.encoder_global_attn_indexes,
    )


def list_models(*, include_aliases: bool = False) -> list[str]:
    """Registry names :func:`build_model` accepts, in registration order.

    Parameters
    ----------
    include_aliases : bool
        Also list the alternative names of :data:`MODEL_ALIASES`.
    """
    names = list(MODEL_CONFIGS)
    if include_aliases:
        names += list(MODEL_ALIASES)
    return names


def resolve_model_name(name: str) -> str:
    """The :data:`MODEL_CONFIGS` key for a registry name or alias.

    Raises
    ------
    ValueError
        ``name`` is neither.
    """
    if name in MODEL_CONFIGS:
        return name
    if name in MODEL_ALIASES:
        return MODEL_ALIASES[name]
    known = ", ".join(list_models(include_aliases=True))
    raise ValueError(
        f"unknown model {name!r}: use one of {known}, or the path of a checkpoint file"
    )
