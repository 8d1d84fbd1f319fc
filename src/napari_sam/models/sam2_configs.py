"""SAM 2.1 configurations and building a :class:`~napari_sam.modeling.sam2.Sam2` from one.

The four released sizes differ only in the Hiera trunk; the heads and the memory are the same.

>>> from napari_sam.models.sam2_configs import build_sam2, tiny_sam2_config
>>> toy = build_sam2(tiny_sam2_config())  # random weights, for tests
>>> toy.image_size
128
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..modeling.sam2 import (
    FpnNeck,
    Hiera,
    MemoryAttention,
    MemoryEncoder,
    Sam2,
    Sam2ImageEncoder,
)

__all__ = ["SAM2_CONFIGS", "Sam2Config", "build_sam2", "is_sam2_name", "tiny_sam2_config"]


@dataclass(frozen=True, kw_only=True)
class Sam2Config:
    """Hyperparameters of one SAM 2.1 architecture (defaults: the released models' values).

    Attributes
    ----------
    embed_dim, num_heads : int
        Width and heads of the trunk's first stage (doubled at each later stage).
    stages : tuple of int
        Blocks per trunk stage.
    global_att_blocks : tuple of int
        Trunk blocks with global attention.
    window_pos_embed_bkg_spatial_size : (int, int)
        Size of the trunk's background positional embedding.
    window_spec : tuple of int
        Attention window per stage.
    image_size : int
        Side of the square model input (a multiple of 32, and with the stride-16 grid a
        multiple of the last stage's window for the released trunks).
    d_model, mem_dim : int
        Width of the neck / heads and of the memory.
    num_maskmem : int
        Spatial memories attended (conditioning frames excluded).
    memory_attention_layers : int
    """

    embed_dim: int
    num_heads: int
    stages: tuple[int, ...]
    global_att_blocks: tuple[int, ...]
    window_pos_embed_bkg_spatial_size: tuple[int, int] = (7, 7)
    window_spec: tuple[int, ...] = (8, 4, 14, 7)
    image_size: int = 1024
    d_model: int = 256
    mem_dim: int = 64
    num_maskmem: int = 7
    memory_attention_layers: int = 4

    @property
    def channel_list(self) -> list[int]:
        """The trunk's stage widths, coarsest first."""
        n = len(self.stages)
        return [self.embed_dim * 2**i for i in range(n)][::-1]


SAM2_CONFIGS: dict[str, Sam2Config] = {
    "sam2.1_hiera_tiny": Sam2Config(
        embed_dim=96, num_heads=1, stages=(1, 2, 7, 2), global_att_blocks=(5, 7, 9)
    ),
    "sam2.1_hiera_small": Sam2Config(
        embed_dim=96, num_heads=1, stages=(1, 2, 11, 2), global_att_blocks=(7, 10, 13)
    ),
    "sam2.1_hiera_base_plus": Sam2Config(
        embed_dim=112, num_heads=2, stages=(2, 3, 16, 3), global_att_blocks=(12, 16, 20),
        window_pos_embed_bkg_spatial_size=(14, 14),
    ),
    "sam2.1_hiera_large": Sam2Config(
        embed_dim=144, num_heads=2, stages=(2, 6, 36, 4), global_att_blocks=(23, 33, 43),
        window_spec=(8, 4, 16, 8),
    ),
}


def is_sam2_name(name: object) -> bool:
    """Whether ``name`` is a registered SAM 2 model name."""
    return isinstance(name, str) and name in SAM2_CONFIGS


def tiny_sam2_config(image_size: int = 128, **overrides) -> Sam2Config:
    """A small SAM 2 for tests: the tiny trunk's layout at half width, a 128 px input.

    The heads keep the released widths (256, memory 64): their parameter shapes are fixed by
    the architecture. A frame takes well under a second on a CPU.
    """
    values = {
        "embed_dim": 32, "num_heads": 1, "stages": (1, 1, 2, 1), "global_att_blocks": (3,),
        "window_pos_embed_bkg_spatial_size": (4, 4), "window_spec": (8, 4, 4, 2),
        "image_size": image_size, "memory_attention_layers": 2,
    }
    unknown = set(overrides) - {f.name for f in dataclasses.fields(Sam2Config)}
    if unknown:
        raise TypeError(f"tiny_sam2_config() got unknown Sam2Config fields: {sorted(unknown)}")
    values.update(overrides)
    return Sam2Config(**values)


def build_sam2(config: Sam2Config) -> Sam2:
    """Build SAM 2.1 with random weights, in eval mode, on the current default device."""
    if not isinstance(config, Sam2Config):
        raise TypeError(f"build_sam2() takes a Sam2Config, got {type(config).__name__}")
    if config.image_size % 32:
        raise ValueError(f"image_size must be a multiple of 32, got {config.image_size}")
    trunk = Hiera(
        embed_dim=config.embed_dim,
        num_heads=config.num_heads,
        stages=config.stages,
        global_att_blocks=config.global_att_blocks,
        window_pos_embed_bkg_spatial_size=config.window_pos_embed_bkg_spatial_size,
        window_spec=config.window_spec,
    )
    neck = FpnNeck(config.d_model, config.channel_list, fpn_top_down_levels=[2, 3])
    model = Sam2(
        Sam2ImageEncoder(trunk, neck, scalp=1),
        MemoryAttention(config.d_model, config.memory_attention_layers, config.mem_dim),
        MemoryEncoder(config.mem_dim, config.d_model),
        image_size=config.image_size,
        num_maskmem=config.num_maskmem,
    )
    return model.eval()
