"""The Segment Anything model as plain ``nn.Module``s, one part per module.

Parameter names follow Meta's reference implementation, so the official checkpoints load as
they are. Coordinates inside the model are SAM's ``(x, y)`` in pixels of the model input.
"""

from .common import MLP, LayerNorm2d, MLPBlock
from .image_encoder import ImageEncoderViT
from .instance_decoder import InstanceDecoder
from .mask_decoder import MaskDecoder
from .mask_refiner import MaskRefiner
from .prompt_encoder import PositionEmbeddingRandom, PromptEncoder
from .sam import Sam
from .tiny_vit import TinyViT
from .transformer import TwoWayAttentionBlock, TwoWayTransformer

__all__ = [
    "MLP",
    "ImageEncoderViT",
    "InstanceDecoder",
    "LayerNorm2d",
    "MLPBlock",
    "MaskDecoder",
    "MaskRefiner",
    "PositionEmbeddingRandom",
    "PromptEncoder",
    "Sam",
    "TinyViT",
    "TwoWayAttentionBlock",
    "TwoWayTransformer",
]
