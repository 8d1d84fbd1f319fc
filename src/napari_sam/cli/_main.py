"""The ``napari-sam`` command line: headless segmentation and a launcher for the viewer.

Bad input (missing files, wrong shapes, unknown models, unreadable checkpoints) prints one line
``napari-sam: error: ...`` to stderr and exits with code 2; nothing is written half-way.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import numpy as np

from . import train_refiner as _cli_refiner
from . import stack as _cli_stack
from .text import add_text_args, run_text_segment
from ..data.io import InputError

__all__ = ["main"]

PROG = "napari-sam"


def _parse_box(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"box {text!r}: expected comma-separated numbers")
    if len(values) < 4:
        raise argparse.ArgumentTypeError(
            f"box {text!r}: expected [plane indices,] row0,col0,row1,col1"
        )
    return values


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default="default",
        help="registry name (see `napari-sam models`) or a checkpoint file (default: %(default)s)",
    )
    p.add_argument("--checkpoint", help="weights file for --model (overrides the registry's)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: best available)")
    p.add_argument("--no-refine", action="store_true",
                   help="keep SAM's upsampled masks: do not redraw them with the model's mask "
                        "refiner (the default model has one; see docs/default-model.md)")


def add_training_data_args(p: argparse.ArgumentParser, images_help: str) -> None:
    """``--synthetic`` or ``--images DIR`` (with ``--labels DIR``): what a training command
    learns from."""
    p.add_argument("--synthetic", action="store_true",
                   help="train on generated nuclei images (with --images: mixed with them)")
    p.add_argument("--images", help=images_help)
    p.add_argument("--labels", help="folder of label images with the same file names")
    p.add_argument("--real-fraction", type=float, default=0.5, metavar="F",
                   help="with --images and --synthetic: the fraction of training images drawn "
                        "from --images (default 0.5)")
    p.add_argument("--holdout-every", type=int, default=0, metavar="N",
                   help="leave out every N-th image of --images by sorted name (the 1st, the "
                        "N+1-th, ...): the validation split that `benchmarks/evaluate_real.py` "
                        "scores (0: train on all)")


def check_training_data_args(args) -> None:
    """One clear error for a training command's data options (see add_training_data_args)."""
    if not (args.synthetic or args.images):
        raise InputError("give --synthetic, --images DIR --labels DIR, or both")
    if args.images and not args.labels:
        raise InputError("--images needs --labels")
    if not 0.0 <= args.real_fraction <= 1.0:
        raise InputError(f"--real-fraction must be in [0, 1], got {args.real_fraction}")
    if args.holdout_every < 0 or args.holdout_every == 1:
        raise InputError(f"--holdout-every must be 0 or >= 2, got {args.holdout_every}")


