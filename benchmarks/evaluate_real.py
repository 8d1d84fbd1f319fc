"""Score a model on the real validation split (BBBC039 nuclei) with `napari-sam evaluate`.

The validation images are every ``--holdout-every``-th image of the data folder by sorted name
(:func:`napari_sam.training.holdout_split`, the split that ``napari-sam train --holdout-every 4``
leaves out); ``--n`` keeps the first N of them, and images without objects are skipped. Per image:

- interactive: the project's evaluate command with a point prompt and ``--clicks K`` (its
  ``miou`` lists the mean IoU after 1, 2, ... K clicks), with a box prompt, and with
  ``--model classical`` for both prompts (the classical baseline's instance under the click /
  in the box);
- area check: for every ground-truth object the one-click mask as the viewer shows it
  (:meth:`ZoomPredictor.segment` at the protocol's first click, zoom 'auto' like evaluate),
  and the ratio of its area to the object's; the same for the classical instance under the
  click. Its IoU is checked against evaluate's first-click IoU of the same object;
- segment everything: ``evaluate --automatic`` (the ``automatic`` command's segmentation with
  its default parameters, scored by :func:`~napari_sam.evaluation.baselines.instance_metrics`
  beside the classical baseline ``classical_instances``): F1 at IoU 0.5 and the mean
  segmentation accuracy TP / (TP + FP + FN) over IoU 0.5, 0.55, ..., 0.95.

It prints two markdown tables: pooled over objects (automatic: TP/FP/FN summed over images), and
the mean over images; the median area ratio is over all objects in both. Everything, per image
too, goes to OUT/summary.json (each evaluate JSON to OUT/json/).

    python benchmarks/evaluate_real.py --model default --out /tmp/real [--checkpoint PATH]
        [--n N] [--clicks 3] [--data ../shared/data/bbbc039] [--holdout-every 4] [--threads 1]
        [--snap | --no-snap]

Clicks and boxes are scored as ``napari-sam evaluate`` scores them by default: snapped to the
instance decoder's objects (:mod:`napari_sam.workflows.snap`) when the model has one (the
default model since v0.18); ``--no-snap`` scores SAM's masks alone, ``--snap`` asks for
snapping explicitly. The rest is unchanged.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from napari_sam import build_model
from napari_sam.cli import main as cli
from napari_sam.data.io import read_image
from napari_sam.engine.zoom import ZoomPredictor
from napari_sam.evaluation.baselines import classical_instances
from napari_sam.evaluation.interactive import farthest_point, ground_truth_objects, mask_iou
from napari_sam.training import holdout_split
from napari_sam.workflows.instance_decoder import has_instance_decoder


def validation_pairs(data: Path, every: int, n: int | None) -> list[tuple[Path, Path]]:
    """The validation split's (image, labels) files with at least one object, in sorted order."""
    names = sorted(p.name for p in (data / "images").iterdir()
                   if p.suffix.lower() in (".tif", ".tiff", ".npy"))  # as training does
    _, val = holdout_split(names, every)
    pairs = [(data / "images" / names[i], data / "labels" / names[i]) for i in val]
    pairs = [(img, lab) for img, lab in pairs if read_image(lab).any()]
    return pairs[:n] if n else pairs


def evaluate(img: Path, lab: Path, extra: list[str], out: Path) -> dict:
    """One run of ``napari-sam evaluate IMAGE LABELS --json OUT *extra``; its JSON result."""
    code = cli(["evaluate", str(img), str(lab), "--json", str(out), *extra])
    if code != 0:
        raise SystemExit(f"evaluate {' '.join(extra)} failed on {img}")
    return json.loads(out.read_text())


def area_ratios(predictor: ZoomPredictor, image: np.ndarray, labels: np.ndarray) -> dict:
    """Predicted / true area of each object's one-click mask, for the model and the baseline.

    Parameters
    ----------
    predictor : ZoomPredictor
        Decodes as ``napari-sam evaluate`` does (zoom 'auto', masks cut to the prompted pieces).
    image, labels : numpy.ndarray, shape (H, W)

    Returns
    -------
    dict
        Lists over the objects of :func:`ground_truth_objects` (evaluate's order): ``model``,
        ``classical`` (area ratios) and ``iou`` (the model mask's IoU, to compare with
        evaluate's first-click IoU).
    """
    predictor.set_image(image)
    instances = classical_instances(image)
    out: dict[str, list[float]] = {"model": [], "classical": [], "iou": []}
    for obj in ground_truth_objects(labels):
        gt = obj.mask(labels.shape)
        point = farthest_point(gt)
        mask, _, _ = predictor.segment(np.array([point], float), np.array([1]))
        hit = instances[point]
        out["model"].append(np.count_nonzero(mask) / obj.area)
        out["classical"].append(np.count_nonzero(instances == hit) / obj.area if hit else 0.0)
        out["iou"].append(mask_iou(mask, gt))
    return out


