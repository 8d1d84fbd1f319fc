"""Embedding and decode time of the default model against SAM ViT-B, side by side in one run.

Timings on shared machines are noisy, so both models are measured alternately in the same
process on the same 1024 x 1024 slice and the result is reported as a ratio (median of N runs).
Weights do not change the cost: ViT-B is built with random weights (no download needed).

    python benchmarks/bench_default_model.py [--repeats 3] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from napari_sam.models.build import MODEL_CONFIGS, build_model, build_sam
from napari_sam.engine.predictor import SamPredictor


def _time(fn, repeats):
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    image = np.random.default_rng(0).integers(100, 4000, (args.size, args.size)).astype(np.uint16)
    models = {
        "default": build_model("default"),
        "vit_b": build_sam(MODEL_CONFIGS["vit_b"]),
    }
    results = {}
    for name, model in models.items():
        p = SamPredictor(model)
        p.set_image(image)  # warm-up
        embed = _time(lambda: p.set_image(image), args.repeats)
        decode = _time(lambda: p.predict(points=[[args.size // 2, args.size // 2]]), 10)
        params = sum(t.numel() for t in model.parameters())
        results[name] = {"embed_s": embed, "decode_s": decode, "params_M": params / 1e6}
        print(f"{name:8s} embed {embed * 1000:8.1f} ms   decode {decode * 1000:6.1f} ms   "
              f"params {params / 1e6:6.2f} M")
    ratio = results["vit_b"]["embed_s"] / results["default"]["embed_s"]
    results["embed_speedup"] = ratio
    results["threads"] = torch.get_num_threads()
    print(f"default embeds a {args.size}x{args.size} slice {ratio:.1f}x faster than ViT-B "
          f"({torch.get_num_threads()} threads)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
