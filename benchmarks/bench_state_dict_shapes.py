"""``state_dict_shapes``: the model types' key shapes without initialising weights, as ratios.

:func:`napari_sam.models.checkpoint.state_dict_shapes` tells which registry model a checkpoint
is (``infer_model_type``, on every load of a file whose cheap signature matches). It used to
build the whole model on the CPU with its weights initialised (ViT-H: 2.5 GB written with random
numbers, seconds); it now builds it with initialisation skipped. This builds each registry
architecture both ways, alternating, and prints the CPU seconds (``time.process_time``, one
thread) of each, their ratio, and whether both give the same keys and shapes.

    OMP_NUM_THREADS=1 python benchmarks/bench_state_dict_shapes.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from napari_sam.models import checkpoint
from napari_sam.models.build import MODEL_CONFIGS, build_sam


def old(config) -> dict:
    """The former path: the model built with its weights initialised."""
    with torch.no_grad():
        model = build_sam(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def new(config) -> dict:
    checkpoint._shapes.cache_clear()  # time the build, not the cache
    return checkpoint.state_dict_shapes(config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{'model':10s} {'old s':>8s} {'new s':>8s} {'old/new':>8s}  same shapes")
    for name in ("vit_t", "vit_b", "vit_l", "vit_h", "default"):
        config = MODEL_CONFIGS[name]
        times: dict = {"old": [], "new": []}
        results = {}
        for _ in range(args.repeats):
            for label, fn in (("old", old), ("new", new)):
                t0 = time.process_time()
                results[label] = fn(config)
                times[label].append(time.process_time() - t0)
        t_old, t_new = statistics.median(times["old"]), statistics.median(times["new"])
        print(f"{name:10s} {t_old:8.3f} {t_new:8.3f} {t_old / max(t_new, 1e-6):8.1f}  "
              f"{results['old'] == results['new']}")


if __name__ == "__main__":
    main()
