"""One-click quality by how much the model's resize magnifies the image, with `napari-sam evaluate`.

SAM resizes every slice's longer side to its input size (512 px for the default model), so a
small image, a crop a user opens, or a crop that zoomed decoding cuts out is magnified: a 96 px
image 5.3x, a 160 px image 3.2x. This script generates train-like synthetic images (generator
seeds never used in training) at several sides, the same settings at every side, and scores
one click per object with the project's evaluate command, zoom off, for each model given:

    python benchmarks/evaluate_magnification.py --out /tmp/mag default /path/to/other.pt

It prints a markdown table: mean over images of the one-click mIoU per side.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import tifffile

from napari_sam.cli import main as cli
from napari_sam.data.synthetic import make_nuclei_2d, random_settings

SEED = 1234  # draws the generator settings; images use seeds 70000 + i


def make_images(sides: list[int], n: int, root: Path) -> dict[int, list[tuple[Path, Path]]]:
    rng = np.random.default_rng(SEED)
    out: dict[int, list[tuple[Path, Path]]] = {side: [] for side in sides}
    for i in range(n):
        settings = random_settings(rng)
        for side in sides:
            image, labels = make_nuclei_2d((side, side), seed=70_000 + i, settings=settings)
            if not labels.any():
                continue
            paths = root / f"{side}_{i}_image.tif", root / f"{side}_{i}_labels.tif"
            tifffile.imwrite(paths[0], image)
            tifffile.imwrite(paths[1], labels)
            out[side].append(paths)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="registry names or checkpoint files")
    parser.add_argument("--out", required=True)
    parser.add_argument("--n", type=int, default=6, help="images per side")
    parser.add_argument("--sides", type=int, nargs="+", default=[96, 160, 256, 512])
    args = parser.parse_args()
    root = Path(args.out)
    (root / "data").mkdir(parents=True, exist_ok=True)
    images = make_images(args.sides, args.n, root / "data")
    rows = {}
    for k, model in enumerate(args.models):
        model_args = (["--checkpoint", model] if Path(model).is_file() else ["--model", model])
        rows[model] = {}
        for side, pairs in images.items():
            scores = []
            for i, (img, lab) in enumerate(pairs):
                out = root / f"m{k}_{side}_{i}.json"
                code = cli(["evaluate", str(img), str(lab), *model_args, "--zoom", "off",
                            "--json", str(out)])
                if code != 0:
                    raise SystemExit(f"evaluate failed on {img}")
                scores.append(json.loads(out.read_text())["miou"][0])
            rows[model][side] = float(np.mean(scores))
    print("\n| model | " + " | ".join(f"{s} px" for s in args.sides) + " |")
    print("|---|" + "---|" * len(args.sides))
    for model, by_side in rows.items():
        print(f"| {model} | " + " | ".join(f"{by_side[s]:.3f}" for s in args.sides) + " |")
    (root / "summary.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
