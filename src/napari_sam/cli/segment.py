"""``napari-sam segment``: objects from point/box prompts (optionally propagated along a stack
axis) or from a text (:mod:`.text`), written as a label image."""

from __future__ import annotations

import argparse
import functools
import sys

import numpy as np

from ..data.io import read_image, read_points_csv, write_labels
from . import _common, text
from ._common import InputError


def _parse_box(value: str) -> list[float]:
    try:
        values = [float(v) for v in value.replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"box {value!r}: expected comma-separated numbers")
    if len(values) < 4:
        raise argparse.ArgumentTypeError(
            f"box {value!r}: expected [plane indices,] row0,col0,row1,col1"
        )
    return values


def register(sub) -> None:
    """Add the ``segment`` command to ``sub`` (the parser's sub-parsers)."""
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
    seg.add_argument("--snap", action=argparse.BooleanOptionalAction, default=None,
                     help="snap each mask to the objects of the model's instance decoder, as the "
                          "viewer's 'snap to objects' (planes decoded whole; not with "
                          "--propagate or --text; default: on for a model with an instance "
                          "decoder, such as the default model)")
    prop = seg.add_argument_group(
        "propagation",
        "Follow each prompted object along a leading axis of a stack (z or t), in both "
        "directions, until it ends; prompts of one object (same 'object' value in the CSV) on "
        "several planes are anchors, filled from both ends. See docs/propagation.md.")
    prop.add_argument("--propagate", type=int, metavar="AXIS", default=None,
                      help="propagate along this axis (0 for Z-Y-X; 0 or 1 for 4D T-Z-Y-X)")
    prop.add_argument("--time-axis", action="store_true",
                      help="the axis is time: no stop when a cell grows after shrinking, "
                           "and the model's masks are kept (--outline model)")
    prop.add_argument("--outline", choices=["half_max", "model"], default=None,
                      help="redraw each object at its half-maximum outline (the default along "
                           "z) or keep the model's masks (the default with --time-axis)")
    prop.add_argument("--outline-level", type=float, default=None, metavar="F",
                      help="where that outline lies, in (0, 1) of each object's brightness "
                           "above its background (default: by the object's size, 0.56 for "
                           "small nuclei to 0.44 for large ones)")
    prop.add_argument("--max-slices", type=int, default=None, metavar="N",
                      help="at most N slices beyond the outermost prompts of each object")
    _common.add_model_args(seg)
    text.add_text_args(seg)
    seg.set_defaults(handler=run)


def run(args) -> int:
    """Run ``segment``; returns the exit code. Bad input raises :class:`InputError`."""
    # torch: the predictor and the workflows load the model's code
    from ..workflows.segment import is_rgb, spatial_shape

    _common.check_outputs(
        [("--out", args.out), ("--scores-csv", args.scores_csv)],
        [("input image", args.image), ("--points file", args.points),
         ("--candidates labels", args.candidates), *_common.model_inputs(args)],
    )
    if args.snap and (args.text is not None or args.propagate is not None):
        raise InputError("--snap snaps point and box prompts on their planes: not with "
                         "--propagate or --text")
    if args.text is not None:
        if args.propagate is not None:
            raise InputError("--propagate follows point and box prompts, not --text")
        return text.run_text_segment(args)
    if not args.points and not args.box:
        raise InputError("no prompts: give --points CSV and/or --box, or --text")
    image = read_image(args.image)
    rgb = is_rgb(image) if args.rgb is None else args.rgb
    shape = spatial_shape(image, rgb)
    if len(shape) < 2 or min(shape[-2:]) < 1:
        raise InputError(f"{args.image}: not an image with two spatial axes (shape {image.shape})")
    _common.warn_if_brightfield(args, image, rgb)
    nlead = len(shape) - 2
    if args.propagate is not None and not 0 <= args.propagate < nlead:
        raise InputError(f"--propagate {args.propagate}: the image has {nlead} leading axis(es) "
                         f"before its Y-X planes (shape {image.shape}); give one of them")
    objects, names = _prompted_objects(args, shape)

    model = _common.load_model(args)
    snapper = None
    if args.propagate is None and args.snap is not False:
        from ..workflows.instance_decoder import has_instance_decoder

        if args.snap or has_instance_decoder(model):  # default: as the viewer
            snapper = _snapper(model)
    if args.propagate is not None:
        labels = _propagate_objects(model, image, rgb, objects, names, args)
    else:
        labels = _segment_planes(model, image, objects, rgb, args.overwrite_objects, snapper)
    write_labels(args.out, labels)
    n = len(np.unique(labels)) - (1 if (labels == 0).any() else 0)
    print(f"wrote {args.out}: {n} object(s), shape {labels.shape}")
    return 0


