"""What limits propagation: its 3D IoU beside two ceilings, by object radius.

On the propagation *tuning* stacks (those of ``propagation_zoom_by_radius.py``) every object is
scored four ways:

- ``propagation``: the evaluation protocol (one click on the largest section, propagated);
- ``click every slice``: the model given a fresh click (the farthest-from-boundary pixel of
  the true section) on *every* slice the object occupies, and stopped exactly at the object's
  ends: what propagation would reach with perfect prompts and perfect stopping, so the
  model's 2D masks are the only error left;
- ``best threshold``: the image alone, with a threshold chosen by looking at the ground truth
  (the best of 60 levels of the lightly smoothed stack; the 3D connected component under the
  seed): an optimistic estimate of what the pixels allow a simple contour to reach;
- the same two on the seed slice only (2D IoU), where the model sees the object at its widest.

    nice python benchmarks/propagation_ceiling.py --model default
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from propagation_zoom_by_radius import BINS, tuning_stacks
from scipy import ndimage

from napari_sam import build_model
from napari_sam.evaluation.interactive import farthest_point
from napari_sam.engine.predictor import SamPredictor
from napari_sam.evaluation.propagation import evaluate_propagation


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.count_nonzero(a & b) / max(np.count_nonzero(a | b), 1))


def click_every_slice(predictor: SamPredictor, image, labels, ids) -> dict[int, np.ndarray]:
    """Per object: the 3D mask of one-click decodes on each slice of its true extent."""
    lo, hi = np.percentile(image, (0.5, 99.5))
    masks = {oid: np.zeros(labels.shape, bool) for oid in ids}
    for z in range(labels.shape[0]):
        present = [oid for oid in np.unique(labels[z]) if oid in masks]
        if not present:
            continue
        predictor.set_image(image[z], intensity_range=(lo, hi))
        for oid in present:
            point = np.array([farthest_point(labels[z] == oid)], float)
            multi, scores, _ = predictor.predict(point, np.array([1]), multimask=True)
            masks[oid][z] = multi[int(np.argmax(scores))]
    return masks


def best_threshold(smooth: np.ndarray, gt: np.ndarray, seed: tuple[int, int, int],
                   levels: int = 60) -> tuple[float, float]:
    """Best 3D and seed-slice 2D IoU of the component under ``seed`` over threshold levels."""
    zz, yy, xx = np.nonzero(gt)
    sl = (slice(max(zz.min() - 4, 0), zz.max() + 5), slice(max(yy.min() - 12, 0), yy.max() + 13),
          slice(max(xx.min() - 12, 0), xx.max() + 13))
    v, g = smooth[sl], gt[sl]
    z, y, x = (s - w.start for s, w in zip(seed, sl))
    best3 = best2 = 0.0
    for t in np.quantile(v, np.linspace(0.3, 0.995, levels)):
        fg = v > t
        if not fg[z, y, x]:
            continue
        lab3, _ = ndimage.label(fg)
        best3 = max(best3, iou(lab3 == lab3[z, y, x], g))
        lab2, _ = ndimage.label(fg[z])
        best2 = max(best2, iou(lab2 == lab2[y, x], g[z]))
    return best3, best2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="registry name or checkpoint")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = build_model(args.model)
    predictor = SamPredictor(model)
    rows = []  # radius, propagation, click-every-slice 3D, threshold 3D, model 2D, threshold 2D
    for kind, image, labels in tuning_stacks():
        result = evaluate_propagation(model, image, labels, axis=0)
        objects = result["per_object"]
        clicked = click_every_slice(predictor, image, labels, [o["id"] for o in objects])
        gray = image.astype(np.float32) if image.ndim == 3 else image.mean(-1, dtype=np.float32)
        smooth = ndimage.gaussian_filter(gray, (0.5, 1.0, 1.0))  # z step 2x the pixel
        for obj in objects:
            gt, z = labels == obj["id"], obj["seed_slice"]
            seed = (z, *(int(round(c)) for c in obj["seed_point"]))
            t3, t2 = best_threshold(smooth, gt, seed)
            rows.append([np.sqrt(np.count_nonzero(gt[z]) / np.pi), obj["iou_3d"],
                         iou(clicked[obj["id"]], gt), t3, iou(clicked[obj["id"]][z], gt[z]), t2])
        print(kind, len(rows), flush=True)
    table = np.array(rows)
    print("\n| seed radius (px) | objects | propagation | click every slice | best threshold "
          "| seed slice: model | seed slice: best threshold |")
    print("|---|---|---|---|---|---|---|")
    for lo, hi in (*BINS, (0, np.inf)):
        sel = (table[:, 0] >= lo) & (table[:, 0] < hi)
        if sel.any():
            name = "all" if (lo, hi) == (0, np.inf) else f"{lo}-{hi}"
            means = " | ".join(f"{v:.3f}" for v in table[sel, 1:].mean(axis=0))
            print(f"| {name} | {int(sel.sum())} | {means} |")


if __name__ == "__main__":
    main()
