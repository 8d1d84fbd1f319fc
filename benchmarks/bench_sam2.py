"""SAM 2.1 on this CPU: embedding one 1024 x 1024 slice and tracking one slice from memory.

Every size is built with random weights (the time does not depend on them) and timed on the
same 1024 x 1024 uint16 slice beside SAM's ``default`` and ``vit_t`` in the same run, one
thread; the median of ``--repeats`` runs after a warm-up, CPU time (``time.process_time``)
and wall time, and each model's embedding time relative to ``default``. ``track`` is one
memory-conditioned slice for one object (memory attention over the prompted slice and six
tracked ones, decoder, memory encoder), features cached.

    python benchmarks/bench_sam2.py [--models default vit_t sam2.1_hiera_tiny] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from bench_models import _timed  # the same median CPU / wall timing as the model table

from napari_sam.engine.predictor import SamPredictor
from napari_sam.engine.sam2_predictor import Sam2Predictor
from napari_sam.engine.sam2_video import Sam2Tracker
from napari_sam.models.build import MODEL_CONFIGS, build_sam
from napari_sam.models.sam2_configs import SAM2_CONFIGS, build_sam2


def _track_time(model, image, repeats: int) -> float:
    """CPU time of one tracked slice with a full memory bank (features cached)."""
    tracker = Sam2Tracker(model, 10, lambda i: image)
    tracker.add_prompt(1, 0, points=[(512, 512)])
    steps = iter(tracker.propagate(directions=("forward",)))
    for _ in range(8):  # the prompted slice, then seven tracked: the bank is full
        next(steps)
    times = []
    for _ in range(min(repeats, 2)):
        t = time.process_time()
        next(steps)
        times.append(time.process_time() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+",
                        default=["default", "vit_t", "sam2.1_hiera_tiny", "sam2.1_hiera_small"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    image = np.random.default_rng(0).integers(0, 4000, (1024, 1024), dtype=np.uint16)
    rows = {}
    for name in args.models:
        torch.manual_seed(0)
        if name in SAM2_CONFIGS:
            model = build_sam2(SAM2_CONFIGS[name])
            predictor = Sam2Predictor(model)
        else:
            model = build_sam(MODEL_CONFIGS[name])
            predictor = SamPredictor(model)
        with torch.inference_mode():
            cpu, wall = _timed(lambda p=predictor: p.set_image(image), args.repeats)
            track = _track_time(model, image, args.repeats) if name in SAM2_CONFIGS else None
        rows[name] = (cpu, wall, track)
        print(f"{name}: embed cpu {cpu:.2f} s, wall {wall:.2f} s"
              + ("" if track is None else f", track cpu {track:.2f} s"), flush=True)
    base = rows.get("default", next(iter(rows.values())))[0]
    print(f"\n{'model':24} {'embed cpu s':>11} {'wall s':>7} {'x default':>9} {'track cpu s':>11}")
    for name, (cpu, wall, track) in rows.items():
        t = "" if track is None else f"{track:11.2f}"
        print(f"{name:24} {cpu:11.2f} {wall:7.2f} {cpu / base:9.2f} {t}")


if __name__ == "__main__":
    main()
