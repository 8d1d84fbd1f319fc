"""The command-line parts of propagation and automatic segmentation (used by :mod:`.cli`).

``napari-sam automatic IMAGE --out LABELS.tif [--axis 0]`` and the ``--propagate`` /
``--automatic`` modes of ``napari-sam evaluate``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from ..data.io import InputError


def _number_or_off(text: str) -> float | str:
    """A number, or "off" (the step is skipped: the parameter becomes None)."""
    if text.strip().lower() == "off":
        return "off"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'off', got {text!r}") from None


#: AutomaticParams fields exposed as options: (field, type, help).
_AUTOMATIC_OPTIONS = [
    ("point_source", str, "where the point prompts go: blobs, grid or blobs+grid"),
    ("blob_threshold", float, "blobs: response threshold in robust standard deviations"),
    ("points_per_side", int, "grid points per side"),
    ("points_per_batch", int, "points decoded together"),
    ("pred_iou_thresh", float, "keep masks with at least this predicted IoU"),
    ("stability_score_thresh", float, "keep masks with at least this stability score"),
    ("box_nms_thresh", float, "box IoU above which the lower-scoring mask is dropped"),
    ("min_area", int, "remove objects and islands smaller than this (pixels)"),
    ("max_hole_area", int, "fill holes up to this many pixels"),
    ("crop_n_layers", int, "also segment 2x2 (4x4...) overlapping crops for small objects"),
    ("link_overlap", float, "stacks: overlap (of the smaller) linking masks of neighbour slices"),
    ("part_score_margin", _number_or_off, "drop masks that are parts of a larger convex mask "
                                          "scoring at most this much lower; 'off' keeps parts"),
    ("merge_solidity", _number_or_off, "merge touching objects whose union fills at least this "
                                       "fraction of its convex hull; 'off' never merges"),
]


def _add_automatic_options(p: argparse.ArgumentParser) -> None:
    for name, typ, text in _AUTOMATIC_OPTIONS:
        p.add_argument("--" + name.replace("_", "-"), type=typ, default=None,
                       help=f"{text} (default: see docs/automatic.md)")


def _automatic_params(args):
    from ..workflows.automatic import AutomaticParams

    kwargs = {
        name: getattr(args, name)
        for name, _, _ in _AUTOMATIC_OPTIONS
        if getattr(args, name, None) is not None
    }
    kwargs.update({name: None for name, value in kwargs.items() if value == "off"})
    try:
        return AutomaticParams(**kwargs)
    except ValueError as e:
        raise InputError(str(e)) from None


def add_parsers(sub, add_model_args) -> None:
    """Add the ``automatic`` command."""
    au = sub.add_parser(
        "automatic",
        help="segment everything (no prompts) and write an instance label image",
        description=(
            "SAM's automatic mode: a grid of point prompts, multimask output, filtering by "
            "predicted IoU and stability, non-maximum suppression, small regions and holes "
            "removed. For a stack, each slice along --axis is segmented and the objects of "
            "neighbouring slices are linked into 3D objects by overlap."
        ),
    )
    au.add_argument("image", help="image file: 2D (Y, X), RGB (Y, X, 3) or a stack (Z, Y, X)")
    au.add_argument("--out", required=True, help="output label image (.tif)")
    au.add_argument("--axis", type=int, default=None, help="slicing axis of a stack")
    au.add_argument("--slices", default=None, metavar="START:STOP",
                    help="only these slices along --axis (Python range, e.g. 4:10)")
    au.add_argument("--no-link", action="store_true",
                    help="stacks: do not link objects across slices (every 2D object its own id)")
    _add_automatic_options(au)
    add_model_args(au)


def add_evaluate_options(ev: argparse.ArgumentParser) -> None:
    """The ``--propagate`` and ``--automatic`` modes of ``evaluate``."""
    mode = ev.add_mutually_exclusive_group()
    mode.add_argument(
        "--propagate", action="store_true",
        help="3D: one point per object (farthest from its boundary, on the slice where the "
             "object is largest), propagated along --axis; reports miou_3d",
    )
    mode.add_argument(
        "--automatic", action="store_true",
        help="score automatic segmentation (F1 at IoU 0.5, mean accuracy over IoU 0.5..0.95) "
             "beside the classical baseline",
    )
    _add_automatic_options(ev)


def _write_json(path: str | None, result: dict[str, Any]) -> None:
    if path:
        tmp = Path(path + ".part")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(path)


def _parse_slices(text: str | None, n: int) -> range | None:
    if text is None:
        return None
    try:
        parts = [int(v) if v.strip() else None for v in text.split(":")]
        if len(parts) != 2:
            raise ValueError
    except ValueError:
        raise InputError(f"--slices {text!r}: expected START:STOP, e.g. 4:10") from None
    r = range(n)[slice(*parts)]
    if len(r) == 0:
        raise InputError(f"--slices {text!r} selects no slice of {n}")
    return r


def cmd_automatic(args, load_model) -> int:
    from ..workflows.automatic import segment_everything_nd
    from ..data.io import read_image, write_labels
    from ..workflows.segment import is_rgb, spatial_shape

    image = read_image(args.image)
    rgb = is_rgb(image) and image.ndim == (3 if args.axis is None else 4)
    shape = spatial_shape(image, rgb)
    if len(shape) == 2:
        if args.axis is not None:
            raise InputError(f"--axis {args.axis} given for a 2D image {image.shape}")
        if args.slices:
            raise InputError("--slices needs a stack")
    elif len(shape) == 3:
        if args.axis is None:
            raise InputError(f"{args.image} is a stack {image.shape}: choose the slicing axis "
                             "with --axis")
        if not -3 <= args.axis < 3:
            raise InputError(f"--axis {args.axis} is out of range for a 3D stack")
    else:
        raise InputError(
            f"{args.image}: expected a 2D image or a 3D stack, got shape {image.shape}"
        )
    if min(shape) < 1:
        raise InputError(f"{args.image}: empty image {image.shape}")
    out_dir = Path(args.out).parent
    if not out_dir.exists():
        raise InputError(f"output directory does not exist: {out_dir}")
    params = _automatic_params(args)
    indices = None if args.axis is None else _parse_slices(args.slices, shape[args.axis])
    model = load_model(args)
    labels = segment_everything_nd(model, image, axis=args.axis, indices=indices, params=params,
                                   link_3d=not args.no_link)
    write_labels(args.out, labels)
    n = int(labels.max())
    print(f"wrote {args.out}: {n} object(s), shape {labels.shape}")
    return 0


def evaluate(args, image: np.ndarray, labels: np.ndarray, load_model) -> int:
    """``evaluate --propagate`` or ``evaluate --automatic``."""
    if args.propagate:
        result = _evaluate_propagation(args, image, labels, load_model)
        print(f"{result['n_objects']} objects, miou_3d {result['miou_3d']:.3f}")
    else:
        result = _evaluate_automatic(args, image, labels, load_model)
        line = ", ".join(
            f"{name}: F1@0.5 {r['f1_50']:.3f}, mean accuracy {r['mean_accuracy']:.3f}"
            for name, r in result["methods"].items()
        )
        print(f"{result['n_true']} objects; {line}")
    _write_json(args.json, result)
    return 0


def _evaluate_propagation(args, image, labels, load_model) -> dict[str, Any]:
    from ..workflows.propagation import evaluate_propagation

    if labels.ndim != 3:
        raise InputError(f"--propagate needs 3D labels, got shape {labels.shape}")
    if args.axis is None:
        raise InputError("--propagate: choose the propagation axis with --axis")
    if args.model == "classical":
        raise InputError("--propagate evaluates a SAM model, not the classical baseline")
    if args.clicks != 1 or args.prompt != "point":
        raise InputError("--propagate uses one point per object (no --clicks / --prompt box)")
    model = load_model(args)
    return evaluate_propagation(model, image, labels, axis=args.axis, zoom=args.zoom,
                                model_name=str(args.checkpoint or args.model))


def _classical_labels(image: np.ndarray, axis: int | None, link_overlap: float) -> np.ndarray:
    from ..workflows.automatic import link_slices
    from ..evaluation.baselines import classical_instances

    if axis is None:
        return classical_instances(image)
    moved = np.moveaxis(image, axis, 0)
    per = np.zeros(moved.shape[:3], dtype=np.int32)
    offset = 0
    for i, plane in enumerate(moved):
        lab = classical_instances(plane)
        per[i] = np.where(lab > 0, lab + offset, 0)
        offset += int(lab.max())
    return np.moveaxis(link_slices(per, link_overlap), 0, axis)


def _evaluate_automatic(args, image, labels, load_model) -> dict[str, Any]:
    from ..workflows.automatic import AutomaticParams, segment_everything_nd
    from ..evaluation.baselines import instance_metrics

    if args.clicks != 1 or args.prompt != "point":
        raise InputError("--automatic takes no --clicks / --prompt")
    if labels.ndim == 3 and args.axis is None:
        raise InputError("3D labels: choose the slicing axis with --axis")
    if labels.ndim == 2 and args.axis is not None:
        raise InputError(f"--axis {args.axis} given for 2D labels")
    if labels.ndim not in (2, 3):
        raise InputError(f"labels must be 2D or 3D, got shape {labels.shape}")
    params = _automatic_params(args) if args.model != "classical" else AutomaticParams()
    methods: dict[str, dict] = {}
    if args.model != "classical":
        model = load_model(args)
        pred = segment_everything_nd(model, image, axis=args.axis, params=params)
        methods[str(args.checkpoint or args.model)] = instance_metrics(pred, labels)
    methods["classical"] = instance_metrics(
        _classical_labels(image, args.axis, params.link_overlap), labels
    )
    p = {f.name: getattr(params, f.name) for f in fields(params)}
    return {
        "n_true": int(next(iter(methods.values()))["n_true"]),
        "methods": methods,
        "params": p,
        "axis": args.axis,
        "classical": "Gaussian + Li threshold + distance-transform watershed "
                     "(napari_sam.evaluation.baselines.classical_instances)",
    }
