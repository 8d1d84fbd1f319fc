"""Text prompts: keep the objects that CLIP says look like the words typed ("nucleus", "debris").

SAM's paper shows text-to-mask with a text pathway that Meta never released. This module gets
the same effect from parts that exist: candidate objects (a label image: the automatic
segmentation's masks, or objects already drawn) are each cut out as a square crop around the
object, the pixels outside the object dimmed or blanked (the paper's appendix D.5 builds its CLIP
crops the same way: enlarged box, square crop, outside of the mask zeroed), and embedded with a
CLIP image encoder (open_clip). Each crop is scored by the cosine similarity to the CLIP text
embedding of the query and, as in CLIP's zero-shot classification, by a softmax over the query
and negative queries ("background", "debris", ...) scaled by CLIP's learned temperature.

Everything is per 2D plane: ``image`` is ``(H, W)`` or ``(H, W, 3)`` and ``labels`` ``(H, W)``;
for a stack the caller passes ``image[z]``, ``labels[z]`` and one ``intensity_range`` for the
whole stack (:func:`napari_sam.engine.preprocess.estimate_intensity_range`).

Process isolation
-----------------
open_clip imports torchvision, which (with CUDA builds of torch) imports triton; importing
triton in a process where napari already created its OpenGL context crashes that process. In
the viewer, use ``ClipScorer(spec, isolate=True)``: the CLIP model then lives in a spawned child
process and only uint8 crops, strings and embeddings cross over. ``isolate=None`` (default)
isolates exactly when that crash is possible (vispy loaded, triton not yet).

This module imports neither torch nor open_clip at import time.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ..engine.preprocess import to_rgb_uint8_range

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "ClipScorer",
    "ClipSpec",
    "ClipWeightsMissing",
    "CropEmbeddingCache",
    "CropParams",
    "ObjectEmbeddings",
    "TextScores",
    "apply_clicks",
    "clip_cache_dir",
    "crop_boxes",
    "embed_objects",
    "extract_crops",
    "object_at",
    "parse_clip_spec",
    "score_embeddings",
    "score_objects",
    "segment_by_text",
    "select_objects",
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


# -- crops -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CropParams:
    """How an object is cut out of its plane for CLIP.

    The crop is square (in physical units when a pixel ``spacing`` is given), centred on the
    object's bounding box, its side the box's longer side enlarged by ``margin`` on each side.

    Attributes
    ----------
    margin : float
        Added on each side, as a fraction of the box's longer side (0.25: the crop's side is 1.5x
        the box's). Context around the object helps CLIP; too much lets neighbours dominate.
    background : {"dim", "blank", "keep"}
        What happens to crop pixels outside the object (other objects included): multiplied by
        ``dim_factor``, replaced by ``fill``, or kept as they are.
    dim_factor : float
        Brightness factor outside the object for ``"dim"``, in [0, 1].
    fill : float
        Value (0-255) of blanked pixels and of the parts of a crop outside the image.
    min_side : float
        The crop's side is at least this many pixels, so a 2-pixel speck is not blown up to the
        whole CLIP input.
    """

    margin: float = 0.25
    background: str = "dim"
    dim_factor: float = 0.3
    fill: float = 0.0
    min_side: float = 16.0

    def __post_init__(self) -> None:
        if not (np.isfinite(self.margin) and self.margin >= 0):
            raise ValueError(f"margin must be a non-negative number, got {self.margin!r}")
        if self.background not in ("dim", "blank", "keep"):
            raise ValueError(
                f"background must be 'dim', 'blank' or 'keep', got {self.background!r}"
            )
        if not 0.0 <= self.dim_factor <= 1.0:
            raise ValueError(f"dim_factor must be in [0, 1], got {self.dim_factor!r}")
        if not 0.0 <= self.fill <= 255.0:
            raise ValueError(f"fill must be in [0, 255], got {self.fill!r}")
        if not (np.isfinite(self.min_side) and self.min_side >= 1):
            raise ValueError(f"min_side must be at least 1 pixel, got {self.min_side!r}")


def _object_ids(labels: np.ndarray, ids: npt.ArrayLike | None) -> np.ndarray:
    present = np.unique(labels)
    present = present[present != 0]
    if ids is None:
        return present.astype(np.int64)
    ids = np.atleast_1d(np.asarray(ids)).astype(np.int64)
    if np.any(ids == 0):
        raise ValueError("id 0 is the background, not an object")
    missing = ids[~np.isin(ids, present)]
    if missing.size:
        raise ValueError(f"object id(s) {missing[:5].tolist()} are not in the label image")
    if len(np.unique(ids)) != len(ids):
        raise ValueError("object ids must not repeat")
    return ids


def _check_labels(labels: npt.ArrayLike) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(
            f"labels must be one 2D plane (H, W), got shape {labels.shape}; slice nD labels "
            "plane by plane"
        )
    if labels.dtype.kind not in "iub":
        raise ValueError(f"labels must be integers, got {labels.dtype}")
    return labels


def crop_boxes(
    labels: npt.ArrayLike,
    ids: npt.ArrayLike | None = None,
    *,
    params: CropParams | None = None,
    spacing: tuple[float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The pixel region each object's crop is cut from.

    Parameters
    ----------
    labels : array, shape (H, W), int
        0 is background.
    ids : array-like of int, optional
        Objects to crop, in this order (default: every object, ascending).
    params : CropParams, optional
    spacing : (float, float), optional
        Physical size of a pixel ``(row, col)`` (napari's layer scale); the crop is square in
        physical units. Default ``(1, 1)``.

    Returns
    -------
    boxes : numpy.ndarray, shape (K, 4), int64
        ``(row0, col0, row1, col1)``, end exclusive, in plane pixels; may extend past the image
        (that part of the crop is filled with ``params.fill``).
    ids : numpy.ndarray, shape (K,), int64
    """
    labels = _check_labels(labels)
    params = params or CropParams()
    sy, sx = (1.0, 1.0) if spacing is None else (float(spacing[0]), float(spacing[1]))
    if not (sy > 0 and sx > 0 and np.isfinite(sy) and np.isfinite(sx)):
        raise ValueError(f"spacing must be two positive numbers, got {spacing!r}")
    ids = _object_ids(labels, ids)
    boxes = np.zeros((len(ids), 4), dtype=np.int64)
    if not len(ids):
        return boxes, ids
    from scipy import ndimage

    # find_objects indexes by label value: map the ids to 1..K so huge ids cost nothing.
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    pos = np.minimum(np.searchsorted(sorted_ids, labels), len(ids) - 1)
    compact = np.where(sorted_ids[pos] == labels, pos + 1, 0)
    found = ndimage.find_objects(compact, max_label=len(ids))
    slices = [None] * len(ids)
    for rank, k in enumerate(order):
        slices[k] = found[rank]
    for k, sl in enumerate(slices):
        r0, r1, c0, c1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
        side_phys = max((r1 - r0) * sy, (c1 - c0) * sx) * (1.0 + 2.0 * params.margin)
        side_phys = max(side_phys, params.min_side * min(sy, sx))
        half_r, half_c = side_phys / sy / 2.0, side_phys / sx / 2.0
        cr, cc = (r0 + r1) / 2.0, (c0 + c1) / 2.0
        boxes[k] = (
            int(np.floor(cr - half_r + 1e-6)),
            int(np.floor(cc - half_c + 1e-6)),
            int(np.ceil(cr + half_r - 1e-6)),
            int(np.ceil(cc + half_c - 1e-6)),
        )
    return boxes, ids


