"""Model checkpoints: a registry of official SAM weights, a local cache and a verified download.

Cache layout
------------
All napari-sam-nd caches share one root folder, :func:`cache_root`:

* ``$NAPARI_SAM_CACHE`` if that environment variable is set (``~`` is expanded);
* otherwise the platform's user cache folder, ``platformdirs.user_cache_dir("napari-sam-nd")``
  (``~/.cache/napari-sam-nd`` on Linux, ``~/Library/Caches/napari-sam-nd`` on macOS,
  ``%LOCALAPPDATA%\\napari-sam-nd\\Cache`` on Windows).

Checkpoints are stored flat in its ``weights/`` folder (:func:`cache_dir`) under their official
file names, next to a small record of the last successful hash check::

    <root>/weights/sam_vit_b_01ec64.pth
    <root>/weights/sam_vit_b_01ec64.pth.verified.json

To work offline, copy a checkpoint into that folder by hand: it is recognised by its official file
name and accepted only if its SHA256 matches the registry. A checkpoint anywhere else (a fine-tuned
model, say) can always be used by passing its path instead of a model name
(:func:`resolve_checkpoint`).

The SHA256 values are those of Meta's published files (the same values pin these files in
micro-sam's model registry); MobileSAM's ``vit_t`` is pinned to the ``mobile_sam.pt`` of its
repository. Other models are added with :func:`register_weights` by the modules that can build
them.

micro-sam's models, pinned by xxh128 hashes, are registered by :mod:`napari_sam.models.microsam`.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import re
import string
import warnings
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "WEIGHTS",
    "WeightsDownloadError",
    "WeightsEntry",
    "cache_dir",
    "cache_root",
    "download_file",
    "fetch_weights",
    "file_digest",
    "file_sha256",
    "register_weights",
    "resolve_checkpoint",
    "weights_path",
]

logger = logging.getLogger(__name__)

#: Environment variable that overrides the cache root.
CACHE_ENV_VAR = "NAPARI_SAM_CACHE"

_APP_NAME = "napari-sam-nd"
_WEIGHTS_SUBDIR = "weights"
_VERIFIED_SUFFIX = ".verified.json"
# Large reads and writes: hashing and downloading 2.5 GB in 1 KiB pieces (pooch's default
# download chunk) costs millions of system calls.
_CHUNK_BYTES = 1 << 20
_HEX = frozenset(string.hexdigits.lower())


class WeightsDownloadError(RuntimeError):
    """A checkpoint could not be downloaded, or the download did not match its hash."""


#: Hash algorithms an entry can be pinned with, and the number of hex digits of each.
_DIGEST_LENGTHS = {"sha256": 64, "xxh128": 32}
_LABELS = {"sha256": "SHA256", "xxh128": "xxh128"}


@dataclass(frozen=True)
class WeightsEntry:
    """One downloadable checkpoint.

    Attributes
    ----------
    name : str
        Registry key, e.g. ``"vit_b"``.
    url : str
        Where the file is downloaded from.
    sha256 : str
        SHA256 of the file, 64 hex digits (stored lower case); may be empty when ``xxh128`` is
        given (the publisher gives no SHA256).
    filename : str
        File name in the cache folder (a bare name, no directories). For published checkpoints,
        the publisher's name, so a file downloaded by hand is recognised.
    size_mb : float
        Approximate size in megabytes (10**6 bytes), for display.
    description : str
        One line for users choosing a model.
    xxh128 : str
        xxh128 (XXH3, 128 bits) of the file, 32 hex digits: checked when ``sha256`` is empty.
    family : str
        Who published the model and for what, for display: ``"SAM"``, ``"MobileSAM"``,
        ``"micro-sam LM"``, ...
    decoder : str
        Registry name of the model's instance-segmentation decoder weights (micro-sam's
        models), loaded with the model; empty: none.
    """

    name: str
    url: str
    sha256: str
    filename: str
    size_mb: float
    description: str = ""
    xxh128: str = ""
    family: str = ""
    decoder: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("WeightsEntry.name must not be empty")
        for algorithm, length in _DIGEST_LENGTHS.items():
            given = getattr(self, algorithm)
            digest = given.lower().removeprefix(algorithm + ":")
            if digest and (len(digest) != length or not set(digest) <= _HEX):
                raise ValueError(f"WeightsEntry {self.name!r}: {algorithm} must be {length} hex "
                                 f"digits, got {given!r}")
            object.__setattr__(self, algorithm, digest)
        if not self.sha256 and not self.xxh128:
            raise ValueError(
                f"WeightsEntry {self.name!r}: sha256 must be 64 hex digits, got {self.sha256!r} "
                "(or give an xxh128)"
            )
        if (
            not self.filename
            or Path(self.filename).name != self.filename
            or "\\" in self.filename
            or self.filename in (".", "..")
        ):
            raise ValueError(
                f"WeightsEntry {self.name!r}: filename must be a bare file name, "
                f"got {self.filename!r}"
            )

    @property
    def digest(self) -> tuple[str, str]:
        """``(algorithm, hex digest)`` the file is checked with: SHA256 if known, else xxh128."""
        return ("sha256", self.sha256) if self.sha256 else ("xxh128", self.xxh128)


_META_URL = "https://dl.fbaipublicfiles.com/segment_anything/"

#: The known checkpoints by name. Add entries with :func:`register_weights`.
WEIGHTS: dict[str, WeightsEntry] = {
    entry.name: entry
    for entry in (
        WeightsEntry(
            name="vit_b",
            url=_META_URL + "sam_vit_b_01ec64.pth",
            sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
            filename="sam_vit_b_01ec64.pth",
            size_mb=375.0,
            family="SAM",
            description="SAM ViT-B (91M parameters): the fastest official SAM model.",
        ),
        WeightsEntry(
            name="vit_l",
            url=_META_URL + "sam_vit_l_0b3195.pth",
            sha256="3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
            filename="sam_vit_l_0b3195.pth",
            size_mb=1249.5,
            family="SAM",
            description="SAM ViT-L (308M parameters): close to ViT-H quality, about half its cost.",
        ),
        WeightsEntry(
            name="vit_h",
            url=_META_URL + "sam_vit_h_4b8939.pth",
            sha256="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
            filename="sam_vit_h_4b8939.pth",
            size_mb=2564.6,
            family="SAM",
            description="SAM ViT-H (636M parameters): the largest and most accurate SAM model.",
        ),
        WeightsEntry(
            name="vit_t",
            url="https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
            sha256="6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
            filename="mobile_sam.pt",
            size_mb=40.7,
            family="MobileSAM",
            description=(
                "MobileSAM (10M parameters): a TinyViT encoder distilled from ViT-H, several "
                "times faster than ViT-B on a CPU."
            ),
        ),
    )
}


def register_weights(entry: WeightsEntry, *, overwrite: bool = False) -> WeightsEntry:
    """Add a checkpoint to :data:`WEIGHTS`.

    Parameters
    ----------
    entry : WeightsEntry
    overwrite : bool
        Replace an existing, different entry of the same name. Registering an identical entry
        again is always allowed.

    Returns
    -------
    WeightsEntry
        ``entry``.

    Raises
    ------
    ValueError
        The name is taken by a different entry (and ``overwrite`` is false), or another entry
        uses the same file name for a different file: both would share one cache file.
    """
    if not isinstance(entry, WeightsEntry):
        raise TypeError(f"expected a WeightsEntry, got {type(entry).__name__}")
    existing = WEIGHTS.get(entry.name)
    if existing is not None and existing != entry and not overwrite:
        raise ValueError(
            f"weights {entry.name!r} are already registered ({existing.url}); "
            "pass overwrite=True to replace them"
        )
    for other in WEIGHTS.values():
        if (
            other.name != entry.name
            and other.filename == entry.filename
            and other.digest != entry.digest
        ):
            raise ValueError(
                f"weights {entry.name!r}: file name {entry.filename!r} is already used by "
                f"{other.name!r} for a different file"
            )
    WEIGHTS[entry.name] = entry
    return entry


def cache_root() -> Path:
    """Root folder of all napari-sam-nd caches: ``$NAPARI_SAM_CACHE`` or the user cache folder.

    The folder is not created here.
    """
    env = os.environ.get(CACHE_ENV_VAR, "").strip()
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir(_APP_NAME, appauthor=False))


def cache_dir() -> Path:
    """Folder holding downloaded (or hand-placed) checkpoints: ``cache_root() / "weights"``.

    The folder is not created here.
    """
    return cache_root() / _WEIGHTS_SUBDIR


def weights_path(name: str) -> Path:
    """Where the checkpoint ``name`` is, or will be, in the cache (it may not exist yet)."""
    return cache_dir() / _entry(name).filename


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA256 of a file as 64 lower-case hex digits, read in chunks (constant memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def file_digest(path: str | os.PathLike[str], algorithm: str = "sha256") -> str:
    """Hex digest of a file by ``"sha256"`` (:func:`file_sha256`) or ``"xxh128"`` (which needs
    the ``xxhash`` package: :class:`WeightsDownloadError` without it)."""
    if algorithm == "sha256":
        return file_sha256(path)
    if algorithm != "xxh128":
        raise ValueError(f"unknown hash algorithm {algorithm!r}: use sha256 or xxh128")
    digest = _require_xxhash().xxh128()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_weights(name: str, *, progress: bool = True) -> Path:
    """Path of a verified checkpoint in the cache, downloading it if needed.

    A file already in :func:`cache_dir` under the entry's file name (downloaded earlier or copied
    there by hand) is returned without any network access if its hash (SHA256, or xxh128 for
    micro-sam's files) matches. A file that does
    not match is reported with a warning and replaced by a fresh download. Downloads go to a
    temporary file in the cache folder that is moved into place only once its hash is verified, so
    an interrupted or corrupt download never leaves a file behind.

    Parameters
    ----------
    name : str
        A key of :data:`WEIGHTS`, e.g. ``"vit_b"``.
    progress : bool
        Show a download progress bar on stderr (needs ``tqdm``; without it, no bar is shown).

    Returns
    -------
    pathlib.Path
        The checkpoint file.

    Raises
    ------
    ValueError
        ``name`` is not a registered model.
    WeightsDownloadError
        The download failed (no network, server error, disk full) or the downloaded file's hash
        did not match. The message says where to put the file to work offline.
    """
    entry = _entry(name)
    algorithm, expected = entry.digest
    target = cache_dir() / entry.filename
    if target.is_file():
        if _is_verified(target, expected, algorithm):
            return target
        actual = file_digest(target, algorithm)
        if actual == expected:
            _record_verified(target, actual, algorithm)
            return target
        warnings.warn(
            f"{target} is not the expected {entry.name!r} checkpoint ({_LABELS[algorithm]} "
            f"{actual}, expected {expected}): an incomplete copy or a different file. "
            f"Downloading it again from {entry.url}.",
            UserWarning,
            stacklevel=2,
        )
    _download(entry, target, progress=progress)
    _record_verified(target, expected, algorithm)
    return target


def resolve_checkpoint(name_or_path: str | os.PathLike[str], *, progress: bool = True) -> Path:
    """Turn a model name or a checkpoint path into the path of a checkpoint file.

    A string that is a key of :data:`WEIGHTS` is fetched with :func:`fetch_weights` (a registered
    name wins over a file of the same name in the working directory). Anything else is taken as a
    path and returned as is, unchecked, if it is an existing file: that is how fine-tuned and other
    unregistered checkpoints are used.

    Raises
    ------
    FileNotFoundError
        ``name_or_path`` looks like a path (a ``PathLike``, or a string with a directory part or a
        file extension) but is not an existing file.
    ValueError
        ``name_or_path`` is neither a registered name nor an existing file.
    WeightsDownloadError
        See :func:`fetch_weights`.
    """
    if isinstance(name_or_path, str) and name_or_path in WEIGHTS:
        return fetch_weights(name_or_path, progress=progress)
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    looks_like_path = (
        not isinstance(name_or_path, str)
        or path.suffix != ""
        or len(path.parts) > 1
        or name_or_path.startswith("~")
    )
    if looks_like_path:
        what = "a directory, not a file" if path.is_dir() else "not found"
        raise FileNotFoundError(f"checkpoint {str(path)!r}: {what}")
    raise ValueError(
        f"{name_or_path!r} is neither a known model nor an existing checkpoint file; "
        f"known models: {_known_names()}"
    )


# -- internals ---------------------------------------------------------------------------------


def _known_names() -> str:
    parts = {entry.decoder for entry in WEIGHTS.values()}  # loaded with their models
    return ", ".join(sorted(n for n in WEIGHTS if n not in parts)) or "(none)"


def _entry(name: str) -> WeightsEntry:
    try:
        return WEIGHTS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model {name!r}; known models: {_known_names()}") from None


def _stamp_path(target: Path) -> Path:
    return target.with_name(target.name + _VERIFIED_SUFFIX)


def _require_xxhash():
    try:
        import xxhash
    except ImportError:
        raise WeightsDownloadError(
            "checking micro-sam's weights (pinned by xxh128 hashes) needs the xxhash package: "
            "pip install xxhash"
        ) from None
    return xxhash


def _is_verified(target: Path, digest: str, algorithm: str = "sha256") -> bool:
    """Whether ``target`` is unchanged since it last matched ``digest``.

    Re-hashing a 2.5 GB file on every start takes seconds, so a successful check is recorded with
    the file's size and modification time and trusted while both stay the same.
    """
    try:
        record = json.loads(_stamp_path(target).read_text(encoding="utf-8"))
        stat = target.stat()
        return (
            record[algorithm] == digest
            and record["size"] == stat.st_size
            and record["mtime_ns"] == stat.st_mtime_ns
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _record_verified(target: Path, digest: str, algorithm: str = "sha256") -> None:
    try:
        stat = target.stat()
        record = {algorithm: digest, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        _stamp_path(target).write_text(json.dumps(record), encoding="utf-8")
    except OSError as exc:  # a read-only cache still works; it is just re-hashed next time
        logger.debug("could not record the hash check of %s: %s", target, exc)


def _tqdm_available() -> bool:
    # pooch refuses progressbar=True without tqdm (ValueError), so ask before passing it on.
    try:
        importlib.import_module("tqdm.auto")
    except ImportError:
        return False
    return True


def _offline_hint(entry: WeightsEntry, target: Path) -> str:
    return (
        f"To work offline, download {entry.url} on another machine and copy it to {target} "
        f"(it is recognised by that name and checked against {_LABELS[entry.digest[0]]} "
        f"{entry.digest[1]}), or pass "
        f"the path of a checkpoint file instead of the model name. Set {CACHE_ENV_VAR} to use "
        "another cache folder."
    )


def download_file(url: str, target: Path, *, sha256: str | None = None,
                  progress: bool = False, xxh128: str | None = None) -> None:
    """Download ``url`` to ``target`` with pooch: through a temporary file, checked against
    ``sha256`` (or ``xxh128``, which needs the ``xxhash`` package) when given (a mismatch raises
    ``ValueError`` and saves nothing).

    The one downloader of the project (SAM and micro-sam weights, CLIP weights). Network
    failures raise ``requests`` exceptions or ``OSError``.
    """
    import pooch

    progressbar = progress and _tqdm_available()
    if progress and not progressbar:
        logger.info("tqdm is not installed: downloading %s without a progress bar", target.name)
    downloader = None
    if url.lower().startswith(("http://", "https://")):
        downloader = pooch.HTTPDownloader(progressbar=progressbar, chunk_size=_CHUNK_BYTES)
    target.parent.mkdir(parents=True, exist_ok=True)
    pooch.retrieve(
        url,
        known_hash=(f"sha256:{sha256}" if sha256 else f"xxh128:{xxh128}" if xxh128 else None),
        fname=target.name,
        path=target.parent,
        progressbar=progressbar,
        downloader=downloader,
    )


def _download(entry: WeightsEntry, target: Path, *, progress: bool) -> None:
    import requests

    try:
        algorithm, expected = entry.digest
        if algorithm == "xxh128":
            _require_xxhash()  # before downloading a file that could not be checked
        download_file(entry.url, target, progress=progress, **{algorithm: expected})
    except ValueError as exc:
        # pooch reports a hash mismatch as "... expected sha256:<hex> but got <hex>. ..."
        got = re.search(r"but got ([0-9a-fA-F]+)", str(exc))
        if got is None:
            raise WeightsDownloadError(
                f"Could not download the {entry.name!r} weights from {entry.url}: {exc}. "
                + _offline_hint(entry, target)
            ) from exc
        raise WeightsDownloadError(
            f"The file downloaded from {entry.url} does not match the {entry.name!r} weights: "
            f"{_LABELS[entry.digest[0]]} expected {entry.digest[1]}, got {got.group(1).lower()}. "
            "The download was "
            f"discarded, nothing was saved. The file at that address may have changed or been "
            f"corrupted in transit; try again later. " + _offline_hint(entry, target)
        ) from exc
    except (requests.exceptions.RequestException, OSError) as exc:
        raise WeightsDownloadError(
            f"Could not download the {entry.name!r} weights ({entry.filename}, "
            f"{entry.size_mb:.0f} MB) from {entry.url}: {exc}. " + _offline_hint(entry, target)
        ) from exc
