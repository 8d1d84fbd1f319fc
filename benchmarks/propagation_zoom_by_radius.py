"""Propagation's 3D IoU per object at several magnifications, by the object's radius.

On the propagation *tuning* stacks (generator seed 7777: three stacks of small nuclei; 9104 /
9105: three held-out and three crowded; 24 x 512 x 512, z step 2x the pixel) every object is
propagated with the evaluation protocol (``evaluate_propagation``) at each zoom, and the mean
3D IoU is printed by the object's radius on its seed slice: whether magnifying small objects
would pay, and from which size.

    nice python benchmarks/propagation_zoom_by_radius.py --model default --zooms 1 1.5 2
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np
import torch
from evaluate_propagation_automatic import stack_settings  # the same held-out stack settings

from napari_sam import build_model
from napari_sam.evaluation.propagation import evaluate_propagation
from napari_sam.data.synthetic import make_nuclei_3d, random_settings

BINS = ((0, 6), (6, 8), (8, 10), (10, 14), (14, 20), (20, np.inf))


def tuning_stacks() -> list[tuple[str, np.ndarray, np.ndarray]]:
    data = []
    rng = np.random.default_rng(7777)
    i = 0
    while len(data) < 3:  # small nuclei
        st = random_settings(rng, held_out=True)
        i += 1
        if st.radius_range[0] > 10:
            continue
        data.append(("small", *make_nuclei_3d((24, 512, 512), seed=11_000 + i,
                                              settings=replace(st, n_objects=(8, 20)),
                                              z_anisotropy=2.0)))
    for kind in ("held-out", "crowded"):
        rng = np.random.default_rng(9104 + (kind == "crowded"))
        for i in range(3):
            data.append((kind, *make_nuclei_3d(
                (24, 512, 512), seed=10_000 + 100 * (kind == "crowded") + i,
                settings=stack_settings(rng, kind), z_anisotropy=2.0)))
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="registry name or checkpoint")
    parser.add_argument("--zooms", type=float, nargs="+", default=[1.0, 1.5, 2.0])
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = build_model(args.model)
    rows = []  # radius, iou at each zoom
    for k, (kind, image, labels) in enumerate(tuning_stacks()):
        results = [evaluate_propagation(model, image, labels, axis=0, zoom=z)
                   for z in args.zooms]
        print(kind, k, " ".join(f"zoom {z}: {r['miou_3d']:.3f}"
                                for z, r in zip(args.zooms, results)), flush=True)
        for j, obj in enumerate(results[0]["per_object"]):
            area = np.count_nonzero(labels[obj["seed_slice"]] == obj["id"])
            rows.append([np.sqrt(area / np.pi)] + [r["per_object"][j]["iou_3d"] for r in results])
    table = np.array(rows)
    print("\n| seed radius (px) | objects | " + " | ".join(f"zoom {z}" for z in args.zooms) + " |")
    print("|---|---|" + "---|" * len(args.zooms))
    for lo, hi in BINS:
        sel = (table[:, 0] >= lo) & (table[:, 0] < hi)
        if sel.any():
            means = " | ".join(f"{v:.3f}" for v in table[sel, 1:].mean(axis=0))
            print(f"| {lo}-{hi} | {int(sel.sum())} | {means} |")
    print(f"| all | {len(table)} | " + " | ".join(f"{v:.3f}" for v in table[:, 1:].mean(0)) + " |")


if __name__ == "__main__":
    main()
