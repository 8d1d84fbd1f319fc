"""Where the interactive scores are lost: per-object IoU by nucleus radius, beside a threshold.

Reads what ``evaluate_default_model.py`` wrote (``OUT/data/<set>_<i>_image.tif`` and
``_labels.tif``, and ``OUT/<set>_<i>_point.json`` / ``_box.json`` from ``napari-sam
evaluate``) and prints, by the radius of each ground-truth object (the maximum of its distance
transform), the mean IoU after 1 and the last click, with a box, and a *best threshold*: the
connected component under the object's farthest-from-boundary pixel, for the best of 60 levels
of the lightly smoothed image (Gaussian, 1 px), the level chosen by looking at the ground truth.
That threshold is not a bound (it cannot split touching objects); on isolated, blurred objects
it says roughly how sharp an outline the pixels allow.

    python benchmarks/evaluate_default_model.py --out /tmp/eval --n 4 --size 512
    python benchmarks/clicks_by_radius.py /tmp/eval held-out
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage

from napari_sam.evaluation.interactive import farthest_point, ground_truth_objects

BINS = ((0, 6), (6, 10), (10, 20), (20, np.inf))


def best_threshold(smooth: np.ndarray, gt: np.ndarray, seed: tuple[int, int],
                   levels: int = 60) -> float:
    """Best IoU with ``gt`` of the component under ``seed`` over threshold levels."""
    yy, xx = np.nonzero(gt)
    sl = (slice(max(yy.min() - 12, 0), yy.max() + 13), slice(max(xx.min() - 12, 0), xx.max() + 13))
    v, g = smooth[sl], gt[sl]
    y, x = seed[0] - sl[0].start, seed[1] - sl[1].start
    best = 0.0
    for t in np.quantile(v, np.linspace(0.3, 0.995, levels)):
        fg = v > t
        if not fg[y, x]:
            continue
        lab, _ = ndimage.label(fg)
        comp = lab == lab[y, x]
        best = max(best, np.count_nonzero(comp & g) / np.count_nonzero(comp | g))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="the --out folder of evaluate_default_model.py")
    parser.add_argument("set", choices=["train-like", "held-out", "default"])
    args = parser.parse_args()
    root = Path(args.out)
    rows: dict[tuple, list] = {b: [] for b in BINS}
    for img_p in sorted((root / "data").glob(f"{args.set}_*_image.tif")):
        stem = img_p.name[: -len("_image.tif")]
        image = tifffile.imread(img_p).astype(np.float32)
        labels = tifffile.imread(root / "data" / f"{stem}_labels.tif")
        gray = image if image.ndim == 2 else image.mean(axis=-1)
        smooth = ndimage.gaussian_filter(gray, 1.0)
        point = json.loads((root / f"{stem}_point.json").read_text())["per_object"]
        box = json.loads((root / f"{stem}_box.json").read_text())["per_object"]
        objects = ground_truth_objects(labels)
        if not len(objects) == len(point) == len(box):
            raise SystemExit(f"{stem}: the JSON files do not match the labels")
        for obj, p, b in zip(objects, point, box):
            mask = obj.mask(labels.shape)
            radius = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1].max()
            thr = best_threshold(smooth, mask, farthest_point(mask))
            for lo, hi in BINS:
                if lo <= radius < hi:
                    rows[(lo, hi)].append((p["iou"][0], p["iou"][-1], b["iou"][0], thr))
    print("| radius (px) | objects | 1 point | last click | box | best threshold |")
    print("|---|---|---|---|---|---|")
    every = []
    for (lo, hi), values in rows.items():
        if values:
            every += values
            means = " | ".join(f"{v:.3f}" for v in np.mean(values, axis=0))
            print(f"| {lo}-{hi if np.isfinite(hi) else 'inf'} | {len(values)} | {means} |")
    print(f"| all | {len(every)} | " + " | ".join(f"{v:.3f}" for v in np.mean(every, axis=0))
          + " |")


if __name__ == "__main__":
    main()
