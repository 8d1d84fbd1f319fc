"""Speed of text prompts: CLIP crop embedding, re-scoring a new query, in-process vs isolated.

Uses the real ViT-B-32 architecture with random weights (``ViT-B-32:random``): the scores are
meaningless, the cost is that of the real model. Run on a quiet machine, single-threaded:

    OMP_NUM_THREADS=1 nice python benchmarks/bench_text.py [--size 256] [--clip ViT-B-32:random]

Prints one table: seconds per step and ratios, all measured in this one run.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def _timed(fn):
    t0 = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256, help="side of the synthetic image")
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--clip", default="ViT-B-32:random")
    args = p.parse_args()

    import torch

    torch.set_num_threads(1)
    from napari_sam.data.synthetic import make_nuclei_2d
    from napari_sam.workflows.text import (
        ClipScorer,
        embed_objects,
        extract_crops,
        score_embeddings,
        score_objects,
    )

    image, labels = make_nuclei_2d((args.size, args.size), seed=args.seed)
    k = len(np.unique(labels)) - 1
    rows = []
    for isolate in (False, True):
        scorer, t_load = _timed(lambda: ClipScorer(args.clip, device="cpu", isolate=isolate))
        _, t_crops = _timed(lambda: extract_crops(image, labels, size=scorer.image_size))
        _, t_first = _timed(lambda: score_objects(scorer, image, labels, "nucleus"))
        _, t_again = _timed(lambda: score_objects(scorer, image, labels, "nucleus"))
        _, t_query = _timed(lambda: score_objects(scorer, image, labels, "debris", ["cell"]))
        objects = embed_objects(scorer, image, labels)  # cached: what a GUI keeps per plane
        _, t_keystroke = _timed(lambda: score_embeddings(scorer, objects, "mitotic cell"))
        rows.append((isolate, t_load, t_crops, t_first, t_again, t_query, t_keystroke))
        scorer.close()

    print(f"{args.clip}, {k} objects in a {args.size}x{args.size} plane, CPU, 1 thread")
    print("| scorer | load s | crop extraction s | first scoring s | per object ms "
          "| same query again s | new query s | new query, embeddings kept s |")
    print("|---|---|---|---|---|---|---|---|")
    for isolate, t_load, t_crops, t_first, t_again, t_query, t_key in rows:
        name = "isolated (child process)" if isolate else "in-process"
        print(f"| {name} | {t_load:.2f} | {t_crops:.3f} | {t_first:.2f} | "
              f"{1000 * t_first / max(k, 1):.0f} | {t_again:.3f} | {t_query:.3f} | "
              f"{t_key:.4f} |")
    local, iso = rows
    print(f"isolated / in-process: load {iso[1] / local[1]:.1f}x, first scoring "
          f"{iso[3] / local[3]:.2f}x; new query vs first scoring (in-process): "
          f"{local[5] / local[3]:.3f}x")


if __name__ == "__main__":
    main()
