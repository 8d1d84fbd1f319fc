"""Embedding time of every model architecture on this CPU: one 1024 x 1024 slice, one thread.

Each architecture of the registry is built with random weights (the time does not depend on
them; micro-sam's models are SAM's architectures, so ``vit_b_lm`` costs what ``vit_b`` does) and
``SamPredictor.set_image`` is timed on the same 1024 x 1024 uint16 slice; the median of
``--repeats`` runs after one warm-up is reported, in CPU time (``time.process_time``, which a
shared machine disturbs less than wall time) and wall time. With ``--decoder``, micro-sam's
instance decoder (one pass on the embedding, outputs resized to the slice) and the watershed
are timed too. The table ends with each model's time relative to ``default``.

    python benchmarks/bench_models.py [--models default vit_t vit_b] [--threads 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from napari_sam.engine.predictor import SamPredictor
from napari_sam.modeling.instance_decoder import InstanceDecoder
from napari_sam.models.build import MODEL_CONFIGS, build_sam
from napari_sam.workflows.instance_decoder import decoder_outputs, instances_from_outputs


def _timed(fn, repeats: int) -> tuple[float, float]:
    fn()  # warm-up
    cpu, wall = [], []
    for _ in range(repeats):
        c, w = time.process_time(), time.perf_counter()
        fn()
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
    return statistics.median(cpu), statistics.median(wall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["default", "vit_t", "vit_b"],
                        help="architectures to time (registry names; vit_l, vit_h are slow)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=1024, help="side of the slice (pixels)")
    parser.add_argument("--decoder", action="store_true",
                        help="also time micro-sam's instance decoder and the watershed")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 4000, (args.size, args.size), dtype=np.uint16)
    rows = {}
    for name in args.models:
        torch.manual_seed(0)
        model = build_sam(MODEL_CONFIGS[name])
        predictor = SamPredictor(model)
        cpu, wall = _timed(lambda p=predictor: p.set_image(image), args.repeats)
        row = {"embed_cpu": cpu, "embed_wall": wall}
        if args.decoder:
            model.instance_decoder = InstanceDecoder(model.prompt_encoder.embed_dim).eval()
            emb = predictor.embedding
            row["decoder"] = _timed(lambda m=model, e=emb: decoder_outputs(m, e),
                                    args.repeats)[0]
            maps = decoder_outputs(model, emb)
            row["watershed"] = _timed(lambda m=maps: instances_from_outputs(*m),
                                      args.repeats)[0]
        rows[name] = row
        print(f"{name}: {row}", flush=True)
    base = rows.get("default", next(iter(rows.values())))["embed_cpu"]
    print(f"\n{args.size} px slice, {args.threads} thread(s), median of {args.repeats}:")
    head = "model      embed CPU s  wall s   x default"
    print(head + ("  decoder s  watershed s" if args.decoder else ""))
    for name, r in rows.items():
        line = f"{name:<10} {r['embed_cpu']:>11.2f}  {r['embed_wall']:>6.2f}  {r['embed_cpu'] / base:>9.1f}"
        if args.decoder:
            line += f"  {r['decoder']:>9.2f}  {r['watershed']:>11.2f}"
        print(line)


if __name__ == "__main__":
    main()
