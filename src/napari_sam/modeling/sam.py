"""The Segment Anything model: an image encoder, a prompt encoder and a mask decoder."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .tiny_vit import TinyViT

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "Sam"]

#: ImageNet channel statistics on the 0..255 scale, the normalisation SAM was trained with (RGB).
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


class Sam(nn.Module):
    """Segment Anything (Kirillov et al., 2023).

    The image encoder is run once per image; the prompt encoder and the mask decoder are cheap
    and run once per prompt. Use :class:`napari_sam.SamPredictor` for the image bookkeeping.

    Parameters
    ----------
    image_encoder : ImageEncoderViT or TinyViT
        Turns a preprocessed ``(B, 3, S, S)`` image into a ``(B, C, h, w)`` embedding.
    prompt_encoder : PromptEncoder
        Embeds points, boxes and masks.
    mask_decoder : MaskDecoder
        Predicts masks from the image embedding and the prompt embeddings.
    pixel_mean, pixel_std : sequence of float
        Per-channel (RGB) normalisation of the 0..255 input pixels.
    """

    #: Mask logits above this value are foreground.
    mask_threshold: float = 0.0
    #: Channel order the model expects.
    image_format: str = "RGB"

    def __init__(
        self,
        image_encoder: ImageEncoderViT | TinyViT,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        pixel_mean: Sequence[float] = IMAGENET_MEAN,
        pixel_std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        if len(pixel_mean) != len(pixel_std):
            raise ValueError("pixel_mean and pixel_std must have one value per channel each")
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        # Not persistent: fixed constants, absent from the official checkpoints.
        self.register_buffer(
            "pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), False
        )
        #: Pixel noise above which inputs are smoothed before encoding (see
        #: :class:`napari_sam.models.build.SamConfig`); None: never.
        self.max_input_noise: float | None = None
        #: Largest magnification of a slice into the model input (see
        #: :class:`napari_sam.models.build.SamConfig`); None: SAM's rule (always fill it).
        self.max_input_upscale: float | None = None
        #: Optional :class:`~napari_sam.modeling.MaskRefiner` (the default model has one, loaded
        #: with its weights); used by :class:`napari_sam.SamPredictor`, never by ``forward``.
        self.mask_refiner: nn.Module | None = None
        #: Optional :class:`~napari_sam.modeling.instance_decoder.InstanceDecoder` (micro-sam's
        #: models have one): automatic instance segmentation from the image embedding.
        self.instance_decoder: nn.Module | None = None

    @property
    def img_size(self) -> int:
        """Side of the square model input, in pixels (1024 for the official models)."""
        return self.image_encoder.img_size

    @property
    def image_embedding_size(self) -> tuple[int, int]:
        """``(h, w)`` of the image embedding (64 x 64 for the official models)."""
        return self.prompt_encoder.image_embedding_size

    @property
    def device(self) -> torch.device:
        """The device the model's weights are on."""
        return self.pixel_mean.device

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise pixel values and zero-pad the image to the model's square input.

        Parameters
        ----------
        x : torch.Tensor, shape (B, 3, h, w) or (3, h, w)
            RGB images on the 0..255 scale, already resized so that ``max(h, w) <= img_size``
            (SAM resizes the longest side to ``img_size``).

        Returns
        -------
        torch.Tensor, shape (B, 3, img_size, img_size) or (3, img_size, img_size)
            Normalised with :attr:`pixel_mean` / :attr:`pixel_std` and padded at the bottom and
            on the right, in the model's dtype and on its device.
        """
        channels = self.pixel_mean.shape[0]
        if x.ndim not in (3, 4) or x.shape[-3] != channels:
            raise ValueError(
                f"expected a ({channels}, h, w) image or a (B, {channels}, h, w) batch, "
                f"got shape {tuple(x.shape)}"
            )
        h, w = x.shape[-2:]
        if h > self.img_size or w > self.img_size:
            raise ValueError(
                f"image of {h} x {w} pixels is larger than the model input ({self.img_size} x "
                f"{self.img_size}): resize its longest side to {self.img_size} first"
            )
        x = x.to(device=self.pixel_mean.device, dtype=self.pixel_mean.dtype)
        x = (x - self.pixel_mean) / self.pixel_std
        return F.pad(x, (0, self.img_size - w, 0, self.img_size - h))
