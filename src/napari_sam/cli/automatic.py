"""``napari-sam automatic IMAGE --out LABELS.tif [--axis 0] [--mode auto|decoder|points]``:
segment everything, no prompts.

``--mode decoder``: the model's instance-segmentation decoder and a seeded watershed (the
default model's since v0.13, micro-sam's models; :mod:`napari_sam.workflows.instance_decoder`),
with the ``--*-threshold`` options below. ``--mode points``: SAM's automatic mode; its options
are shared with ``evaluate --automatic`` (:func:`._common.add_automatic_options`). ``--mode
auto`` (the default): the decoder when the model has one, else points.
"""

from __future__ import annotations

from ..data.io import read_image, write_labels
from . import _common
from ._common import InputError

#: Segmentation modes: point prompts (SAM's automatic mode) or the model's instance decoder.
MODES = ("auto", "points", "decoder")
#: DecoderParams fields exposed as options of ``--mode decoder``.
DECODER_OPTIONS = [
    ("center_distance_threshold", "seeds: predicted centre distance below this (0.5)"),
    ("boundary_distance_threshold", "seeds: predicted boundary distance below this (0.5)"),
    ("foreground_threshold", "foreground: probability above this (0.5)"),
    ("distance_smoothing", "Gaussian sigma of the distance maps, pixels (1.6)"),
    ("min_size", "remove objects smaller than this many pixels (0)"),
    ("zoom_below_radius", ("decode the 2 x 2 overlapping crops when the objects' typical "
                           "radius at the model's input scale is below this, pixels (0: "
                           "never; default 16 for the default model's decoder, 0 for "
                           "micro-sam's)")),
]


def register(sub) -> None:
    """Add the ``automatic`` command to ``sub`` (the parser's sub-parsers)."""
    au = sub.add_parser(
        "automatic",
        help="segment everything (no prompts) and write an instance label image",
        description=(
            "SAM's automatic mode: a grid of point prompts, multimask output, filtering by "
            "predicted IoU and stability, non-maximum suppression, small regions and holes "
            "removed. For a stack, each slice along --axis is segmented and the objects of "
            "neighbouring slices are linked into 3D objects by overlap. With --mode decoder, "
            "a micro-sam model's instance-segmentation decoder and a seeded watershed replace "
            "the point prompts (docs/models.md)."
        ),
    )
    au.add_argument("image", help="image file: 2D (Y, X), RGB (Y, X, 3) or a stack (Z, Y, X)")
    au.add_argument("--out", required=True, help="output label image (.tif)")
    au.add_argument("--axis", type=int, default=None, help="slicing axis of a stack")
    au.add_argument("--slices", default=None, metavar="START:STOP",
                    help="only these slices along --axis (Python range, e.g. 4:10)")
    au.add_argument("--no-link", action="store_true",
                    help="stacks: do not link objects across slices (every 2D object its own id)")
    au.add_argument("--mode", choices=MODES, default="auto",
                    help="decoder: the model's instance-segmentation decoder (the default "
                         "model's, micro-sam's e.g. --model vit_b_lm), one decoder pass per "
                         "slice and a watershed; points: SAM's automatic mode, point prompts "
                         "over the image; auto (default): decoder when the model has one, "
                         "else points")
    _common.add_automatic_options(au)
    decoder = au.add_argument_group("--mode decoder (defaults: micro-sam's watershed)")
    for name, text in DECODER_OPTIONS:
        decoder.add_argument("--" + name.replace("_", "-"), type=float, default=None, help=text)
    _common.add_model_args(au)
    au.set_defaults(handler=run)


def run(args) -> int:
    """Run ``automatic``; returns the exit code. Bad input raises :class:`InputError`."""
    # torch: the automatic mask generator and the model
    from ..workflows.segment import is_rgb, spatial_shape

    _common.check_outputs([("--out", args.out)],
                          [("input image", args.image), *_common.model_inputs(args)])
    image = read_image(args.image)
    rgb = is_rgb(image) and image.ndim == (3 if args.axis is None else 4)
    shape = spatial_shape(image, rgb)
    _common.warn_if_brightfield(args, image, rgb)
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
    _, segment, params = segmenter(args, model, params)
    labels = segment(model, image, axis=args.axis, indices=indices, params=params,
                     link_3d=not args.no_link)
    write_labels(args.out, labels)
    n = int(labels.max())
    print(f"wrote {args.out}: {n} object(s), shape {labels.shape}")
    return 0


def segmenter(args, model, params):
    """``(mode, segment_everything_nd, params)`` of ``--mode`` (``auto``: the decoder when the
    model has one) for ``model``; ``params`` are the point mode's (their ``link_overlap`` is
    kept for the decoder)."""
    from ..workflows import automatic, instance_decoder

    mode = getattr(args, "mode", "auto")
    if mode == "auto":
        mode = "decoder" if instance_decoder.has_instance_decoder(model) else "points"
    if mode == "points":
        return mode, automatic.segment_everything_nd, params
    if not instance_decoder.has_instance_decoder(model):
        raise InputError(f"--mode decoder: the model {args.model!r} has no "
                         "instance-segmentation decoder; use a micro-sam model (see "
                         "`napari-sam models`) or --mode points")
    return mode, instance_decoder.segment_everything_nd, _decoder_params(args, params.link_overlap)


def _decoder_params(args, link_overlap: float):
    """The DecoderParams of the ``--mode decoder`` options given."""
    from ..workflows.instance_decoder import DecoderParams

    given = {name: getattr(args, name) for name, _ in DECODER_OPTIONS
             if getattr(args, name, None) is not None}
    if "min_size" in given:
        given["min_size"] = int(given["min_size"])
    try:
        return DecoderParams(link_overlap=link_overlap, **given)
    except ValueError as e:
        raise InputError(str(e)) from None


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