class PlanePredictor:
    """``set_image`` and ``segment`` of :class:`~napari_sam.SamPredictor` for
    :func:`~napari_sam.workflows.segment.segment_objects`: a large plane
    (:func:`~napari_sam.engine.tiling.is_large`, the viewer's rule) is
    decoded with a :class:`~napari_sam.engine.tiling.TiledPredictor` (only the tiles under the
    prompts are embedded, kept in a bounded memory cache; objects across tile borders come out
    whole), any other plane whole, a small object there in a magnified crop of its own
    (:class:`~napari_sam.engine.zoom.SliceZoomer`, as in the viewer), an object's points
    decoded as if clicked one at a time in their order, each click with the mask shown after
    the previous one (:func:`~napari_sam.engine.click_memory.segment_in_click_order`: what
    the viewer shows for the same clicks). With a ``snapper``
    (:class:`~napari_sam.workflows.snap.SliceSnapper`) the masks of planes decoded whole are
    snapped to the plane's objects."""

    def __init__(self, model, rgb: bool, snapper=None) -> None:
        from ..engine.predictor import SamPredictor
        from ..engine.zoom import SliceZoomer

        self.model, self.rgb, self.snapper = model, rgb, snapper
        self.whole = SamPredictor(model)
        self.zoomer = SliceZoomer(keep=1)
        self.tiled = None  # the TiledPredictor of the current plane, when it is large

    def set_image(self, plane, intensity_range=None) -> None:
        from ..engine.tiling import TiledPredictor, is_large  # torch: only when segmenting

        if is_large(plane.shape, self.model.img_size):
            self.whole.reset_image()
            self.tiled = TiledPredictor(self.model, plane, rgb=self.rgb,
                                        intensity_range=intensity_range)
        else:
            self.tiled = None
            self.whole.set_image(plane, intensity_range)

    def segment(self, points=None, labels=None, box=None, mask_input=None):
        from ..engine.click_memory import segment_in_click_order

        if self.tiled is None:
            snap = (None if self.snapper is None
                    else functools.partial(self.snapper.snap, self.whole))
            if mask_input is None:  # as in the viewer, clicked in the CSV's order (each
                # click's mask snapped; a small object in its magnified crop)
                return segment_in_click_order(functools.partial(self.zoomer.segment, self.whole),
                                              points, labels, box, snap)
            mask, score, logits = self.zoomer.segment(self.whole, points, labels, box,
                                                      mask_input)
            if snap is not None:
                mask = snap(mask, points=points, labels=labels, box=box)
            return mask, score, logits
        mask, score = self.tiled.segment(points, labels, box, mask_input)
        return mask, score, None


def _snapper(model):
    """A :class:`~napari_sam.workflows.snap.SliceSnapper` for ``--snap``."""
    from ..workflows.instance_decoder import has_instance_decoder
    from ..workflows.snap import SliceSnapper

    if not has_instance_decoder(model):
        raise InputError("--snap needs a model with an instance decoder (the default model, "
                         "micro-sam's *_lm)")
    return SliceSnapper(keep=1)


def _segment_planes(model, image, objects, rgb: bool, overwrite: bool,
                    snapper=None) -> np.ndarray:
    """The objects' label image; large planes decoded in tiles (:class:`PlanePredictor`)."""
    from ..workflows.segment import segment_objects

    return segment_objects(PlanePredictor(model, rgb, snapper), image, objects, rgb=rgb,
                           overwrite=overwrite)


def _prompted_objects(args, shape: tuple[int, ...]) -> tuple[list, list[str]]:
    """The objects of ``--points`` and ``--box``, each checked to lie inside the image.

    Returns
    -------
    objects : list of ObjectPrompt
        One per plane and CSV 'object' value, then one per box.
    names : list of str
        Each object's CSV 'object' value ("" without that column and for boxes).
    """
    from ..workflows.segment import ObjectPrompt  # torch

    nlead = len(shape) - 2
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
        plane = tuple(round(v) for v in box[:nlead])
        corners = np.asarray(box[nlead:], dtype=float)
        _check_inside(corners.reshape(2, 2), shape[-2:], "--box")
        objects.append(ObjectPrompt(plane, box=corners))
        names.append("")
    for obj in objects:
        if any(not 0 <= p < n for p, n in zip(obj.plane, shape[:-2])):
            raise InputError(f"prompt on plane {obj.plane} is outside the image ({shape[:-2]})")
    return objects, names


def _check_inside(points_rc: np.ndarray, hw: tuple[int, int], source: str) -> None:
    """The API's check of points (:func:`napari_sam.engine.prompts.check_points`), as bad input
    of ``source``."""
    from ..engine.prompts import check_points

    try:
        check_points(points_rc, hw, what=f"{source}: prompt")
    except ValueError as exc:
        raise InputError(str(exc)) from None


def _propagate_objects(model, image, rgb: bool, objects, names: list[str], args) -> np.ndarray:
    """``segment --propagate``: each object followed along the axis from its prompted planes.

    Objects are the CSV's 'object' values (their prompts on several planes along the axis are
    anchors of one object), or one per plane and per box without that column. In 4D, each
    index of the other leading axis is a separate 3D run; an object keeps its label value in
    every one of them.
    """
    from ..workflows.propagation import PropagationParams, Seed
    from ..workflows.propagation_volume import propagate_volume

    try:
        outline = args.outline or ("model" if args.time_axis else "half_max")
        params = PropagationParams(max_slices=args.max_slices, outline=outline,
                                   outline_level=args.outline_level,
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
