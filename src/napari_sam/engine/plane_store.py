"""The on-disk embedding store: a zarr v3 group with one float16 chunk per plane, each plane's bytes
bound to a checksum of their own.

Store layout (``<store>.zarr``)::

    zarr.json               group; attributes: format, format_version, signature, layout, info
    features/               float16, shape (n_planes, C, h, w), one chunk per plane, crc32c
    digest/                 uint8, shape (n_planes, 20), one chunk per plane: the plane's checksum
    done/                   uint8, shape (n_planes,), one chunk per plane: 1 once written
    claims/                 <plane>.claim files of the writers at work (see plane_claims)

A plane is written in that order: features, then its digest, then its done flag, each an atomic
chunk write (zarr's local store writes a temporary file and renames it into place). Its digest is
SHA-1 over the store's signature, the plane's number and the plane's float16 bytes, so it proves
that these bytes are the ones written *for this plane of this store*:

* a chunk file missing behind a set done flag (zarr would return its fill value, zeros),
* two planes' chunk files swapped (each chunk's own crc32c is valid),
* a chunk rewritten behind the store's back, damaged or truncated,

all fail the check. Every :meth:`EmbeddingStore.read` checks it; a plane that fails is logged,
recorded in :attr:`EmbeddingStore.problems`, marked not done and reported as absent, so that it is
recomputed and never used. :meth:`EmbeddingStore.verify` checks every plane marked done.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from .fingerprint import _normalise, signature_digest
from .plane_claims import PlaneClaims, hold

__all__ = [
    "EmbeddingStore",
    "StaleStoreError",
    "default_store_dir",
    "prune_store_dir",
    "writable_location",
]

logger = logging.getLogger(__name__)

#: ``format`` attribute of every store written by this module.
STORE_FORMAT = "napari-sam-embeddings"
#: Bumped when the store layout changes: older stores are then recreated.
#: 2: per-plane digests (``digest/``) and claim files (``claims/``).
STORE_FORMAT_VERSION = 2

_STORE_SUBDIR = "embeddings"
_LAYOUT_NAMES = frozenset({"zarr.json", "features", "digest", "done", "claims"})
_DIGEST_BYTES = 20
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


def writable_location(path: str | os.PathLike[str]) -> bool:
    """Whether ``path``, or the nearest folder above it that exists, may be written in.

    A folder marked read-only for everyone (no write bit) counts as read-only also for root, who
    could write there anyway: someone made it read-only on purpose.
    """
    p = Path(path).expanduser().absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return p.is_dir() and os.access(p, os.W_OK) and bool(p.stat().st_mode & 0o222)
    except OSError:
        return False


class EmbeddingStore:
    """A zarr v3 store of per-plane embeddings in float16; open it with :meth:`open`.

    Attributes
    ----------
    path : pathlib.Path
    signature : dict
        What the embeddings were computed from (see
        :class:`~napari_sam.engine.embedding_store.StackEmbedder` for its content).
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
    problems : dict of int to str
        Planes found marked done but unusable since the store was opened, and why (``"missing
        chunk"``, ``"checksum mismatch"``...): a report, kept after they are recomputed. They were
        marked not done when found, so that they are recomputed, never used.
    claims : PlaneClaims
        The writers' claims on planes (``<store>/claims``).
    """

    def __init__(self, path: Path, group, signature: dict, status: str, reason: str) -> None:
        self.path = path
        self._group = group
        self._features = group["features"]
        self._digest = group["digest"]
        self._done = group["done"]
        layout = group.attrs["layout"]
        self.signature = signature
        self.n_planes = int(layout["n_planes"])
        self.feature_shape = tuple(int(v) for v in layout["feature_shape"])
        self.original_size = tuple(int(v) for v in layout["original_size"])
        self.img_size = int(layout["img_size"])
        self.status = status
        self.reason = reason
        self.problems: dict[int, str] = {}
        self.claims = PlaneClaims(path / "claims")
        self._salt = signature_digest(signature).encode()

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
        OSError
            The store cannot be created (e.g. a read-only folder).
        """
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

        try:  # the quick path: a ready store is reused without the lock
            if p.exists() and _check_existing(p, signature, layout) is None:
                return cls._reuse(p, signature)
        except ValueError:
            pass  # perhaps another process is creating it right now: decided under the lock
        # (Re)create under a lock beside the store: a second process opening it meanwhile waits,
        # then finds it ready instead of wiping it or taking it for something else.
        p.parent.mkdir(parents=True, exist_ok=True)
        with hold(p.parent / f".{p.name}.lock"):
            reason = ""
            if p.exists():
                problem = _check_existing(p, signature, layout)
                if problem is None:
                    return cls._reuse(p, signature)
                if not recreate:
                    raise StaleStoreError(f"embedding store {p}: {problem}")
                _remove_store(p)
                reason = problem
                logger.warning("embedding store %s is recreated: %s", p, problem)
            group = _create(p, signature, layout, info or {})
        return cls(p, group, signature, "recreated" if reason else "created", reason)

    @classmethod
    def _reuse(cls, p: Path, signature: dict) -> EmbeddingStore:
        import zarr

        group = zarr.open_group(str(p), mode="r+", zarr_format=3)
        _mark_used(p)
        return cls(p, group, signature, "reused", "")

    # -- done flags ----------------------------------------------------------------------------

    def done_mask(self) -> npt.NDArray[np.bool_]:
        """Which planes are marked written, shape ``(n_planes,)``.

        An unreadable or garbage flag counts as not done (the plane is then recomputed); it is
        reported once in :attr:`problems`.
        """
        try:
            flags = np.asarray(self._done[:]).astype(np.int16)
        except Exception:  # noqa: BLE001 - a damaged flag chunk: read them one by one
            flags = np.array([self._flag(i) for i in range(self.n_planes)], dtype=np.int16)
        for i in np.flatnonzero((flags != 0) & (flags != 1)):
            self._note(int(i), _flag_problem(int(flags[i])))
        return flags == 1

    def is_done(self, plane: int) -> bool:
        """Whether ``plane`` is marked written (its data are checked when read)."""
        i = self._check(plane)
        flag = self._flag(i)
        if flag not in (0, 1):
            self._note(i, _flag_problem(flag))
        return flag == 1

    @property
    def n_done(self) -> int:
        return int(self.done_mask().sum())

    def _flag(self, i: int) -> int:
        try:
            return int(self._done[i])
        except Exception:  # noqa: BLE001 - unreadable flag chunk
            return -1

    # -- planes --------------------------------------------------------------------------------

    def read(self, plane: int) -> npt.NDArray[np.float16] | None:
        """The embedding of ``plane``, shape ``(C, h, w)`` float16, or ``None`` if not written.

        The plane's bytes are checked against its digest: a plane that fails (missing chunk,
        another plane's data, damaged values) is logged, recorded in :attr:`problems`, marked not
        done and reported as ``None``, so that it is recomputed.
        """
        i = self._check(plane)
        if not self.is_done(i):
            return None
        features, problem = self._load_checked(i)
        if problem is not None:
            self._invalidate(i, problem)
            return None
        return features

    def verify(
        self,
        planes: Iterable[int] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> dict[int, str]:
        """Check every plane marked done (of ``planes``, default all) against its digest.

        Planes that fail are marked not done (to be recomputed), logged and returned with why.
        Garbage done flags found on the way are included.
        """
        done = self.done_mask()
        chosen = range(self.n_planes) if planes is None else sorted(set(map(self._check, planes)))
        todo = [i for i in chosen if done[i]]
        found = {i: why for i, why in self.problems.items() if not done[i] and i in chosen}
        for n, i in enumerate(todo, start=1):
            _, problem = self._load_checked(i)
            if problem is not None:
                self._invalidate(i, problem)
                found[i] = problem
            if progress is not None:
                progress(n, len(todo))
        return dict(sorted(found.items()))

    def write(self, plane: int, features: npt.ArrayLike) -> None:
        """Store the embedding ``(C, h, w)`` of ``plane``: features, digest, then done flag."""
        i = self._check(plane)
        f = np.asarray(features)
        if f.shape != self.feature_shape:
            raise ValueError(f"features of shape {f.shape}, the store holds {self.feature_shape}")
        if np.abs(f).max(initial=0.0) > _FLOAT16_MAX:
            raise ValueError("the embedding exceeds the float16 range and cannot be stored")
        half = f.astype(np.float16)
        self._features[i] = half
        self._digest[i] = self._digest_of(i, half)
        self._done[i] = 1

    def _digest_of(self, i: int, half: np.ndarray) -> np.ndarray:
        h = hashlib.sha1(self._salt + f"|{i}|".encode(), usedforsecurity=False)
        h.update(np.ascontiguousarray(half, dtype="<f2").reshape(-1).view(np.uint8))
        return np.frombuffer(h.digest(), dtype=np.uint8)

    def _load_checked(self, i: int) -> tuple[np.ndarray | None, str | None]:
        """``(features, None)``, or ``(None, why)`` if plane ``i``'s stored bytes are not its own."""
        try:
            features = np.asarray(self._features[i])
        except Exception as exc:  # noqa: BLE001 - any decoding failure means a corrupt chunk
            return None, f"unreadable chunk ({type(exc).__name__}: {exc})"
        try:
            stored = np.asarray(self._digest[i])
        except Exception as exc:  # noqa: BLE001
            return None, f"unreadable checksum ({type(exc).__name__}: {exc})"
        if not np.array_equal(stored, self._digest_of(i, features)):
            if not self._chunk_exists(self._features, i):
                return None, "missing chunk"
            if not self._chunk_exists(self._digest, i):
                return None, "no checksum recorded"
            return None, "checksum mismatch (another plane's data, or altered values)"
        if not np.isfinite(features).all():
            return None, "non-finite values"
        return features, None

    def _chunk_exists(self, array, i: int) -> bool:
        key = array.metadata.encode_chunk_key((i,) + (0,) * (array.ndim - 1))
        return (self.path / array.basename / key).is_file()

    def _invalidate(self, plane: int, why: str) -> None:
        self._note(plane, why)
        try:
            self._done[plane] = 0
        except Exception:  # noqa: BLE001 - read-only store: recompute without clearing
            pass

    def _note(self, plane: int, why: str) -> None:
        if self.problems.get(plane) != why:
            self.problems[plane] = why
            logger.warning("embedding store %s: plane %d is not usable (%s); it will be "
                           "recomputed", self.path, plane, why)

    def _check(self, plane: int) -> int:
        i = int(plane)
        if not 0 <= i < self.n_planes:
            raise IndexError(f"plane {plane} is outside the store's {self.n_planes} planes")
        return i

    def __repr__(self) -> str:
        return (f"EmbeddingStore({str(self.path)!r}, {self.n_done}/{self.n_planes} planes, "
                f"{self.status})")


def _flag_problem(flag: int) -> str:
    return "unreadable done flag" if flag < 0 else f"garbage done flag ({flag})"


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
        features, digest, done = group["features"], group["digest"], group["done"]
    except Exception as exc:  # noqa: BLE001
        return f"unreadable store (missing array: {exc})"
    n = layout["n_planes"]
    want = (n, *layout["feature_shape"])
    if tuple(features.shape) != want or features.dtype != np.float16:
        return f"corrupt store: features {features.shape} {features.dtype}, expected {want} float16"
    if tuple(digest.shape) != (n, _DIGEST_BYTES) or digest.dtype != np.uint8:
        return f"corrupt store: digests {digest.shape} {digest.dtype}"
    if tuple(done.shape) != (n,):
        return f"corrupt store: done flags of shape {done.shape}"
    return None  # damaged flags, chunks and digests are found plane by plane


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
    group.create_array("digest", shape=(n, _DIGEST_BYTES), chunks=(1, _DIGEST_BYTES),
                       dtype="uint8", compressors=None, fill_value=0)
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
