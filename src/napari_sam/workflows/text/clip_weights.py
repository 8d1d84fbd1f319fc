"""Which CLIP model to load and where its weights are: model specifications (``MODEL:TAG``,
``MODEL:PATH``, config files, model folders), the weights cache, and the one-time download of
open_clip's pretrained weights (offline-aware: a missing file gives a message saying what to do).
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ...models.weights import download_file

__all__ = [
    "OFFLINE_ENV_VAR",
    "ClipSpec",
    "ClipWeightsMissing",
    "clip_cache_dir",
    "parse_clip_spec",
]

logger = logging.getLogger(__name__)

#: Set to 1 to never try a download (also honoured: ``HF_HUB_OFFLINE=1``).
OFFLINE_ENV_VAR = "NAPARI_SAM_OFFLINE"
#: Weight file extensions recognised in the cache, best first.
_WEIGHT_EXTS = (".safetensors", ".bin", ".pt", ".pth")
_HF_SAFE_NAME = "open_clip_model.safetensors"
_HF_BIN_NAME = "open_clip_pytorch_model.bin"
_PROBE_TIMEOUT_S = 3.0
_DOWNLOAD_TIMEOUT_S = 30.0


class ClipWeightsMissing(RuntimeError):
    """The CLIP weights asked for are not on this machine and could not be downloaded.

    The message names the file expected, where to put it, and how to pass a local file instead.
    """


@dataclass(frozen=True)
class ClipSpec:
    """A parsed CLIP model specification (see :func:`parse_clip_spec`).

    Attributes
    ----------
    text : str
        The specification as given.
    model : str
        open_clip architecture name (for a config file: the file's stem).
    config : Path or None
        An open_clip model config JSON that defines ``model``.
    tag : str or None
        A pretrained tag of open_clip (``"openai"``, ``"laion2b_s34b_b79k"``), or ``"random"``
        for random weights (meaningless scores; for tests and speed measurements).
    weights : Path or None
        A local weights file.
    local_dir : Path or None
        A folder holding ``open_clip_config.json`` and the weights (a downloaded Hub repo).
    """

    text: str
    model: str = ""
    config: Path | None = None
    tag: str | None = None
    weights: Path | None = None
    local_dir: Path | None = None


_PATHLIKE_SUFFIXES = (*_WEIGHT_EXTS, ".npz", ".ckpt")


def _looks_like_path(text: str) -> bool:
    return (
        "/" in text or "\\" in text or text.startswith(("~", "."))
        or Path(text).suffix.lower() in _PATHLIKE_SUFFIXES
    )


def parse_clip_spec(spec: str | os.PathLike) -> ClipSpec:
    """Parse ``"MODEL:TAG"``, ``"MODEL:PATH"``, ``"CONFIG.json:PATH"`` or a model folder.

    ``MODEL`` is an open_clip architecture (``ViT-B-32``) or the path of an open_clip model config
    JSON (its file name without ``.json`` becomes the architecture name). After the first colon:
    a pretrained tag (``openai``), ``random``, or the path of a weights file. A folder alone is
    an open_clip model folder (``open_clip_config.json`` plus weights). Only the syntax and
    the existence of paths are checked here; names and tags are checked when the model loads.

    Raises
    ------
    ValueError
        Malformed specification.
    FileNotFoundError
        A path in it does not exist.
    """
    text = os.fspath(spec).strip()
    if not text:
        raise ValueError("empty CLIP model specification; use MODEL:TAG, e.g. ViT-B-32:openai")
    as_path = Path(text).expanduser()
    if as_path.is_dir():
        if not (as_path / "open_clip_config.json").is_file():
            raise FileNotFoundError(
                f"CLIP model folder {str(as_path)!r} has no open_clip_config.json"
            )
        return ClipSpec(text=text, model=as_path.name, local_dir=as_path)
    if re.match(r"^[A-Za-z]:[\\/]", text) or as_path.is_file():
        raise ValueError(
            f"{text!r}: a weights file needs its architecture: MODEL:PATH, e.g. "
            f"ViT-B-32:{text}"
        )
    model, sep, rest = text.partition(":")
    model, rest = model.strip(), rest.strip()
    if not sep or not rest or not model:
        raise ValueError(
            f"CLIP model {text!r}: expected MODEL:TAG or MODEL:PATH (e.g. ViT-B-32:openai, "
            "ViT-B-32:/path/to/open_clip_model.safetensors)"
        )
    config = None
    if model.lower().endswith(".json"):
        config = Path(model).expanduser()
        if not config.is_file():
            raise FileNotFoundError(f"CLIP model config {str(config)!r} not found")
        model = config.stem
    if rest.lower() == "random":
        return ClipSpec(text=text, model=model, config=config, tag="random")
    if _looks_like_path(rest) or Path(rest).expanduser().exists():
        weights = Path(rest).expanduser()
        if not weights.is_file():
            raise FileNotFoundError(f"CLIP weights file {str(weights)!r} not found")
        return ClipSpec(text=text, model=model, config=config, weights=weights)
    return ClipSpec(text=text, model=model, config=config, tag=rest)


def clip_cache_dir() -> Path:
    """Folder of downloaded CLIP weights: ``clip/`` in the cache root shared with SAM's weights.

    See :func:`napari_sam.models.weights.cache_root` (``$NAPARI_SAM_CACHE`` overrides it). Files
    are named ``<MODEL>-<TAG><ext>`` (e.g. ``ViT-B-32-openai.safetensors``); a file copied there by
    hand under that name is used without any network access.
    """
    from ...models.weights import cache_root

    return cache_root() / "clip"


def _offline() -> bool:
    return any(
        os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on")
        for var in (OFFLINE_ENV_VAR, "HF_HUB_OFFLINE")
    )


def _reachable(url: str, timeout: float = _PROBE_TIMEOUT_S) -> str | None:
    """``None`` if a TCP connection to the URL's host opens within ``timeout``, else the reason.

    Name resolution can block far longer than any socket timeout, so the probe runs in a daemon
    thread that is abandoned when the time is up.
    """
    host = urllib.parse.urlsplit(url).hostname or ""
    result: list[str | None] = ["timed out"]

    def probe() -> None:
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            result[0] = None
        except OSError as exc:
            result[0] = str(exc) or type(exc).__name__

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return result[0]


def _download_sources(cfg: dict) -> list[tuple[str, str]]:
    """``(url, extension)`` candidates of a pretrained tag, Hugging Face first (as open_clip)."""
    sources = []
    hf = cfg.get("hf_hub", "")
    if hf:
        repo, filename = hf.rstrip("/"), ""
        if not hf.endswith("/"):
            repo, filename = os.path.split(hf)
        names = [filename] if filename else [_HF_SAFE_NAME, _HF_BIN_NAME]
        for name in names:
            sources.append((f"https://huggingface.co/{repo}/resolve/main/{name}",
                            Path(name).suffix or ".bin"))
    if cfg.get("url"):
        sources.append((cfg["url"], Path(urllib.parse.urlsplit(cfg["url"]).path).suffix or ".pt"))
    return sources


def _existing_downloads(cfg: dict) -> Iterable[Path]:
    """Weights of this tag already downloaded by open_clip itself (no network)."""
    hf = cfg.get("hf_hub", "")
    if hf:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # pragma: no cover - open_clip works without it
            try_to_load_from_cache = None
        if try_to_load_from_cache is not None:
            repo, filename = (hf.rstrip("/"), "") if hf.endswith("/") else os.path.split(hf)
            for name in [filename] if filename else [_HF_SAFE_NAME, _HF_BIN_NAME]:
                found = try_to_load_from_cache(repo, name)
                if isinstance(found, str) and os.path.isfile(found):
                    yield Path(found)
    if cfg.get("url"):
        legacy = Path("~/.cache/clip").expanduser() / os.path.basename(cfg["url"])
        if legacy.is_file():
            yield legacy


def _missing_message(spec: ClipSpec, target_stem: Path, sources, reason: str,
                     cfg: dict | None = None) -> str:
    url = sources[0][0] if sources else "(no download address known)"
    ext = sources[0][1] if sources else ".safetensors"
    arch = spec.model
    if (cfg or {}).get("quick_gelu") and not arch.endswith("-quickgelu"):
        import open_clip

        if f"{arch}-quickgelu" in open_clip.list_models():
            arch = f"{arch}-quickgelu"  # these weights were trained with QuickGELU
    return (
        f"CLIP weights {spec.model}:{spec.tag} are not on this machine and could not be "
        f"downloaded ({reason}). Download {url} on a machine with internet access and save it as "
        f"{target_stem}{ext} (it is then found without network access), or pass a local weights "
        f"file as MODEL:PATH, e.g. --clip {arch}:/path/to/weights{ext} on the command line "
        f"or ClipScorer('{arch}:/path/to/weights{ext}') in Python. Set NAPARI_SAM_CACHE to "
        f"use another cache folder."
    )


def _fetch(url: str, target: Path) -> None:
    """Download ``url`` to ``target`` (never a half-written target), checked by SHA256 where
    the address carries it (OpenAI's addresses have the file's SHA256 as a folder name)."""
    expected = next((p for p in url.split("/") if re.fullmatch(r"[0-9a-f]{64}", p)), None)
    try:
        download_file(url, target, sha256=expected)
    except ValueError as exc:  # pooch's hash mismatch
        raise OSError(f"SHA256 mismatch: {exc}") from exc


def _resolve_pretrained(
    spec: ClipSpec, cache_dir: Path | None, download: bool
) -> tuple[Path, dict]:
    """The local weights file of ``spec.model:spec.tag``, downloaded once if needed."""
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(spec.model)
    cfg = open_clip.get_pretrained_cfg(spec.model, spec.tag)
    if not cfg:
        known = ", ".join(tags) if tags else "none (pass a weights file as MODEL:PATH)"
        raise ValueError(
            f"unknown pretrained tag {spec.tag!r} for CLIP model {spec.model!r}; "
            f"known tags: {known}"
        )
    root = Path(cache_dir) if cache_dir is not None else clip_cache_dir()
    stem = root / f"{spec.model}-{spec.tag}"
    for ext in _WEIGHT_EXTS:
        if stem.with_name(stem.name + ext).is_file():
            return stem.with_name(stem.name + ext), cfg
    for found in _existing_downloads(cfg):
        return found, cfg
    sources = _download_sources(cfg)
    if not sources:
        raise ClipWeightsMissing(
            _missing_message(spec, stem, sources, "no download address", cfg)
        )
    if not download or _offline():
        raise ClipWeightsMissing(
            _missing_message(spec, stem, sources, "downloads are disabled", cfg)
        )
    reason = _reachable(sources[0][0])
    if reason is not None:
        raise ClipWeightsMissing(
            _missing_message(spec, stem, sources, f"no network: {reason}", cfg)
        )
    errors = []
    for url, ext in sources:
        target = stem.with_name(stem.name + ext)
        try:
            logger.info("downloading CLIP weights %s to %s", url, target)
            _fetch(url, target)
            return target, cfg
        except (urllib.error.URLError, OSError, ValueError) as exc:
            errors.append(f"{url}: {exc}")
    raise ClipWeightsMissing(_missing_message(spec, stem, sources, "; ".join(errors), cfg))
