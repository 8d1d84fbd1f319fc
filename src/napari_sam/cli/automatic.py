"""``napari-sam automatic IMAGE --out LABELS.tif [--axis 0]``: segment everything, no prompts.

Its segmentation options are shared with ``evaluate --automatic``
(:func:`._common.add_automatic_options`).
"""

from __future__ import annotations

from ..data.io import read_image, write_labels
from . import _common
from ._common import InputError


def register(sub) -> None:
    """Add the ``automatic`` command to ``sub`` (the parser's sub-parsers)."""
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
    _common.add_automatic_options(au)
    _common.add_model_args(au)
    au.set_defaults(handler=run)


def run(args) -> int:
    """Run ``automatic``; returns the exit code. Bad input raises :class:`InputError`."""
    # torch: the automatic mask generator and the model
    from ..workflows.automatic import segment_everything_nd
    from ..workflows.segment import is_rgb, spatial_shape

    _common.check_outputs([("--out", args.out)],
                          [("input image", args.image), *_common.model_inputs(args)])
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
    _common.check_out_dir(args.out)
    params = _common.automatic_params(args)
    indices = None if args.axis is None else _parse_slices(args.slices, shape[args.axis])
    model = _common.load_model(args)
    labels = segment_everything_nd(model, image, axis=args.axis, indices=indices, params=params,
                                   link_3d=not args.no_link)
    write_labels(args.out, labels)
    n = int(labels.max())
    print(f"wrote {args.out}: {n} object(s), shape {labels.shape}")
    return 0


def _parse_slices(text: str | None, n: int) -> range | None:
    """``--slices START:STOP`` as the range of slice indices of ``n`` it selects."""
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
