"""Compare candidate weights on *tuning* images (never the evaluation sets' seeds).

The data a candidate model is chosen on: 12 held-out-look images (generator seeds 31337 and
31339, ``random_settings(held_out=True)``) and 4 train-like ones (31338), 512 x 512 px. For
each image: one-click and three-click mIoU with ``napari-sam evaluate`` (the paper's
protocol, zoom auto) and the F1 at IoU 0.5 of segment everything with the default
parameters. The images are written to OUT once and reused.

    nice python benchmarks/select_model.py --out /tmp/select default phase8.pt
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import tifffile
import torch

from napari_sam import build_model
from napari_sam.workflows.automatic import segment_everything
from napari_sam.evaluation.baselines import instance_metrics
from napari_sam.cli import main as cli
from napari_sam.data.synthetic import make_nuclei_2d, random_settings

#: (name, rng seed, held-out, images, first image seed)
SETS = (("held", 31337, True, 6, 40_000), ("train", 31338, False, 4, 40_000),
        ("heldB", 31339, True, 6, 42_000))


def tuning_set(root: Path, name: str, seed: int, held_out: bool, n: int,
               base: int) -> list[tuple[str, Path, Path]]:
    """``n`` images ``{name}0..`` with settings drawn from ``seed``; written to ``root`` once."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        settings = random_settings(rng, held_out=held_out)
        img_p, lab_p = root / f"{name}{i}_i.tif", root / f"{name}{i}_l.tif"
        if not img_p.exists():
            image, labels = make_nuclei_2d((512, 512), seed=base + i, settings=settings)
            tifffile.imwrite(img_p, image)
            tifffile.imwrite(lab_p, labels)
        out.append((f"{name}{i}", img_p, lab_p))
    return out


def tuning_images(root: Path) -> list[tuple[str, Path, Path]]:
    return [item for spec in SETS for item in tuning_set(root, *spec)]


def score(model_name: str, items, root: Path) -> dict[str, dict[str, float]]:
    model = build_model(model_name)
    res = {}
    for name, img_p, lab_p in items:
        js = root / "last.json"
        if cli(["evaluate", str(img_p), str(lab_p), "--clicks", "3", "--model", model_name,
                "--json", str(js)]) != 0:
            raise SystemExit(f"evaluate failed on {img_p}")
        d = json.loads(js.read_text())
        pred = segment_everything(model, tifffile.imread(img_p))
        f1 = instance_metrics(pred, tifffile.imread(lab_p))["f1_50"]
        res[name] = {"click1": d["miou"][0], "click3": d["miou"][2], "f1_50": f1,
                     "objects": d["n_objects"]}
        print(model_name, name, {k: round(v, 3) for k, v in res[name].items()}, flush=True)
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="registry names or checkpoint files")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    items = tuning_images(root)
    table = {m: score(m, items, root) for m in args.models}
    (root / "select.json").write_text(json.dumps(table, indent=1))
    print("\n| model | held-out (12): 1 click / 3 clicks / F1@0.5 | train-like (4) |")
    print("|---|---|---|")
    for m, res in table.items():
        cells = []
        for group in ("held", "train"):
            keys = [k for k in res if k.startswith(group)]
            cells.append(" / ".join(f"{np.mean([res[k][q] for k in keys]):.3f}"
                                    for q in ("click1", "click3", "f1_50")))
        print(f"| {m} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
