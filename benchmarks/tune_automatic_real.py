"""Choose segment everything's defaults on real training images (never the validation split).

Runs :func:`~napari_sam.workflows.automatic.segment_everything` with a few parameter variants on
the first N *training* images of the real data folder (``holdout_split``'s training part, so
``benchmarks/evaluate_real.py`` stays an independent check) and prints F1 at IoU 0.5 and the
mean segmentation accuracy per variant, pooled over images, beside the classical baseline.

    python benchmarks/tune_automatic_real.py --checkpoint model.pt --n 4 [--threads 1]
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import torch

from napari_sam import build_model
from napari_sam.data.io import read_image
from napari_sam.evaluation.baselines import classical_instances, instance_metrics
from napari_sam.training import holdout_split
from napari_sam.workflows.automatic import AutomaticParams, segment_everything

VARIANTS = {
    "defaults": {},
    "no merge": {"merge_solidity": None},
    "merge 0.9": {"merge_solidity": 0.9},
    "parts kept": {"part_score_margin": None},
    "blobs 3.0": {"blob_threshold": 3.0},
    "blobs 5.0": {"blob_threshold": 5.0},
    "min area 30": {"min_area": 30},
    "nms 0.5": {"box_nms_thresh": 0.5},
}


def pooled(results: list[dict]) -> tuple[float, float]:
    """F1@0.5 and mean accuracy over images, from summed TP/FP/FN per threshold."""
    tp = np.sum([r["tp"] for r in results], axis=0)
    fp = np.sum([r["fp"] for r in results], axis=0)
    fn = np.sum([r["fn"] for r in results], axis=0)
    f1 = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
    acc = tp / np.maximum(tp + fp + fn, 1)
    return float(f1[0]), float(acc.mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--checkpoint")
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared"
                                              / "data" / "bbbc039"))
    parser.add_argument("--n", type=int, default=4, help="training images to tune on")
    parser.add_argument("--holdout-every", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = build_model(args.checkpoint or args.model)
    files = sorted((Path(args.data) / "images").glob("*.tif"))
    train, _ = holdout_split([f.name for f in files], args.holdout_every)
    pairs = []
    for i in train:
        lab = read_image(Path(args.data) / "labels" / files[i].name)
        if lab.any():
            pairs.append((read_image(files[i]), lab))
        if len(pairs) == args.n:
            break
    rows = {}
    for name, change in VARIANTS.items():
        params = dataclasses.replace(AutomaticParams(), **change)
        rows[name] = pooled([instance_metrics(segment_everything(model, img, params=params), lab)
                             for img, lab in pairs])
        print(f"{name}: F1@0.5 {rows[name][0]:.3f}, mean accuracy {rows[name][1]:.3f}", flush=True)
    rows["classical"] = pooled([instance_metrics(classical_instances(img), lab)
                                for img, lab in pairs])
    print("\n| variant | F1@0.5 | mean accuracy |\n|---|---|---|")
    for name, (f1, acc) in rows.items():
        print(f"| {name} | {f1:.3f} | {acc:.3f} |")


if __name__ == "__main__":
    main()
