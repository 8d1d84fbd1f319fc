"""The open_clip model in this process: build it from a specification, encode texts and crops.

Importing this module is light; open_clip and torch are imported when a model is loaded. Inside
a napari viewer this runs in the isolated worker process (:mod:`.clip_worker`), never in the
viewer's process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .clip_weights import ClipSpec, _resolve_pretrained, parse_clip_spec

#: What a loaded model tells the :class:`~.clip_scorer.ClipScorer` about itself.
INFO_FIELDS = ("image_size", "mean", "std", "logit_scale", "embed_dim", "weights")


@dataclass
class LoadedClip:
    """An open_clip model in eval mode with its tokenizer and input normalisation."""

    model: Any
    tokenizer: Any
    device: Any
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    logit_scale: float
    embed_dim: int
    weights: str

    def info(self) -> dict:
        """The picklable facts about the model (:data:`INFO_FIELDS` and the device)."""
        info = {k: getattr(self, k) for k in INFO_FIELDS}
        info["device"] = str(self.device)
        return info


def _create_model(spec: ClipSpec, dev, cache_dir, download: bool) -> tuple[Any, str, str]:
    """The open_clip model of ``spec`` on ``dev``, its open_clip name and the weights loaded."""
    import open_clip

    if spec.local_dir is not None:
        name = f"local-dir:{spec.local_dir}"
        return open_clip.create_model(name, device=dev), name, str(spec.local_dir)
    if spec.config is not None:
        open_clip.add_model_config(spec.config)
    if spec.model not in open_clip.list_models():
        raise ValueError(
            f"unknown CLIP architecture {spec.model!r}; known: "
            f"{', '.join(open_clip.list_models()[:12])}, ... (or an open_clip config .json)"
        )
    kwargs: dict[str, Any] = {}
    if spec.tag == "random":
        weights = "random"
        pretrained = None
    elif spec.weights is not None:
        weights = pretrained = str(spec.weights)
    else:
        path, cfg = _resolve_pretrained(spec, cache_dir, download)
        weights = pretrained = str(path)
        kwargs["force_quick_gelu"] = bool(cfg.get("quick_gelu", False))
        kwargs["force_preprocess_cfg"] = {k: cfg[k] for k in ("mean", "std") if k in cfg}
    try:
        model = open_clip.create_model(spec.model, pretrained=pretrained, device=dev, **kwargs)
    except RuntimeError as exc:
        if spec.weights is not None:
            raise ValueError(
                f"{spec.weights} is not a weights file of the CLIP model {spec.model!r}: "
                f"{' '.join(str(exc).split())[:300]}"
            ) from exc
        raise
    return model, spec.model, weights


def load_clip(spec_text: str, device=None, cache_dir=None, download: bool = True) -> LoadedClip:
    """Build the open_clip model of a specification, on ``device``, in eval mode."""
    import open_clip
    import torch

    from ...models.device import resolve_device

    spec = parse_clip_spec(spec_text)
    dev = resolve_device(device)
    model, name, weights = _create_model(spec, dev, cache_dir, download)
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
    return LoadedClip(
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


def encode_text_local(clip: LoadedClip, queries: list[str]) -> np.ndarray:
    """Unit-length text embeddings ``(Q, D)``, float32."""
    import torch

    with torch.inference_mode():
        tokens = clip.tokenizer(list(queries)).to(clip.device)
        emb = clip.model.encode_text(tokens, normalize=True)
    return emb.float().cpu().numpy()


def encode_images_local(clip: LoadedClip, crops: np.ndarray) -> np.ndarray:
    """Unit-length image embeddings ``(K, D)`` of uint8 crops ``(K, S, S, 3)``, float32."""
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