def training_examples(args, images, labels, synthetic_stream, crop: int):
    """The training stream a command's data options ask for: the folder's crops, the generator,
    or both mixed at ``--real-fraction``."""
    from .. import training

    if not args.images:
        return synthetic_stream()
    real = training.folder_examples(images, labels, crop, args.seed)
    if not args.synthetic:
        return real
    return training.mixed_examples([real, synthetic_stream()],
                                   [args.real_fraction, 1.0 - args.real_fraction], args.seed)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Segment Anything for microscopy: headless segmentation and the napari plugin.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    seg = sub.add_parser(
        "segment",
        help="segment objects from point/box or text prompts and write a label image",
        description=(
            "Segment the objects given by point and box prompts. Points come from a CSV file "
            "(columns axis-0..axis-N as exported by napari's Points layer, or row,col / z,y,x; "
            "optional 'label' 1/0 and 'object' columns). Each --box is one object."
        ),
    )
    seg.add_argument("image", help="image file (.tif, .npy, .zarr, .png)")
    seg.add_argument("--points", help="CSV file of point prompts")
    seg.add_argument(
        "--box",
        action="append",
        type=_parse_box,
        default=[],
        metavar="[P,]R0,C0,R1,C1",
        help="a box prompt; for nD images the plane indices come first (repeatable)",
    )
    seg.add_argument("--out", required=True, help="output label image (.tif)")
    seg.add_argument("--rgb", action=argparse.BooleanOptionalAction, default=None,
                     help="treat the last axis as RGB (default: guessed from the shape)")
    seg.add_argument("--overwrite-objects", action="store_true",
                     help="let later objects take pixels of earlier ones")
    prop = seg.add_argument_group(
        "propagation",
        "Follow each prompted object along a leading axis of a stack (z or t), in both "
        "directions, until it ends; prompts of one object (same 'object' value in the CSV) on "
        "several planes are anchors, filled from both ends. See docs/propagation.md.")
    prop.add_argument("--propagate", type=int, metavar="AXIS", default=None,
                      help="propagate along this axis (0 for Z-Y-X; 0 or 1 for 4D T-Z-Y-X)")
    prop.add_argument("--time-axis", action="store_true",
                      help="the axis is time: no stop when a cell grows after shrinking")
    prop.add_argument("--max-slices", type=int, default=None, metavar="N",
                      help="at most N slices beyond the outermost prompts of each object")
    _add_model_args(seg)
    add_text_args(seg)

    sub.add_parser("models", help="list the model names the registry knows")

    ev = sub.add_parser(
        "evaluate",
        help="score a model with the paper's interactive protocol against ground-truth labels",
        description=(
            "First click at the point of each object farthest from its boundary (or the object's "
            "box); the multimask output with the highest predicted IoU is kept (the oracle is "
            "reported too); each further click at the centre of the larger error region, with "
            "all clicks so far and the previous logits as prompts. --model classical scores the "
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
    ev.add_argument("--raw-masks", action="store_true",
                    help="score the model's masks as decoded; by default each is cut to what "
                         "the prompt asked for (the box, the clicked pieces), as in the viewer")
    _add_model_args(ev)
    _cli_stack.add_evaluate_options(ev)
    _cli_stack.add_parsers(sub, _add_model_args)
    _cli_refiner.add_parser(sub, add_training_data_args)

    tr = sub.add_parser(
        "train",
        help="train or fine-tune a model with SAM's interactive training scheme",
        description=(
            "Train with simulated interactive prompts (a point or a noisy box, then corrective "
            "clicks from the error region with the previous mask fed back), focal + dice loss "
            "and the IoU head's MSE. Data: --synthetic microscopy, or your images and label "
            "images (--images DIR --labels DIR, files paired by name). Resumable: rerun the "
            "same command to continue from <out>.state.pt."
        ),
    )
    add_training_data_args(tr, "folder of images (.tif) to fine-tune on")
    tr.add_argument("--init", default="default",
                    help="model to start from: registry name or checkpoint (default: %(default)s)")
    tr.add_argument("--from-scratch", action="store_true",
                    help="random initial weights of the --init architecture")
    tr.add_argument("--img-size", type=int, default=None,
                    help="train at this model input size (position embedding resampled); the "
                         "output is converted back to the architecture's size")
    tr.add_argument("--crop", type=int, default=None,
                    help="image side for training crops (default: the input size)")
    tr.add_argument("--size-range", type=int, nargs=2, metavar=("MIN", "MAX"),
                    help="synthetic images of random sides in this range (resized to the input)")
    tr.add_argument("--size-log", action="store_true",
                    help="with --size-range: sides drawn log-uniformly (more small, magnified "
                         "images)")
    tr.add_argument("--ranges", choices=("v0.5", "v0.4", "mixed"), default="v0.5",
                    help="with --synthetic: the generator's training ranges (v0.4: those the "
                         "shipped default model was trained on; mixed: v0.4 or v0.5 by image)")
    tr.add_argument("--other-outputs-weight", type=float, default=0.0,
                    help="one-point prompts: also train the two multimask outputs that are not "
                         "the best, with this weight (0: the paper's best-only loss)")
    tr.add_argument("--stack-fraction", type=float, default=0.0,
                    help="with --synthetic: this fraction of the images are z slices of 3D "
                         "stacks (out-of-focus light of nuclei above and below)")
    tr.add_argument("--out", required=True, help="output weights file (.pt)")
    tr.add_argument("--steps", type=int, default=1000)
    tr.add_argument("--lr", type=float, default=4e-4)
    tr.add_argument("--warmup", type=int, default=100)
    tr.add_argument("--focal-ramp", type=int, default=300,
                    help="steps over which the focal:dice weight ramps from 1:1 to 20:1")
    tr.add_argument("--objects-per-image", type=int, default=6)
    tr.add_argument("--refine-rounds", type=int, default=3)
    tr.add_argument("--maskonly-rounds", type=int, default=1)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    tr.add_argument("--no-resume", action="store_true", help="ignore an existing <out>.state.pt")
    tr.add_argument("--log", help="write the training log (JSON lines) here")
    tr.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")

    view = sub.add_parser("view", help="open napari with the plugin docked on an image or sample")
    view.add_argument("image", nargs="?", help="image file; a synthetic sample if omitted")
    view.add_argument("--sample", default="nuclei_3d", choices=["nuclei_2d", "nuclei_3d"],
                      help="sample to open when no image is given (default: %(default)s)")
    view.add_argument("--model", default=None, help="model to preselect in the widget")
    _add_embed_parser(sub)
    return parser


def _load_model(args):
    from .. import build_model

    model = build_model(args.model, checkpoint=args.checkpoint, device=args.device)
    if getattr(args, "no_refine", False):
        model.mask_refiner = None
    return model


def _cmd_segment(args) -> int:
    from ..data.io import read_image, read_points_csv, write_labels
    from ..engine.predictor import SamPredictor
    from ..workflows.segment import ObjectPrompt, is_rgb, segment_objects, spatial_shape

    if args.text is not None:
        if args.propagate is not None:
            raise InputError("--propagate follows point and box prompts, not --text")
        return run_text_segment(args)
    if not args.points and not args.box:
        raise InputError("no prompts: give --points CSV and/or --box, or --text")
    image = read_image(args.image)
    rgb = is_rgb(image) if args.rgb is None else args.rgb
    shape = spatial_shape(image, rgb)
    if len(shape) < 2 or min(shape[-2:]) < 1:
        raise InputError(f"{args.image}: not an image with two spatial axes (shape {image.shape})")
    nlead = len(shape) - 2

    if args.propagate is not None and not 0 <= args.propagate < nlead:
        raise InputError(f"--propagate {args.propagate}: the image has {nlead} leading axis(es) "
                         f"before its Y-X planes (shape {image.shape}); give one of them")
    objects: list[ObjectPrompt] = []
    names: list[str] = []  # the CSV's 'object' value ("": one object per plane)
    if args.points:
        table = read_points_csv(args.points, len(shape))
        coords = table["coords"]
        planes = np.rint(coords[:, :nlead]).astype(int)
        groups: dict[tuple, list[int]] = {}
        for i, (plane, obj) in enumerate(zip(map(tuple, planes), table["objects"])):
            groups.setdefault((plane, obj), []).append(i)
        for (plane, obj), idx in groups.items():
            pts = coords[idx, nlead:]
            _check_inside(pts, shape[-2:], args.points)
            objects.append(ObjectPrompt(plane, points=pts, labels=table["labels"][idx]))
            names.append(obj)
    for box in args.box:
        if len(box) != 4 + nlead:
            raise InputError(
                f"--box needs {nlead} plane index(es) and 4 corners for a {len(shape)}D image"
            )
        plane = tuple(int(round(v)) for v in box[:nlead])
        corners = np.asarray(box[nlead:], dtype=float)
        _check_inside(corners.reshape(2, 2), shape[-2:], "--box")
        objects.append(ObjectPrompt(plane, box=corners))
        names.append("")
    for obj in objects:
        if any(not 0 <= p < n for p, n in zip(obj.plane, shape[:-2])):
            raise InputError(f"prompt on plane {obj.plane} is outside the image ({shape[:-2]})")

    model = _load_model(args)
    if args.propagate is not None:
        labels = _propagate_objects(model, image, rgb, objects, names, args)
    else:
        labels = segment_objects(
            SamPredictor(model), image, objects, rgb=rgb, overwrite=args.overwrite_objects
        )
    write_labels(args.out, labels)
    n = len(np.unique(labels)) - (1 if (labels == 0).any() else 0)
    print(f"wrote {args.out}: {n} object(s), shape {labels.shape}")
    return 0


def _propagate_objects(model, image, rgb: bool, objects, names: list[str], args) -> np.ndarray:
    """``segment --propagate``: each object followed along the axis from its prompted planes.

    Objects are the CSV's 'object' values (their prompts on several planes along the axis are
    anchors of one object), or one per plane and per box without that column. In 4D, each
    index of the other leading axis is a separate 3D run; an object keeps its label value in
    every one of them.
    """
    from ..workflows.propagation import PropagationParams, Seed, propagate_volume

    try:
        params = PropagationParams(max_slices=args.max_slices,
                                   **({"max_regrowth": None} if args.time_axis else {}))
    except ValueError as e:
        raise InputError(str(e)) from None
    axis = args.propagate
    ids: dict[tuple, int] = {}
    runs: dict[tuple, list] = {}  # the other leading indices -> seeds
    for k, (obj, name) in enumerate(zip(objects, names)):
        rest = obj.plane[:axis] + obj.plane[axis + 1:]
        key = (name,) if name else ("", k)
        oid = ids.setdefault(key, len(ids) + 1)
        runs.setdefault(rest, []).append(Seed(oid, obj.plane[axis], points=obj.points,
                                              labels=obj.labels, box=obj.box))
    out_shape = image.shape[:-1] if rgb else image.shape
    labels = np.zeros(out_shape, dtype=np.int32)
    total = len(runs)
    for n, (rest, seeds) in enumerate(runs.items(), start=1):
        index: list = list(rest)
        index.insert(axis, slice(None))  # the sub-volume: (N, H, W) along the axis
        sub = np.asarray(image[tuple(index)])

        def progress(done: int, of: int, n=n) -> None:
            if done == of or done % max(1, of // 10) == 0:
                print(f"\rpropagating (run {n}/{total}): {done}/{of} slices", end="",
                      file=sys.stderr, flush=True)

        labels[tuple(index)] = propagate_volume(model, sub, seeds, axis=0, params=params,
                                                progress=progress)
    print(file=sys.stderr)
    return labels


def _check_inside(points_rc: np.ndarray, hw: tuple[int, int], source: str) -> None:
    h, w = hw
    inside = (
        (points_rc[:, 0] >= -0.5) & (points_rc[:, 0] <= h - 0.5)
        & (points_rc[:, 1] >= -0.5) & (points_rc[:, 1] <= w - 0.5)
    )
    if not inside.all():
        bad = points_rc[~inside][0]
        raise InputError(f"{source}: prompt ({bad[0]:g}, {bad[1]:g}) is outside the {h}x{w} image")


def _cmd_models(args) -> int:
    from ..models.build import list_models

    for name in list_models():
        print(name)
    return 0


def _cmd_view(args) -> int:
    import napari

    from ..plugin._launch import launch

    launch(image_path=args.image, sample=args.sample, model=args.model)
    napari.run()
    return 0


def _cmd_evaluate(args) -> int:
    import json
    from pathlib import Path

    from ..data.io import read_image

    image, labels = read_image(args.image), read_image(args.labels)
    if args.clicks < 1:
        raise InputError("--clicks must be at least 1")
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
    if args.json and not Path(args.json).parent.exists():
        raise InputError(f"output directory does not exist: {Path(args.json).parent}")
    zoom: float | str = args.zoom
    if zoom is None:  # zoomed propagation was worse on held-out stacks (docs/propagation.md)
        zoom = "off" if args.propagate else "auto"
    if zoom == "off":
        zoom = 1.0
    elif zoom != "auto":
        try:
            zoom = float(zoom)
        except ValueError:
            zoom = 0.0
        if not zoom >= 1:
            raise InputError(f"--zoom must be 'auto', 'off' or a number >= 1, got {args.zoom!r}")
    if args.propagate or args.automatic:
        args.zoom = zoom
        return _cli_stack.evaluate(args, image, labels, _load_model)
    if args.model == "classical":
        from ..evaluation.baselines import evaluate_classical_interactive

        if args.clicks != 1:
            raise InputError("the classical baseline is scored with one click (--clicks 1)")
        result = evaluate_classical_interactive(image, labels, prompt=args.prompt, axis=args.axis)
        result["model"] = "classical"
    else:
        from ..evaluation.interactive import evaluate_image
        from ..engine.zoom import ZoomPredictor

        model = _load_model(args)
        result = evaluate_image(
            ZoomPredictor(model, zoom=zoom), image, labels, prompt=args.prompt,
            clicks=args.clicks, axis=args.axis, model_name=str(args.checkpoint or args.model),
            raw=args.raw_masks,
        )
        result["protocol"]["zoom"] = zoom
    miou = ", ".join(f"{v:.3f}" for v in result["miou"])
    print(f"{result['n_objects']} objects, mIoU per click: {miou}")
    if args.json:
        tmp = Path(args.json + ".part")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(args.json)
    return 0


def _read_pairs(images_dir: str, labels_dir: str | None, holdout_every: int = 0):
    from pathlib import Path

    from ..data.io import read_image
    from ..training.promptable import holdout_split

    if not labels_dir:
        raise InputError("--images needs --labels")
    img_dir, lab_dir = Path(images_dir), Path(labels_dir)
    for d in (img_dir, lab_dir):
        if not d.is_dir():
            raise InputError(f"not a folder: {d}")
    files = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in (".tif", ".tiff", ".npy"))
    if not files:
        raise InputError(f"no .tif or .npy images in {img_dir}")
    train_idx, _ = holdout_split([f.name for f in files], holdout_every)
    files = [files[i] for i in train_idx]
    images, labels = [], []
    for f in files:
        lab_path = lab_dir / f.name
        if not lab_path.exists():
            raise InputError(f"no label image {lab_path} for {f}")
        img, lab = read_image(f), read_image(lab_path)
        if lab.dtype.kind not in "iub":
            raise InputError(f"{lab_path}: labels must be integers, got {lab.dtype}")
        if img.shape[: lab.ndim] != lab.shape:
            raise InputError(f"{f} {img.shape} and {lab_path} {lab.shape} differ in shape")
        images.append(img)
        labels.append(lab)
    if not any(lab.any() for lab in labels):
        raise InputError(f"the label images in {lab_dir} contain no objects")
    return images, labels


def _cmd_train(args) -> int:
    import json
    from pathlib import Path

    import torch

    from .. import training
    from ..models.build import MODEL_CONFIGS, build_model, build_sam, resolve_model_name
    from ..models.device import resolve_device

    out = Path(args.out)
    if not out.parent.exists():
        raise InputError(f"output directory does not exist: {out.parent}")
    if not 0.0 <= args.stack_fraction <= 1.0:
        raise InputError(f"--stack-fraction must be in [0, 1], got {args.stack_fraction}")
    if not args.other_outputs_weight >= 0:
        raise InputError(f"--other-outputs-weight must be >= 0, got {args.other_outputs_weight}")
    if args.threads:
        torch.set_num_threads(args.threads)
    check_training_data_args(args)
    images = labels = None
    if args.images:
        images, labels = _read_pairs(args.images, args.labels, args.holdout_every)
    if args.from_scratch:
        config = MODEL_CONFIGS[resolve_model_name(args.init)]
        model = build_sam(config)
    else:
        model = build_model(args.init, device=args.device)
        from ..models.checkpoint import infer_model_type

        config = MODEL_CONFIGS[infer_model_type(model.state_dict()) or resolve_model_name(args.init)]
    model = model.to(resolve_device(args.device))
    final_size = model.img_size
    if args.img_size and args.img_size != final_size:
        model = training.with_input_size(model, config, args.img_size)
    crop = args.crop or model.img_size
    size_range = tuple(args.size_range) if args.size_range else None
    examples = training_examples(
        args, images, labels,
        lambda: training.synthetic_examples(args.seed, (crop, crop), size_range=size_range,
                                            stack_fraction=args.stack_fraction,
                                            size_log=args.size_log, ranges=args.ranges),
        crop)
    cfg = training.TrainConfig(
        steps=args.steps, lr=args.lr, warmup_steps=args.warmup, focal_ramp_steps=args.focal_ramp,
        objects_per_image=args.objects_per_image, refine_rounds=args.refine_rounds,
        maskonly_rounds=args.maskonly_rounds, seed=args.seed,
        other_outputs_weight=args.other_outputs_weight,
        extra={"init": args.init, "from_scratch": args.from_scratch, "img_size": model.img_size,
               "crop": crop, "size_range": args.size_range,
               "stack_fraction": args.stack_fraction, "size_log": args.size_log,
               "ranges": args.ranges,
               "synthetic": args.synthetic, "images": args.images,
               "real_fraction": args.real_fraction if args.images and args.synthetic else None,
               "holdout_every": args.holdout_every},
    )
    clock = {"t": time.monotonic()}

    def progress(step, total, stats):
        if step % 10 == 0 or step == total:
            rate = (time.monotonic() - clock["t"]) / 10
            clock["t"] = time.monotonic()
            print(f"step {step}/{total} loss {stats['loss']:.4f} iou(first) "
                  f"{stats['iou_first']:.3f} iou(last) {stats['iou_last']:.3f} "
                  f"{rate:.2f} s/step", flush=True)

    stage_out = out.with_name(out.name + ".stage.pt") if model.img_size != final_size else out
    log = training.train(model, examples, cfg, stage_out, resume=not args.no_resume,
                         progress=progress)
    if model.img_size != final_size:
        model = training.with_input_size(model, config, final_size)
        training.promptable._atomic_save(model.state_dict(), out)
    if args.log:
        Path(args.log).write_text("\n".join(json.dumps(e) for e in log) + "\n")
    print(f"wrote {out}")
    return 0


def _add_embed_parser(sub) -> None:
    emb = sub.add_parser(
        "embed",
        help="precompute the embeddings of every plane of an image into a zarr store",
        description=(
            "Embed every 2D plane of an image (TIFF, zarr, npy) into a zarr store that the "
            "plugin and later runs reuse. Resumable: rerun the same command to compute only the "
            "planes that are missing. A store computed from another image, model or "
            "normalisation is recreated. --scheduler spreads planes over a Dask cluster, "
            "--workers over a local one."
        ),
    )
    emb.add_argument("image", help="image file (.tif, .zarr, .npy)")
    emb.add_argument("--out", default=None,
                     help="embedding store to write (a .zarr folder); default: the automatic "
                          "store in the cache folder, where the napari plugin finds it")
    emb.add_argument("--axis", type=int, nargs="+", default=None, metavar="A",
                     help="the stack axes the planes are taken along (default: all but the last "
                          "two spatial axes)")
    emb.add_argument("--rgb", action=argparse.BooleanOptionalAction, default=None,
                     help="treat the last axis as RGB (default: guessed from the shape)")
    emb.add_argument("--intensity-range", type=float, nargs=2, metavar=("LOW", "HIGH"),
                     help="normalisation range (default: robust percentiles of the whole image)")
    where = emb.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDRESS",
                       help="Dask scheduler address (e.g. tcp://host:8786) to spread planes over")
    where.add_argument("--workers", type=int, metavar="N",
                       help="start a local Dask cluster of N worker processes")
    _add_model_args(emb)


def _plane_axes(stack_axes: list[int] | None, ndim: int) -> tuple[int, int]:
    if stack_axes is None:
        return (ndim - 2, ndim - 1)
    norm = set()
    for a in stack_axes:
        if not -ndim <= a < ndim:
            raise InputError(f"--axis {a} is out of range for an image with {ndim} spatial axes")
        norm.add(a % ndim)
    rest = [a for a in range(ndim) if a not in norm]
    if len(rest) != 2:
        raise InputError(
            f"--axis {' '.join(map(str, stack_axes))} leaves {len(rest)} plane axes of {ndim}; "
            "give all the axes but two"
        )
    return (rest[0], rest[1])


def _cmd_embed(args) -> int:
    import dataclasses
    from pathlib import Path

    from ..engine.cluster import EmbedJob, make_embedder, precompute_distributed
    from ..data.io import open_image_lazy
    from ..workflows.segment import is_rgb

    if args.workers is not None and args.workers < 1:
        raise InputError("--workers must be at least 1")
    out = Path(args.out).expanduser() if args.out else None
    if out is not None and not out.parent.exists():
        raise InputError(f"output directory does not exist: {out.parent}")
    if args.intensity_range and not args.intensity_range[1] > args.intensity_range[0]:
        raise InputError("--intensity-range: HIGH must be larger than LOW")
    image = open_image_lazy(args.image)
    rgb = is_rgb(image) if args.rgb is None else args.rgb
    spatial = tuple(image.shape[:-1] if rgb else image.shape)
    if len(spatial) < 2 or min(spatial) < 1:
        raise InputError(f"{args.image}: not an image with two spatial axes (shape {image.shape})")
    axes = _plane_axes(args.axis, len(spatial))

    model = _load_model(args)
    model_path = Path(args.model).expanduser()
    is_file = model_path.exists()
    job = EmbedJob(
        image=str(Path(args.image).expanduser().resolve()),
        store=str(out.resolve()) if out is not None else "auto",
        model=str(model_path.resolve()) if is_file else args.model,
        checkpoint=str(Path(args.checkpoint).expanduser().resolve()) if args.checkpoint else None,
        device=args.device,
        axes=axes,
        rgb=bool(rgb),
        intensity_range=tuple(args.intensity_range) if args.intensity_range else None,
        model_name=model_path.name if is_file else (
            f"{args.model}+{Path(args.checkpoint).name}" if args.checkpoint else args.model),
    )
    embedder = make_embedder(job, model)
    total = embedder.n_planes
    print(f"{args.image}: {total} plane(s) of {embedder.original_size[0]}x"
          f"{embedder.original_size[1]} along axes {axes}; hashing the image...", flush=True)
    store = embedder.store
    out = store.path
    if store.status == "reused":
        print(f"{out}: reusing the store, {store.n_done}/{total} plane(s) already done")
    elif store.status == "recreated":
        print(f"{out}: recreated ({store.reason})")
    job = dataclasses.replace(
        job, store=str(store.path), intensity_range=embedder.intensity_range,
        fingerprint=embedder.fingerprint,
    )
    todo = embedder.missing()
    already = total - len(todo)
    clock = {"t": 0.0}

    def progress(done: int, n: int) -> None:
        now = time.monotonic()
        if done == n or now - clock["t"] >= 2.0:
            clock["t"] = now
            print(f"embedded {already + done}/{total} planes", flush=True)

    start = time.monotonic()
    if args.scheduler or args.workers:
        from distributed import Client, LocalCluster

        if args.scheduler:
            with Client(args.scheduler) as client:
                computed = precompute_distributed(client, job, todo, progress=progress)
        else:
            with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                              dashboard_address=None) as cluster, Client(cluster) as client:
                computed = precompute_distributed(client, job, todo, progress=progress)
    else:
        computed = embedder.precompute(todo, progress=progress)
    elapsed = time.monotonic() - start
    print(f"wrote {out}: {computed} plane(s) computed in {elapsed:.1f} s, "
          f"{store.n_done}/{total} done")
    return 0 if store.n_done == total else 1


COMMANDS = {
    "segment": _cmd_segment,
    "models": _cmd_models,
    "view": _cmd_view,
    "train": _cmd_train,
    "evaluate": _cmd_evaluate,
    "automatic": lambda args: _cli_stack.cmd_automatic(args, _load_model),
    "embed": _cmd_embed,
    "train-refiner": _cli_refiner.command,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``napari-sam`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from .. import __version__

        print(__version__)
        return 0
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except (InputError, ValueError, FileNotFoundError, OSError, RuntimeError) as exc:
        # One line for the user; the class name helps when reporting a bug.
        msg = " ".join(str(exc).split()) or type(exc).__name__
        print(f"{PROG}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
