"""How well a model's IoU head predicts the IoU of its own masks, on real and synthetic images.

Segment everything keeps a candidate only when its predicted IoU passes an absolute threshold,
and propagation stops on a low score: a model whose IoU head under-predicts loses objects
although its masks are good. For each model this prints, for one click at each object's most
central point (the mask SAM would pick: the highest predicted IoU of the three outputs), the mean
predicted IoU, the mean true IoU (at the image's resolution), their mean absolute difference,
their correlation and the share of masks with true IoU >= 0.8 whose predicted IoU is below 0.8.

    python benchmarks/iou_calibration.py [--checkpoint PATH ...] [--n 4] [--threads 1]
        [--data ../shared/data/bbbc039]

"default" (the embedded model) is always measured first, then each checkpoint, all in one run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from napari_sam import SamPredictor, build_model
from napari_sam.data.io import read_image
from napari_sam.data.synthetic import make_nuclei_2d
from napari_sam.evaluation.interactive import farthest_point, ground_truth_objects, mask_iou
from napari_sam.training import holdout_split


def real_images(data: Path, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    names = sorted(p.name for p in (data / "images").iterdir()
                   if p.suffix.lower() in (".tif", ".tiff", ".npy"))
    _, val = holdout_split(names, 4)
    out = []
    for i in val:
        lab = read_image(data / "labels" / names[i])
        if lab.any():
            out.append((read_image(data / "images" / names[i]), lab))
        if len(out) == n:
            break
    return out


def synthetic_images(n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [make_nuclei_2d((256, 256), seed=i) for i in range(n)]


def probe(predictor: SamPredictor, pairs) -> dict:
    pred, true = [], []
    for image, labels in pairs:
        predictor.set_image(image)
        for obj in ground_truth_objects(labels):
            full = np.zeros(labels.shape, bool)
            full[obj.window] = obj.crop
            point = farthest_point(full)
            masks, scores, _ = predictor.predict(np.array([point]), np.array([1]))
            best = int(np.argmax(scores))
            pred.append(float(scores[best]))
            true.append(mask_iou(masks[best], full))
    pred, true = np.array(pred), np.array(true)
    good = true >= 0.8
    return {
        "objects": len(pred),
        "pred": pred.mean(),
        "true": true.mean(),
        "abs_err": np.abs(pred - true).mean(),
        "corr": float(np.corrcoef(pred, true)[0, 1]) if len(pred) > 2 else float("nan"),
        "good_rejected": float((pred[good] < 0.8).mean()) if good.any() else float("nan"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", nargs="*", default=[])
    ap.add_argument("--n", type=int, default=4, help="real validation images")
    ap.add_argument("--synthetic", type=int, default=4, help="synthetic 256 px scenes")
    ap.add_argument("--data", type=Path, default=Path("../shared/data/bbbc039"))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sets = {"real": real_images(args.data, args.n), "synthetic": synthetic_images(args.synthetic)}
    print("| model | set | objects | mean predicted | mean true | mean abs err | corr "
          "| good masks scored < 0.8 |")
    print("|---|---|---|---|---|---|---|---|")
    for name in ["default", *args.checkpoint]:
        predictor = SamPredictor(build_model(name))
        for set_name, pairs in sets.items():
            r = probe(predictor, pairs)
            print(f"| {Path(name).name} | {set_name} | {r['objects']} | {r['pred']:.3f} "
                  f"| {r['true']:.3f} | {r['abs_err']:.3f} | {r['corr']:.2f} "
                  f"| {r['good_rejected']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
