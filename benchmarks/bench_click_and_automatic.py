"""A click and segment everything with the default model, before and after issue 22, as ratios.

1. A click: the median time of ``SamPredictor.predict`` (one positive point, the three
   candidate masks) and of ``SamPredictor.segment`` (the one mask the viewer shows for a
   click: what the widget calls) on an embedded slice of 512 and 1024 px, with and without the mask
   refiner, the old path and the new one alternating click by click in this process. The
   clicks are on the nuclei of BBBC039 validation images (the centre of each ground-truth
   nucleus, its innermost pixel); the slice is the image's central square resized to the
   size. Old and new masks are compared candidate by candidate (IoU).
2. Segment everything (``segment_everything``, embedding included, default parameters) on
   1024 x 1024 slices tiled from four 512 x 512 crops of BBBC039 validation images (~300-450
   nuclei each): seconds, F1@0.5 of both against the ground truth, and the IoU-matched
   agreement of the two label images.

The old path is the code at commit ``BEFORE`` put back in this process only: the decoder's
plain LayerNorm2d and attention, no per-slice decoder preparation, the refiner's plain
convolutions (all monkeypatched), whole-slice upsampling and refining (``full_logits > 0``),
and ``workflows/automatic.py``, ``engine/decoding.py`` and ``engine/refine.py`` as they were
(read with ``git show BEFORE:...``, so run this in a git checkout). Times are CPU time
(``time.process_time``, one thread), which a shared machine disturbs less than wall time.

    OMP_NUM_THREADS=1 python benchmarks/bench_click_and_automatic.py [--clicks 30]
        [--images 2] [--skip-automatic] [--data ../shared/data/bbbc039]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from skimage.transform import resize

from napari_sam import SamPredictor, build_model
from napari_sam.data.io import read_image
from napari_sam.engine import refine as engine_refine
from napari_sam.evaluation.baselines import instance_metrics
from napari_sam.modeling import MaskRefiner, common, transformer
from napari_sam.training import holdout_split
from napari_sam.workflows import automatic

#: The commit before issue 22's speed work: the "old" path.
BEFORE = "0e571d3"
REPO = Path(__file__).resolve().parents[1]


# -- the old code, put back for the "old" runs ----------------------------------------------


def _plain_layernorm2d(self, x):
    mean = x.mean(1, keepdim=True)
    var = (x - mean).pow(2).mean(1, keepdim=True)
    x = (x - mean) / torch.sqrt(var + self.eps)
    return self.weight[:, None, None] * x + self.bias[:, None, None]


def _plain_attention(self, q, k, v):
    q = self._split_heads(self.q_proj(q))
    k = self._split_heads(self.k_proj(k))
    v = self._split_heads(self.v_proj(v))
    b = max(q.shape[0], k.shape[0])
    if q.shape[0] != b:
        q = q.expand(b, -1, -1, -1)
    if k.shape[0] != b:
        k, v = k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1)
    out = F.scaled_dot_product_attention(q, k, v)
    b, _, n, _ = out.shape
    return self.out_proj(out.transpose(1, 2).reshape(b, n, self.internal_dim))


def _plain_refiner(self, crops, log_scale):
    b, _, h, w = crops.shape
    scale = log_scale.to(crops.dtype).view(b, 1, 1, 1).expand(b, 1, h, w)
    x = F.relu(self.inp(torch.cat([crops, scale], dim=1)))
    for conv in self.body:
        x = F.relu(x + conv(x))
    return self.out(x)


def _plain_full_masks(self, low_res, geometry):
    with torch.inference_mode():
        return (self.full_logits(low_res, geometry) > 0.0).cpu().numpy()


@contextlib.contextmanager
def _patched(obj, name, value):
    old = obj.__dict__[name] if isinstance(obj, type) else getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def old_path() -> contextlib.ExitStack:
    """The decoder and the predictor's mask path as they were at ``BEFORE``."""
    stack = contextlib.ExitStack()
    stack.enter_context(_patched(common.LayerNorm2d, "forward", _plain_layernorm2d))
    stack.enter_context(_patched(transformer.Attention, "forward", _plain_attention))
    stack.enter_context(_patched(SamPredictor, "full_masks", _plain_full_masks))
    stack.enter_context(_patched(SamPredictor, "_prepared_image", lambda self, emb: None))
    stack.enter_context(_patched(MaskRefiner, "forward", _plain_refiner))
    stack.enter_context(_patched(engine_refine, "mask_crop_box",
                                 _old_modules()["refine"].mask_crop_box))
    return stack


