"""Score a model on held-out synthetic nuclei with `napari-sam evaluate`, beside the baseline.

Writes the images and labels it generates (seeds never used in training) into OUT/data, runs the
project's own evaluate command on each (points with N clicks, boxes, and the classical baseline),
and prints a markdown table of the mean over images. Three held-out sets:

- ``train-like``: the training distribution, unseen seeds;
- ``held-out``: the generator's held-out distribution (other PSF, texture, sizes, noise, camera);
- ``default``: the generator's default settings (the sample data's look).

    python benchmarks/evaluate_default_model.py --model default --out /tmp/eval [--n 6]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import tifffile

from napari_sam.cli import main as cli
from napari_sam.data.synthetic import make_nuclei_2d, random_settings

SETS = {
    "train-like": dict(held_out=False),
    "held-out": dict(held_out=True),
    "default": None,
}


def make_set(name: str, n: int, size: int, root: Path) -> list[tuple[Path, Path]]:
    out = []
    rng = np.random.default_rng({"train-like": 9001, "held-out": 9002, "default": 9003}[name])
    for i in range(n):
        settings = None if SETS[name] is None else random_settings(rng, **SETS[name])
        image, labels = make_nuclei_2d((size, size), seed=10_000 + i, settings=settings)
        img_p, lab_p = root / f"{name}_{i}_image.tif", root / f"{name}_{i}_labels.tif"
        tifffile.imwrite(img_p, image)
        tifffile.imwrite(lab_p, labels)
        out.append((img_p, lab_p))
    return out


def run(img: Path, lab: Path, extra: list[str], out: Path) -> dict:
    code = cli(["evaluate", str(img), str(lab), "--json", str(out), *extra])
    if code != 0:
        raise SystemExit(f"evaluate failed on {img}")
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--checkpoint")
    parser.add_argument("--out", required=True)
    parser.add_argument("--n", type=int, default=6, help="images per set")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--clicks", type=int, default=5)
    parser.add_argument("--sets", nargs="+", choices=list(SETS), default=list(SETS),
                        help="which sets to score (each has its own seeds; run them in parallel)")
    parser.add_argument("--raw-masks", action="store_true",
                        help="score the model's masks as decoded (evaluate --raw-masks)")
    args = parser.parse_args()
    root = Path(args.out)
    (root / "data").mkdir(parents=True, exist_ok=True)
    model_args = ["--model", args.model] + (["--checkpoint", args.checkpoint] if args.checkpoint else [])
    model_args += ["--raw-masks"] if args.raw_masks else []
    rows = {}
    for name in args.sets:
        pairs = make_set(name, args.n, args.size, root / "data")
        acc = {"point": [], "point_oracle": [], "box": [], "classical_point": [],
               "classical_box": [], "objects": 0}
        for i, (img, lab) in enumerate(pairs):
            r = run(img, lab, [*model_args, "--prompt", "point", "--clicks", str(args.clicks)],
                    root / f"{name}_{i}_point.json")
            acc["point"].append(r["miou"])
            acc["point_oracle"].append(r["miou_oracle"][0])
            acc["objects"] += r["n_objects"]
            r = run(img, lab, [*model_args, "--prompt", "box"], root / f"{name}_{i}_box.json")
            acc["box"].append(r["miou"][0])
            for prompt in ("point", "box"):
                r = run(img, lab, ["--model", "classical", "--prompt", prompt],
                        root / f"{name}_{i}_classical_{prompt}.json")
                acc[f"classical_{prompt}"].append(r["miou"][0])
        rows[name] = acc
    summary = {}
    print(f"\n| set | objects | 1 point | 1 point (oracle) | {args.clicks} clicks | box | "
          "classical point | classical box |")
    print("|---|---|---|---|---|---|---|---|")
    for name, acc in rows.items():
        pts = np.mean(acc["point"], axis=0)
        s = {
            "objects": acc["objects"], "point_per_click": pts.tolist(),
            "point_oracle": float(np.mean(acc["point_oracle"])), "box": float(np.mean(acc["box"])),
            "classical_point": float(np.mean(acc["classical_point"])),
            "classical_box": float(np.mean(acc["classical_box"])),
        }
        summary[name] = s
        print(f"| {name} | {s['objects']} | {pts[0]:.3f} | {s['point_oracle']:.3f} | "
              f"{pts[-1]:.3f} | {s['box']:.3f} | {s['classical_point']:.3f} | "
              f"{s['classical_box']:.3f} |")
    (root / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
