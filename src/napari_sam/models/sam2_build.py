"""Building SAM 2.1 models by name or from a checkpoint file, downloading Meta's weights.

Meta publishes the checkpoints (``{"model": state_dict}``) at the URLs of :data:`SAM2_DOWNLOADS`
but no checksums, so a download cannot be checked against a published hash as SAM's and
micro-sam's are (:mod:`napari_sam.models.weights`). It is verified as well as possible instead
(:func:`fetch_sam2_weights`):

* **size**: the file must be within :data:`SIZE_TOLERANCE` of the size in :data:`SAM2_DOWNLOADS`
  (Meta's sizes in bytes are not published either);
* **structure**: it is read with ``torch.load(weights_only=True)`` (no code runs) and its keys and
  tensor shapes must equal those of the named configuration exactly;
* **trust on first use**: the SHA256 of the file that passed is logged and recorded beside it
  (``<file>.verified.json``, the record :mod:`~napari_sam.models.weights` keeps), and every
  later load checks the file against it: a changed file is an error, never silently used.

A file that fails is deleted before anything else happens. A file placed in the weights cache
folder (:func:`~napari_sam.models.weights.cache_dir`) by hand under Meta's name is checked for
structure and then recorded the same way; ``checkpoint=PATH`` uses any file, checked only by the
strict load.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path

import torch

from ..modeling.sam2 import Sam2
from .checkpoint import CheckpointError, load_state_dict
from .device import resolve_device
from .sam2_configs import SAM2_CONFIGS, build_sam2

__all__ = [
    "SAM2_DOWNLOADS",
    "SIZE_TOLERANCE",
    "build_sam2_model",
    "fetch_sam2_weights",
    "infer_sam2_type",
    "is_sam2_state",
]

logger = logging.getLogger(__name__)

_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"

#: name -> (URL, file name, size in MB of 10**6 bytes); Meta publishes no SHA256 and no exact
#: byte counts. Tests point an entry at a local server with ``monkeypatch.setitem``.
SAM2_DOWNLOADS: dict[str, tuple[str, str, float]] = {
    name: (_URL + f"{name}.pt", f"{name}.pt", size)
    for name, size in (
        ("sam2.1_hiera_tiny", 156.0),
        ("sam2.1_hiera_small", 184.0),
        ("sam2.1_hiera_base_plus", 324.0),
        ("sam2.1_hiera_large", 898.0),
    )
}

#: How far (relative) a download's size may be from its :data:`SAM2_DOWNLOADS` size.
SIZE_TOLERANCE = 0.05


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
        Without ``checkpoint``: the cached weights, downloaded and verified on first use
        (:func:`fetch_sam2_weights`), if true; random weights if false.
    state : dict, optional
        An already read state dict of ``name`` (a path).

    Raises
    ------
    ValueError
        ``checkpoint`` given with a path as ``name``.
    CheckpointError
        The file is not a SAM 2.1 checkpoint of that size, or the cached file changed since its
        SHA256 was recorded.
    napari_sam.models.weights.WeightsDownloadError
        The weights are not cached and could not be downloaded, or the download failed its
        size or structure check (it was deleted).
    """
    dev = resolve_device(device)
    source = None
    model = None
    if isinstance(name, str) and name in SAM2_CONFIGS:
        model_type = name
        model = build_sam2(SAM2_CONFIGS[name])
        if checkpoint is not None:
            source = str(checkpoint)
        elif pretrained:
            source = str(fetch_sam2_weights(name, expected=_shapes(model.state_dict())))
    else:
        if checkpoint is not None:
            raise ValueError(f"{str(name)!r} is a checkpoint path and checkpoint= was given too")
        source = str(Path(name).expanduser())
        model_type = None
    if source is not None and state is None:
        state = load_state_dict(source)
    if state is not None and model_type is None:
        model_type = infer_sam2_type(state, source or "checkpoint")
    if model is None:
        model = build_sam2(SAM2_CONFIGS[model_type])
    if state is not None:
        problem = _structure_problem(state, _shapes(model.state_dict()))
        if problem:
            raise CheckpointError(f"{source} does not fit {model_type}: {problem}")
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"{source} does not fit {model_type}: {exc}") from exc
    return model.to(dev).eval()


