"""One-click quality on small crops of the real validation split, by the cap on magnification.

A slice smaller than the model's input is magnified to fill it (SAM's rule), unless the model
caps the magnification (``SamConfig.max_input_upscale``, 2 for the default model since v0.23).
This script cuts random square crops of ``--sides`` px from the real validation images
(BBBC039, never trained on; two per image and side, drawn from a fixed seed), keeps the nuclei
that lie wholly inside a crop (>= 30 px), and scores one click at each nucleus's farthest
point from its boundary with :class:`napari_sam.SamPredictor`, for each cap given (``none``:
SAM's rule). Same crops and clicks for every cap.

    python benchmarks/evaluate_real_crops.py --model default --sides 96 128 160 --caps 2 none

It prints a markdown table of the mean IoU per side and cap (and the number of nuclei).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from evaluate_real import validation_pairs
from skimage.segmentation import clear_border

from napari_sam import SamPredictor, build_model
from napari_sam.data.io import read_image
from napari_sam.engine.masks import farthest_point, mask_iou
from napari_sam.engine.preprocess import estimate_intensity_range


def crops(image: np.ndarray, labels: np.ndarray, side: int, rng: np.random.Generator, n: int):
    """``n`` random ``side`` x ``side`` crops: (image crop, label crop, ids of whole nuclei)."""
    for _ in range(n):
        r0 = int(rng.integers(0, image.shape[0] - side))
        c0 = int(rng.integers(0, image.shape[1] - side))
        img, lab = image[r0:r0 + side, c0:c0 + side], labels[r0:r0 + side, c0:c0 + side]
        whole = clear_border(lab)  # the nuclei the crop cuts are left out
        yield img, lab, [o for o in np.unique(whole) if o and (whole == o).sum() >= 30]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "bbbc039"))
    parser.add_argument("--holdout-every", type=int, default=4)
    parser.add_argument("--n", type=int, default=25, help="validation images (first N)")
    parser.add_argument("--sides", type=int, nargs="+", default=[96, 128, 160])
    parser.add_argument("--caps", nargs="+", default=["2", "none"])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = build_model(args.model)
    caps = [None if c == "none" else float(c) for c in args.caps]
    ious: dict[tuple[int, float | None], list[float]] = {}
    rng = np.random.default_rng(0)
    for img_path, lab_path in validation_pairs(Path(args.data), args.holdout_every, args.n):
        image, labels = read_image(img_path), read_image(lab_path)
        labels = labels[..., 0] if labels.ndim == 3 else labels
        intensity_range = estimate_intensity_range(image)  # the whole image's, as in a viewer
        for side in args.sides:
            for img, lab, ids in crops(image, labels, side, rng, 2):
                for cap in caps:
                    model.max_input_upscale = cap
                    predictor = SamPredictor(model)
                    predictor.set_image(img, intensity_range)
                    for oid in ids:
                        truth = lab == oid
                        mask = predictor.segment(points=[farthest_point(truth)], labels=[1])[0]
                        ious.setdefault((side, cap), []).append(mask_iou(mask, truth))
    print("| crop side | nuclei | " + " | ".join(f"cap {c}" for c in args.caps) + " |")
    print("|---" * (2 + len(caps)) + "|")
    for side in args.sides:
        row = [f"{np.mean(ious.get((side, c), [np.nan])):.3f}" for c in caps]
        print(f"| {side} | {len(ious.get((side, caps[0]), []))} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
