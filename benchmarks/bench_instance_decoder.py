"""Segment everything in decoder mode, the instance decoder before and after a commit, as ratios.

Decoder mode (the default of ``napari-sam automatic`` and the viewer since v0.13) embeds the
slice (or its 2 x 2 zoomed crops), runs the instance decoder once per embedding and splits the
foreground by a seeded watershed. This script times it on 1024 x 1024 slices tiled from four
512 x 512 crops of BBBC039 validation images (the slices of ``bench_click_and_automatic.py``),
with the default model's instance decoder as it was at commit ``--before`` (its module read with
``git show``, so run this in a git checkout; the same weights) and as it is now, alternating
run by run in this process. It prints, per slice, the best and median CPU seconds of each
(``time.process_time``, one thread), their ratio, a decoder pass alone (one 64 x 64 embedding),
the F1@0.5 of both segmentations against the ground truth and the largest difference between
the two decoders' outputs.

    OMP_NUM_THREADS=1 python benchmarks/bench_instance_decoder.py [--before 3d4035c]
        [--repeats 5] [--slices 1] [--data ../shared/data/bbbc039]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_click_and_automatic import _module_at, tiled, validation_pairs

from napari_sam import build_model
from napari_sam.evaluation.baselines import instance_metrics
from napari_sam.workflows.instance_decoder import segment_everything

REPO = Path(__file__).resolve().parents[1]


def old_decoder(new: torch.nn.Module, before: str) -> torch.nn.Module:
    """The decoder module of ``before`` with ``new``'s weights."""
    mod = _module_at(before, "src/napari_sam/modeling/instance_decoder.py",
                     "napari_sam.modeling._instance_decoder_before")
    old = mod.InstanceDecoder.from_state_dict(new.state_dict())
    return old.eval()


def cpu_seconds(fn, repeats: int) -> tuple[list[float], object]:
    out, times = None, []
    for _ in range(repeats):
        t = time.process_time()
        out = fn()
        times.append(time.process_time() - t)
    return times, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/bbbc039")
    parser.add_argument("--before", default="3d4035c", help="commit of the old decoder module")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--slices", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = build_model("default")
    new = model.instance_decoder
    old = old_decoder(new, args.before)
    decoders = {"old": old, "new": new}

    x = torch.randn(1, new.embed_dim, 64, 64)
    with torch.inference_mode():
        diff = float((old(x) - new(x)).abs().max())
        passes = {k: [] for k in decoders}
        for _ in range(args.repeats):
            for name, dec in decoders.items():
                passes[name].append(cpu_seconds(lambda d=dec: d(x), 1)[0][0])
    print(f"decoder pass (1 x {new.embed_dim} x 64 x 64 -> 3 x 512 x 512), best CPU s: "
          f"old {min(passes['old']):.3f}, new {min(passes['new']):.3f}, "
          f"old / new {min(passes['old']) / min(passes['new']):.2f}; "
          f"largest output difference {diff:.2e}\n")

    pairs = validation_pairs(args.data)
    print("| slice | nuclei | old best s | old median s | new best s | new median s | "
          "old / new (best) | F1@0.5 old | F1@0.5 new |")
    print("|---|---|---|---|---|---|---|---|---|")
    for k in range(args.slices):
        group = pairs[4 * k:4 * k + 4]
        if len(group) < 4:
            break
        img, gt = tiled(group)
        segment_everything(model, img[:600, :600])  # warm-up
        times = {k: [] for k in decoders}
        result = {}
        for _ in range(args.repeats):
            for name, dec in decoders.items():
                model.instance_decoder = dec
                t, result[name] = cpu_seconds(lambda im=img: segment_everything(model, im), 1)
                times[name] += t
        model.instance_decoder = new
        f1 = {k: instance_metrics(v, gt)["f1_50"] for k, v in result.items()}
        best = {k: min(v) for k, v in times.items()}
        med = {k: float(np.median(v)) for k, v in times.items()}
        print(f"| {k} | {len(np.unique(gt)) - 1} | {best['old']:.2f} | {med['old']:.2f} | "
              f"{best['new']:.2f} | {med['new']:.2f} | {best['old'] / best['new']:.2f} | "
              f"{f1['old']:.3f} | {f1['new']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
