"""Fingerprints of what an embedding depends on: the model's weights and the image's pixels.

:func:`model_fingerprint` (model name + hash of the weights) and :func:`image_fingerprint` (hash of
all the pixel data, its shape, dtype, plane axes and normalisation) together form the *signature*
of an embedding store (:mod:`napari_sam.engine.plane_store`); :func:`signature_digest` names it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "PREPROCESS_VERSION",
    "image_fingerprint",
    "model_fingerprint",
    "signature_digest",
]

#: Bumped when the image preparation (normalisation, resizing) changes what the encoder sees.
PREPROCESS_VERSION = 3  # 3: uint8 RGB resized like Meta's ResizeLongestSide (PIL)

_HASH_BLOCK_BYTES = 64 << 20
_WEIGHTS_HASH_ATTR = "_napari_sam_weights_hash"


def _package_version() -> str:
    from .. import __version__

    return __version__


def model_fingerprint(model, name: str | None = None) -> str:
    """Identify a model by name and weights: ``"<name>:<40 hex digits>"``.

    The hash covers every parameter and buffer (names, shapes, dtypes, values). It is computed
    once and cached on the model; later calls only check that no tensor was replaced or changed
    in place (torch's per-tensor version counters), which costs microseconds.

    Parameters
    ----------
    model : torch.nn.Module
        A SAM model.
    name : str, optional
        Human-readable part (a registry name or checkpoint file name); ``"sam"`` if omitted.

    Returns
    -------
    str
    """
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    stamp = tuple((k, t.data_ptr(), t._version) for k, t in tensors)
    cached = getattr(model, _WEIGHTS_HASH_ATTR, None)
    if cached is not None and cached[0] == stamp:
        digest = cached[1]
    else:
        import torch

        h = _bulk_hash()
        with torch.no_grad():
            for key, t in sorted(tensors, key=lambda kv: kv[0]):
                h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
                raw = t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
                h.update(raw.numpy().tobytes())
        digest = h.hexdigest()
        try:
            setattr(model, _WEIGHTS_HASH_ATTR, (stamp, digest))
        except AttributeError:  # pragma: no cover - a module that refuses attributes
            pass
    label = (name or "sam").replace(":", "_")
    return f"{label}:{digest}"


def _bulk_hash():
    """The hash for bulk data (pixels, weights): identification, not security.

    SHA-1 runs at 1.4 GB/s where the CPU has SHA instructions (blake2b 0.56, SHA-256 0.87 GB/s
    on the development machine; xxhash is not a dependency).
    """
    return hashlib.sha1(usedforsecurity=False)


def _iter_blocks(data, block_bytes: int = _HASH_BLOCK_BYTES):
    """Yield C-ordered numpy blocks of ``data`` (numpy, dask, zarr...) of about ``block_bytes``."""
    shape = tuple(np.shape(data))
    if len(shape) == 0:
        yield np.asarray(data).reshape(1)
        return
    itemsize = np.dtype(data.dtype).itemsize
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * itemsize
    if row_bytes > block_bytes and len(shape) > 1:
        for i in range(shape[0]):
            yield from _iter_blocks(data[i], block_bytes)
        return
    rows = max(1, block_bytes // max(row_bytes, 1))
    for start in range(0, shape[0], rows):
        yield np.asarray(data[start : start + rows])


def _content_digest(data) -> str:
    """Hash of all the values of ``data`` in C order, little-endian, read block by block."""
    dtype = np.dtype(data.dtype)
    little = dtype.newbyteorder("<") if dtype.byteorder not in ("|", "=", "<") else dtype
    h = _bulk_hash()
    for block in _iter_blocks(data):
        block = np.ascontiguousarray(block)
        if block.dtype.byteorder == ">":
            block = block.astype(little)
        h.update(block.reshape(-1).view(np.uint8))
    return h.hexdigest()


def image_fingerprint(
    data: npt.ArrayLike,
    axes: Sequence[int],
    intensity_range: tuple[float, float] | None,
    *,
    rgb: bool = False,
) -> str:
    """Identify an image and how its planes are prepared for the encoder: 32 hex digits.

    Everything that changes an embedding goes in: every value of the data (read chunk by chunk,
    so dask and zarr arrays are never loaded whole), shape, dtype, plane axes, RGB flag,
    intensity range, and the package and preprocessing versions.

    Parameters
    ----------
    data : array-like
        The whole image (numpy, dask, zarr...). Hashing runs at roughly 1 GB/s.
    axes : (int, int)
        The two plane axes.
    intensity_range : (float, float) or None
        Normalisation range (``None`` for uint8 RGB used as is).
    rgb : bool
        Whether the last axis holds RGB(A) channels.

    Returns
    -------
    str
    """
    if not hasattr(data, "dtype") or not hasattr(data, "shape"):
        data = np.asarray(data)
    header = {
        "shape": [int(s) for s in np.shape(data)],
        "dtype": np.dtype(data.dtype).str.replace(">", "<"),
        "axes": [int(a) for a in axes],
        "rgb": bool(rgb),
        "intensity_range": None if intensity_range is None else [float(v) for v in intensity_range],
        "package": _package_version(),
        "preprocess": PREPROCESS_VERSION,
        "content": _content_digest(data),
    }
    return hashlib.blake2b(_canonical(header).encode(), digest_size=16).hexdigest()


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _normalise(value: Any) -> Any:
    """Round-trip through JSON so that tuples and lists compare equal."""
    return json.loads(_canonical(value))


def signature_digest(signature: dict) -> str:
    """32 hex digits identifying a signature (used to name automatic stores)."""
    return hashlib.blake2b(_canonical(signature).encode(), digest_size=16).hexdigest()

