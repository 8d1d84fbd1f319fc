"""``napari-sam evaluate``: score a model against ground-truth labels, with the paper's
interactive protocol, or (``--propagate``, ``--automatic``) propagation and automatic
segmentation."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from typing import Any

import numpy as np

from ..data.files import atomic_write_text
from ..data.io import read_image
from . import _common
from ._common import InputError


def register(sub) -> None:
    """Add the ``evaluate`` command to ``sub`` (the parser's sub-parsers)."""
    ev = sub.add_parser(
        "evaluate",
        help="score a model with the paper's interactive protocol against ground-truth labels",
        description=(
            "First click at the point of each object farthest from its boundary (or the object's "
            "box); the multimask output with the highest predicted IoU is kept (the oracle, the "
            "best of the candidates, is reported too); each further click at the centre of the "
            "larger error region, with all clicks so far and the previous logits as prompts. "
            "--model classical scores the "
            "classical baseline (threshold + watershed, 1 click) in the same format."
        ),
    )
    ev.add_argument("image", help="image file (.tif, .npy)")
    ev.add_argument("labels", help="ground-truth label image with the image's spatial shape")
    ev.add_argument("--prompt", choices=["point", "box"], default="point")
    ev.add_argument("--clicks", type=int, default=1, help="interactions per object")
    ev.add_argument("--axis", type=int, default=None,
                    help="for 3D labels: evaluate each 2D slice along this axis")
    ev.add_argument("--json", help="write the results here (JSON)")
    ev.add_argument("--zoom", default=None,
                    help="decode small objects in magnified crops: 'auto' (from the objects' "
                         "size per slice), 'off', or a magnification >= 1 (default: auto for "
                         "clicks and boxes, off for --propagate)")
    ev.add_argument("--oracle", choices=["first", "every"], default="first",
                    help="score the oracle (best true IoU of the candidates) for the first "
                         "prompt only, as the paper does, or after every click (slower)")
    ev.add_argument("--snap", action=argparse.BooleanOptionalAction, default=None,
                    help="snap each mask to the objects of the model's instance decoder, as "
                         "the viewer's 'snap to objects' does (napari_sam.workflows.snap; "
                         "default: on for a model with an instance decoder, such as the "
                         "default model, unless --raw-masks)")
    ev.add_argument("--raw-masks", action="store_true",
                    help="score the model's masks as decoded; by default each is cut to what "
                         "the prompt asked for (the box, the clicked pieces), as in the viewer")
    _common.add_model_args(ev)
    mode = ev.add_mutually_exclusive_group()
    mode.add_argument(
        "--propagate", action="store_true",
        help="3D: one point per object (farthest from its boundary, on the slice where the "
             "object is largest), propagated along --axis; reports miou_3d",
    )
    ev.add_argument("--outline", choices=["half_max", "model"], default="half_max",
                    help="--propagate: redraw each object at its half-maximum outline (the "
                         "default, docs/propagation.md) or keep the model's masks")
    ev.add_argument("--outline-level", type=float, default=None, metavar="F",
                    help="--propagate: where that outline lies, in (0, 1) of each object's "
                         "brightness above its background (default: by the object's size)")
    mode.add_argument(
        "--automatic", action="store_true",
        help="score automatic segmentation (F1 at IoU 0.5, mean accuracy over IoU 0.5..0.95) "
             "beside the classical baseline",
    )
    ev.add_argument("--mode", choices=["auto", "points", "decoder"], default="auto",
                    help="--automatic: the model's instance decoder or SAM's point prompts, as "
                         "`napari-sam automatic --mode` (auto, the default: the decoder when "
                         "the model has one, as the viewer and `automatic` do)")
    _common.add_automatic_options(ev)
    ev.set_defaults(handler=run)


def run(args) -> int:
    """Run ``evaluate``; returns the exit code. Bad input raises :class:`InputError`."""
    _common.check_outputs([("--json", args.json)],
                          [("input image", args.image), ("labels image", args.labels),
                           *_common.model_inputs(args)])
    image, labels = read_image(args.image), read_image(args.labels)
    _check_inputs(args, image, labels)
    zoom = _zoom(args)
    if args.propagate:
        result = _evaluate_propagation(args, image, labels, zoom)
        print(f"{result['n_objects']} objects, miou_3d {result['miou_3d']:.3f}")
    elif args.automatic:
        result = _evaluate_automatic(args, image, labels)
        line = ", ".join(
            f"{name}: F1@0.5 {r['f1_50']:.3f}, mean accuracy {r['mean_accuracy']:.3f}"
            for name, r in result["methods"].items()
        )
        print(f"{result['n_true']} objects; {line}")
    else:
        result = _evaluate_interactive(args, image, labels, zoom)
        miou = ", ".join(f"{v:.3f}" for v in result["miou"])
        print(f"{result['n_objects']} objects, mIoU per click: {miou}")
    _write_json(args.json, result)
    return 0


def _check_inputs(args, image: np.ndarray, labels: np.ndarray) -> None:
    if args.clicks < 1:
        raise InputError("--clicks must be at least 1")
    if args.mode != "auto" and not args.automatic:
        raise InputError(f"--mode {args.mode} chooses how --automatic segments: add --automatic")
    if args.propagate or args.automatic:
        other = "--propagate" if args.propagate else "--automatic"
        if args.snap:  # (None, the default, is fine)
            raise InputError(f"--snap applies to clicks and boxes, not to {other}")
        if args.oracle != "first":
            raise InputError(f"--oracle applies to clicks and boxes, not to {other}")
    if labels.dtype.kind not in "iub":
        raise InputError(f"{args.labels}: labels must be integers, got {labels.dtype}")
    if image.shape[: labels.ndim] != labels.shape:
        raise InputError(
            f"image {image.shape} and labels {labels.shape} differ in shape"
        )
    if not labels.any():
        raise InputError(f"{args.labels}: the label image contains no objects")
    if labels.ndim == 3 and args.axis is None and image.ndim == 3 and image.shape[-1] not in (3, 4):
        raise InputError("3D labels: choose the slicing axis with --axis")
    if args.json:
        _common.check_out_dir(args.json)


def _zoom(args) -> float | str:
    """``--zoom`` as "auto" or a magnification >= 1."""
    zoom: float | str = args.zoom
    if zoom is None:  # zoomed propagation was worse on held-out stacks (docs/propagation.md)
        zoom = "off" if args.propagate else "auto"
    if zoom == "off":
        return 1.0
    if zoom == "auto":
        return zoom
    try:
        zoom = float(zoom)
    except ValueError:
        zoom = 0.0
    if not zoom >= 1:
        raise InputError(f"--zoom must be 'auto', 'off' or a number >= 1, got {args.zoom!r}")
    return zoom


def _write_json(path: str | None, result: dict[str, Any]) -> None:
    """Write ``result`` to ``path`` (if given) whole or not at all."""
    if path:
        atomic_write_text(path, json.dumps(result, indent=1))


def _evaluate_interactive(args, image, labels, zoom: float | str) -> dict[str, Any]:
    """The paper's protocol: clicks or boxes, then corrective clicks; or the classical
    baseline."""
    if args.model == "classical":
        from ..evaluation.baselines import evaluate_classical_interactive  # scipy, skimage

        if args.clicks != 1:
            raise InputError("the classical baseline is scored with one click (--clicks 1)")
        result = evaluate_classical_interactive(image, labels, prompt=args.prompt, axis=args.axis)
        result["model"] = "classical"
        return result
    # torch: only when a model is scored
    from ..engine.zoom import ZoomPredictor
    from ..evaluation.interactive import evaluate_image

    model = _common.load_model(args)
    predictor = ZoomPredictor(model, zoom=zoom)
    snap = args.snap
    if snap is None:  # as the viewer: on where the model has an instance decoder
        from ..workflows.instance_decoder import has_instance_decoder

        snap = has_instance_decoder(model) and not args.raw_masks
    if snap:
        from ..workflows.snap import SnapPredictor

        try:
            predictor = SnapPredictor(predictor)
        except ValueError as err:
            raise InputError(f"--snap: {err}") from None
    result = evaluate_image(
        predictor, image, labels, prompt=args.prompt,
        clicks=args.clicks, axis=args.axis, model_name=str(args.checkpoint or args.model),
        raw=args.raw_masks, oracle=args.oracle,
    )
    result["protocol"]["zoom"] = zoom
    result["protocol"]["snap"] = bool(snap)
    return result


def _evaluate_propagation(args, image, labels, zoom: float | str) -> dict[str, Any]:
    """``evaluate --propagate``: one point per object, propagated along ``--axis``."""
    from ..evaluation.propagation import evaluate_propagation  # torch

    if labels.ndim != 3:
        raise InputError(f"--propagate needs 3D labels, got shape {labels.shape}")
    if args.axis is None:
        raise InputError("--propagate: choose the propagation axis with --axis")
    if args.model == "classical":
        raise InputError("--propagate evaluates a SAM model, not the classical baseline")
    if args.clicks != 1 or args.prompt != "point":
        raise InputError("--propagate uses one point per object (no --clicks / --prompt box)")
    from ..workflows.propagation import PropagationParams

    try:
        params = PropagationParams(outline=args.outline, outline_level=args.outline_level)
    except ValueError as e:
        raise InputError(str(e)) from None
    model = _common.load_model(args)
    return evaluate_propagation(model, image, labels, axis=args.axis, zoom=zoom, params=params,
                                model_name=str(args.checkpoint or args.model))


def _classical_labels(image: np.ndarray, axis: int | None, link_overlap: float) -> np.ndarray:
    from ..evaluation.baselines import classical_instances
    from ..workflows.automatic import link_slices

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


def _evaluate_automatic(args, image, labels) -> dict[str, Any]:
    """``evaluate --automatic``: automatic segmentation beside the classical baseline."""
    # torch, scipy, skimage: only for this mode
    from ..evaluation.baselines import instance_metrics
    from ..workflows.automatic import AutomaticParams
    from .automatic import segmenter

    if args.clicks != 1 or args.prompt != "point":
        raise InputError("--automatic takes no --clicks / --prompt")
    if labels.ndim == 3 and args.axis is None:
        raise InputError("3D labels: choose the slicing axis with --axis")
    if labels.ndim == 2 and args.axis is not None:
        raise InputError(f"--axis {args.axis} given for 2D labels")
    if labels.ndim not in (2, 3):
        raise InputError(f"labels must be 2D or 3D, got shape {labels.shape}")
    classical = args.model == "classical"
    params = AutomaticParams() if classical else _common.automatic_params(args)
    methods: dict[str, dict] = {}
    mode = None
    if not classical:
        model = _common.load_model(args)
        mode, segment, params = segmenter(args, model, params)
        pred = segment(model, image, axis=args.axis, params=params)
        methods[str(args.checkpoint or args.model)] = instance_metrics(pred, labels)
    methods["classical"] = instance_metrics(
        _classical_labels(image, args.axis, params.link_overlap), labels
    )
    return {
        "n_true": int(next(iter(methods.values()))["n_true"]),
        "methods": methods,
        "mode": mode,
        "params": {f.name: getattr(params, f.name) for f in fields(params)},
        "axis": args.axis,
        "classical": "Gaussian + Li threshold + distance-transform watershed "
                     "(napari_sam.evaluation.baselines.classical_instances)",
    }
