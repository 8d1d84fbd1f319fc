"""SAM 2's image encoder: the Hiera trunk, an FPN neck and sine positional encodings.

The neck projects every trunk stage to ``d_model`` channels and adds the upsampled coarser
level to the levels listed in ``fpn_top_down_levels``. The coarsest level is dropped
(``scalp``); what remains is, finest first, stride 4, 8 and 16 features of the input.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .hiera import Hiera

__all__ = ["FpnNeck", "PositionEmbeddingSine", "Sam2ImageEncoder"]


class PositionEmbeddingSine(nn.Module):
    """Fixed 2D sine/cosine positional encoding of a feature map's grid (DETR style).

    Parameters
    ----------
    num_pos_feats : int
        Channels of the encoding (even); half for ``y``, half for ``x``.
    temperature : float
        Base of the geometric frequency progression.
    """

    def __init__(self, num_pos_feats: int, temperature: float = 10000.0) -> None:
        super().__init__()
        if num_pos_feats % 2:
            raise ValueError(f"num_pos_feats must be even, got {num_pos_feats}")
        self.half = num_pos_feats // 2
        self.temperature = temperature
        self.scale = 2 * math.pi
        self._cache: dict[tuple[int, int, str], torch.Tensor] = {}

    @torch.no_grad()
    def encode(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        """The encoding of an ``(h, w)`` grid, shape ``(num_pos_feats, h, w)`` (float32)."""
        key = (h, w, str(device))
        if key not in self._cache:
            with torch.inference_mode(False):  # cached: usable outside inference mode too
                self._cache[key] = self._grid(h, w, device)
        return self._cache[key]

    def _grid(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        eps = 1e-6
        y = torch.arange(1, h + 1, dtype=torch.float32, device=device) / (h + eps) * self.scale
        x = torch.arange(1, w + 1, dtype=torch.float32, device=device) / (w + eps) * self.scale
        dim_t = torch.arange(self.half, dtype=torch.float32, device=device)
        dim_t = self.temperature ** (2 * (dim_t // 2) / self.half)
        py, px = y[:, None] / dim_t, x[:, None] / dim_t  # (h, half), (w, half)
        py = torch.stack((py[:, 0::2].sin(), py[:, 1::2].cos()), dim=2).flatten(1)
        px = torch.stack((px[:, 0::2].sin(), px[:, 1::2].cos()), dim=2).flatten(1)
        pos = torch.cat(
            (py[:, None, :].expand(h, w, -1), px[None, :, :].expand(h, w, -1)), dim=2
        )
        return pos.permute(2, 0, 1).contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w)`` -> its encoding ``(B, num_pos_feats, h, w)`` in ``x``'s dtype."""
        pos = self.encode(x.shape[-2], x.shape[-1], x.device)
        return pos.to(x.dtype)[None].expand(x.shape[0], -1, -1, -1)


class FpnNeck(nn.Module):
    """A feature-pyramid neck without output convolutions.

    Parameters
    ----------
    d_model : int
        Output channels of every level.
    backbone_channel_list : sequence of int
        Channels of the trunk's stages, coarsest first.
    fpn_top_down_levels : sequence of int
        Levels (0 = finest) that receive the nearest-upsampled coarser level.
    """

    def __init__(
        self, d_model: int, backbone_channel_list: list[int], fpn_top_down_levels: list[int]
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.backbone_channel_list = list(backbone_channel_list)
        self.position_encoding = PositionEmbeddingSine(d_model)
        self.convs = nn.ModuleList()
        for dim in self.backbone_channel_list:
            lateral = nn.Sequential()
            lateral.add_module("conv", nn.Conv2d(dim, d_model, kernel_size=1))
            self.convs.append(lateral)
        self.fpn_top_down_levels = list(fpn_top_down_levels)

    def forward(self, xs: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Trunk outputs (finest first) -> ``(features, positional encodings)``, finest first.

        Every level has ``d_model`` channels and its input's resolution.
        """
        if len(xs) != len(self.convs):
            raise ValueError(f"the neck takes {len(self.convs)} levels, got {len(xs)}")
        n = len(xs) - 1
        out: list[torch.Tensor] = [None] * len(xs)  # type: ignore[list-item]
        prev = None
        for i in range(n, -1, -1):  # coarse to fine
            lateral = self.convs[n - i](xs[i])
            if prev is not None and i in self.fpn_top_down_levels:
                top_down = F.interpolate(prev.float(), scale_factor=2.0, mode="nearest")
                prev = lateral + top_down
            else:
                prev = lateral
            out[i] = prev
        return out, [self.position_encoding(x) for x in out]


class Sam2ImageEncoder(nn.Module):
    """The trunk and the neck, dropping the ``scalp`` coarsest levels.

    Parameters
    ----------
    trunk : Hiera
    neck : FpnNeck
    scalp : int
        Number of coarsest levels to drop.
    """

    def __init__(self, trunk: Hiera, neck: FpnNeck, scalp: int = 1) -> None:
        super().__init__()
        if trunk.channel_list != neck.backbone_channel_list:
            raise ValueError(
                f"trunk channels {trunk.channel_list} differ from the neck's "
                f"{neck.backbone_channel_list}"
            )
        self.trunk, self.neck, self.scalp = trunk, neck, scalp

    def forward(self, x: torch.Tensor) -> dict[str, list[torch.Tensor] | torch.Tensor]:
        """``(B, 3, S, S)`` normalised images -> a dict of

        ``backbone_fpn``: features ``(B, d_model, S / 4 / 2^l, ...)``, finest first;
        ``vision_pos_enc``: their positional encodings, same shapes;
        ``vision_features``: the coarsest kept level.
        """
        feats, pos = self.neck(self.trunk(x))
        if self.scalp > 0:
            feats, pos = feats[: -self.scalp], pos[: -self.scalp]
        return {"vision_features": feats[-1], "vision_pos_enc": pos, "backbone_fpn": feats}
