"""Building models by name or checkpoint path: the registry's configs with their weights.

>>> from napari_sam.models.build import build_model, build_sam, tiny_config
>>> model = build_model("vit_b")  # official weights, downloaded once  # doctest: +SKIP
>>> model = build_model("my_finetuned_sam.pth")  # type detected from the file  # doctest: +SKIP
>>> toy = build_sam(tiny_config())  # random weights, for tests
>>> toy.img_size
64
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..modeling import Sam
from .checkpoint import DECODER_PREFIX, load_state_dict, load_weights, require_model_type
from .configs import (
    MODEL_ALIASES,
    MODEL_CONFIGS,
    SamConfig,
    build_sam,
    list_models,
    resolve_model_name,
    tiny_config,
)
from .device import resolve_device
from .sam2_build import build_sam2_model, is_sam2_state
from .sam2_configs import is_sam2_name

__all__ = [
    "MODEL_ALIASES",
    "MODEL_CONFIGS",
    "SamConfig",
    "build_model",
    "build_sam",
    "list_models",
    "resolve_model_name",
    "tiny_config",
]

#: The default model's weights ship inside the package (float16, a few MB): no download.
DEFAULT_WEIGHTS = Path(__file__).parent / "_weights" / "default.pt"


def build_model(
    name: str | os.PathLike[str] = "vit_b",
    checkpoint: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    *,
    pretrained: bool = True,
) -> Sam:
    """Build a SAM model ready for inference.

    Parameters
    ----------
    name : str or os.PathLike
        A registry name (:func:`list_models`, or an alias from :data:`MODEL_ALIASES`), or the path
        of a checkpoint file whose model type is then detected from its tensor shapes. SAM 2.1
        names (``"sam2.1_hiera_tiny"``, ...) and checkpoints build a
        :class:`~napari_sam.modeling.sam2.Sam2` (:func:`~napari_sam.models.sam2_build.build_sam2_model`).
    checkpoint : str or os.PathLike, optional
        Weights for the registry model ``name`` (a fine-tuned model, or an official file kept
        elsewhere). Not allowed when ``name`` is itself a file.
    device : str or torch.device, optional
        Where the model runs: ``None`` or ``"auto"`` for the best available device, or
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``.
    pretrained : bool
        Without ``checkpoint``: load the official weights (downloaded and verified once, see
        :mod:`napari_sam.models.weights`) if true, keep random weights if false.

    Returns
    -------
    Sam
        In eval mode, float32, on ``device``.

    Raises
    ------
    ValueError
        Unknown model name, unavailable device, no official weights for ``name``.
    CheckpointError
        The checkpoint cannot be read or does not fit (a subclass of ``ValueError``).
    napari_sam.models.weights.WeightsDownloadError
        The official weights are not cached and could not be downloaded.
    """
    if is_sam2_name(name):
        return build_sam2_model(name, checkpoint, device, pretrained=pretrained)
    dev = resolve_device(device)
    model_type, state, source = _resolve_weights(name, checkpoint, pretrained)
    if model_type == _SAM2_FILE:  # read once by _resolve_weights, handed over
        return build_sam2_model(name, device=device, state=state)
    config = MODEL_CONFIGS[model_type]
    if state is None:
        return build_sam(config).to(dev).eval()

    # Built normally (random init, then overwritten). Building on the "meta" device would skip
    # the init, but torch's meta-device mode imports torch._dynamo and with it triton, which
    # crashes a process whose napari viewer already holds an OpenGL context (CUDA torch builds).
    model = build_sam(config).to(dev)
    load_weights(model, state, model_type, source=source)
    return model.eval()


def _with_decoder(name: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with the registry's separate instance-decoder file of model ``name`` added
    (micro-sam publishes SAM's weights and the decoder as two files), if it has one."""
    from .weights import WEIGHTS, fetch_weights

    entry = WEIGHTS.get(name)
    decoder = entry.decoder if entry is not None else ""
    if not decoder or any(k.startswith(DECODER_PREFIX) for k in state):
        return state
    parts = load_state_dict(fetch_weights(decoder))
    return {**state, **{DECODER_PREFIX + k: v for k, v in parts.items()}}


#: What :func:`_resolve_weights` returns as the model type of a SAM 2.1 checkpoint file.
_SAM2_FILE = "<sam2 checkpoint>"


def _resolve_weights(
    name: str | os.PathLike[str],
    checkpoint: str | os.PathLike[str] | None,
    pretrained: bool,
) -> tuple[str, dict[str, torch.Tensor] | None, str | None]:
    """(model type, state dict or None for random weights, where the weights came from)."""
    if isinstance(name, str) and (name in MODEL_CONFIGS or name in MODEL_ALIASES):
        model_type = resolve_model_name(name)
        if checkpoint is not None:
            return model_type, load_state_dict(checkpoint), str(checkpoint)
        if not pretrained:
            return model_type, None, None
        if model_type == "default":
            path = DEFAULT_WEIGHTS
            if not path.exists():
                raise ValueError(
                    f"the default model's weights are missing from the installation ({path}): "
                    "reinstall napari-sam-nd, or pass checkpoint=PATH"
                )
            return model_type, load_state_dict(path), str(path)
        from .weights import fetch_weights

        try:
            path = fetch_weights(model_type)
        except ValueError as exc:
            raise ValueError(
                f"no official weights are registered for {name!r}: pass checkpoint=PATH, or "
                "pretrained=False for random weights"
            ) from exc
        return model_type, _with_decoder(model_type, load_state_dict(path)), str(path)

    if not isinstance(name, (str, os.PathLike)):
        raise TypeError(f"name must be a model name or a path, got {type(name).__name__}")
    path = Path(name).expanduser()
    if not path.exists() and isinstance(name, str) and path.suffix == "" and len(path.parts) == 1:
        resolve_model_name(name)  # a bare word: report it as an unknown model name
    if checkpoint is not None:
        raise ValueError(
            f"{str(name)!r} is a checkpoint path and checkpoint={str(checkpoint)!r} was given too: "
            "pass the file once, as the model name or (with a registry name) as checkpoint"
        )
    state = load_state_dict(path)
    if is_sam2_state(state):
        return _SAM2_FILE, state, str(path)
    return require_model_type(state, source=path), state, str(path)