def score_image(img: Path, lab: Path, args, predictor: ZoomPredictor, root: Path) -> dict:
    """All numbers of one image (see the module docstring)."""
    model = ["--model", args.model] + (["--checkpoint", args.checkpoint] if args.checkpoint else [])
    stem = img.stem
    times, r = {}, {}

    def timed(key, fn):
        t = time.perf_counter()
        r[key] = fn()
        times[key] = round(time.perf_counter() - t, 1)

    snap = {None: [], True: ["--snap"], False: ["--no-snap"]}[args.snap]
    timed("point", lambda: evaluate(img, lab, [*model, *snap, "--clicks", str(args.clicks)],
                                    root / f"{stem}_point.json"))
    timed("box", lambda: evaluate(img, lab, [*model, *snap, "--prompt", "box"],
                                  root / f"{stem}_box.json"))
    for prompt in ("point", "box"):
        timed(f"classical_{prompt}", lambda p=prompt: evaluate(
            img, lab, ["--model", "classical", "--prompt", p], root / f"{stem}_classical_{p}.json"))
    timed("automatic", lambda: evaluate(img, lab, [*model, "--automatic"],
                                        root / f"{stem}_automatic.json"))
    timed("area", lambda: area_ratios(predictor, read_image(img), read_image(lab)))
    first = [o["iou"][0] for o in r["point"]["per_object"]]
    r["area"]["iou_max_diff_vs_evaluate"] = float(np.max(np.abs(np.subtract(first, r["area"]["iou"]))))
    auto = r["automatic"]["methods"]
    return {
        "image": img.name, "n_objects": r["point"]["n_objects"], "seconds": times,
        "point": [o["iou"] for o in r["point"]["per_object"]],
        "box": [o["iou"][0] for o in r["box"]["per_object"]],
        "classical_point": [o["iou"][0] for o in r["classical_point"]["per_object"]],
        "classical_box": [o["iou"][0] for o in r["classical_box"]["per_object"]],
        "area": r["area"],
        "automatic": {"model": auto[next(k for k in auto if k != "classical")],
                      "classical": auto["classical"]},
    }


def pooled_automatic(per_image: list[dict], which: str) -> dict:
    """F1@0.5 and mean accuracy from TP/FP/FN summed over images, per IoU threshold."""
    tp, fp, fn = (np.sum([p["automatic"][which][k] for p in per_image], axis=0)
                  for k in ("tp", "fp", "fn"))
    return {"f1_50": float(2 * tp[0] / max(2 * tp[0] + fp[0] + fn[0], 1)),
            "mean_accuracy": float(np.mean(tp / np.maximum(tp + fp + fn, 1)))}


def average(per_image: list[dict], key: str, pooled: bool):
    """Mean IoU of ``key`` (per click for "point"): over all objects, or mean of image means."""
    vals = [np.array(p[key]) for p in per_image]
    if pooled:
        return np.concatenate(vals).mean(axis=0).tolist()
    return np.mean([v.mean(axis=0) for v in vals], axis=0).tolist()


def automatic(per_image: list[dict], which: str, pooled: bool) -> dict:
    """Automatic F1@0.5 and mean accuracy: from summed TP/FP/FN, or mean of image scores."""
    if pooled:
        return pooled_automatic(per_image, which)
    return {k: float(np.mean([p["automatic"][which][k] for p in per_image]))
            for k in ("f1_50", "mean_accuracy")}


