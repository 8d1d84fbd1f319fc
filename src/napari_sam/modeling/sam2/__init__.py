"""SAM 2.1 as plain ``nn.Module``s: Hiera image encoder, SAM 2 heads, memory encoder and
attention, assembled in :class:`Sam2`.

Parameter names follow Meta's ``sam2`` package, so its released checkpoints load unchanged.
"""

from .heads import Sam2MaskDecoder, Sam2PromptEncoder
from .hiera import Hiera
from .image_encoder import FpnNeck, PositionEmbeddingSine, Sam2ImageEncoder
from .memory import MemoryAttention, MemoryEncoder, RoPEAttention
from .sam2 import FrameFeatures, FrameMemory, MemoryBank, Sam2, SamHeadsOutput

__all__ = [
    "FpnNeck",
    "FrameFeatures",
    "FrameMemory",
    "Hiera",
    "MemoryAttention",
    "MemoryBank",
    "MemoryEncoder",
    "PositionEmbeddingSine",
    "RoPEAttention",
    "Sam2",
    "Sam2ImageEncoder",
    "Sam2MaskDecoder",
    "Sam2PromptEncoder",
    "SamHeadsOutput",
]
