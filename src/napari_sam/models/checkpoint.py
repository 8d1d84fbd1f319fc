"""Reading SAM checkpoints safely and fitting them to a model, with errors a user can act on.

Checkpoint files are untrusted input: they are read with ``torch.load(weights_only=True)``, which
refuses pickled Python objects other than tensors and plain containers. Official checkpoints are
bare state dicts; training tools often wrap the state dict (``{"model": ...}``) or prefix its keys
(``module.`` from DistributedDataParallel, ``_orig_mod.`` from ``torch.compile``). Both are undone
here. micro-sam's checkpoints (``{"model_state": ..., "decoder_state": ...}``, SAM's keys possibly
prefixed ``sam.``) load too: SAM's part as SAM, the instance-segmentation decoder beside it.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from .configs import SamConfig

__all__ = [
    "CheckpointError",
    "describe_mismatch",
    "infer_model_type",
    "load_state_dict",
    "load_weights",
    "require_model_type",
    "state_dict_shapes",
]

#: Keys under which training tools nest the model's state dict.
WRAPPER_KEYS = ("model", "model_state", "state_dict")
#: Key prefixes added by wrappers (DDP, Lightning, compiled modules, SAM-in-a-bigger-model).
STRIP_PREFIXES = ("module.", "model.", "sam.", "_orig_mod.")
#: Entries some tools save that are constants of the model, not weights: ignored when loading.
_IGNORED_KEYS = frozenset({"pixel_mean", "pixel_std"})
#: Keys of the optional mask refiner (:class:`napari_sam.modeling.MaskRefiner`): not part of
#: SAM's own weights (official checkpoints have none), so model types are told apart without them.
REFINER_PREFIX = "mask_refiner."
#: Keys of the optional instance-segmentation decoder
#: (:class:`napari_sam.modeling.instance_decoder.InstanceDecoder`, micro-sam's models): like the
#: refiner, not part of SAM's weights. micro-sam stores it beside the model's state dict, under
#: ``"decoder_state"``; :func:`load_state_dict` returns it under this prefix.
DECODER_PREFIX = "instance_decoder."
#: The key under which micro-sam (torch_em) checkpoints keep the decoder's state dict.
DECODER_STATE_KEY = "decoder_state"
#: Key prefixes of the optional parts: model types are told apart without them.
_EXTRA_PREFIXES = (REFINER_PREFIX, DECODER_PREFIX)
#: How many key names an error message lists per kind of problem.
_MAX_LISTED = 4


class CheckpointError(ValueError):
    """A checkpoint file cannot be read, or its weights do not fit the model."""


# -- reading -----------------------------------------------------------------------------------


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a flat state dict of CPU tensors.

    Parameters
    ----------
    path : str or os.PathLike
        A file written by ``torch.save``: a state dict, or a dict holding one under ``"model"``,
        ``"model_state"`` or ``"state_dict"`` (nesting is followed). A micro-sam checkpoint's
        instance-segmentation decoder (``"decoder_state"`` beside ``"model_state"``) is
        returned too, its keys prefixed with ``instance_decoder.``.

    Returns
    -------
    dict of str to torch.Tensor
        Keys without wrapper prefixes (``module.``, ``model.``, ``sam.``, ``_orig_mod.``);
        entries that are not tensors are dropped. Tensors of zip-format files are memory-mapped
        from the file and read on first use.

    Raises
    ------
    CheckpointError
        The file does not exist, is not a PyTorch checkpoint, contains pickled objects that are
        not weights (refused for safety), or holds no tensors.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"checkpoint file {str(p)!r} does not exist")
    if not p.is_file():
        raise CheckpointError(f"checkpoint {str(p)!r} is not a file")
    obj = _torch_load(p)
    return _extract_state_dict(obj, str(p))


def _torch_load(path: Path) -> Any:
    try:
        # Only zip-format files (torch >= 1.6) can be memory-mapped; older ones are read whole.
        mmap = zipfile.is_zipfile(path)
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        message = str(exc)
        if "weights only load failed" not in message.lower():
            raise CheckpointError(_not_a_checkpoint(path, exc)) from exc
        found = re.search(r"\bGLOBAL\s+([\w.]+)", message)
        if found is None:  # the safe unpickler met bytes it cannot read: not a torch file
            reason = re.search(r"WeightsUnpickler error:\s*([^\n]+)", message)
            detail = reason.group(1).strip() if reason else "unreadable data"
            raise CheckpointError(_not_a_checkpoint(path, detail)) from None
        raise CheckpointError(
            f"checkpoint {str(path)!r} contains pickled Python objects (for example "
            f"{found.group(1)}) besides the weights. They are refused because unpickling them "
            "can run arbitrary code. If you trust the file, load it once yourself with "
            "torch.load(path, weights_only=False) and torch.save() only its state dict (a dict "
            "of tensors) to a new file."
        ) from None
    except MemoryError:
        raise
    except Exception as exc:  # torch raises RuntimeError, KeyError, EOFError, ... on bad files
        raise CheckpointError(_not_a_checkpoint(path, exc)) from exc


def _not_a_checkpoint(path: Path, exc: BaseException | str) -> str:
    if isinstance(exc, str):
        detail = exc
    else:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        detail = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return (
        f"{str(path)!r} is not a readable PyTorch checkpoint ({detail[:200]}); it may be "
        "truncated, damaged, or another kind of file"
    )


def _extract_state_dict(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """Unwrap, strip prefixes and keep the tensors of a loaded checkpoint object."""
    decoder = obj.get(DECODER_STATE_KEY) if isinstance(obj, Mapping) else None
    seen = 0
    while isinstance(obj, Mapping) and seen < 10:
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj, seen = inner, seen + 1
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"checkpoint {source!r} holds a {type(obj).__name__}, not a state dict "
            "(a mapping of parameter names to tensors)"
        )

    state: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor) or not isinstance(key, str):
            continue
        name = _strip_prefixes(key)
        if name in state:
            raise CheckpointError(
                f"checkpoint {source!r} has the key {name!r} twice once wrapper prefixes are "
                f"removed (one of them is {key!r})"
            )
        state[name] = value
    if not state:
        raise CheckpointError(f"checkpoint {source!r} contains no tensors")
    if isinstance(decoder, Mapping):
        state.update({DECODER_PREFIX + k: v for k, v in decoder.items()
                      if isinstance(k, str) and isinstance(v, torch.Tensor)})
    return state


def _strip_prefixes(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in STRIP_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                stripped = True
    return key


# -- matching ----------------------------------------------------------------------------------


def state_dict_shapes(config: SamConfig) -> dict[str, tuple[int, ...]]:
    """The state-dict keys and tensor shapes of a model built from ``config`` (cached).

    The model is built on the CPU with its weights allocated but never initialised
    (:class:`_SkipInit`: milliseconds and no memory touched, where initialising ViT-H's 2.5 GB
    took seconds). Not on the ``meta`` device: initialising meta tensors imports torch._dynamo and
    triton, which crashes a process whose napari viewer already holds an OpenGL context (CUDA
    builds of torch). :func:`infer_model_type` only builds the candidates whose cheap
    :func:`_signature` matches.
    """
    return dict(_shapes(config))


class _SkipInit(torch.overrides.TorchFunctionMode):
    """Makes weight initialisation a no-op in this thread (shapes only: the values stay unset).

    Skips the functions of :mod:`torch.nn.init` and the tensor methods that only fill values in
    place; everything else (allocation, shapes) runs as usual.
    """

    _FILLS = frozenset({"uniform_", "normal_", "fill_", "zero_", "copy_", "random_", "bernoulli_",
                        "exponential_", "log_normal_", "cauchy_", "geometric_"})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in self._FILLS or getattr(func, "__module__", None) == "torch.nn.init":
            target = args[0] if args else kwargs.get("tensor")
            if isinstance(target, torch.Tensor):
                return target
        return func(*args, **kwargs)


@lru_cache(maxsize=8)
def _shapes(config: SamConfig) -> tuple[tuple[str, tuple[int, ...]], ...]:
    from .configs import build_sam

    with torch.no_grad(), _SkipInit():
        model = build_sam(config)
    return tuple((k, tuple(v.shape)) for k, v in model.state_dict().items())


def _config_signature(config: SamConfig) -> tuple:
    g = config.image_embedding_size
    if config.encoder_type == "tiny_vit":  # no position embedding; counted by stages
        return ((), len(config.stage_dims), config.prompt_embed_dim, config.decoder_depth)
    return (
        (1, g, g, config.encoder_embed_dim),
        config.encoder_depth,
        config.prompt_embed_dim,
        config.decoder_depth,
    )


def _signature(shapes: Mapping[str, tuple[int, ...]]) -> tuple:
    """Encoder grid and width, encoder depth, prompt width, decoder depth of a state dict.

    A TinyViT encoder (MobileSAM) has no position embedding, and stages (``layers``) instead of
    blocks: its signature has ``()`` and the number of stages in the first two places.
    """

    def count(prefix: str) -> int:
        return len({k[len(prefix):].split(".")[0] for k in shapes if k.startswith(prefix)})

    no_mask = shapes.get("prompt_encoder.no_mask_embed.weight", (0, 0))
    return (
        tuple(shapes.get("image_encoder.pos_embed", ())),
        count("image_encoder.blocks.") or count("image_encoder.layers."),
        no_mask[-1],
        count("mask_decoder.transformer.layers."),
    )


def infer_model_type(
    state_dict: Mapping[str, torch.Tensor],
    configs: Mapping[str, SamConfig] | None = None,
) -> str | None:
    """Which model type a state dict is for.

    Parameters
    ----------
    state_dict : mapping of str to torch.Tensor
        As returned by :func:`load_state_dict`.
    configs : mapping of str to SamConfig, optional
        Candidate types; :data:`napari_sam.models.build.MODEL_CONFIGS` by default.

    Returns
    -------
    str or None
        The first candidate whose keys and shapes match the state dict exactly, or ``None``.
    """
    if configs is None:
        from .configs import MODEL_CONFIGS

        configs = MODEL_CONFIGS
    given = _given_shapes(state_dict)
    signature = _signature(given)
    for name, config in configs.items():
        if _config_signature(config) == signature and state_dict_shapes(config) == given:
            return name
    return None


def require_model_type(
    state_dict: Mapping[str, torch.Tensor],
    source: str | os.PathLike[str] | None = None,
) -> str:
    """Like :func:`infer_model_type` over the registry, but an unknown type is an error.

    Raises
    ------
    CheckpointError
        No registered type fits; the message compares the checkpoint with the closest one.
    """
    from .configs import MODEL_CONFIGS

    model_type = infer_model_type(state_dict, MODEL_CONFIGS)
    if model_type is not None:
        return model_type
    given = _given_shapes(state_dict)
    signature = _signature(given)
    # closest by signature first (cheap), so that only one model is built for the message
    agree = {
        t: sum(a == b for a, b in zip(_config_signature(c), signature))
        for t, c in MODEL_CONFIGS.items()
    }
    closest = max(agree, key=agree.__getitem__)
    diff = describe_mismatch(state_dict_shapes(MODEL_CONFIGS[closest]), given)
    what = f"checkpoint {str(source)!r}" if source is not None else "the checkpoint"
    raise CheckpointError(
        f"{what} does not match any known SAM model ({', '.join(MODEL_CONFIGS)}). "
        f"Compared with the closest, {closest!r}: {diff}."
    )


def _given_shapes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state_dict.items()
            if k not in _IGNORED_KEYS and not k.startswith(_EXTRA_PREFIXES)}


def describe_mismatch(
    expected: Mapping[str, tuple[int, ...]], given: Mapping[str, tuple[int, ...]]
) -> str:
    """One sentence naming (a few of) the missing, unexpected and wrongly shaped keys."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    wrong = [k for k in expected if k in given and tuple(given[k]) != tuple(expected[k])]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s) ({_listing(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s) ({_listing(unexpected)})")
    if wrong:
        shown = ", ".join(
            f"{k}: {tuple(given[k])} in the checkpoint, {tuple(expected[k])} in the model"
            for k in wrong[:_MAX_LISTED]
        )
        more = f", and {len(wrong) - _MAX_LISTED} more" if len(wrong) > _MAX_LISTED else ""
        parts.append(f"{len(wrong)} key(s) with another shape ({shown}{more})")
    return "; ".join(parts) if parts else "no differences"


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    return shown + (f", and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else "")


# -- loading -----------------------------------------------------------------------------------


def load_weights(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    name: str,
    *,
    source: str | os.PathLike[str] | None = None,
) -> None:
    """Copy a state dict into ``model``, which must match it key for key and shape for shape.

    Parameters
    ----------
    model : nn.Module
        The model to fill (its parameters keep their device and dtype).
    state_dict : mapping of str to torch.Tensor
        As returned by :func:`load_state_dict`.
    name : str
        The model's type (``"vit_b"``), used in error messages.
    source : str or os.PathLike, optional
        Where the state dict came from, used in error messages.

    A state dict with ``mask_refiner.*`` keys gives the model a
    :class:`~napari_sam.modeling.MaskRefiner` with those weights (one without them keeps the
    model's refiner, if any, as it is); one with ``instance_decoder.*`` keys gives it an
    ``instance_decoder`` (:class:`~napari_sam.modeling.instance_decoder.InstanceDecoder`) alike.

    Raises
    ------
    CheckpointError
        Keys are missing or unexpected, or shapes differ. The message names a few of each and
        the model type whose keys and shapes the checkpoint does fit, if there is one.
    """
    refiner_state = {k[len(REFINER_PREFIX):]: v for k, v in state_dict.items()
                     if k.startswith(REFINER_PREFIX)}
    decoder_state = {k[len(DECODER_PREFIX):]: v for k, v in state_dict.items()
                     if k.startswith(DECODER_PREFIX)}
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()
                if not k.startswith(_EXTRA_PREFIXES)}
    given = _given_shapes(state_dict)
    if expected != given:
        what = f"checkpoint {str(source)!r}" if source is not None else "the checkpoint"
        fits = infer_model_type(state_dict)
        if fits is None:
            hint = " It fits none of the known model types."
        elif fits != name:
            hint = (
                f" It is a {fits!r} checkpoint: build a {fits!r} model for it, or pass the "
                "checkpoint file as the model name to detect its type."
            )
        else:
            hint = f" It is a {fits!r} checkpoint, but this model has another configuration."
        raise CheckpointError(
            f"{what} does not fit a {name!r} model: {describe_mismatch(expected, given)}.{hint}"
        )
    weights = {k: v for k, v in state_dict.items()
               if k not in _IGNORED_KEYS and not k.startswith(_EXTRA_PREFIXES)}
    with torch.no_grad():
        if refiner_state:
            _load_refiner(model, refiner_state, source)
        if decoder_state:
            _load_instance_decoder(model, decoder_state, source)
        model.load_state_dict({**model.state_dict(), **weights}, strict=True)


