"""Speed of propagation and automatic segmentation with the default model, as ratios.

1. Propagation with embeddings cached: the time to decode one slice for K objects together
   (one batched call: prompt encoder + mask decoder + upscaling + stopping tests; the previous
   slice's masks, the prompts, made before the clock starts) against the time of one embedding
   of the same slice, for K = 1, 2, 4, 8, 16: as propagation runs by default (windowed, without
   the mask refiner), on the whole grid, with the refiner (``PropagationParams.refine``), and
   the same K objects decoded one call each, to show what batching saves.
2. Automatic segmentation of one 1024 x 1024 slice (embedding included) with the default
   parameters, without the refiner, and with a coarser grid.

Everything runs in one process, alternating, medians of ``--repeats``.

    nice python benchmarks/bench_propagation_automatic.py --threads 1 --repeats 3
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from napari_sam import SamPredictor, build_model
from napari_sam.workflows.automatic import AutomaticParams, segment_everything
from napari_sam.evaluation.baselines import instance_metrics
from napari_sam.workflows.propagation import PropagationParams, _advance, _Front
from napari_sam.workflows.mask_stack import Propagation
from napari_sam.data.synthetic import SyntheticSettings, make_nuclei_2d


def _result(ids) -> Propagation:
    ids = [int(i) for i in ids]
    return Propagation({i: {} for i in ids}, True, scores={i: {} for i in ids})


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=512, help="slice side for propagation")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = build_model(args.model)
    predictor = SamPredictor(model)

    image, labels = make_nuclei_2d((args.size, args.size), seed=4, settings=SyntheticSettings(
        n_objects=(20, 20)))
    emb = predictor.compute_embedding(image)
    t_embed = median_time(lambda: predictor.compute_embedding(image), args.repeats)
    predictor.set_embedding(emb, image)  # with the slice's pixels: masks are refined
    plain = SamPredictor(model, refine=False)
    plain.set_embedding(emb)
    ids = [i for i in np.unique(labels) if i][:16]
    windowed, whole = PropagationParams(), PropagationParams(decode_window=0)
    print(f"threads {args.threads}, slice {args.size} x {args.size}, model {args.model}")
    print(f"one embedding: {1000 * t_embed:.0f} ms\n")
    print("| objects | windowed, together, not refined (the default) | / one embedding | "
          "whole grid, together | windowed, together, refined | / one embedding | "
          "windowed, refined, one call each |")
    print("|---|---|---|---|---|---|---|")
    for k in (1, 2, 4, 8, 16):
        if k > len(ids):
            break

        def fronts():
            out = []
            for oid in ids[:k]:
                mask = labels == oid
                logits = torch.from_numpy(predictor.mask_to_logits(mask))
                out.append(_Front(int(oid), +1, 0, 2, True, mask, logits))
            return out

        def timed(decode) -> float:
            """Median time of ``decode(fronts)``, the fronts (the previous slice's masks as
            prompts) made before the clock starts: a propagation has them already."""
            times = []
            for _ in range(args.repeats):
                made = fronts()
                t = time.perf_counter()
                decode(made)
                times.append(time.perf_counter() - t)
            return float(np.median(times))

        def together(params, pred=predictor):
            return lambda made: _advance(pred, emb, made, 1, params, _result(ids))

        def separately(made):
            for f in made:
                _advance(predictor, emb, [f], 1, windowed, _result(ids))

        t_plain = timed(together(windowed, plain))
        t_whole = timed(together(whole))
        t_tog = timed(together(windowed))
        t_sep = timed(separately)
        print(f"| {k} | {1000 * t_plain:.0f} ms | {t_plain / t_embed:.2f} | "
              f"{1000 * t_whole:.0f} ms | {1000 * t_tog:.0f} ms | {t_tog / t_embed:.2f} | "
              f"{1000 * t_sep:.0f} ms |", flush=True)

    big, big_labels = make_nuclei_2d((1024, 1024), seed=5)
    print(f"\n| automatic, 1024 x 1024 ({big_labels.max()} nuclei) | prompts | time | F1@0.5 |")
    print("|---|---|---|---|")
    variants = [("blobs (default)", AutomaticParams()),
                ("blobs, not refined", AutomaticParams(refine=False)),
                ("grid 24 x 24", AutomaticParams(point_source="grid")),
                ("grid 16 x 16", AutomaticParams(point_source="grid", points_per_side=16))]
    for name, p in variants:
        found = {}

        def run(p=p, found=found):
            found["labels"] = segment_everything(model, big, params=p)

        t = median_time(run, 1)
        f1 = instance_metrics(found["labels"], big_labels)["f1_50"]
        print(f"| {name} | {p.point_source} | {t:.1f} s | {f1:.3f} |", flush=True)


if __name__ == "__main__":
    main()
