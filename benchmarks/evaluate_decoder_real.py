"""Segment everything with a trained instance decoder (``napari-sam train-decoder``) beside the
point-prompt mode and the classical baseline, on the real validation split (BBBC039 nuclei).

1. Validation: the first ``--n`` validation images with objects (every ``--holdout-every``-th
   image by sorted name, as ``benchmarks/evaluate_real.py`` picks them), each segmented by
   - decoder mode: ``workflows.instance_decoder.segment_everything`` (one embedding, one decoder
     pass, seeded watershed), with micro-sam's watershed defaults and, with ``--tune K``, with the
     ``DecoderParams`` that score best on K TRAINING images (never on validation);
   - decoder mode, zoomed: the slice's 2 x 2 overlapping crops each embedded and decoded (the
     crops ``segment everything`` zooms into for small objects), the maps stitched along the
     middle of the overlaps, then the same watershed;
   - points mode: ``workflows.automatic.segment_everything`` with its defaults (``--skip-points``
     to leave it out);
   - the classical baseline ``classical_instances``.
   Scored as ``evaluate_real.py`` does: TP/FP/FN of ``instance_metrics`` summed over the images,
   F1 at IoU 0.5 and the mean segmentation accuracy over IoU 0.5..0.95 (mSA).
2. Time on a 1024 x 1024 slice tiled from 4 validation crops (``bench_click_and_automatic.tiled``,
   the 4 images with the most nuclei): CPU seconds (``time.process_time``, one thread) of the
   decoder modes (embedding included) and of points mode, in one run, with their F1@0.5.

    OMP_NUM_THREADS=1 python benchmarks/evaluate_decoder_real.py --checkpoint decoder.pt
        [--n 8] [--tune 8] [--skip-points] [--data ../shared/data/bbbc039] [--json OUT]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from napari_sam import SamPredictor, build_model
from napari_sam.data.io import read_image
from napari_sam.evaluation.baselines import classical_instances, instance_metrics
from napari_sam.training import holdout_split
from napari_sam.workflows import automatic
from napari_sam.workflows import instance_decoder as dec

sys.path.insert(0, str(Path(__file__).parent))
from bench_click_and_automatic import tiled
from bench_click_and_automatic import validation_pairs as most_nuclei_first
from evaluate_real import validation_pairs

REPO = Path(__file__).resolve().parents[1]


def maps_whole(model, image):
    """Decoder maps (3, H, W) of the whole slice (one embedding)."""
    emb = SamPredictor(model).compute_embedding(image)
    return dec.decoder_outputs(model, emb)


def maps_zoomed(model, image):
    """Decoder maps (3, H, W) from the 2 x 2 overlapping crops (the workflow's zoom)."""
    return dec.slice_outputs(model, image, dec.DecoderParams(zoom_below_radius=1e9))


def pooled(results):
    """F1@0.5 and mSA from TP/FP/FN summed over images (as evaluate_real.py pools them)."""
    tp, fp, fn = (np.sum([r[k] for r in results], axis=0) for k in ("tp", "fp", "fn"))
    return {"f1_50": float(2 * tp[0] / max(2 * tp[0] + fp[0] + fn[0], 1)),
            "msa": float(np.mean(tp / np.maximum(tp + fp + fn, 1)))}


def tune(maps_list, gts):
    """The DecoderParams with the best pooled mSA on (maps, labels) of training images."""
    grid = itertools.product((0.3, 0.4, 0.5, 0.6), (0.4, 0.5, 0.6, 0.7), (0.4, 0.5, 0.6),
                             (1.0, 1.6), (0, 30))
    best = None
    for c, b, f, s, m in grid:
        p = dec.DecoderParams(center_distance_threshold=c, boundary_distance_threshold=b,
                              foreground_threshold=f, distance_smoothing=s, min_size=m)
        score = pooled([instance_metrics(dec.instances_from_outputs(*mp, params=p), gt)
                        for mp, gt in zip(maps_list, gts)])
        if best is None or score["msa"] > best[1]["msa"]:
            best = (p, score)
    return best


def cpu(fn):
    t = time.process_time()
    out = fn()
    return out, time.process_time() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="model with an instance decoder")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/bbbc039")
    parser.add_argument("--holdout-every", type=int, default=4)
    parser.add_argument("--n", type=int, default=8, help="validation images (default 8)")
    parser.add_argument("--tune", type=int, default=0, metavar="K",
                        help="tune DecoderParams on the first K training images")
    parser.add_argument("--skip-points", action="store_true")
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="write all numbers here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = build_model(args.checkpoint, device="cpu")
    if not dec.has_instance_decoder(model):
        raise SystemExit(f"{args.checkpoint} has no instance decoder")
    report = {"checkpoint": args.checkpoint}
    params = {"micro-sam defaults": dec.DecoderParams()}

    if args.tune:
        names = sorted(p.name for p in (args.data / "images").iterdir() if p.suffix == ".tif")
        train_idx, _ = holdout_split(names, args.holdout_every)
        pairs = [(read_image(args.data / "images" / names[i]),
                  read_image(args.data / "labels" / names[i])) for i in train_idx]
        pairs = [p for p in pairs if p[1].any()][:args.tune]
        for zoom, fn in (("whole", maps_whole), ("zoomed", maps_zoomed)):
            maps_list = [fn(model, img) for img, _ in pairs]
            p, score = tune(maps_list, [lab for _, lab in pairs])
            params[f"tuned on {len(pairs)} training images ({zoom})"] = p
            print(f"tuned ({zoom}) on training: {p} -> F1 {score['f1_50']:.3f} "
                  f"mSA {score['msa']:.3f}", flush=True)
        report["tuned"] = {k: asdict(v) for k, v in params.items()}

    val = [(read_image(i), read_image(lab)) for i, lab in
           validation_pairs(args.data, args.holdout_every, args.n)]
    rows = {}
    maps = {"whole": [maps_whole(model, img) for img, _ in val],
            "zoomed": [maps_zoomed(model, img) for img, _ in val]}
    for pname, p in params.items():
        for zoom in ("whole", "zoomed"):
            if "tuned" in pname and f"({zoom})" not in pname:
                continue
            rows[f"decoder, {zoom}, {pname}"] = pooled(
                [instance_metrics(dec.instances_from_outputs(*m, params=p), gt)
                 for m, (_, gt) in zip(maps[zoom], val)])
    rows["decoder, segment_everything defaults (what the viewer and the CLI run)"] = pooled(
        [instance_metrics(dec.segment_everything(model, img), gt) for img, gt in val])
    if not args.skip_points:
        rows["points mode (defaults)"] = pooled(
            [instance_metrics(automatic.segment_everything(model, img), gt) for img, gt in val])
    rows["classical baseline"] = pooled(
        [instance_metrics(classical_instances(img), gt) for img, gt in val])
    report["validation"] = rows
    print(f"\nvalidation: {len(val)} images, {sum(len(np.unique(g)) - 1 for _, g in val)} "
          "nuclei (pooled TP/FP/FN)\n\n| method | F1@0.5 | mSA |\n|---|---|---|")
    for name, s in rows.items():
        print(f"| {name} | {s['f1_50']:.3f} | {s['msa']:.3f} |")

    if not args.skip_timing:
        img, gt = tiled(most_nuclei_first(args.data)[:4])
        print(f"\n1024 px slice: {len(np.unique(gt)) - 1} nuclei; CPU s, one thread, best of 2")
        times = {}
        default = dec.DecoderParams()
        runs = {
            "decoder, whole slice": lambda: dec.segment_everything(
                model, img, params=dec.DecoderParams(zoom_below_radius=0)),
            "decoder, zoomed (2 x 2 crops)": lambda: dec.instances_from_outputs(
                *maps_zoomed(model, img), params=default),
            "decoder, segment_everything defaults (zoom chosen by the objects' radius)":
                lambda: dec.segment_everything(model, img),
            "points mode": lambda: automatic.segment_everything(model, img),
        }
        for name, fn in runs.items():
            if name == "points mode" and args.skip_points:
                continue
            lab, t1 = cpu(fn)
            _, t2 = cpu(fn)
            times[name] = {"seconds": min(t1, t2), "f1_50": instance_metrics(lab, gt)["f1_50"]}
        ref = times.get("points mode", {}).get("seconds")
        for name, t in times.items():
            ratio = f" ({ref / t['seconds']:.1f}x faster than points mode)" if ref else ""
            print(f"{name}: {t['seconds']:.2f} s, F1@0.5 {t['f1_50']:.3f}{ratio}")
        with torch.inference_mode():
            decoder = model.instance_decoder
            x = torch.randn(1, decoder.embed_dim, 64, 64)
            decoder(x)
            _, t = cpu(lambda: [decoder(x) for _ in range(5)])
        n = sum(p.numel() for p in decoder.parameters())
        times["decoder pass (64 x 64 embedding)"] = t / 5
        print(f"one decoder pass: {t / 5:.3f} s; {n} parameters ({2 * n / 1e6:.2f} MB float16)")
        report["timing_1024"] = times
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
