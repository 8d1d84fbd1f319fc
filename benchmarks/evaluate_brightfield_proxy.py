"""The default model on colour brightfield images it has never seen: a proxy made from real nuclei.

The project has no annotated H&E or brightfield images. This script makes a stand-in from the
real validation split (BBBC039 nuclei, never trained on): each fluorescence image becomes the
optical density of a hematoxylin stain (the nuclei's brightness scaled to 0..``--max-density``)
over a uniform, light eosin background (density 0.03), rendered to RGB by the inverse of
Beer-Lambert colour deconvolution (``skimage.color.hed2rgb``): dark purple nuclei on a light
pink background, ``uint8`` RGB, with a little Poisson-like noise. Shapes, sizes and touching
nuclei are real; the colours and the inverted contrast are what is new to the model (real H&E
adds tissue texture, membranes and cytoplasm: this is an optimistic stand-in, not H&E).

The same objects are scored both ways with the project's evaluation protocol
(:func:`napari_sam.evaluation.interactive.evaluate_image` on a ZoomPredictor with ``zoom="auto"``,
as ``napari-sam evaluate``): 1 click and ``--clicks`` clicks, boxes; and segment everything
(the default decoder mode, ``workflows.instance_decoder.segment_everything``) by F1 at IoU 0.5
beside the classical baseline, which thresholds bright objects (on the brightfield images it
gets the image inverted to gray, a fair chance). A third row gives the model the brightfield
image inverted (``255 - rgb``), what a user can do before segmenting.

    OMP_NUM_THREADS=1 python benchmarks/evaluate_brightfield_proxy.py [--n 4] [--clicks 3]
        [--max-density 0.6] [--data ../shared/data/bbbc039] [--save-example example.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from skimage.color import hed2rgb

sys.path.insert(0, str(Path(__file__).resolve().parent))
from evaluate_real import validation_pairs

from napari_sam import build_model
from napari_sam.data.io import read_image
from napari_sam.engine.zoom import ZoomPredictor
from napari_sam.evaluation.baselines import classical_instances, instance_metrics
from napari_sam.evaluation.interactive import evaluate_image
from napari_sam.workflows.instance_decoder import segment_everything

REPO = Path(__file__).resolve().parents[1]


def brightfield(image: np.ndarray, max_density: float = 0.6, eosin: float = 0.03,
                seed: int = 0) -> np.ndarray:
    """``(H, W, 3)`` uint8 hematoxylin-and-eosin look of a fluorescence image ``(H, W)``."""
    lo, hi = np.percentile(image, (1, 99.8))
    h = np.clip((image.astype(np.float64) - lo) / max(hi - lo, 1e-9), 0, 1) * max_density
    hed = np.stack([h, np.full_like(h, eosin), np.zeros_like(h)], axis=-1)
    rgb = hed2rgb(hed)
    rng = np.random.default_rng(seed)
    rgb = rgb + rng.normal(0, 0.02, rgb.shape) * np.sqrt(np.clip(rgb, 0, 1))
    return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)


def pooled_miou(results: list[dict]) -> list[float]:
    """Mean IoU per click over every object of every image (objects that stopped early keep
    their last IoU)."""
    per = [o["iou"] for r in results for o in r["per_object"]]
    k = max(len(v) for v in per)
    return [float(np.mean([v[min(i, len(v) - 1)] for v in per])) for i in range(k)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/bbbc039")
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--clicks", type=int, default=3)
    parser.add_argument("--max-density", type=float, default=0.6)
    parser.add_argument("--model", default="default")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--save-example", type=Path, help="PNG of the first brightfield image")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = build_model(args.model)
    looks = ("fluorescence", "brightfield proxy", "brightfield proxy, inverted")
    rows = {look: {"point": [], "box": [], "auto": [], "classical": []} for look in looks}
    n_obj = 0
    for img_path, lab_path in validation_pairs(args.data, 4, args.n):
        image, labels = read_image(img_path), read_image(lab_path).astype(np.int32)
        n_obj += len(np.unique(labels)) - 1
        bf = brightfield(image, args.max_density)
        if args.save_example is not None and not args.save_example.exists():
            from skimage.io import imsave

            imsave(args.save_example, bf)
        for look, img in zip(looks, (image, bf, 255 - bf), strict=True):
            r = rows[look]
            r["point"].append(evaluate_image(ZoomPredictor(model), img, labels, prompt="point",
                                             clicks=args.clicks))
            r["box"].append(evaluate_image(ZoomPredictor(model), img, labels, prompt="box",
                                           clicks=1))
            r["auto"].append(instance_metrics(segment_everything(model, img), labels))
            gray = img if img is image else 255 - bf.mean(axis=-1)  # dark nuclei made bright
            r["classical"].append(instance_metrics(classical_instances(gray), labels))
        print(f"{img_path.name}: done", flush=True)

    print(f"\n{args.n} validation images, {n_obj} nuclei; model {args.model}\n")
    print("| look | 1 click | " + " | ".join(f"{k} clicks" for k in range(2, args.clicks + 1))
          + " | box | segment everything F1@0.5 | classical F1@0.5 |")
    print("|---" * (4 + args.clicks) + "|")
    for look, r in rows.items():
        clicks = pooled_miou(r["point"])
        box = pooled_miou(r["box"])[0]
        auto = float(np.mean([m["f1_50"] for m in r["auto"]]))
        classical = float(np.mean([m["f1_50"] for m in r["classical"]]))
        print(f"| {look} | " + " | ".join(f"{v:.3f}" for v in clicks)
              + f" | {box:.3f} | {auto:.3f} | {classical:.3f} |")
    print("\n(segment everything and classical: mean F1@0.5 over images)")


if __name__ == "__main__":
    main()