def _load_instance_decoder(model: nn.Module, state: Mapping[str, torch.Tensor], source) -> None:
    from ..modeling.instance_decoder import InstanceDecoder

    try:
        decoder = InstanceDecoder.from_state_dict(state)
    except ValueError as exc:
        what = f"checkpoint {str(source)!r}" if source is not None else "the checkpoint"
        raise CheckpointError(f"{what}: {exc}") from None
    width = model.prompt_encoder.embed_dim
    if decoder.embed_dim != width:
        raise CheckpointError(
            f"the instance-segmentation decoder takes {decoder.embed_dim}-channel embeddings, "
            f"the model's image encoder gives {width}"
        )
    model.instance_decoder = decoder.to(next(model.parameters()).device).eval()


def _load_refiner(model: nn.Module, state: Mapping[str, torch.Tensor], source) -> None:
    from ..modeling import MaskRefiner

    width = state.get("inp.weight")
    refiner = MaskRefiner(width=32 if width is None else int(width.shape[0]))
    refiner = refiner.to(next(model.parameters()).device)
    expected = {k: tuple(v.shape) for k, v in refiner.state_dict().items()}
    if expected != _given_shapes(state):
        what = f"checkpoint {str(source)!r}" if source is not None else "the checkpoint"
        raise CheckpointError(f"{what} holds a mask refiner of another configuration: "
                              f"{describe_mismatch(expected, _given_shapes(state))}")
    refiner.load_state_dict(dict(state), strict=True)
    model.mask_refiner = refiner.eval()
