"""Choose segment everything's part and merge rules on tuning images (never the evaluation's).

Two sets of 512 x 512 tuning images: the 16 of ``select_model.py`` (12 held-out look, 4
train-like) and 16 more held-out-look images from generator seed 31340 ("set C", image seeds
43000-43015). For each image, F1 at IoU 0.5 of ``segment_everything`` with the default model
and each variant of ``AutomaticParams`` below; means per set.

    nice python benchmarks/tune_automatic.py --out /tmp/tune_auto
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import tifffile
import torch
from select_model import tuning_images, tuning_set

from napari_sam import build_model
from napari_sam.workflows.automatic import AutomaticParams, segment_everything
from napari_sam.evaluation.baselines import instance_metrics

VARIANTS = {
    "v0.6 (no part or merge rule)": dict(part_score_margin=None, merge_solidity=None),
    "part 0.05": dict(part_score_margin=0.05, merge_solidity=None),
    "part 0.1": dict(part_score_margin=0.1, merge_solidity=None),
    "part 0.2": dict(part_score_margin=0.2, merge_solidity=None),
    "part 0.1, merge 0.97": dict(part_score_margin=0.1, merge_solidity=0.97),
    "part 0.1, merge 0.95": dict(part_score_margin=0.1, merge_solidity=0.95),
    "part 0.1, merge 0.93": dict(part_score_margin=0.1, merge_solidity=0.93),
    "part 0.1, merge 0.9": dict(part_score_margin=0.1, merge_solidity=0.9),
    # with both rules, the blob points' stability filter (0.75, unchanged: docs/automatic.md)
    **{f"part 0.1, merge 0.95, stability {s}": dict(part_score_margin=0.1, merge_solidity=0.95,
                                                    stability_score_thresh=s)
       for s in (0.55, 0.6, 0.65, 0.7)},
}


def set_c(root: Path) -> list[tuple[str, Path, Path]]:
    return tuning_set(root, "heldC", 31340, True, 16, 43_000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", default="default")
    args = parser.parse_args()
    torch.set_num_threads(1)
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    model = build_model(args.model)
    scores: dict[str, list[float]] = {}
    for name, img_p, lab_p in tuning_images(root) + set_c(root):
        image, labels = tifffile.imread(img_p), tifffile.imread(lab_p)
        scores[name] = [
            instance_metrics(segment_everything(model, image, params=AutomaticParams(**kw)),
                             labels)["f1_50"]
            for kw in VARIANTS.values()
        ]
        print(name, int(labels.max()), " ".join(f"{v:.3f}" for v in scores[name]), flush=True)
    groups = {"held-out (12)": ("held", "heldB"), "train-like (4)": ("train",),
              "set C (16)": ("heldC",)}
    print("\n| variant | " + " | ".join(groups) + " |")
    print("|---|" + "---|" * len(groups))
    for j, variant in enumerate(VARIANTS):
        cells = []
        for prefixes in groups.values():
            keys = [k for k in scores if k.rstrip("0123456789") in prefixes]
            cells.append(f"{np.mean([scores[k][j] for k in keys]):.3f}")
        print(f"| {variant} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