@functools.cache
def _old_modules() -> dict[str, types.ModuleType]:
    """``engine/refine.py``, ``engine/decoding.py`` and ``workflows/automatic.py`` as they were
    at ``BEFORE``, the automatic module using the other two."""
    mods = {name: _module_at(BEFORE, f"src/napari_sam/{path}.py", f"napari_sam.{mod}")
            for name, path, mod in (
                ("refine", "engine/refine", "engine._refine_before"),
                ("decoding", "engine/decoding", "engine._decoding_before"),
                ("automatic", "workflows/automatic", "workflows._automatic_before"))}
    auto = mods["automatic"]
    for name in ("decode_low_res_windowed", "stability_scores"):
        setattr(auto, name, getattr(mods["decoding"], name))
    for name in ("mask_crop_box", "refine_crops", "slice_gray"):
        setattr(auto, name, getattr(mods["refine"], name))
    return mods


def _module_at(commit: str, path: str, name: str) -> types.ModuleType:
    """``path`` of this repository at ``commit``, executed as module ``name`` (its relative
    imports resolve in the installed package)."""
    src = subprocess.run(["git", "-C", str(REPO), "show", f"{commit}:{path}"],
                         capture_output=True, text=True, check=True).stdout
    package = name.rpartition(".")[0]
    mod = types.ModuleType(name)
    mod.__package__ = package
    mod.__file__ = f"{path}@{commit}"
    sys.modules[name] = mod
    exec(compile(src, mod.__file__, "exec"), mod.__dict__)  # noqa: S102 (our own code)
    return mod


# -- data -----------------------------------------------------------------------------------


