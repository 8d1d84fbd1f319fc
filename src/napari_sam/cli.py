"""The ``napari-sam`` command line: headless segmentation and a launcher for the viewer.

Bad input (missing files, wrong shapes, unknown models, unreadable checkpoints) prints one line
``napari-sam: error: ...`` to stderr and exits with code 2; nothing is written half-way.
"""

from __future__ import annotations

import argparse
import sys
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


COMMANDS = {"segment": _cmd_segment, "models": _cmd_models, "view": _cmd_view}


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
