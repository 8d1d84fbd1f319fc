"""Persistent slice embeddings: a zarr store per (image content, model, plane geometry).

The image encoder is the cost of the whole tool, so its output is kept on disk and read back
lazily. Three pieces:

* fingerprints: :func:`model_fingerprint` (model name + hash of the weights) and
  :func:`image_fingerprint` (hash of all the pixel data, its shape, dtype, plane axes and
  normalisation). Together they form the *signature* of a store.
* :class:`EmbeddingStore`: a zarr v3 group with one float16 chunk per plane and a "done" flag per
  plane. Opening it with a different signature, or finding it unreadable, recreates it (the reason
  is logged and kept in :attr:`EmbeddingStore.reason`); it is never silently used.
* :class:`StackEmbedder`: ``get(index)`` gives a plane's
  :class:`~napari_sam.engine.predictor.ImageEmbedding` from a bounded in-memory LRU, else the store,
  else the encoder (and writes it).

Store layout (``<store>.zarr``)::

    zarr.json               group; attributes: format, signature, layout
    features/               float16, shape (n_planes, C, h, w), one chunk per plane, crc32c
    done/                   uint8, shape (n_planes,), one chunk per plane: 1 once written

Planes are numbered in C order over the non-plane axes (``numpy.ravel_multi_index``). Each plane
is its own chunk, and zarr's local store writes a chunk to a temporary file renamed into place, so
several processes can fill one store (each plane written by one of them) and an interrupted run
loses at most the plane being written. A plane counts only once its "done" flag is set, which is
written after its features.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "EmbeddingStore",
    "StackEmbedder",
    "StaleStoreError",
    "default_store_dir",
    "image_fingerprint",
    "model_fingerprint",
    "prune_store_dir",
    "signature_digest",
]

logger = logging.getLogger(__name__)

#: ``format`` attribute of every store written by this module.
STORE_FORMAT = "napari-sam-embeddings"
#: Bumped when the store layout changes: older stores are then recreated.
STORE_FORMAT_VERSION = 1
#: Bumped when the image preparation (normalisation, resizing) changes what the encoder sees.
PREPROCESS_VERSION = 2

_STORE_SUBDIR = "embeddings"
_LAYOUT_NAMES = frozenset({"zarr.json", "features", "done"})
_HASH_BLOCK_BYTES = 64 << 20
_WEIGHTS_HASH_ATTR = "_napari_sam_weights_hash"
_FLOAT16_MAX = float(np.finfo(np.float16).max)


class StaleStoreError(RuntimeError):
    """An existing store does not match the expected signature and may not be recreated."""


def default_store_dir() -> Path:
    """Folder of the automatic embedding stores: ``cache_root() / "embeddings"``.

    ``cache_root()`` is ``$NAPARI_SAM_CACHE`` or the user cache folder (see
    :mod:`napari_sam.models.weights`). The folder is not created here.
    """
    from ..models.weights import cache_root

    return cache_root() / _STORE_SUBDIR


# -- fingerprints ------------------------------------------------------------------------------


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


# -- the store ---------------------------------------------------------------------------------


class EmbeddingStore:
    """A zarr v3 store of per-plane embeddings in float16; open it with :meth:`open`.

    Attributes
    ----------
    path : pathlib.Path
    signature : dict
        What the embeddings were computed from (see :class:`StackEmbedder` for its content).
    n_planes : int
    feature_shape : (int, int, int)
        ``(C, h, w)`` of one plane's embedding.
    original_size : (int, int)
        ``(H, W)`` of the planes.
    img_size : int
        Model input side.
    status : {"created", "reused", "recreated"}
    reason : str
        Why the store was (re)created, or ``""`` when it was reused.
    """

    def __init__(self, path: Path, group, signature: dict, status: str, reason: str) -> None:
        self.path = path
        self._group = group
        self._features = group["features"]
        self._done = group["done"]
        layout = group.attrs["layout"]
        self.signature = signature
        self.n_planes = int(layout["n_planes"])
        self.feature_shape = tuple(int(v) for v in layout["feature_shape"])
        self.original_size = tuple(int(v) for v in layout["original_size"])
        self.img_size = int(layout["img_size"])
        self.status = status
        self.reason = reason

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        signature: dict,
        *,
        n_planes: int,
        feature_shape: Sequence[int],
        original_size: Sequence[int],
        img_size: int,
        recreate: bool = True,
        info: dict | None = None,
    ) -> EmbeddingStore:
        """Open the store at ``path``: reuse it if it matches, otherwise (re)create it.

        Parameters
        ----------
        path : path-like
            A ``.zarr`` folder. It must not exist, be empty, or be an embedding store: any other
            folder is refused rather than deleted.
        signature : dict
            JSON-serialisable description of what the embeddings are computed from.
        n_planes, feature_shape, original_size, img_size
            Layout: number of planes, ``(C, h, w)`` per plane, ``(H, W)`` of a plane, model input.
        recreate : bool
            Recreate a stale or unreadable store (the default). With ``False`` a mismatch raises
            :class:`StaleStoreError` and a missing store is created only if absent; distributed
            workers use this so that they never delete what the client set up.
        info : dict, optional
            Informational attributes of a new store (not compared), e.g. the model's name.

        Returns
        -------
        EmbeddingStore
            ``status`` and ``reason`` say whether it was created, reused or recreated and why.

        Raises
        ------
        ValueError
            ``path`` exists and is not an embedding store.
        StaleStoreError
            ``recreate=False`` and the store does not match.
        """
        import zarr

        p = Path(path).expanduser()
        layout = {
            "n_planes": int(n_planes),
            "feature_shape": [int(v) for v in feature_shape],
            "original_size": [int(v) for v in original_size],
            "img_size": int(img_size),
        }
        if layout["n_planes"] < 1 or len(layout["feature_shape"]) != 3:
            raise ValueError(f"invalid store layout {layout}")
        signature = _normalise(signature)

        reason = ""
        if p.exists():
            problem = _check_existing(p, signature, layout)
            if problem is None:
                group = zarr.open_group(str(p), mode="r+", zarr_format=3)
                _mark_used(p)
                return cls(p, group, signature, "reused", "")
            if not recreate:
                raise StaleStoreError(f"embedding store {p}: {problem}")
            _remove_store(p)
            reason = problem
            logger.warning("embedding store %s is recreated: %s", p, problem)
        group = _create(p, signature, layout, info or {})
        return cls(p, group, signature, "recreated" if reason else "created", reason)

    # -- planes ------------------------------------------------------------------------------

    def done_mask(self) -> npt.NDArray[np.bool_]:
        """Which planes are written, shape ``(n_planes,)``."""
        return np.asarray(self._done[:]) == 1

    def is_done(self, plane: int) -> bool:
        return bool(self._done[self._check(plane)] == 1)

    @property
    def n_done(self) -> int:
        return int(self.done_mask().sum())

    def read(self, plane: int) -> npt.NDArray[np.float16] | None:
        """The embedding of ``plane``, shape ``(C, h, w)`` float16, or ``None`` if not written.

        A plane whose chunk fails its checksum or holds non-finite values is logged, marked not
        done, and reported as ``None`` so that it is recomputed.
        """
        i = self._check(plane)
        if not self.is_done(i):
            return None
        try:
            features = np.asarray(self._features[i])
        except Exception as exc:  # noqa: BLE001 - any decoding failure means a corrupt chunk
            self._invalidate(i, f"unreadable ({exc})")
            return None
        if not np.isfinite(features).all():
            self._invalidate(i, "non-finite values")
            return None
        return features

    def write(self, plane: int, features: npt.ArrayLike) -> None:
        """Store the embedding ``(C, h, w)`` of ``plane`` (features first, then its done flag)."""
        i = self._check(plane)
        f = np.asarray(features)
        if f.shape != self.feature_shape:
            raise ValueError(f"features of shape {f.shape}, the store holds {self.feature_shape}")
        if np.abs(f).max(initial=0.0) > _FLOAT16_MAX:
            raise ValueError("the embedding exceeds the float16 range and cannot be stored")
        self._features[i] = f.astype(np.float16)
        self._done[i] = 1

    def _invalidate(self, plane: int, why: str) -> None:
        logger.warning("embedding store %s: plane %d is %s; it will be recomputed",
                       self.path, plane, why)
        try:
            self._done[plane] = 0
        except Exception:  # noqa: BLE001 - read-only store: recompute without clearing
            pass

    def _check(self, plane: int) -> int:
        i = int(plane)
        if not 0 <= i < self.n_planes:
            raise IndexError(f"plane {plane} is outside the store's {self.n_planes} planes")
        return i

    def __repr__(self) -> str:
        return (f"EmbeddingStore({str(self.path)!r}, {self.n_done}/{self.n_planes} planes, "
                f"{self.status})")


def _check_existing(p: Path, signature: dict, layout: dict) -> str | None:
    """``None`` if the store at ``p`` matches, otherwise why it cannot be used."""
    import zarr

    if not p.is_dir():
        raise ValueError(f"{p} exists and is not a folder: not usable as an embedding store")
    names = {c.name for c in p.iterdir()}
    if not names:
        return "empty folder"
    try:
        group = zarr.open_group(str(p), mode="r", zarr_format=3)
        attrs = dict(group.attrs)
    except Exception as exc:  # noqa: BLE001
        if names <= _LAYOUT_NAMES:
            return f"unreadable store ({type(exc).__name__}: {exc})"
        raise ValueError(f"{p} exists and is not an embedding store: refusing to overwrite it")
    if attrs.get("format") != STORE_FORMAT:
        if names <= _LAYOUT_NAMES and not attrs:
            return "unreadable store (no attributes)"
        raise ValueError(f"{p} exists and is not an embedding store: refusing to overwrite it")
    if attrs.get("format_version") != STORE_FORMAT_VERSION:
        return f"store format version {attrs.get('format_version')} != {STORE_FORMAT_VERSION}"
    if attrs.get("signature") != signature:
        old = attrs.get("signature") or {}
        changed = sorted(k for k in set(old) | set(signature) if old.get(k) != signature.get(k))
        return "stale: " + ", ".join(changed or ["signature"]) + " changed"
    if attrs.get("layout") != layout:
        return "stale: layout changed"
    try:
        features, done = group["features"], group["done"]
    except Exception as exc:  # noqa: BLE001
        return f"unreadable store (missing array: {exc})"
    want = (layout["n_planes"], *layout["feature_shape"])
    if tuple(features.shape) != want or features.dtype != np.float16:
        return f"corrupt store: features {features.shape} {features.dtype}, expected {want} float16"
    if tuple(done.shape) != (layout["n_planes"],):
        return f"corrupt store: done flags of shape {done.shape}"
    try:
        done[:]
    except Exception as exc:  # noqa: BLE001
        return f"corrupt store: done flags unreadable ({exc})"
    return None


def _mark_used(p: Path) -> None:
    """Record the last use (the mtime of ``zarr.json``) for :func:`prune_store_dir`."""
    try:
        os.utime(p / "zarr.json")
    except OSError:  # read-only file system: pruning then goes by creation time
        pass


def _folder_bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def prune_store_dir(
    max_bytes: int, folder: str | os.PathLike[str] | None = None, keep: Iterable[Path] = ()
) -> list[Path]:
    """Delete the least recently used embedding stores until ``folder`` holds at most
    ``max_bytes``.

    Parameters
    ----------
    max_bytes : int
        Size to get under.
    folder : path-like, optional
        Default :func:`default_store_dir`. Only its ``*.zarr`` entries that are embedding stores
        are considered; nothing else is ever deleted.
    keep : iterable of paths
        Stores in use, never deleted.

    Returns
    -------
    list of pathlib.Path
        The stores deleted.
    """
    import zarr

    root = Path(folder) if folder is not None else default_store_dir()
    if not root.is_dir():
        return []
    keep_set = {Path(k).resolve() for k in keep}
    stores = []
    for p in root.glob("*.zarr"):
        if not p.is_dir() or not {c.name for c in p.iterdir()} <= _LAYOUT_NAMES:
            continue
        try:
            if zarr.open_group(str(p), mode="r").attrs.get("format") != STORE_FORMAT:
                continue
        except Exception:  # noqa: BLE001 - an unreadable store of ours is fair game
            pass
        meta = p / "zarr.json"
        used = meta.stat().st_mtime if meta.exists() else p.stat().st_mtime
        stores.append((used, p, _folder_bytes(p)))
    total = sum(size for _, _, size in stores)
    removed = []
    for _, p, size in sorted(stores, key=lambda t: t[0]):
        if total <= max_bytes:
            break
        if p.resolve() in keep_set:
            continue
        shutil.rmtree(p, ignore_errors=True)
        total -= size
        removed.append(p)
    return removed


def _remove_store(p: Path) -> None:
    names = {c.name for c in p.iterdir()}
    if not names <= _LAYOUT_NAMES:  # never delete anything but a store
        raise ValueError(f"{p} holds files that are not part of an embedding store: not removing")
    shutil.rmtree(p)


def _create(p: Path, signature: dict, layout: dict, info: dict):
    import zarr
    from zarr.codecs import Crc32cCodec

    p.parent.mkdir(parents=True, exist_ok=True)
    group = zarr.open_group(str(p), mode="w", zarr_format=3)
    n = layout["n_planes"]
    c, h, w = layout["feature_shape"]
    # A checksum instead of compression: embeddings barely compress, and a torn or bit-rotten
    # chunk must be detected, not decoded into a wrong mask.
    group.create_array("features", shape=(n, c, h, w), chunks=(1, c, h, w), dtype="float16",
                       compressors=[Crc32cCodec()], fill_value=0)
    group.create_array("done", shape=(n,), chunks=(1,), dtype="uint8", compressors=None,
                       fill_value=0)
    group.attrs.update({
        "format": STORE_FORMAT,
        "format_version": STORE_FORMAT_VERSION,
        "signature": signature,
        "layout": layout,
        "info": _normalise(info),
    })
    return group


# -- the stack embedder ------------------------------------------------------------------------


def _normalise_axes(axes: Sequence[int], ndim: int) -> tuple[int, int]:
    if len(axes) != 2:
        raise ValueError(f"axes must name the two plane axes, got {tuple(axes)}")
    out = []
    for a in axes:
        a = int(a)
        if not -ndim <= a < ndim:
            raise ValueError(f"plane axis {a} is out of range for {ndim} spatial axes")
        out.append(a % ndim)
    if not out[0] < out[1]:
        raise ValueError(
            f"plane axes must be two different axes in ascending order, got {tuple(axes)}"
        )
    return out[0], out[1]


StoreArg = str | os.PathLike | None | Literal["auto"]


class StackEmbedder:
    """Embeddings of every 2D plane of an nD image: memory LRU, then a zarr store, then the encoder.

    Thread-safe: the UI thread may call :meth:`get` while a worker runs :meth:`precompute`. The
    encoder runs under one lock with the embedder's own :class:`~napari_sam.SamPredictor`, so a
    plane requested twice at once is computed once.

    Embeddings are rounded to float16 as soon as they are computed, whether or not a store is
    used, so a plane decodes identically the first time and after a reload.

    Parameters
    ----------
    model : Sam
    image : array-like, shape (..., Y, X) or (..., Y, X, 3)
        numpy, dask or zarr; planes are read one at a time.
    axes : (int, int)
        The two plane axes among the spatial axes, ascending (negative values count from the last
        spatial axis). Default: the last two.
    rgb : bool
        The last axis holds RGB(A) channels (not a spatial axis).
    intensity_range : (float, float), optional
        Normalisation of the whole stack; estimated once (robust percentiles) when first needed.
        uint8 RGB is used as is.
    store : path, "auto" or None
        ``None``: memory only. A path: that zarr store. ``"auto"``: a store named by the
        signature in :func:`default_store_dir`. Opening a store hashes the whole image (about
        1 GB/s), on first use, not in the constructor: do that off the GUI thread.
    model_name : str, optional
        Name recorded in the model fingerprint.
    memory_mb : float
        Bound of the in-memory LRU (float16 embeddings; the default model's take 1 MiB each,
        ViT-B's 2 MiB).
    fingerprint : str, optional
        The :func:`image_fingerprint` of ``image`` with these axes, ``rgb`` and intensity range,
        if already known (distributed workers get it from the client instead of rehashing).
    precision : {"float32", "bfloat16", "float16"}
        Arithmetic of the image encoder (see :class:`~napari_sam.SamPredictor`); part of the
        signature, so embeddings of different precisions never mix.

    Examples
    --------
    >>> emb = StackEmbedder(model, volume, store="auto")  # doctest: +SKIP
    >>> predictor.set_embedding(emb.get((12,)))  # z = 12 of a (Z, Y, X) volume  # doctest: +SKIP
    """

    def __init__(
        self,
        model,
        image: npt.ArrayLike,
        *,
        axes: Sequence[int] = (-2, -1),
        rgb: bool = False,
        intensity_range: tuple[float, float] | None = None,
        store: StoreArg = None,
        model_name: str | None = None,
        memory_mb: float = 256,
        fingerprint: str | None = None,
        precision: str = "float32",
    ) -> None:
        from .embedding_cache import EmbeddingCache
        from .predictor import SamPredictor

        if not hasattr(image, "shape") or not hasattr(image, "dtype"):
            image = np.asarray(image)
        shape = tuple(int(s) for s in image.shape)
        if rgb and (len(shape) < 3 or shape[-1] not in (3, 4)):
            raise ValueError(f"rgb=True needs a last axis of 3 or 4 channels, got shape {shape}")
        spatial = shape[:-1] if rgb else shape
        if len(spatial) < 2:
            raise ValueError(f"the image needs at least two spatial axes, got shape {shape}")
        if memory_mb <= 0:
            raise ValueError("memory_mb must be positive")
        self.model = model
        self.image = image
        self.rgb = bool(rgb)
        self.axes = _normalise_axes(axes, len(spatial))
        self.model_name = model_name
        self._spatial_shape = spatial
        self._lead_axes = tuple(a for a in range(len(spatial)) if a not in self.axes)
        self.plane_shape = tuple(spatial[a] for a in self._lead_axes)
        self.original_size = (spatial[self.axes[0]], spatial[self.axes[1]])
        if min(self.original_size) < 1:
            raise ValueError(f"the planes are empty (image shape {shape})")
        pe = model.prompt_encoder
        self.feature_shape = (int(pe.embed_dim), *(int(v) for v in pe.image_embedding_size))
        self._range = None if intensity_range is None else tuple(float(v) for v in intensity_range)
        self._range_given = intensity_range is not None
        self._fingerprint = fingerprint
        self._store_arg = store
        self._store: EmbeddingStore | None = None
        self._store_opened = False
        self._memory = EmbeddingCache(max_bytes=int(memory_mb * 2**20))
        self._predictor = SamPredictor(model, precision=precision)
        self.precision = precision
        self._compute_lock = threading.Lock()
        self._setup_lock = threading.RLock()

    # -- geometry ----------------------------------------------------------------------------

    def planes(self) -> list[tuple[int, ...]]:
        """Every plane index, in C order over the non-plane axes (``[()]`` for a 2D image)."""
        return [tuple(int(v) for v in i) for i in np.ndindex(*self.plane_shape)]

    @property
    def n_planes(self) -> int:
        return int(np.prod(self.plane_shape, dtype=np.int64))

    def plane_image(self, index: Sequence[int]) -> np.ndarray:
        """The pixels of one plane, shape ``(H, W)`` or ``(H, W, 3)``, as numpy."""
        idx = self._check_index(index)
        key: list[Any] = [slice(None)] * len(self._spatial_shape)
        for axis, i in zip(self._lead_axes, idx):
            key[axis] = i
        return np.asarray(self.image[tuple(key)])

    def _check_index(self, index: Sequence[int] | int) -> tuple[int, ...]:
        if isinstance(index, (int, np.integer)):
            index = (index,)
        idx = tuple(int(v) for v in index)
        if len(idx) != len(self.plane_shape) or any(
            not 0 <= i < n for i, n in zip(idx, self.plane_shape)
        ):
            raise IndexError(f"plane index {tuple(index)} is outside the planes {self.plane_shape}")
        return idx

    def _flat(self, idx: tuple[int, ...]) -> int:
        return int(np.ravel_multi_index(idx, self.plane_shape)) if idx else 0

    # -- signature and store -----------------------------------------------------------------

    @property
    def intensity_range(self) -> tuple[float, float] | None:
        """The stack's normalisation range (``None`` for uint8 RGB used as is)."""
        with self._setup_lock:
            if self._range is None and not self._range_given:
                if not (self.rgb and np.dtype(self.image.dtype) == np.uint8):
                    from .preprocess import estimate_intensity_range

                    self._range = estimate_intensity_range(self.image)
                self._range_given = True
            return self._range

    @property
    def fingerprint(self) -> str:
        """:func:`image_fingerprint` of the image (hashes all of it on first access)."""
        with self._setup_lock:
            if self._fingerprint is None:
                self._fingerprint = image_fingerprint(
                    self.image, self.axes, self.intensity_range, rgb=self.rgb
                )
            return self._fingerprint

    def signature(self) -> dict:
        """What the embeddings depend on; a store is reused only if its signature is equal."""
        # The weights hash only: the same weights under another name are the same model.
        return {
            "image": self.fingerprint,
            "model": model_fingerprint(self.model).rsplit(":", 1)[-1],
            "img_size": int(self.model.img_size),
            "precision": self.precision,
            "plane_axes": list(self.axes),
            "planes": list(self.plane_shape),
            "package": _package_version(),
            "preprocess": PREPROCESS_VERSION,
        }

    @property
    def store(self) -> EmbeddingStore | None:
        """The opened store (``None`` without one); opened, created or recreated on first use."""
        with self._setup_lock:
            if not self._store_opened:
                self._store = self._open_store(recreate=True)
                self._store_opened = True
            return self._store

    def open_store(self, *, recreate: bool = True) -> EmbeddingStore | None:
        """Open the store now (see :meth:`EmbeddingStore.open` for ``recreate``)."""
        with self._setup_lock:
            if not self._store_opened:
                self._store = self._open_store(recreate=recreate)
                self._store_opened = True
            return self._store

    def _open_store(self, recreate: bool) -> EmbeddingStore | None:
        path = self.store_path
        if path is None:
            return None
        return EmbeddingStore.open(
            path, self.signature(), n_planes=self.n_planes, feature_shape=self.feature_shape,
            original_size=self.original_size, img_size=int(self.model.img_size),
            recreate=recreate, info={"model": model_fingerprint(self.model, self.model_name)},
        )

    @property
    def store_path(self) -> Path | None:
        """Where the store is (``None`` without a store); ``"auto"`` hashes the image first."""
        arg = self._store_arg
        if arg is None:
            return None
        if isinstance(arg, str) and arg == "auto":
            return default_store_dir() / f"{signature_digest(self.signature())}.zarr"
        return Path(arg).expanduser()

    # -- embeddings --------------------------------------------------------------------------

    def get(self, index: Sequence[int] | int):
        """The embedding of one plane, computing (and storing) it if needed.

        Parameters
        ----------
        index : tuple of int
            Position along the non-plane spatial axes in ascending axis order (``()`` for 2D).

        Returns
        -------
        ImageEmbedding
            ``features`` float32 on the CPU, shape ``(1, C, h, w)`` (values rounded to float16).
        """
        idx = self._check_index(index)
        half = self._memory.get(idx)
        if half is None:
            half = self._load(idx)
            if half is None:
                with self._compute_lock:
                    half = self._memory.get(idx)
                    if half is None:
                        half = self._load(idx)
                    if half is None:
                        half = self._compute_and_save(idx)
            self._memory.put(idx, half)
        return _to_float32(half)

    def has(self, index: Sequence[int] | int) -> bool:
        """Whether the plane's embedding is in memory or on disk (never computes)."""
        idx = self._check_index(index)
        if idx in self._memory:
            return True
        store = self.store
        return store is not None and store.is_done(self._flat(idx))

    def missing(self, indices: Iterable[Sequence[int]] | None = None) -> list[tuple[int, ...]]:
        """The planes (of ``indices``, default all) that are neither stored nor in memory."""
        keys = self.planes() if indices is None else [self._check_index(i) for i in indices]
        store = self.store
        done = store.done_mask() if store is not None else None
        return [
            k for k in keys
            if not (done is not None and done[self._flat(k)]) and k not in self._memory
        ]

    def precompute(
        self,
        indices: Iterable[Sequence[int]] | None = None,
        progress: Callable[[int, int], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> int:
        """Compute and store the planes that are not stored yet.

        Planes already written (by an earlier, interrupted run or another process) are skipped,
        so calling this again resumes. With a store, computed planes go to disk only (the memory
        LRU keeps what the user looks at); without one they go to the memory LRU.

        Parameters
        ----------
        indices : iterable of tuple, optional
            Planes to compute (default: all).
        progress : callable, optional
            ``progress(done, total)`` after each plane; ``done`` counts planes already present.
        cancelled : callable, optional
            Polled before each plane; when it returns true, stop (what was written is kept).

        Returns
        -------
        int
            Number of planes computed by this call.
        """
        keys = self.planes() if indices is None else [self._check_index(i) for i in indices]
        todo = self.missing(keys)
        total = len(keys)
        already = total - len(todo)
        if progress is not None:
            progress(already, total)
        store = self.store
        computed = 0
        for n, idx in enumerate(todo, start=1):
            if cancelled is not None and cancelled():
                break
            with self._compute_lock:
                present = idx in self._memory or (
                    store is not None and store.is_done(self._flat(idx))
                )
                if not present:
                    half = self._compute_and_save(idx)
                    if store is None:
                        self._memory.put(idx, half)
                    computed += 1
            if progress is not None:
                progress(already + n, total)
        return computed

    @property
    def memory(self):
        """The in-memory LRU (:class:`~napari_sam.engine.embedding_cache.EmbeddingCache`, float16)."""
        return self._memory

    def _load(self, idx: tuple[int, ...]):
        store = self.store
        if store is None:
            return None
        features = store.read(self._flat(idx))
        if features is None:
            return None
        import torch

        from .predictor import ImageEmbedding

        return ImageEmbedding(
            torch.from_numpy(features)[None], self.original_size, int(self.model.img_size)
        )

    def _compute_and_save(self, idx: tuple[int, ...]):
        """Encode one plane (caller holds the compute lock); returns the float16 embedding."""
        import torch

        from .predictor import ImageEmbedding

        emb = self._predictor.compute_embedding(self.plane_image(idx), self.intensity_range)
        features = emb.features.detach().to("cpu", torch.float32)
        if not torch.isfinite(features).all() or features.abs().max() > _FLOAT16_MAX:
            raise RuntimeError(f"the encoder returned values outside the float16 range for "
                               f"plane {idx}")
        half = features.to(torch.float16)
        store = self.store
        if store is not None:
            store.write(self._flat(idx), half[0].numpy())
        return ImageEmbedding(half, emb.original_size, emb.img_size)


def _to_float32(emb):
    import torch

    from .predictor import ImageEmbedding

    return ImageEmbedding(emb.features.to(torch.float32), emb.original_size, emb.img_size)