def fetch_sam2_weights(
    name: str,
    *,
    progress: bool = True,
    expected: Mapping[str, tuple[int, ...]] | None = None,
) -> Path:
    """Path of the verified SAM 2.1 checkpoint ``name`` in the cache, downloading it if needed.

    A file in the cache with a record is checked against the SHA256 recorded when it was first
    verified (re-hashed only when its size or modification time changed); a file without one
    (placed by hand) gets the structure check and is then recorded. Otherwise the file is
    downloaded from :data:`SAM2_DOWNLOADS` to a temporary name, checked for size and
    structure, and moved into place with its SHA256 recorded (trust on first use: Meta
    publishes no checksum). The SHA256 is logged (and printed to stderr with ``progress``).

    Parameters
    ----------
    name : str
        A :data:`SAM2_DOWNLOADS` name, e.g. ``"sam2.1_hiera_tiny"``.
    progress : bool
        Show a download progress bar on stderr (needs ``tqdm``).
    expected : mapping of str to tuple of int, optional
        The state dict's keys and tensor shapes; by default those of a model built from
        ``SAM2_CONFIGS[name]``.

    Returns
    -------
    pathlib.Path
        The checkpoint file.

    Raises
    ------
    ValueError
        ``name`` is not a SAM 2.1 download.
    CheckpointError
        The cached file changed since its SHA256 was recorded, or a hand-placed file is not
        that model's checkpoint.
    napari_sam.models.weights.WeightsDownloadError
        The download failed, or the downloaded file failed its size or structure check (it was
        deleted; nothing is kept).
    """
    from .weights import WeightsDownloadError, cache_dir, download_file

    if name not in SAM2_DOWNLOADS:
        raise ValueError(f"unknown SAM 2.1 model {name!r}; known: {', '.join(SAM2_DOWNLOADS)}")
    url, filename, size_mb = SAM2_DOWNLOADS[name]
    target = cache_dir() / filename
    if expected is None:  # the model is built only if a file is to be checked
        expected = _LazyShapes(name)
    if target.is_file():
        if not _matches_record(name, target, url):  # placed by hand: no record yet
            problem = _structure_problem(load_state_dict(target), expected)
            if problem:
                raise CheckpointError(f"{target} is not the {name} checkpoint: {problem}")
            _record(name, target, url, progress=progress)
        return target
    hint = (f"To work offline, download {url} on another machine and save it as {target}, or "
            f"pass checkpoint=PATH.")
    part = target.with_name(filename + ".download")
    part.unlink(missing_ok=True)  # left by a killed run: pooch would take it as downloaded
    try:
        with _pooch_quiet():  # its "use this hash as known_hash" advice is for the temp file
            download_file(url, part, progress=progress)
    except Exception as exc:  # requests' errors, OSError, pooch's ValueError
        part.unlink(missing_ok=True)
        raise WeightsDownloadError(
            f"the {name} weights are not in the cache and could not be downloaded from {url} "
            f"({size_mb:.0f} MB): {exc}. {hint}"
        ) from exc
    try:
        problem = _download_problem(part, size_mb, expected)
        if problem:
            raise WeightsDownloadError(
                f"the file downloaded from {url} is not the {name} checkpoint ({problem}); it was "
                f"deleted, nothing was kept. Meta publishes no checksum, so napari-sam checks the "
                f"size and the structure of the download. {hint}"
            )
        os.replace(part, target)
    finally:
        part.unlink(missing_ok=True)
    _record(name, target, url, progress=progress)
    return target


# -- internals ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _pooch_quiet():
    import pooch

    pooch_logger = pooch.get_logger()
    level = pooch_logger.level
    pooch_logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        pooch_logger.setLevel(level)


def _shapes(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


class _LazyShapes(Mapping):
    """The key -> shape mapping of ``SAM2_CONFIGS[name]``'s model, built on first use."""

    def __init__(self, name: str) -> None:
        self._name, self._shapes = name, None

    def _get(self) -> dict[str, tuple[int, ...]]:
        if self._shapes is None:
            self._shapes = _shapes(build_sam2(SAM2_CONFIGS[self._name]).state_dict())
        return self._shapes

    def __getitem__(self, key):
        return self._get()[key]

    def __iter__(self):
        return iter(self._get())

    def __len__(self):
        return len(self._get())


def _structure_problem(state: Mapping[str, torch.Tensor],
                       expected: Mapping[str, tuple[int, ...]]) -> str:
    """What keeps ``state`` from loading strictly into a model of shapes ``expected`` ("": none)."""
    if not is_sam2_state(state):
        return "not a SAM 2 checkpoint (no memory attention)"
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        return (f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    wrong = [f"{k} {tuple(state[k].shape)} (expected {expected[k]})"
             for k in sorted(expected) if tuple(state[k].shape) != tuple(expected[k])]
    if wrong:
        return f"wrong shapes: {', '.join(wrong[:3])}{'...' if len(wrong) > 3 else ''}"
    return ""


def _download_problem(path: Path, size_mb: float, expected: Mapping[str, tuple[int, ...]]) -> str:
    """Why the downloaded ``path`` is not the checkpoint ("": it passed)."""
    size = path.stat().st_size
    low, high = (size_mb * 1e6 * (1 + s * SIZE_TOLERANCE) for s in (-1, 1))
    if not low <= size <= high:
        return (f"{size} bytes, expected {size_mb:.0f} MB within {SIZE_TOLERANCE:.0%}: "
                f"truncated or another file")
    try:
        state = load_state_dict(path)  # weights_only=True: no code runs
    except CheckpointError as exc:
        return str(exc)
    problem = _structure_problem(state, expected)
    del state  # memory-mapped: let go of the file before it is moved
    return problem


def _matches_record(name: str, target: Path, url: str) -> bool:
    """Whether ``target`` has a record (False: none) and still matches it (else an error)."""
    from .weights import _is_verified, _record_verified, _stamp_path, file_sha256

    stamp = _stamp_path(target)
    try:
        recorded = json.loads(stamp.read_text(encoding="utf-8"))["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if _is_verified(target, recorded):
        return True
    actual = file_sha256(target)
    if actual != recorded:
        raise CheckpointError(
            f"{target} has changed since it was verified and its SHA256 recorded (recorded "
            f"{recorded}, now {actual}): it may be damaged or replaced. Delete it and "
            f"{stamp.name} to download {name} again from {url}, or pass checkpoint=PATH to use "
            f"another file on purpose."
        )
    _record_verified(target, actual)  # same bytes, touched: refresh the record
    return True


def _record(name: str, target: Path, url: str, *, progress: bool) -> None:
    """Trust on first use: record (and report) the SHA256 of a file that passed the checks."""
    from .weights import _record_verified, file_sha256

    digest = file_sha256(target)
    _record_verified(target, digest)
    message = (f"{name}: SHA256 {digest} of {target} recorded (trust on first use: Meta "
               f"publishes no checksum for {url}); later loads are checked against it")
    logger.info(message)
    if progress:
        print(message, file=sys.stderr)
