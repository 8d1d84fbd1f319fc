"""Where the real-data error is: per-object IoU by object size, from evaluate JSON files.

Reads the per-object results that ``benchmarks/evaluate_real.py --out DIR`` leaves in
``DIR/json`` (``<image>_point.json`` from ``--clicks K`` and ``<image>_box.json``; the files of
``napari-sam evaluate ... --json`` named that way work too) for one or more runs, and the label
images they were scored on, and prints for each run the mean IoU after 1 and K clicks and with
a box: over all objects, by the side of the object's bounding box, and without the smallest
objects (``--small``), so that one can see how much of the gap to a target a few objects make.
Only objects present in every run are compared.

    python benchmarks/errors_by_size.py --labels ../shared/data/bbbc039/labels \\
        v0.13=/tmp/real-v013/json real8=/tmp/real-real8/json [--small 8]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy import ndimage

from napari_sam.data.io import read_image

#: Bounding-box sides (px) of the size classes printed.
EDGES = (0, 8, 12, 20, 30, 40, 10**6)


def load_run(folder: Path) -> dict[tuple[str, int], tuple[float, float, float]]:
    """``{(image, object id): (1 click, last click, box)}`` from one run's JSON files."""
    out = {}
    for point in sorted(folder.glob("*_point.json")):
        stem = point.name[: -len("_point.json")]
        box_file = folder / f"{stem}_box.json"
        if not box_file.exists():
            continue
        boxes = {o["id"]: o["iou"][0] for o in json.loads(box_file.read_text())["per_object"]}
        for o in json.loads(point.read_text())["per_object"]:
            if o["id"] in boxes:
                out[(stem, o["id"])] = (o["iou"][0], o["iou"][-1], boxes[o["id"]])
    return out


def box_sides(labels_dir: Path, keys) -> dict[tuple[str, int], int]:
    """The longer side (px) of each object's bounding box in its label image."""
    sides = {}
    for stem in sorted({k[0] for k in keys}):
        found = list(labels_dir.glob(f"{stem}.*"))
        if not found:
            raise SystemExit(f"no label image named {stem}.* in {labels_dir}")
        slices = ndimage.find_objects(read_image(found[0]))
        for key in keys:
            if key[0] == stem and key[1] <= len(slices) and slices[key[1] - 1] is not None:
                s = slices[key[1] - 1]
                sides[key] = max(s[0].stop - s[0].start, s[1].stop - s[1].start)
    return sides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="NAME=FOLDER of evaluate JSON files")
    parser.add_argument("--labels", type=Path, required=True)
    parser.add_argument("--small", type=int, default=8,
                        help="objects whose bounding box side is below this are 'small'")
    args = parser.parse_args()
    runs = {}
    for spec in args.runs:
        name, _, folder = spec.partition("=")
        runs[name] = load_run(Path(folder or name))
    keys = sorted(set.intersection(*(set(r) for r in runs.values())))
    if not keys:
        raise SystemExit("no object is in every run")
    sides = box_sides(args.labels, keys)
    keys = [k for k in keys if k in sides]
    side = np.array([sides[k] for k in keys])
    small = side < args.small
    print(f"{len(keys)} objects; {int(small.sum())} with a bounding box side under {args.small} px")
    print("\n| run | objects | 1 click | last click | box |")
    print("|---|---|---|---|---|")
    for name, run in runs.items():
        iou = np.array([run[k] for k in keys])
        rows = [("all", np.ones(len(keys), bool)), (f"side >= {args.small} px", ~small)]
        rows += [(f"side {lo}-{hi} px" if hi < 10**6 else f"side >= {lo} px",
                  (side >= lo) & (side < hi)) for lo, hi in zip(EDGES[:-1], EDGES[1:])]
        for what, sel in rows:
            if sel.any():
                a, b, c = iou[sel].mean(axis=0)
                print(f"| {name}: {what} | {int(sel.sum())} | {a:.3f} | {b:.3f} | {c:.3f} |")


if __name__ == "__main__":
    main()
