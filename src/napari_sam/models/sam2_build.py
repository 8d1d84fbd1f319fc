"""Building SAM 2.1 models by name or from a checkpoint file.

Meta publishes the checkpoints (``{"model": state_dict}``) at the URLs of :data:`SAM2_DOWNLOADS`
but no checksums, and this project downloads only files it can verify. So the weights are
taken from ``checkpoint=PATH``, or from the weights cache folder
(:func:`~napari_sam.models.weights.cache_dir`) where a user placed the file under Meta's name.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..modeling.sam2 import Sam2
from .checkpoint import CheckpointError, load_state_dict
from .device import resolve_device
from .sam2_configs import SAM2_CONFIGS, build_sam2

__all__ = ["SAM2_DOWNLOADS", "build_sam2_model", "infer_sam2_type", "is_sam2_state"]

_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"

#: name -> (URL, file name, approximate size in MB); SHA256 not published by Meta.
SAM2_DOWNLOADS: dict[str, tuple[str, str, float]] = {
    name: (_URL + f"{name}.pt", f"{name}.pt", size)
    for name, size in (
        ("sam2.1_hiera_tiny", 156.0),
        ("sam2.1_hiera_small", 184.0),
        ("sam2.1_hiera_base_plus", 324.0),
        ("sam2.1_hiera_large", 898.0),
    )
}


def is_sam2_state(state: dict[str, torch.Tensor]) -> bool:
    """Whether a state dict is a SAM 2 model's (it has a memory attention)."""
    return any(k.startswith("memory_attention.") for k in state)


def infer_sam2_type(state: dict[str, torch.Tensor], source: str = "checkpoint") -> str:
    """The :data:`SAM2_CONFIGS` name whose trunk (width, depth) the state dict has."""
    pos = state.get("image_encoder.trunk.pos_embed")
    depth = sum(1 for k in state if k.startswith("image_encoder.trunk.blocks.")
                and k.endswith(".norm1.weight"))
    for name, config in SAM2_CONFIGS.items():
        if pos is not None and pos.shape[1] == config.embed_dim and depth == sum(config.stages):
            return name
    width = None if pos is None else int(pos.shape[1])
    raise CheckpointError(
        f"{source}: a SAM 2 checkpoint with a trunk of width {width} and {depth} blocks fits "
        f"none of {', '.join(SAM2_CONFIGS)}"
    )


def build_sam2_model(
    name: str | os.PathLike[str],
    checkpoint: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    *,
    pretrained: bool = True,
    state: dict[str, torch.Tensor] | None = None,
) -> Sam2:
    """Build SAM 2.1 for inference, with Meta's weights loaded strictly.

    Parameters
    ----------
    name : str or os.PathLike
        A :data:`SAM2_CONFIGS` name, or the path of a SAM 2.1 checkpoint file.
    checkpoint : str or os.PathLike, optional
        Weights for the named model.
    device : str or torch.device, optional
        As in :func:`~napari_sam.models.build.build_model`.
    pretrained : bool
        Without ``checkpoint``: load the file from the weights cache if true; random weights
        if false.
    state : dict, optional
        An already read state dict of ``name`` (a path).

    Raises
    ------
    ValueError
        No weights are available (the message says where to download them and put them).
    CheckpointError
        The file is not a SAM 2.1 checkpoint of that size.
    """
    dev = resolve_device(device)
    source = None
    if isinstance(name, str) and name in SAM2_CONFIGS:
        model_type = name
        if checkpoint is not None:
            source = str(checkpoint)
        elif pretrained:
            from .weights import cache_dir

            url, filename, size = SAM2_DOWNLOADS[name]
            path = cache_dir() / filename
            if not path.is_file():
                raise ValueError(
                    f"the {name} weights are not in the cache: download {url} ({size:.0f} MB; "
                    f"Meta publishes no checksum, so napari-sam does not download it itself) and "
                    f"save it as {path}, or pass checkpoint=PATH"
                )
            source = str(path)
    else:
        if checkpoint is not None:
            raise ValueError(f"{str(name)!r} is a checkpoint path and checkpoint= was given too")
        source = str(Path(name).expanduser())
        model_type = None
    if source is not None and state is None:
        state = load_state_dict(source)
    if state is not None and model_type is None:
        model_type = infer_sam2_type(state, source or "checkpoint")
    model = build_sam2(SAM2_CONFIGS[model_type])
    if state is not None:
        if not is_sam2_state(state):
            raise CheckpointError(f"{source}: not a SAM 2 checkpoint (no memory attention)")
        missing, unexpected = _key_mismatch(model, state)
        if missing or unexpected:
            raise CheckpointError(
                f"{source} does not fit {model_type}: missing {missing[:5]}"
                f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                f"{'...' if len(unexpected) > 5 else ''}"
            )
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"{source} does not fit {model_type}: {exc}") from exc
    return model.to(dev).eval()


def _key_mismatch(model: Sam2, state: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    ours = set(model.state_dict())
    return sorted(ours - set(state)), sorted(set(state) - ours)