def summarize(per_image: list[dict]) -> dict:
    """Pooled-over-objects and mean-over-images numbers for the model and the baseline."""
    out = {}
    for how, pooled in (("pooled", True), ("per_image_mean", False)):
        out[how] = {}
        for which, point, box in (("model", "point", "box"),
                                  ("classical", "classical_point", "classical_box")):
            per_click = average(per_image, point, pooled)
            auto = automatic(per_image, which, pooled)
            out[how][which] = {
                "point_per_click": per_click if which == "model" else [per_click],
                "box": average(per_image, box, pooled),
                "automatic_f1_50": auto["f1_50"],
                "automatic_mean_accuracy": auto["mean_accuracy"],
            }
    for which in ("model", "classical"):
        ratios = np.concatenate([p["area"][which] for p in per_image])
        q = np.percentile(ratios, [25, 50, 75]).tolist()
        out["area_ratio_" + which] = {"q25": q[0], "median": q[1], "q75": q[2]}
    out["n_images"] = len(per_image)
    out["n_objects"] = int(sum(p["n_objects"] for p in per_image))
    out["iou_max_diff_vs_evaluate"] = max(p["area"]["iou_max_diff_vs_evaluate"] for p in per_image)
    return out


def table(summary: dict, how: str, clicks: int, model_name: str) -> str:
    """One markdown table: the model's row and the classical baseline's."""
    head = [f"{k} click{'s' * (k > 1)} mIoU" for k in range(1, clicks + 1)]
    lines = ["| method | " + " | ".join(head) + " | box mIoU | median area ratio (1 click) | "
             "automatic F1@0.5 | automatic mSA |", "|---" * (clicks + 5) + "|"]
    for which, name in (("model", model_name), ("classical", "classical baseline")):
        s = summary[how][which]
        clicks_ = [f"{v:.3f}" for v in s["point_per_click"]] + ["-"] * (clicks - 1) * (which != "model")
        area = summary["area_ratio_" + which]["median"]
        lines.append(f"| {name} | " + " | ".join(clicks_) + f" | {s['box']:.3f} | {area:.3f} | "
                     f"{s['automatic_f1_50']:.3f} | {s['automatic_mean_accuracy']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--checkpoint")
    parser.add_argument("--out", required=True)
    parser.add_argument("--n", type=int, default=None, help="first N validation images (default all)")
    parser.add_argument("--clicks", type=int, default=3)
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "bbbc039"),
                        help="the real data folder (images/, labels/); default ../shared/data/bbbc039")
    parser.add_argument("--holdout-every", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--snap", action=argparse.BooleanOptionalAction, default=None,
                        help="clicks and boxes snapped to the instance decoder's objects "
                             "(default: as evaluate, on for models with one)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    root = Path(args.out)
    (root / "json").mkdir(parents=True, exist_ok=True)
    pairs = validation_pairs(Path(args.data), args.holdout_every, args.n)
    model = build_model(args.model, checkpoint=args.checkpoint)
    predictor = ZoomPredictor(model, zoom="auto")
    if args.snap or (args.snap is None and has_instance_decoder(model)):
        from napari_sam.workflows.snap import SnapPredictor

        predictor = SnapPredictor(predictor)
    per_image = []
    start = time.perf_counter()
    for i, (img, lab) in enumerate(pairs, start=1):
        t = time.perf_counter()
        per_image.append(score_image(img, lab, args, predictor, root / "json"))
        p = per_image[-1]
        print(f"[{i}/{len(pairs)}] {img.name}: {p['n_objects']} objects, "
              f"{time.perf_counter() - t:.0f} s ({p['seconds']}), "
              f"1-click mIoU {np.mean([v[0] for v in p['point']]):.3f}, "
              f"total {time.perf_counter() - start:.0f} s", flush=True)
    summary = summarize(per_image)
    name = str(args.checkpoint or args.model)
    text = (f"\n{summary['n_images']} validation images, {summary['n_objects']} objects "
            f"(every {args.holdout_every}th of {args.data} by name)\n\nPooled over objects "
            f"(automatic: TP/FP/FN summed over images):\n\n{table(summary, 'pooled', args.clicks, name)}"
            f"\n\nMean over images:\n\n{table(summary, 'per_image_mean', args.clicks, name)}\n\n"
            "median area ratio: median over all objects of predicted / true area of the 1-click mask"
            f"; largest |IoU - evaluate's first-click IoU| {summary['iou_max_diff_vs_evaluate']:.2g}")
    print(text)
    (root / "summary.json").write_text(json.dumps(
        {"args": vars(args), "summary": summary, "per_image": per_image}, indent=1))


if __name__ == "__main__":
    main()