def _resize_weights(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` matrix resampling one axis: linear when enlarging, area when shrinking.

    Separable matrices make a crop's resize two small matrix products (scipy's spline zoom took
    ~20 ms per 224 px crop); area averaging is the anti-aliasing when shrinking.
    """
    w = np.zeros((n_out, n_in), dtype=np.float32)
    scale = n_in / n_out
    if n_out >= n_in:
        x = np.clip((np.arange(n_out) + 0.5) * scale - 0.5, 0, n_in - 1)
        i0 = np.floor(x).astype(int)
        i1 = np.minimum(i0 + 1, n_in - 1)
        frac = (x - i0).astype(np.float32)
        rows = np.arange(n_out)
        np.add.at(w, (rows, i0), 1 - frac)
        np.add.at(w, (rows, i1), frac)
        return w
    lo = np.arange(n_out) * scale
    hi = lo + scale
    j = np.arange(n_in)
    overlap = np.minimum(hi[:, None], j[None, :] + 1) - np.maximum(lo[:, None], j[None, :])
    w[:] = np.clip(overlap, 0, None) / scale
    return w


def extract_crops(
    image: npt.ArrayLike,
    labels: npt.ArrayLike,
    ids: npt.ArrayLike | None = None,
    *,
    params: CropParams | None = None,
    size: int = 224,
    intensity_range: tuple[float, float] | None = None,
    rgb: bool | None = None,
    spacing: tuple[float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Cut one square RGB crop per object out of a 2D plane, ready for CLIP.

    Parameters
    ----------
    image : array-like, shape (H, W) or (H, W, 3)
        One plane, any dtype. Normalised like SAM's input
        (:func:`napari_sam.engine.preprocess.to_rgb_uint8_range`): uint8 RGB as is, anything else
        rescaled from ``intensity_range`` to 0-255 and grayscale replicated to three channels.
    labels : array-like, shape (H, W), int
        The candidate objects; 0 is background.
    ids : array-like of int, optional
        Objects to crop, in this order (default: every object, ascending).
    params : CropParams, optional
        Margin and background handling.
    size : int
        Side of the returned crops (the CLIP model's input size).
    intensity_range : (float, float), optional
        Normalisation range; pass the whole stack's range for planes of a stack. Default: a
        robust range of this plane.
    rgb : bool, optional
        Whether the last axis of ``image`` is RGB (default: guessed, ``image.ndim == 3``).
    spacing : (float, float), optional
        Pixel size ``(row, col)``; crops are square in physical units (see :func:`crop_boxes`).

    Returns
    -------
    crops : numpy.ndarray, shape (K, size, size, 3), uint8
    ids : numpy.ndarray, shape (K,), int64
    """
    params = params or CropParams()
    labels = _check_labels(labels)
    arr = np.asarray(image)
    if rgb is None:
        rgb = arr.ndim == 3 and arr.shape[-1] in (3, 4)
    if rgb and (arr.ndim != 3 or arr.shape[-1] not in (3, 4)):
        raise ValueError(f"rgb=True needs an (H, W, 3) plane, got shape {arr.shape}")
    if not rgb and arr.ndim != 2:
        raise ValueError(
            f"image must be one 2D plane (H, W) or (H, W, 3), got shape {arr.shape}; slice nD "
            "images plane by plane"
        )
    if arr.shape[:2] != labels.shape:
        raise ValueError(f"image plane {arr.shape[:2]} and labels {labels.shape} differ in shape")
    size = int(size)
    if size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    boxes, ids = crop_boxes(labels, ids, params=params, spacing=spacing)
    crops = np.zeros((len(ids), size, size, 3), dtype=np.uint8)
    if not len(ids):
        return crops, ids
    plane = to_rgb_uint8_range(arr, intensity_range)  # (H, W, 3) float32 in [0, 255]
    h, w = labels.shape
    for k, (oid, (r0, c0, r1, c1)) in enumerate(zip(ids, boxes)):
        region = np.full((r1 - r0, c1 - c0, 3), params.fill, dtype=np.float32)
        inside = np.zeros(region.shape[:2], dtype=bool)
        sr0, sc0, sr1, sc1 = max(r0, 0), max(c0, 0), min(r1, h), min(c1, w)
        dst = (slice(sr0 - r0, sr1 - r0), slice(sc0 - c0, sc1 - c0))
        region[dst] = plane[sr0:sr1, sc0:sc1]
        inside[dst] = labels[sr0:sr1, sc0:sc1] == oid
        # the part of the crop outside the image stays `fill` whatever the background mode
        outside = np.zeros(region.shape[:2], dtype=bool)
        outside[dst] = ~inside[dst]
        if params.background == "dim":
            region[outside] *= params.dim_factor
        elif params.background == "blank":
            region[outside] = params.fill
        rows_w = _resize_weights(region.shape[0], size)
        cols_w = _resize_weights(region.shape[1], size)
        out = np.einsum("ij,jkc,lk->ilc", rows_w, region, cols_w, optimize=True)
        crops[k] = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return crops, ids


# -- model spec and weights --------------------------------------------------------------------


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
        "/" in text or "\\" in text or text.startswith("~") or text.startswith(".")
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

    See :func:`napari_sam.models.weights.cache_root` (``$NAPARI_SAM_CACHE`` overrides it). Files are named
    ``<MODEL>-<TAG><ext>`` (e.g. ``ViT-B-32-openai.safetensors``); a file copied there by hand
    under that name is used without any network access.
    """
    from ..models.weights import cache_root

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
    """Download ``url`` to ``target`` through a temporary file (never a half-written target)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".part")
    try:
        with (
            urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as src,
            open(tmp, "wb") as out,
        ):
            while chunk := src.read(1 << 20):
                out.write(chunk)
        # OpenAI's addresses carry the file's SHA256 as a folder name.
        expected = next((p for p in url.split("/") if re.fullmatch(r"[0-9a-f]{64}", p)), None)
        if expected is not None:
            from ..models.weights import file_sha256

            got = file_sha256(tmp)
            if got != expected:
                raise OSError(f"SHA256 mismatch: expected {expected}, got {got}")
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


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


@dataclass
class _LoadedClip:
    model: Any
    tokenizer: Any
    device: Any
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    logit_scale: float
    embed_dim: int
    weights: str


def _load_clip(spec_text: str, device=None, cache_dir=None, download: bool = True) -> _LoadedClip:
    """Build the open_clip model of a specification, on ``device``, in eval mode."""
    import open_clip
    import torch

    from ..models.device import resolve_device

    spec = parse_clip_spec(spec_text)
    dev = resolve_device(device)
    kwargs: dict[str, Any] = {}
    if spec.local_dir is not None:
        model = open_clip.create_model(f"local-dir:{spec.local_dir}", device=dev)
        weights = str(spec.local_dir)
        name = f"local-dir:{spec.local_dir}"
    else:
        if spec.config is not None:
            open_clip.add_model_config(spec.config)
        if spec.model not in open_clip.list_models():
            raise ValueError(
                f"unknown CLIP architecture {spec.model!r}; known: "
                f"{', '.join(open_clip.list_models()[:12])}, ... (or an open_clip config .json)"
            )
        name = spec.model
        if spec.tag == "random":
            weights = "random"
            pretrained = None
        elif spec.weights is not None:
            weights = pretrained = str(spec.weights)
        else:
            path, cfg = _resolve_pretrained(spec, cache_dir, download)
            weights = pretrained = str(path)
            kwargs["force_quick_gelu"] = bool(cfg.get("quick_gelu", False))
            kwargs["force_preprocess_cfg"] = {
                k: cfg[k] for k in ("mean", "std") if k in cfg
            }
        try:
            model = open_clip.create_model(name, pretrained=pretrained, device=dev, **kwargs)
        except RuntimeError as exc:
            if spec.weights is not None:
                raise ValueError(
                    f"{spec.weights} is not a weights file of the CLIP model {spec.model!r}: "
                    f"{' '.join(str(exc).split())[:300]}"
                ) from exc
            raise
    model.eval()
    pp = open_clip.get_model_preprocess_cfg(model)
    img_size = pp.get("size", 224)
    if isinstance(img_size, (tuple, list)):
        if img_size[0] != img_size[1]:  # pragma: no cover - no such CLIP model in open_clip
            raise ValueError(f"non-square CLIP input {img_size} is not supported")
        img_size = img_size[0]
    tokenizer = open_clip.get_tokenizer(name)
    with torch.no_grad():
        probe = model.encode_text(tokenizer(["a"]).to(dev))
    return _LoadedClip(
        model=model,
        tokenizer=tokenizer,
        device=dev,
        image_size=int(img_size),
        mean=tuple(float(v) for v in pp.get("mean", open_clip.OPENAI_DATASET_MEAN)),
        std=tuple(float(v) for v in pp.get("std", open_clip.OPENAI_DATASET_STD)),
        logit_scale=float(model.logit_scale.exp().item()),
        embed_dim=int(probe.shape[-1]),
        weights=weights,
    )


def _encode_text_local(clip: _LoadedClip, queries: list[str]) -> np.ndarray:
    import torch

    with torch.inference_mode():
        tokens = clip.tokenizer(list(queries)).to(clip.device)
        emb = clip.model.encode_text(tokens, normalize=True)
    return emb.float().cpu().numpy()


def _encode_images_local(clip: _LoadedClip, crops: np.ndarray) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    with torch.inference_mode():
        x = torch.from_numpy(np.ascontiguousarray(crops)).to(clip.device)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        if x.shape[-1] != clip.image_size or x.shape[-2] != clip.image_size:
            x = F.interpolate(
                x, size=(clip.image_size, clip.image_size), mode="bicubic", align_corners=False,
                antialias=True,
            ).clamp_(0.0, 1.0)
        mean = torch.tensor(clip.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(clip.std, device=x.device).view(1, 3, 1, 1)
        emb = clip.model.encode_image((x - mean) / std, normalize=True)
    return emb.float().cpu().numpy()


# The child process of an isolated scorer keeps its model here.
_WORKER_CLIP: _LoadedClip | None = None


def _worker_load(spec_text: str, device, cache_dir, download: bool) -> dict:
    global _WORKER_CLIP
    _WORKER_CLIP = _load_clip(spec_text, device, cache_dir, download)
    info = {k: getattr(_WORKER_CLIP, k) for k in
            ("image_size", "mean", "std", "logit_scale", "embed_dim", "weights")}
    info["device"] = str(_WORKER_CLIP.device)
    return info


def _worker_encode_text(queries: list[str]) -> np.ndarray:
    if _WORKER_CLIP is None:  # pragma: no cover - the parent always loads first
        raise RuntimeError("the CLIP worker has no model loaded")
    return _encode_text_local(_WORKER_CLIP, queries)


def _worker_encode_images(crops: np.ndarray) -> np.ndarray:
    if _WORKER_CLIP is None:  # pragma: no cover
        raise RuntimeError("the CLIP worker has no model loaded")
    return _encode_images_local(_WORKER_CLIP, crops)


def _gui_hazard() -> bool:
    """Whether importing open_clip here could crash: a GL stack is loaded and triton is not."""
    return "vispy" in sys.modules and "triton" not in sys.modules


def _shutdown_executor(executor) -> None:
    executor.shutdown(wait=False, cancel_futures=True)


class ClipScorer:
    """A CLIP model (open_clip) that embeds queries and object crops.

    Parameters
    ----------
    spec : str
        ``"MODEL:TAG"`` (a pretrained tag of open_clip, e.g. ``"ViT-B-32:openai"``; the weights
        are downloaded once into :func:`clip_cache_dir`), ``"MODEL:PATH"`` (a local weights
        file), ``"CONFIG.json:PATH"`` (an open_clip model config plus weights), ``"MODEL:random"``
        (random weights, for tests), or a model folder. See :func:`parse_clip_spec`.
    device : str or torch.device, optional
        Default: the best available (:func:`napari_sam.models.device.resolve_device`).
    cache_dir : path, optional
        Where pretrained weights are looked for and downloaded (default :func:`clip_cache_dir`).
    isolate : bool, optional
        Run the model in a spawned child process (required inside a napari viewer, see the module
        docstring). Default: isolate when importing open_clip here could crash the process.
    download : bool
        Allow downloading missing pretrained weights (never in tests).
    cache_size : int
        How many crop embeddings :attr:`cache` keeps.

    Raises
    ------
    ClipWeightsMissing
        Pretrained weights are missing and cannot be downloaded; the message says what to do.
    ValueError, FileNotFoundError
        Bad specification, unknown tag, or a weights file that does not fit the architecture.

    Notes
    -----
    The constructor loads the model (seconds; more with ``isolate=True``, which starts a Python
    process): construct it in a background thread in a GUI. Call :meth:`close` (or use ``with``)
    to end the child process early; it also ends when the scorer is garbage collected.
    """

    def __init__(
        self,
        spec: str = "ViT-B-32:openai",
        *,
        device=None,
        cache_dir: str | os.PathLike | None = None,
        isolate: bool | None = None,
        download: bool = True,
        cache_size: int = 20_000,
    ) -> None:
        self.spec = os.fspath(spec)
        parse_clip_spec(self.spec)  # syntax errors here, before any process starts
        self.isolated = _gui_hazard() if isolate is None else bool(isolate)
        cache_dir = None if cache_dir is None else str(cache_dir)
        device = None if device is None else str(device)
        self._executor = None
        self._clip: _LoadedClip | None = None
        if self.isolated:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self._executor = ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn")
            )
            self._finalizer = weakref.finalize(self, _shutdown_executor, self._executor)
            try:
                info = self._executor.submit(
                    _worker_load, self.spec, device, cache_dir, download
                ).result()
            except BaseException:
                self.close()
                raise
        else:
            self._clip = _load_clip(self.spec, device, cache_dir, download)
            info = {k: getattr(self._clip, k) for k in
                    ("image_size", "mean", "std", "logit_scale", "embed_dim", "weights")}
            info["device"] = str(self._clip.device)
        #: Side of the model's square image input, in pixels.
        self.image_size: int = int(info["image_size"])
        #: CLIP's learned temperature (exp of ``logit_scale``): softmax(logit_scale * cos).
        self.logit_scale: float = float(info["logit_scale"])
        #: Length of the embeddings.
        self.embed_dim: int = int(info["embed_dim"])
        #: The weights loaded: a file path, a folder, or ``"random"``.
        self.weights: str = str(info["weights"])
        self.device: str = str(info["device"])
        #: Crop embeddings by crop digest, shared by every scoring call of this scorer.
        self.cache = CropEmbeddingCache(max_items=cache_size)
        self._text_cache: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    @property
    def key(self) -> str:
        """Identifies the model (spec and weights) in cache keys."""
        return f"{self.spec}|{self.weights}"

    def close(self) -> None:
        """End the child process of an isolated scorer (no-op otherwise)."""
        if self._executor is not None:
            self._finalizer()
            self._executor = None

    def __enter__(self) -> ClipScorer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _run(self, local_fn, worker_fn, arg):
        if self.isolated:
            if self._executor is None:
                raise RuntimeError("this ClipScorer was closed")
            return self._executor.submit(worker_fn, arg).result()
        with self._lock:
            return local_fn(self._clip, arg)

    def encode_text_numpy(self, queries: Sequence[str]) -> np.ndarray:
        """:meth:`encode_text` as a float32 numpy array (Q, D); cached per text."""
        queries = [str(q) for q in queries]
        todo = [q for q in dict.fromkeys(queries) if q not in self._text_cache]
        if todo:
            emb = self._run(_encode_text_local, _worker_encode_text, todo)
            for q, e in zip(todo, emb):
                self._text_cache[q] = e
        if not queries:
            return np.zeros((0, self.embed_dim), dtype=np.float32)
        return np.stack([self._text_cache[q] for q in queries]).astype(np.float32)

    def encode_text(self, queries: Sequence[str]) -> torch.Tensor:
        """Unit-length CLIP text embeddings.

        Parameters
        ----------
        queries : sequence of str, length Q

        Returns
        -------
        torch.Tensor, shape (Q, D), float32, on the CPU
        """
        import torch

        return torch.from_numpy(self.encode_text_numpy(queries))

    def encode_crops_numpy(
        self,
        crops: np.ndarray,
        batch_size: int = 32,
        progress: Callable[[int, int], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> np.ndarray:
        """:meth:`encode_crops` as a float32 numpy array."""
        crops = np.asarray(crops)
        if crops.ndim != 4 or crops.shape[-1] != 3 or crops.dtype != np.uint8:
            raise ValueError(
                f"crops must be uint8 of shape (K, S, S, 3), got {crops.dtype} {crops.shape}"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        out = []
        total = len(crops)
        for start in range(0, total, batch_size):
            if cancelled is not None and cancelled():
                break
            batch = crops[start:start + batch_size]
            out.append(self._run(_encode_images_local, _worker_encode_images, batch))
            if progress is not None:
                progress(min(start + batch_size, total), total)
        if not out:
            return np.zeros((0, self.embed_dim), dtype=np.float32)
        return np.concatenate(out).astype(np.float32)

    def encode_crops(
        self,
        crops: np.ndarray,
        batch_size: int = 32,
        progress: Callable[[int, int], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> torch.Tensor:
        """Unit-length CLIP image embeddings of crops, in batches.

        Parameters
        ----------
        crops : numpy.ndarray, shape (K, S, S, 3), uint8
            From :func:`extract_crops`; resized to the model's input if ``S`` differs.
        batch_size : int
        progress : callable, optional
            ``progress(done, total)`` after each batch.
        cancelled : callable, optional
            Polled before each batch; when it returns true, the crops done so far are returned.

        Returns
        -------
        torch.Tensor, shape (K', D), float32, on the CPU
            ``K' == K`` unless cancelled (then the first ``K'`` crops).
        """
        import torch

        return torch.from_numpy(self.encode_crops_numpy(crops, batch_size, progress, cancelled))

    def __repr__(self) -> str:
        where = "child process" if self.isolated else self.device
        return f"ClipScorer({self.spec!r}, weights={self.weights!r}, {where})"


# -- embedding cache ---------------------------------------------------------------------------


class CropEmbeddingCache:
    """Thread-safe LRU of crop embeddings keyed by ``(model key, crop digest)``.

    The digest covers the crop's pixels, so editing the query re-scores without re-encoding, and
    an object whose mask or image changed gets a new entry instead of a stale one.

    Parameters
    ----------
    max_items : int
    """

    def __init__(self, max_items: int = 20_000) -> None:
        if max_items < 1:
            raise ValueError("max_items must be positive")
        self.max_items = int(max_items)
        self._items: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def digest(crop: np.ndarray) -> str:
        """Digest of one crop's pixels and shape."""
        h = hashlib.blake2b(digest_size=16)
        h.update(str(crop.shape).encode())
        h.update(np.ascontiguousarray(crop).tobytes())
        return h.hexdigest()

    def get(self, key: Hashable) -> np.ndarray | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: Hashable, embedding: np.ndarray) -> None:
        with self._lock:
            self._items[key] = embedding
            self._items.move_to_end(key)
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


# -- scoring -----------------------------------------------------------------------------------


@dataclass
class ObjectEmbeddings:
    """CLIP image embeddings of the objects of one plane.

    Attributes
    ----------
    ids : numpy.ndarray, shape (K,), int64
    embeddings : numpy.ndarray, shape (K, D), float32, unit length
    complete : bool
        False when cancelled: only the first objects were embedded.
    """

    ids: np.ndarray
    embeddings: np.ndarray
    complete: bool = True


@dataclass
class TextScores:
    """How well each object matches a query.

    Attributes
    ----------
    ids : numpy.ndarray, shape (K,), int64
        Object ids (label values).
    similarity : numpy.ndarray, shape (K,), float32
        Cosine similarity of the object's crop to the query, in [-1, 1].
    probability : numpy.ndarray, shape (K,), float32
        Softmax over the query and the negatives of ``logit_scale * cosine``: the probability
        that the crop shows the query rather than one of the negatives (1 without negatives).
    query : str
    negatives : tuple of str
    negative_similarity : numpy.ndarray, shape (K, N), float32
        Cosine similarity to each negative.
    complete : bool
        False when the scoring was cancelled (only the objects scored so far are listed).
    """

    ids: np.ndarray
    similarity: np.ndarray
    probability: np.ndarray
    query: str
    negatives: tuple[str, ...] = ()
    negative_similarity: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    complete: bool = True

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def best_negative(self) -> np.ndarray:
        """Index of the most similar negative per object (K,), -1 without negatives."""
        if self.negative_similarity.size == 0:
            return np.full(len(self.ids), -1, dtype=np.int64)
        return np.argmax(self.negative_similarity, axis=1)

    def to_features(self) -> dict[str, np.ndarray]:
        """Columns for a napari Labels layer's ``features`` table (one row per object)."""
        return {
            "label": self.ids.astype(np.int64),
            "text_similarity": self.similarity.astype(np.float32),
            "text_probability": self.probability.astype(np.float32),
        }


def _check_texts(query: str, negatives: Iterable[str]) -> tuple[str, tuple[str, ...]]:
    if not isinstance(query, str) or not query.strip():
        raise ValueError("the text query is empty")
    if isinstance(negatives, str):
        negatives = (negatives,)
    negs = tuple(str(n).strip() for n in negatives if str(n).strip())
    query = query.strip()
    negs = tuple(n for n in dict.fromkeys(negs) if n != query)
    return query, negs


def _apply_template(text: str, template: str | None) -> str:
    if template is None:
        return text
    if "{}" not in template:
        raise ValueError(f"the prompt template must contain '{{}}', got {template!r}")
    return template.format(text)


def embed_objects(
    scorer: ClipScorer,
    image: npt.ArrayLike,
    labels: npt.ArrayLike,
    *,
    ids: npt.ArrayLike | None = None,
    crop_params: CropParams | None = None,
    cache: CropEmbeddingCache | None = None,
    intensity_range: tuple[float, float] | None = None,
    rgb: bool | None = None,
    spacing: tuple[float, float] | None = None,
    batch_size: int = 32,
    progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> ObjectEmbeddings:
    """CLIP image embeddings of the objects of one plane, reusing cached ones.

    This is the slow half of :func:`score_objects`; :func:`score_embeddings` is the fast half
    (run it on every keystroke of the query).

    Parameters
    ----------
    scorer : ClipScorer
    image : array-like, shape (H, W) or (H, W, 3)
    labels : array-like, shape (H, W), int
    ids, crop_params, intensity_range, rgb, spacing
        See :func:`extract_crops`.
    cache : CropEmbeddingCache, optional
        Default: ``scorer.cache``.
    batch_size : int
        Crops per CLIP forward pass.
    progress : callable, optional
        ``progress(done, total)`` in objects.
    cancelled : callable, optional
        Polled between batches; on cancel the objects embedded so far are returned with
        ``complete=False``.

    Returns
    -------
    ObjectEmbeddings
    """
    cache = scorer.cache if cache is None else cache
    crops, ids = extract_crops(
        image, labels, ids, params=crop_params, size=scorer.image_size,
        intensity_range=intensity_range, rgb=rgb, spacing=spacing,
    )
    keys = [(scorer.key, CropEmbeddingCache.digest(c)) for c in crops]
    emb = np.zeros((len(ids), scorer.embed_dim), dtype=np.float32)
    done = np.zeros(len(ids), dtype=bool)
    for k, key in enumerate(keys):
        hit = cache.get(key)
        if hit is not None:
            emb[k], done[k] = hit, True
    todo = np.flatnonzero(~done)
    n_cached = len(ids) - len(todo)
    if progress is not None:
        progress(n_cached, len(ids))

    def _progress(d: int, _t: int) -> None:
        if progress is not None:
            progress(n_cached + d, len(ids))

    if len(todo):
        new = scorer.encode_crops_numpy(crops[todo], batch_size, _progress, cancelled)
        for k, e in zip(todo[: len(new)], new):
            emb[k], done[k] = e, True
            cache.put(keys[k], e)
    complete = bool(done.all())
    return ObjectEmbeddings(ids=ids[done], embeddings=emb[done], complete=complete)


def score_embeddings(
    scorer: ClipScorer,
    objects: ObjectEmbeddings,
    query: str,
    negatives: Iterable[str] = ("background",),
    *,
    template: str | None = None,
) -> TextScores:
    """Score embedded objects against a query and negatives (fast: only the texts are encoded).

    Parameters
    ----------
    scorer : ClipScorer
    objects : ObjectEmbeddings
        From :func:`embed_objects` with the same scorer.
    query : str
        What to find, e.g. ``"nucleus"``.
    negatives : iterable of str
        Competing descriptions ("background", "debris"); duplicates and the query itself are
        dropped.
    template : str, optional
        Format string applied to every text, e.g. ``"a microscopy image of a {}."``.

    Returns
    -------
    TextScores
    """
    query, negs = _check_texts(query, negatives)
    texts = [_apply_template(t, template) for t in (query, *negs)]
    txt = scorer.encode_text_numpy(texts)  # (1 + N, D)
    sims = (objects.embeddings @ txt.T).astype(np.float32)  # (K, 1 + N)
    logits = scorer.logit_scale * sims.astype(np.float64)
    logits -= logits.max(axis=1, keepdims=True) if len(logits) else 0.0
    prob = np.exp(logits)
    prob /= prob.sum(axis=1, keepdims=True) if len(prob) else 1.0
    return TextScores(
        ids=objects.ids.copy(),
        similarity=sims[:, 0].copy(),
        probability=prob[:, 0].astype(np.float32),
        query=query,
        negatives=negs,
        negative_similarity=sims[:, 1:].copy(),
        complete=objects.complete,
    )


def score_objects(
    scorer: ClipScorer,
    image: npt.ArrayLike,
    labels: npt.ArrayLike,
    query: str,
    negatives: Iterable[str] = ("background",),
    *,
    ids: npt.ArrayLike | None = None,
    crop_params: CropParams | None = None,
    cache: CropEmbeddingCache | None = None,
    template: str | None = None,
    intensity_range: tuple[float, float] | None = None,
    rgb: bool | None = None,
    spacing: tuple[float, float] | None = None,
    batch_size: int = 32,
    progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> TextScores:
    """Score every object of a 2D plane against a text query.

    :func:`embed_objects` followed by :func:`score_embeddings`; see those for the parameters.
    Crop embeddings are cached (``scorer.cache`` by default), so calling this again with another
    query only encodes the new text.

    Returns
    -------
    TextScores
        ``complete=False`` if cancelled (then only the objects embedded so far are scored).
    """
    _check_texts(query, negatives)  # fail before the slow part
    objects = embed_objects(
        scorer, image, labels, ids=ids, crop_params=crop_params, cache=cache,
        intensity_range=intensity_range, rgb=rgb, spacing=spacing, batch_size=batch_size,
        progress=progress, cancelled=cancelled,
    )
    return score_embeddings(scorer, objects, query, negatives, template=template)


def select_objects(
    scores: TextScores,
    *,
    threshold: float | None = None,
    top_k: int | None = None,
    use: str = "probability",
) -> np.ndarray:
    """The ids of the objects that match the query, best first.

    Parameters
    ----------
    scores : TextScores
    threshold : float, optional
        Keep objects whose score (``use``) is at least this.
    top_k : int, optional
        Keep at most this many (the best), after the threshold.
    use : {"probability", "similarity"}
        Which score ``threshold`` and the ranking use.

    Returns
    -------
    numpy.ndarray, shape (M,), int64
        Sorted by decreasing score.

    Notes
    -----
    Without ``threshold`` and ``top_k`` an object is kept when the query is its best match:
    more similar than every negative (CLIP's zero-shot classification). That needs at least one
    negative.
    """
    if use not in ("probability", "similarity"):
        raise ValueError(f"use must be 'probability' or 'similarity', got {use!r}")
    if top_k is not None and int(top_k) < 0:
        raise ValueError(f"top_k must be non-negative, got {top_k}")
    values = np.asarray(scores.probability if use == "probability" else scores.similarity)
    keep = np.ones(len(scores.ids), dtype=bool)
    if threshold is not None:
        keep &= values >= float(threshold)
    elif top_k is None:
        if scores.negative_similarity.size == 0 or scores.negative_similarity.shape[1] == 0:
            raise ValueError("without negatives, give a threshold or top_k to select objects")
        keep &= scores.similarity > scores.negative_similarity.max(axis=1)
    idx = np.flatnonzero(keep)
    idx = idx[np.argsort(-values[idx], kind="stable")]
    if top_k is not None:
        idx = idx[: int(top_k)]
    return scores.ids[idx].astype(np.int64)


# -- text + clicks -----------------------------------------------------------------------------


def object_at(labels: npt.ArrayLike, point: Sequence[float]) -> int:
    """The object id under a click, 0 for background or outside the plane.

    Parameters
    ----------
    labels : array-like, shape (H, W), int
    point : (row, col)
        In plane pixels (napari's data coordinates of the plane).
    """
    labels = np.asarray(labels)
    r, c = (int(np.floor(float(v) + 0.5)) for v in point[-2:])
    if not (0 <= r < labels.shape[0] and 0 <= c < labels.shape[1]):
        return 0
    return int(labels[r, c])


def apply_clicks(
    selected: npt.ArrayLike,
    candidates: npt.ArrayLike,
    points: npt.ArrayLike,
    point_labels: npt.ArrayLike | None = None,
) -> np.ndarray:
    """Correct a text selection with clicks: a positive click adds the candidate under it, a
    negative click removes it.

    Parameters
    ----------
    selected : array-like of int
        Ids kept by :func:`select_objects`.
    candidates : array-like, shape (H, W), int
        The candidate label image the text scored.
    points : array-like, shape (P, 2)
        ``(row, col)`` clicks, in order.
    point_labels : array-like, shape (P,), optional
        1 (add, default) or 0 (remove). Clicks on background change nothing: segment a new
        object there with SAM's point prompt instead.

    Returns
    -------
    numpy.ndarray, shape (M,), int64
        The corrected selection: the original order, added ids at the end.
    """
    out = [int(i) for i in np.atleast_1d(np.asarray(selected, dtype=np.int64))]
    pts = np.asarray(points, dtype=float).reshape(-1, 2)
    lab = np.ones(len(pts), int) if point_labels is None else np.asarray(point_labels).ravel()
    if len(lab) != len(pts):
        raise ValueError(f"{len(pts)} points but {len(lab)} point labels")
    for p, positive in zip(pts, lab):
        oid = object_at(candidates, p)
        if oid == 0:
            continue
        if positive and oid not in out:
            out.append(oid)
        elif not positive and oid in out:
            out.remove(oid)
    return np.asarray(out, dtype=np.int64)


# -- end to end --------------------------------------------------------------------------------


def segment_by_text(
    scorer: ClipScorer,
    image: npt.ArrayLike,
    query: str,
    *,
    candidates: npt.ArrayLike | None = None,
    model=None,
    negatives: Iterable[str] = ("background",),
    threshold: float | None = None,
    top_k: int | None = None,
    use: str = "probability",
    crop_params: CropParams | None = None,
    template: str | None = None,
    intensity_range: tuple[float, float] | None = None,
    rgb: bool | None = None,
    spacing: tuple[float, float] | None = None,
    relabel: bool = False,
    automatic_kwargs: dict | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> tuple[np.ndarray, TextScores]:
    """Segment the objects of a 2D plane that match a text query.

    Parameters
    ----------
    scorer : ClipScorer
    image : array-like, shape (H, W) or (H, W, 3)
        One plane (slice stacks and pass the stack's ``intensity_range``).
    query : str
    candidates : array-like, shape (H, W), int, optional
        Candidate objects (e.g. a Labels layer's plane). Default: SAM's automatic segmentation
        of the plane with ``model`` (:func:`napari_sam.workflows.automatic.segment_everything`).
    model : Sam, optional
        Needed when ``candidates`` is not given.
    negatives, threshold, top_k, use
        See :func:`score_embeddings` and :func:`select_objects`.
    crop_params, template, intensity_range, rgb, spacing
        See :func:`score_objects`.
    relabel : bool
        Number the kept objects 1..M (by decreasing score) instead of keeping candidate ids.
    automatic_kwargs : dict, optional
        Extra keyword arguments of ``segment_everything``.
    progress, cancelled
        As in :func:`score_objects` (the automatic segmentation runs first, uncounted).

    Returns
    -------
    labels : numpy.ndarray, shape (H, W), int32
        The kept objects (their candidate ids unless ``relabel``), 0 elsewhere.
    scores : TextScores
        Scores of every candidate (``scores.ids`` are candidate ids); ``complete=False`` if
        cancelled, in which case only the objects scored so far can be kept.
    """
    _check_texts(query, negatives)
    arr = np.asarray(image)
    if candidates is None:
        if model is None:
            raise ValueError("give candidate labels or a SAM model for automatic segmentation")
        try:
            from .automatic import segment_everything
        except ImportError as exc:  # pragma: no cover - until napari_sam.workflows.automatic lands
            raise RuntimeError(
                "automatic segmentation (napari_sam.workflows.automatic) is not available: pass "
                "candidate labels instead"
            ) from exc
        import inspect

        kwargs = dict(automatic_kwargs or {})
        accepted = inspect.signature(segment_everything).parameters
        for name, value in (("intensity_range", intensity_range), ("cancelled", cancelled)):
            if value is not None and name in accepted:
                kwargs.setdefault(name, value)
        candidates = segment_everything(model, arr, **kwargs)
        if cancelled is not None and cancelled():
            empty = np.zeros(np.shape(candidates), dtype=np.int32)
            return empty, TextScores(
                ids=np.zeros(0, np.int64), similarity=np.zeros(0, np.float32),
                probability=np.zeros(0, np.float32), query=query.strip(),
                negatives=_check_texts(query, negatives)[1],
                negative_similarity=np.zeros((0, 0), np.float32), complete=False,
            )
    candidates = _check_labels(candidates)
    scores = score_objects(
        scorer, arr, candidates, query, negatives, crop_params=crop_params, template=template,
        intensity_range=intensity_range, rgb=rgb, spacing=spacing, progress=progress,
        cancelled=cancelled,
    )
    keep = select_objects(scores, threshold=threshold, top_k=top_k, use=use)
    out = np.zeros(candidates.shape, dtype=np.int32)
    if len(keep):
        if relabel:
            lut_ids = np.asarray(keep)
            order = np.argsort(lut_ids)
            pos = np.searchsorted(lut_ids[order], candidates)
            pos = np.minimum(pos, len(lut_ids) - 1)
            hit = lut_ids[order][pos] == candidates
            out[hit] = (order[pos][hit] + 1).astype(np.int32)
        else:
            mask = np.isin(candidates, keep)
            out[mask] = candidates[mask]
    return out, scores