def validation_pairs(data: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """The BBBC039 validation split (every 4th image by name), images with nuclei, most first."""
    names = sorted(p.name for p in (data / "images").iterdir() if p.suffix == ".tif")
    _, val = holdout_split(names, 4)
    pairs = [(read_image(data / "images" / names[i]), read_image(data / "labels" / names[i]))
             for i in val]
    pairs = [(img.astype(np.float32), lab.astype(np.int32)) for img, lab in pairs if lab.any()]
    return sorted(pairs, key=lambda p: -len(np.unique(p[1])))


def square(image: np.ndarray, labels: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The central square of an image and its labels, resized to ``size`` px."""
    h, w = image.shape
    s = min(h, w)
    r, c = (h - s) // 2, (w - s) // 2
    img = resize(image[r:r + s, c:c + s], (size, size), preserve_range=True, order=1)
    lab = resize(labels[r:r + s, c:c + s], (size, size), order=0, preserve_range=True,
                 anti_aliasing=False)
    return img.astype(np.float32), lab.astype(np.int32)


def tiled(pairs, n: int = 4, crop: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """A 1024 x 1024 slice of ``n`` = 4 top-left ``crop`` squares, labels kept apart."""
    img = np.zeros((2 * crop, 2 * crop), np.float32)
    lab = np.zeros((2 * crop, 2 * crop), np.int32)
    for k, (im, lb) in enumerate(pairs[:n]):
        r, c = divmod(k, 2)
        sub = lb[:crop, :crop]
        # the images differ in brightness: each crop scaled to its own 1-99.8 % range
        lo, hi = np.percentile(im, (1, 99.8))
        img[r * crop:(r + 1) * crop, c * crop:(c + 1) * crop] = (im[:crop, :crop] - lo) / (hi - lo)
        lab[r * crop:(r + 1) * crop, c * crop:(c + 1) * crop] = np.where(sub > 0, sub + lab.max(),
                                                                          0)
    return img, lab


def inner_points(labels: np.ndarray, n: int) -> np.ndarray:
    """``(n, 2)`` clicks: the innermost pixel of the ``n`` largest nuclei."""
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    ids = ids[np.argsort(-counts)][:n]
    out = []
    for i in ids:
        sl = ndimage.find_objects((labels == i).astype(np.int32))[0]
        dist = ndimage.distance_transform_edt(np.pad(labels[sl] == i, 1))[1:-1, 1:-1]
        r, c = np.unravel_index(np.argmax(dist), dist.shape)
        out.append((sl[0].start + r, sl[1].start + c))
    return np.asarray(out, dtype=np.float64)


# -- measurements ---------------------------------------------------------------------------


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


def bench_clicks(model, pairs, sizes, n_clicks: int, n_images: int) -> None:
    print(f"\n## A click: 1 positive point, median CPU ms ({n_clicks} clicks x {n_images} "
          "image(s), old and new alternating)\n")
    print("`predict`: the three candidate masks (the API's call); `segment`: the one mask the "
          "viewer shows for a click (the candidate with the highest predicted IoU, the only one "
          "upsampled and refined; the widget's click calls it).\n")
    print("| call | slice | refiner | old ms | new ms | old / new | "
          "mask IoU old vs new: min, mean |")
    print("|---|---|---|---|---|---|---|")
    for call in ("predict", "segment"):
        for size in sizes:
            for refine in (True, False):
                _bench_call(model, pairs, call, size, refine, n_clicks, n_images)


def _bench_call(model, pairs, call, size, refine, n_clicks, n_images) -> None:
    times = {"old": [], "new": []}
    ious = []
    for image, labels in pairs[:n_images]:
        img, lab = square(image, labels, size)
        predictor = SamPredictor(model, refine=refine)
        predictor.set_image(img)
        clicks = inner_points(lab, n_clicks)
        decode = getattr(predictor, call)
        decode(points=clicks[:1], labels=[1])  # the slice's gray, caches
        with old_path():
            decode(points=clicks[:1], labels=[1])
        for point in clicks:
            masks = {}
            for name in ("old", "new"):
                with old_path() if name == "old" else contextlib.nullcontext():
                    t = time.process_time()
                    out = decode(points=point[None], labels=[1])[0]
                    times[name].append(time.process_time() - t)
                masks[name] = out if call == "predict" else out[None]
            ious += [iou(a, b) for a, b in zip(masks["old"], masks["new"])]
    old, new = (1000 * np.median(times[k]) for k in ("old", "new"))
    print(f"| {call} | {size} px | {'yes' if refine else 'no'} | {old:.1f} | {new:.1f} | "
          f"{old / new:.2f} | {min(ious):.4f}, {np.mean(ious):.4f} |", flush=True)


def matched_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """F1@0.5 of label image ``a`` against ``b`` (1: the same objects)."""
    return float(instance_metrics(a, b)["f1_50"])


def bench_automatic(model, pairs, n_slices: int) -> None:
    old_auto = _old_modules()["automatic"]
    print("\n## Segment everything: 1024 x 1024 slices tiled from 4 validation crops, default "
          "parameters, embedding included, CPU s\n")
    print("| slice | nuclei | refiner | old s | new s | old / new | F1@0.5 old | F1@0.5 new "
          "| F1@0.5 new vs old |")
    print("|---|---|---|---|---|---|---|---|---|")
    for k in range(n_slices):
        group = pairs[4 * k:4 * k + 4]
        if len(group) < 4:
            break
        img, gt = tiled(group)
        for refine in (True, False):
            params = automatic.AutomaticParams(refine=refine)
            old_params = old_auto.AutomaticParams(refine=refine)
            with old_path():
                t = time.process_time()
                old = old_auto.segment_everything(model, img, params=old_params)
                t_old = time.process_time() - t
            t = time.process_time()
            new = automatic.segment_everything(model, img, params=params)
            t_new = time.process_time() - t
            f_old = instance_metrics(old, gt)["f1_50"]
            f_new = instance_metrics(new, gt)["f1_50"]
            print(f"| {k} | {len(np.unique(gt)) - 1} | {'yes' if refine else 'no'} | "
                  f"{t_old:.2f} | {t_new:.2f} | {t_old / t_new:.2f} | {f_old:.3f} | "
                  f"{f_new:.3f} | {matched_agreement(new, old):.3f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/bbbc039")
    parser.add_argument("--clicks", type=int, default=30, help="clicks per image")
    parser.add_argument("--images", type=int, default=2, help="images for the clicks")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--slices", type=int, default=2, help="tiled slices for automatic")
    parser.add_argument("--skip-clicks", action="store_true")
    parser.add_argument("--skip-automatic", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = build_model("default")
    pairs = validation_pairs(args.data)
    print(f"default model, {args.threads} thread(s), old = commit {BEFORE}, "
          f"{len(pairs)} validation images")
    if not args.skip_clicks:
        bench_clicks(model, pairs, args.sizes, args.clicks, args.images)
    if not args.skip_automatic:
        bench_automatic(model, pairs, args.slices)


if __name__ == "__main__":
    main()
