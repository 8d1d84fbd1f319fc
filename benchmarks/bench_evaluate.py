"""Time of the interactive evaluation, object by object (old) and batched (new), in one run.

``napari-sam evaluate``'s protocol (point prompt, ``--clicks`` clicks, zoom 'auto', masks cut to
the prompted pieces) on one image, with the default model on ``--threads`` threads. The old path
decodes each object's clicks one ``predict`` call at a time; the new one decodes all objects of
the slice together, once per click (:mod:`napari_sam.evaluation.batched`), and is also run with
the oracle scored after every click (``--oracle every``, which upsamples and refines the three
candidates at every click; the default scores it for the first prompt only). All start from a
fresh predictor, so all embed the slice (or its zoomed crops). Prints the seconds of each (wall clock and this process's
CPU time), their ratios, the mean IoU per
click, and how far the per-object IoUs differ (batched arithmetic rounds differently, which can
flip a pixel at a mask's edge and, rarely, move a later click).

The image is the first validation image of BBBC039 (``napari_sam.training.holdout_split`` of the
sorted names, every 4th) when ``--data`` holds it, else a synthetic 512 x 512 slice of about 125
nuclei (``--synthetic`` forces it).

    OMP_NUM_THREADS=1 python benchmarks/bench_evaluate.py [--data ../shared/data/bbbc039]
        [--clicks 5] [--threads 1] [--synthetic] [--max-objects N]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from napari_sam import build_model
from napari_sam.engine.zoom import ZoomPredictor
from napari_sam.evaluation.interactive import evaluate_image, ground_truth_objects


def load_image(data: Path, synthetic: bool) -> tuple[np.ndarray, np.ndarray, str]:
    """``(image, labels, description)``: BBBC039's first validation image, or a synthetic one."""
    images = data / "images"
    if not synthetic and images.is_dir():
        from napari_sam.data.io import read_image
        from napari_sam.training import holdout_split

        names = sorted(p.name for p in images.iterdir()
                       if p.suffix.lower() in (".tif", ".tiff", ".npy"))
        _, val = holdout_split(names, 4)
        for i in val:
            labels = read_image(data / "labels" / names[i])
            if labels.any():
                return read_image(images / names[i]), labels, f"BBBC039 validation {names[i]}"
    from napari_sam.data.synthetic import SyntheticSettings, make_nuclei_2d

    settings = SyntheticSettings(n_objects=(125, 125), radius_range=(8.0, 12.0))
    image, labels = make_nuclei_2d((512, 512), seed=0, settings=settings)
    return image, labels, "synthetic 512 x 512 nuclei"


def keep_first(labels: np.ndarray, n: int | None) -> np.ndarray:
    """The labels with only the first ``n`` objects of the protocol's order."""
    if not n:
        return labels
    out = np.zeros_like(labels)
    for obj in ground_truth_objects(labels)[:n]:
        out[obj.window][obj.crop] = obj.id
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/bbbc039"))
    parser.add_argument("--synthetic", action="store_true")
    parser.add_argument("--clicks", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-objects", type=int, default=None,
                        help="evaluate only the first N objects (a quicker run)")
    parser.add_argument("--prompt", choices=["point", "box"], default="point")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    image, labels, what = load_image(args.data, args.synthetic)
    labels = keep_first(labels, args.max_objects)
    model = build_model("default")
    n = len(ground_truth_objects(labels))
    print(f"{what}: {image.shape}, {n} objects, {args.clicks} clicks, prompt {args.prompt}, "
          f"{args.threads} thread(s)")
    results, seconds, cpu = {}, {}, {}
    runs = (("object by object", False, "first"), ("batched, oracle every", True, "every"),
            ("batched", True, "first"))
    for name, batched, oracle in runs:
        predictor = ZoomPredictor(model, zoom="auto")
        start, start_cpu = time.perf_counter(), time.process_time()
        results[name] = evaluate_image(predictor, image, labels, prompt=args.prompt,
                                       clicks=args.clicks, batched=batched, oracle=oracle)
        seconds[name] = time.perf_counter() - start
        cpu[name] = time.process_time() - start_cpu
        miou = ", ".join(f"{v:.4f}" for v in results[name]["miou"])
        print(f"{name:>21}: {seconds[name]:6.1f} s wall, {cpu[name]:6.1f} s CPU  "
              f"(zoom {predictor.zoom:.2f})  mIoU per click {miou}")
    old, new = (np.array([o["iou"] for o in results[k]["per_object"]])
                for k in ("object by object", "batched"))
    old_o, new_o = (np.array([o["iou_oracle"] for o in results[k]["per_object"]])
                    for k in ("object by object", "batched"))
    every = np.array([o["iou"] for o in results["batched, oracle every"]["per_object"]])
    diff = np.abs(old - new).max(axis=1)
    for name in ("object by object", "batched, oracle every"):
        print(f"ratio {name} / batched: {seconds[name] / seconds['batched']:.2f}x wall, "
              f"{cpu[name] / cpu['batched']:.2f}x CPU")
    print("(on a busy machine CPU time is the steadier measure); the oracle at every click "
          f"keeps the same masks: max |IoU difference| {np.abs(every - new).max():.2e}")
    print(f"per-object IoU, |old - new| over all clicks: max {diff.max():.2e}, objects identical "
          f"{int((diff == 0).sum())} / {len(diff)}, above 0.01: {int((diff > 0.01).sum())}; "
          f"oracle max {np.abs(old_o - new_o).max():.2e}")


if __name__ == "__main__":
    main()
