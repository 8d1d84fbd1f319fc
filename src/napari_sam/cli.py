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

from .io import InputError

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Segment Anything for microscopy: headless segmentation and the napari plugin.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    seg = sub.add_parser(
        "segment",
        help="segment objects from point/box prompts and write a label image",
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
    _add_model_args(seg)

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
    _add_model_args(ev)

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
    src = tr.add_mutually_exclusive_group(required=True)
    src.add_argument("--synthetic", action="store_true", help="train on generated nuclei images")
    src.add_argument("--images", help="folder of images (.tif) to fine-tune on")
    tr.add_argument("--labels", help="folder of label images with the same file names")
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
    return parser


def _load_model(args):
    from . import build_model

    return build_model(args.model, checkpoint=args.checkpoint, device=args.device)


def _cmd_segment(args) -> int:
    from .io import read_image, read_points_csv, write_labels
    from .predictor import SamPredictor
    from .segment import ObjectPrompt, is_rgb, segment_objects, spatial_shape

    if not args.points and not args.box:
        raise InputError("no prompts: give --points CSV and/or --box")
    image = read_image(args.image)
    rgb = is_rgb(image) if args.rgb is None else args.rgb
    shape = spatial_shape(image, rgb)
    if len(shape) < 2 or min(shape[-2:]) < 1:
        raise InputError(f"{args.image}: not an image with two spatial axes (shape {image.shape})")
    nlead = len(shape) - 2

    objects: list[ObjectPrompt] = []
    if args.points:
        table = read_points_csv(args.points, len(shape))
        coords = table["coords"]
        planes = np.rint(coords[:, :nlead]).astype(int)
        groups: dict[tuple, list[int]] = {}
        for i, (plane, obj) in enumerate(zip(map(tuple, planes), table["objects"])):
            groups.setdefault((plane, obj), []).append(i)
        for (plane, _), idx in groups.items():
            pts = coords[idx, nlead:]
            _check_inside(pts, shape[-2:], args.points)
            objects.append(ObjectPrompt(plane, points=pts, labels=table["labels"][idx]))
    for box in args.box:
        if len(box) != 4 + nlead:
            raise InputError(
                f"--box needs {nlead} plane index(es) and 4 corners for a {len(shape)}D image"
            )
        plane = tuple(int(round(v)) for v in box[:nlead])
        corners = np.asarray(box[nlead:], dtype=float)
        _check_inside(corners.reshape(2, 2), shape[-2:], "--box")
        objects.append(ObjectPrompt(plane, box=corners))
    for obj in objects:
        if any(not 0 <= p < n for p, n in zip(obj.plane, shape[:-2])):
            raise InputError(f"prompt on plane {obj.plane} is outside the image ({shape[:-2]})")

    model = _load_model(args)
    labels = segment_objects(
        SamPredictor(model), image, objects, rgb=rgb, overwrite=args.overwrite_objects
    )
    write_labels(args.out, labels)
    n = len(np.unique(labels)) - (1 if (labels == 0).any() else 0)
    print(f"wrote {args.out}: {n} object(s), shape {labels.shape}")
    return 0


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
    from .build import list_models

    for name in list_models():
        print(name)
    return 0


def _cmd_view(args) -> int:
    import napari

    from .plugin._launch import launch

    launch(image_path=args.image, sample=args.sample, model=args.model)
    napari.run()
    return 0


def _cmd_evaluate(args) -> int:
    import json
    from pathlib import Path

    from .io import read_image

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
    if args.model == "classical":
        from .baselines import evaluate_classical_interactive

        if args.clicks != 1:
            raise InputError("the classical baseline is scored with one click (--clicks 1)")
        result = evaluate_classical_interactive(image, labels, prompt=args.prompt, axis=args.axis)
        result["model"] = "classical"
    else:
        from .evaluation import evaluate_image
        from .predictor import SamPredictor

        model = _load_model(args)
        result = evaluate_image(
            SamPredictor(model), image, labels, prompt=args.prompt, clicks=args.clicks,
            axis=args.axis, model_name=str(args.checkpoint or args.model),
        )
    miou = ", ".join(f"{v:.3f}" for v in result["miou"])
    print(f"{result['n_objects']} objects, mIoU per click: {miou}")
    if args.json:
        tmp = Path(args.json + ".part")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(args.json)
    return 0


def _read_pairs(images_dir: str, labels_dir: str | None):
    from pathlib import Path

    from .io import read_image

    if not labels_dir:
        raise InputError("--images needs --labels")
    img_dir, lab_dir = Path(images_dir), Path(labels_dir)
    for d in (img_dir, lab_dir):
        if not d.is_dir():
            raise InputError(f"not a folder: {d}")
    files = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in (".tif", ".tiff", ".npy"))
    if not files:
        raise InputError(f"no .tif or .npy images in {img_dir}")
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

    from . import training
    from .build import MODEL_CONFIGS, build_model, build_sam, resolve_model_name
    from .device import resolve_device

    out = Path(args.out)
    if not out.parent.exists():
        raise InputError(f"output directory does not exist: {out.parent}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.images:
        images, labels = _read_pairs(args.images, args.labels)
    if args.from_scratch:
        config = MODEL_CONFIGS[resolve_model_name(args.init)]
        model = build_sam(config)
    else:
        model = build_model(args.init, device=args.device)
        from .checkpoint import infer_model_type

        config = MODEL_CONFIGS[infer_model_type(model.state_dict()) or resolve_model_name(args.init)]
    model = model.to(resolve_device(args.device))
    final_size = model.img_size
    if args.img_size and args.img_size != final_size:
        model = training.with_input_size(model, config, args.img_size)
    crop = args.crop or model.img_size
    if args.synthetic:
        size_range = tuple(args.size_range) if args.size_range else None
        examples = training.synthetic_examples(args.seed, (crop, crop), size_range=size_range)
    else:
        examples = training.folder_examples(images, labels, crop, args.seed)
    cfg = training.TrainConfig(
        steps=args.steps, lr=args.lr, warmup_steps=args.warmup, focal_ramp_steps=args.focal_ramp,
        objects_per_image=args.objects_per_image, refine_rounds=args.refine_rounds,
        maskonly_rounds=args.maskonly_rounds, seed=args.seed,
        extra={"init": args.init, "from_scratch": args.from_scratch, "img_size": model.img_size,
               "crop": crop, "size_range": args.size_range,
               "data": "synthetic" if args.synthetic else str(args.images)},
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
        training._atomic_save(model.state_dict(), out)
    if args.log:
        Path(args.log).write_text("\n".join(json.dumps(e) for e in log) + "\n")
    print(f"wrote {out}")
    return 0


COMMANDS = {
    "segment": _cmd_segment,
    "models": _cmd_models,
    "view": _cmd_view,
    "train": _cmd_train,
    "evaluate": _cmd_evaluate,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``napari-sam`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from . import __version__

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
