"""How far the half-maximum outline of propagation can go on dense stacks of small nuclei.

On *tuning* stacks shaped like ``evaluate_propagation_automatic.py``'s ``small-dense`` set
(40-55 touching nuclei of radius 4-8 px in 31 x 61 x 57 stacks, held-out optics; generator seed
``--seed``, not the evaluation's), every stack is scored three ways, per object:

- ``propagation``: the evaluation protocol (``evaluate_propagation``: one click on the largest
  section, propagated and outlined), the model given by ``--model``;
- ``ceiling``: the outline's family with everything it guesses taken from the truth: the
  stack smoothed as the outline smooths it (:data:`napari_sam.workflows.outline.SMOOTH`), a
  watershed flooded from each object's *true* inner half (by depth), and in its basin the
  best of 34 thresholds (percentiles 0-99 of the basin), the piece holding the marker;
- ``contrast``: the median over objects of (median inside - median of a 2-6 px band around it)
  / pixel noise (robust spread of the stack minus its 1.5 px in-plane smoothing); ``--real N``
  prints the same for the first N real validation images (BBBC039, 2D).

``--photons`` redraws the same stacks with another photon count (the generator's noise level;
the held-out optics draw 15-60 photons per unit).

    nice python benchmarks/outline_ceiling.py --n 6 [--photons 3000]
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from evaluate_propagation_automatic import SMALL_DENSE_SHAPE, stack_settings
from scipy import ndimage
from skimage.segmentation import watershed

from napari_sam import build_model
from napari_sam.data.synthetic import make_nuclei_3d
from napari_sam.evaluation.propagation import evaluate_propagation
from napari_sam.workflows.outline import SMOOTH


def stacks(seed: int, n: int, photons: float | None):
    """``n`` small-dense stacks drawn as the evaluation's, from ``seed``."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        st = stack_settings(rng, "small-dense")
        if photons is not None:
            st = replace(st, photons=photons)
        yield make_nuclei_3d(SMALL_DENSE_SHAPE, seed=seed * 10 + i, settings=st,
                             z_anisotropy=2.0)


def ceiling(image: np.ndarray, labels: np.ndarray) -> list[float]:
    smooth = ndimage.gaussian_filter(image.astype(np.float32), SMOOTH)
    markers = np.zeros_like(labels)
    ids = [o for o in np.unique(labels) if o]
    for o in ids:
        depth = ndimage.distance_transform_edt(labels == o, sampling=(2.0, 1.0, 1.0))
        markers[depth >= 0.5 * depth.max()] = o
    basins = watershed(-smooth, markers)
    best = []
    for o in ids:
        truth, basin = labels == o, basins == o
        ious = []
        for level in np.percentile(smooth[basin], np.linspace(0, 99, 34)):
            pieces, _ = ndimage.label(basin & (smooth > level))
            held = np.unique(pieces[(markers == o) & (pieces > 0)])
            region = np.isin(pieces, held) if len(held) else pieces > 0
            ious.append((region & truth).sum() / max((region | truth).sum(), 1))
        best.append(max(ious))
    return best


def contrast(image: np.ndarray, labels: np.ndarray) -> float:
    img = image.astype(np.float32)
    high = img - ndimage.gaussian_filter(img, (0,) * (img.ndim - 2) + (1.5, 1.5))
    noise = 1.4826 * np.median(np.abs(high - np.median(high)))
    out = []
    for o, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        box = tuple(slice(max(s.start - 8, 0), s.stop + 8) for s in box)
        inside = labels[box] == o
        band = ndimage.distance_transform_edt(labels[box] == 0)
        band = (band > 2) & (band <= 6)
        if band.sum() >= 5:
            out.append((np.median(img[box][inside]) - np.median(img[box][band])) / max(noise, 1e-9))
    return float(np.median(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--seed", type=int, default=7101)
    parser.add_argument("--n", type=int, default=6)
    parser.add_argument("--photons", type=float, default=None)
    parser.add_argument("--real", type=int, default=0, metavar="N",
                        help="also the contrast of the first N real validation images")
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.real:
        from evaluate_real import validation_pairs

        from napari_sam.data.io import read_image

        data = Path(__file__).resolve().parents[2] / "shared" / "data" / "bbbc039"
        real = [contrast(read_image(i), read_image(lab))
                for i, lab in validation_pairs(data, 4, args.real)]
        print(f"real validation images: median contrast / noise {np.median(real):.1f} "
              f"(per image {min(real):.1f} - {max(real):.1f})", flush=True)
    model = build_model(args.model)
    prop, ceil, con = [], [], []
    for image, labels in stacks(args.seed, args.n, args.photons):
        r = evaluate_propagation(model, image, labels, axis=0)
        prop.append(np.mean([o["iou_3d"] for o in r["per_object"]]))
        ceil.append(np.mean(ceiling(image, labels)))
        con.append(contrast(image, labels))
        print(f"stack {len(prop) - 1}: propagation {prop[-1]:.3f}, ceiling {ceil[-1]:.3f}, "
              f"contrast {con[-1]:.1f}", flush=True)
    print(f"| photons | stacks | propagation | ceiling | contrast / noise |\n|---|---|---|---|---|\n"
          f"| {args.photons or 'drawn (15-60)'} | {len(prop)} | {np.mean(prop):.3f} | "
          f"{np.mean(ceil):.3f} | {np.median(con):.1f} |")


if __name__ == "__main__":
    main()
