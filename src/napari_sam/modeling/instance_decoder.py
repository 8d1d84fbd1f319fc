"""micro-sam's instance-segmentation decoder: a UNETR-style convolutional head on SAM's image
embedding that predicts, per pixel, the foreground probability and the (normalised) distances to
the object's centre and to its boundary.

The layout and parameter names are those of torch_em's ``UNETR`` (``backbone="sam"``, no skip
connections from the encoder), as micro-sam builds it for its ``*_lm`` and ``*_em_organelles``
models (Archit et al., Nature Methods 2025), so the ``decoder_state`` of micro-sam's checkpoints
loads unchanged. The image encoder is not part of this module: it works on the embedding the
predictor has already computed, so automatic segmentation costs one decoder pass per slice.

Shapes, for SAM's 64 x 64 embedding (``C = 256``; ``F = 64`` initial features)::

    embedding (B, C, 64, 64) -- deconv1 --> z9 (B, 8F, 128) -- deconv2 --> z6 (B, 4F, 256)
        -- deconv3 --> z3 (B, 2F, 512) -- deconv4 --> z0 (B, F, 1024)
    base(embedding) (B, 8F, 64) -- decoder (upsample, concat with z9, z6, z3) --> (B, F, 512)
        -- deconv_out --> (B, F, 1024) ++ z0 -- decoder_head, out_conv, sigmoid --> (B, 3, 1024)

``upscale=8`` (the project's own small decoders, trained by
:mod:`napari_sam.training.instance_decoder`) drops the finest level: no ``deconv4`` and no
``deconv_out``; the decoder's ``(B, F, 8h, 8w)`` output goes through ``decoder_head`` (a conv block
``F -> F``) and ``out_conv``. For a model whose embedding is 1/8 of its input (the default model:
64 x 64 for 512 px) the outputs are then at the input's resolution, and the decoder costs about a
quarter as much.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["InstanceDecoder"]

#: Output channels, in order.
CHANNELS = ("foreground", "center_distances", "boundary_distances")


def _instance_norm(x: torch.Tensor, weight: torch.Tensor | None = None,
                   bias: torch.Tensor | None = None, eps: float = 1e-5) -> torch.Tensor:
    """``F.instance_norm`` without running statistics, for ``x`` (B, C, H, W) in any layout.

    The same map (biased variance, then the optional per-channel affine), computed in two
    plain passes (mean, mean squared deviation) that keep a channels-last tensor channels-last.
    On a CPU it is several times faster than ``F.instance_norm`` at the decoder's finest levels
    (a few channels at 512 x 512), where that runs a slow single-pass reduction.
    """
    mean = x.mean(dim=(2, 3), keepdim=True)
    centred = x - mean
    scale = torch.rsqrt(centred.square().mean(dim=(2, 3), keepdim=True) + eps)
    if weight is None:
        return centred * scale
    return torch.addcmul(bias[:, None, None], centred, scale * weight[:, None, None])


class _InstanceNorm(nn.Module):
    """``nn.InstanceNorm2d`` without affine parameters or running statistics (as torch_em's
    ``ConvBlock2d`` uses it; no state), computed by :func:`_instance_norm`."""

    def __init__(self, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _instance_norm(x, eps=self.eps)


class _ConvBlock(nn.Module):
    """Two (instance norm, 3 x 3 conv, ReLU) steps: torch_em's ``ConvBlock2d``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            _InstanceNorm(),
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            nn.ReLU(inplace=True),
            _InstanceNorm(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class _Upsample(nn.Module):
    """2x bilinear interpolation and a 1 x 1 conv (torch_em's ``Upsampler2d``)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv.out_channels < self.conv.in_channels:
            # the same map in the other order (bilinear weights sum to one at every pixel, so
            # they commute with a per-pixel affine map): the conv on a quarter of the pixels
            # and the interpolation on fewer channels (torch_em's order differs by rounding)
            return F.interpolate(self.conv(x), scale_factor=2, mode="bilinear",
                                 align_corners=False)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return self.conv(x)


class _TransposedUpsample(nn.Module):
    """2x transposed convolution (torch_em's ``SingleDeconv2DBlock``)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.block = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class _Conv(nn.Module):
    """A 3 x 3 conv under the name ``block`` (torch_em's ``SingleConv2DBlock``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class _BatchNorm(nn.BatchNorm2d):
    """BatchNorm2d that can normalise with each image's own statistics.

    micro-sam never puts its decoder in eval mode, so at inference its batch norms use the
    statistics of the image being segmented (one image per call) instead of the running
    averages stored in the checkpoint. With ``per_image`` set (the default, to give the same
    outputs) this layer does that in any mode and for any batch size, without touching the
    running averages; otherwise it is a plain ``BatchNorm2d``.
    """

    per_image: bool = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.per_image:
            return super().forward(x)
        return _instance_norm(x, self.weight, self.bias, self.eps)


class _Deconv(nn.Module):
    """Upsample 2x, 3 x 3 conv, batch norm, ReLU (torch_em's ``Deconv2DBlock``)."""

    def __init__(self, in_channels: int, out_channels: int, transposed: bool) -> None:
        super().__init__()
        up = _TransposedUpsample if transposed else _Upsample
        self.block = nn.Sequential(
            up(in_channels, out_channels),
            _Conv(out_channels),
            _BatchNorm(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class _Decoder(nn.Module):
    """torch_em's U-Net ``Decoder``: upsample, concatenate the skip input, conv block."""

    def __init__(self, features: list[int], transposed: bool) -> None:
        super().__init__()
        up = _TransposedUpsample if transposed else _Upsample
        self.blocks = nn.ModuleList(
            _ConvBlock(cin, cout) for cin, cout in pairwise(features)
        )
        self.samplers = nn.ModuleList(
            up(cin, cout) for cin, cout in pairwise(features)
        )

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        for block, sampler, skip in zip(self.blocks, self.samplers, skips, strict=True):
            x = sampler(x)
            x = block(torch.cat([x, _center_crop(skip, x.shape[1:])], dim=1))
        return x


def _center_crop(x: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The centre of ``x`` (B, C, H, W) of ``shape`` (C', H', W'), channels included.

    torch_em crops the skip input to the upsampled tensor's shape in every dimension but the
    batch, so only the middle ``C'`` of its channels are concatenated (e.g. channels 128:384 of
    z9's 512); the trained weights depend on it.
    """
    index = [slice(None)]
    for have, want in zip(x.shape[1:], shape):
        start = (have - want) // 2
        index.append(slice(start, start + want))
    return x[tuple(index)]


class InstanceDecoder(nn.Module):
    """micro-sam's instance-segmentation head on SAM's image embedding.

    Parameters
    ----------
    embed_dim : int
        Channels ``C`` of the image embedding (256 for the SAM models).
    out_channels : int
        Output channels (3: foreground, centre distances, boundary distances).
    initial_features : int
        Channels ``F`` of the finest level; the levels have ``8F, 4F, 2F, F``.
    transposed : bool
        Upsample with transposed convolutions instead of bilinear interpolation and a 1 x 1
        conv (torch_em's ``use_conv_transpose``; read from a checkpoint by
        :meth:`from_state_dict`).
    per_image_norm : bool
        Batch norms use each image's own statistics, as micro-sam does at inference (see
        ``_BatchNorm``); false: the running averages of the checkpoint.
    upscale : int
        16 (micro-sam's layout) or 8 (without the finest level; see the module).
    """

    def __init__(
        self,
        embed_dim: int = 256,
        out_channels: int = 3,
        initial_features: int = 64,
        transposed: bool = False,
        per_image_norm: bool = True,
        upscale: int = 16,
    ) -> None:
        super().__init__()
        if upscale not in (8, 16):
            raise ValueError(f"InstanceDecoder: upscale must be 8 or 16, got {upscale!r}")
        for name, value in (("embed_dim", embed_dim), ("out_channels", out_channels),
                            ("initial_features", initial_features)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"InstanceDecoder: {name} must be a positive int, got {value!r}")
        f = [initial_features * 2**i for i in range(4)][::-1]  # 8F, 4F, 2F, F
        up = _TransposedUpsample if transposed else _Upsample
        self.transposed = bool(transposed)
        self.embed_dim = embed_dim
        self.deconv1 = _Deconv(embed_dim, f[0], transposed)
        self.deconv2 = _Deconv(f[0], f[1], transposed)
        self.deconv3 = _Deconv(f[1], f[2], transposed)
        self._upscale = upscale
        if upscale == 16:
            self.deconv4 = _Deconv(f[2], f[3], transposed)
        self.base = _ConvBlock(embed_dim, f[0])
        self.decoder = _Decoder(f, transposed)
        if upscale == 16:
            self.deconv_out = up(f[3], f[3])
        self.decoder_head = _ConvBlock((2 if upscale == 16 else 1) * f[3], f[3])
        self.out_conv = nn.Conv2d(f[3], out_channels, 1)
        self.per_image_norm = per_image_norm

    @property
    def per_image_norm(self) -> bool:
        """Whether batch norms use each image's statistics (micro-sam's behaviour)."""
        return self._per_image_norm

    @per_image_norm.setter
    def per_image_norm(self, value: bool) -> None:
        self._per_image_norm = bool(value)
        for m in self.modules():
            if isinstance(m, _BatchNorm):
                m.per_image = self._per_image_norm

    @property
    def upscale(self) -> int:
        """Output pixels per embedding pixel along each axis (16, or 8)."""
        return self._upscale

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        """Per-pixel predictions at 16 times the embedding's resolution.

        Parameters
        ----------
        embedding : torch.Tensor, shape (B, C, h, w)
            SAM's image embedding.

        Returns
        -------
        torch.Tensor, shape (B, out_channels, s h, s w)
            Sigmoid outputs in [0, 1], channels in the order of :data:`CHANNELS`, covering the
            whole (padded) model input; ``s`` is :attr:`upscale`.
        """
        if embedding.ndim != 4 or embedding.shape[1] != self.embed_dim:
            raise ValueError(
                f"expected an embedding of shape (B, {self.embed_dim}, h, w), "
                f"got {tuple(embedding.shape)}"
            )
        # channels-last activations: the 3 x 3 convolutions of the fine levels (8-16 channels
        # at 512 x 512) run 2-4x faster on CPUs in that layout (a pass of the default model's
        # decoder: ~40 % less time, the same outputs up to float rounding)
        embedding = embedding.contiguous(memory_format=torch.channels_last)
        z9 = self.deconv1(embedding)
        z6 = self.deconv2(z9)
        z3 = self.deconv3(z6)
        x = self.decoder(self.base(embedding), [z9, z6, z3])
        if self._upscale == 16:
            x = torch.cat([self.deconv_out(x), self.deconv4(z3)], dim=1)
        return torch.sigmoid(self.out_conv(self.decoder_head(x))).contiguous()

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor],
                        per_image_norm: bool = True) -> InstanceDecoder:
        """A decoder shaped after ``state`` (micro-sam's ``decoder_state``), with its weights.

        Raises
        ------
        ValueError
            ``state`` is not such a decoder, or its keys or shapes do not fit the layout.
        """
        try:
            base = state["base.block.1.weight"]  # (8F, C, 3, 3)
            out = state["out_conv.weight"]  # (out, F, 1, 1)
        except KeyError as exc:
            raise ValueError(
                f"not an instance-segmentation decoder state: no {exc.args[0]!r}"
            ) from None
        transposed = any(".block." in k for k in state if k.startswith("decoder.samplers."))
        decoder = cls(
            embed_dim=int(base.shape[1]),
            out_channels=int(out.shape[0]),
            initial_features=int(out.shape[1]),
            transposed=transposed,
            per_image_norm=per_image_norm,
            upscale=16 if any(k.startswith("deconv4.") for k in state) else 8,
        )
        expected = {k: tuple(v.shape) for k, v in decoder.state_dict().items()}
        given = {k: tuple(v.shape) for k, v in state.items()}
        if expected != given:
            missing = sorted(set(expected) - set(given))[:4]
            unexpected = sorted(set(given) - set(expected))[:4]
            wrong = [k for k in expected if k in given and expected[k] != given[k]][:4]
            raise ValueError(
                "the instance-segmentation decoder state does not fit micro-sam's layout: "
                f"missing {missing}, unexpected {unexpected}, other shapes {wrong}"
            )
        decoder.load_state_dict(dict(state), strict=True)
        return decoder.eval()
