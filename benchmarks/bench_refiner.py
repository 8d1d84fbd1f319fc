"""Cost of the mask refiner per mask, beside one embedding of a 1024 x 1024 slice.

Refiners of 16 channels (shipped) and 32 channels on a batch of 64 crops, and the default
model's embedding of one 1024 x 1024 slice; one process, alternating, medians of --repeats.

    nice python benchmarks/bench_refiner.py --threads 1
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from bench_propagation_automatic import median_time  # the same timing, one copy

from napari_sam import SamPredictor, build_model
from napari_sam.modeling import MaskRefiner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    predictor = SamPredictor(build_model("default"))
    image = np.random.default_rng(0).random((1024, 1024)).astype(np.float32)
    crops, scales = torch.rand(64, 3, 64, 64), torch.zeros(64)
    refiners = {w: MaskRefiner(width=w).eval() for w in (16, 32)}

    def refine(r):
        with torch.inference_mode():
            r(crops, scales)

    predictor.compute_embedding(image)
    t_embed = median_time(lambda: predictor.compute_embedding(image), args.repeats)
    print(f"threads {args.threads}; one 1024 x 1024 embedding: {1000 * t_embed:.0f} ms")
    print("| refiner | per mask | masks per embedding time |\n|---|---|---|")
    for w, r in refiners.items():
        refine(r)
        t = median_time(lambda r=r: refine(r), args.repeats) / len(crops)
        print(f"| {w} channels | {1000 * t:.2f} ms | {t_embed / t:.0f} |")


if __name__ == "__main__":
    main()
