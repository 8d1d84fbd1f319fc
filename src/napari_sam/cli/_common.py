"""What the ``napari-sam`` commands share: the model options and loader, the training-data
options, the automatic-segmentation options, and checks of input and output paths.

Only the standard library, numpy and :mod:`napari_sam.data.io` are imported here at import time,
so that ``napari-sam --help`` stays fast; torch-heavy modules are imported where they are used.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..data.io import InputError

__all__ = [
    "PROG",
    "InputError",
    "add_automatic_options",
    "add_model_args",
    "add_training_data_args",
    "automatic_params",
    "check_out_dir",
    "check_outputs",
    "check_training_data_args",
    "load_model",
    "model_inputs",
    "read_pairs",
    "training_examples",
    "training_inputs",
]

PROG = "napari-sam"


def check_out_dir(path: str | Path) -> None:
    """Raise :class:`InputError` unless the folder that ``path`` is to be written into exists."""
    parent = Path(path).parent
    if not parent.exists():
        raise InputError(f"output directory does not exist: {parent}")


def _read_only(path: Path) -> bool:
    """Not writable by this process, or marked read-only for everyone (root ignores modes)."""
    return not os.access(path, os.W_OK) or not path.stat().st_mode & 0o222


def _same(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` are one file or folder (through links too: device and inode)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return os.path.realpath(a) == os.path.realpath(b)


def check_outputs(outputs, inputs=(), folders=()) -> None:
    """Refuse at once, before anything is computed, outputs that cannot or must not be written.

    Parameters
    ----------
    outputs : iterable of (str, path or None)
        ``(option, path)`` of every file the command writes (None: not given).
    inputs : iterable of (str, path or None)
        ``(what, path)`` of every file or folder the command reads (None and names that are not
        paths, like a registry model name, are skipped).
    folders : iterable of str
        The options of ``outputs`` that name a folder (an embedding store), not a file.

    Raises
    ------
    InputError
        An output that is an input (the same file, also through a symbolic or hard link), two
        options naming one file, a folder that does not exist or is not writable, a file output
        that is a folder, or an existing output that is read-only.
    """
    folders = set(folders)
    given = [(opt, Path(path).expanduser()) for opt, path in outputs if path]
    read = [(what, Path(path).expanduser()) for what, path in inputs if path]
    read = [(what, path) for what, path in read if path.exists()]
    for k, (opt, out) in enumerate(given):
        for what, path in read:
            if _same(out, path):
                raise InputError(f"{opt} {out} is the same file as the {what} {path}: "
                                 "refusing to overwrite an input; give another path")
        for other, path in given[:k]:
            if _same(out, path):
                raise InputError(f"{other} and {opt} name the same file {out}")
        parent = out.parent
        if not parent.exists():
            raise InputError(f"{opt} {out}: output directory does not exist: {parent}")
        if not parent.is_dir():
            raise InputError(f"{opt} {out}: {parent} is not a folder")
        if _read_only(parent):
            raise InputError(f"{opt} {out}: the output folder {parent} is not writable")
        if out.exists():
            if opt in folders:
                if not out.is_dir():
                    raise InputError(f"{opt} {out} is a file, not a folder")
            elif out.is_dir():
                raise InputError(f"{opt} {out} is a folder: give a file name")
            if _read_only(out):
                raise InputError(f"{opt} {out} is read-only")


def model_inputs(args) -> list[tuple[str, str | None]]:
    """The files ``--model`` and ``--checkpoint`` read (for :func:`check_outputs`)."""
    return [("--model file", getattr(args, "model", None)),
            ("--checkpoint", getattr(args, "checkpoint", None))]


def training_inputs(args) -> list[tuple[str, Path]]:
    """The files of ``--images`` and ``--labels`` (for :func:`check_outputs`)."""
    found = []
    for what, folder in (("training image", args.images), ("label image", args.labels)):
        if folder and Path(folder).is_dir():
            found += [(what, f) for f in sorted(Path(folder).iterdir()) if f.is_file()]
    return found


# --------------------------------------------------------------------------- the model


def add_model_args(p: argparse.ArgumentParser) -> None:
    """``--model``, ``--checkpoint``, ``--device`` and ``--no-refine``: what :func:`load_model`
    reads."""
    p.add_argument(
        "--model",
        default="default",
        help="registry name (see `napari-sam models`) or a checkpoint file (default: %(default)s)",
    )
    p.add_argument("--checkpoint", help="weights file for --model (overrides the registry's)")
    p.add_argument("--device", default=None,
                   help="cpu, cuda, cuda:1, mps (default: best available)")
    p.add_argument("--no-refine", action="store_true",
                   help="keep SAM's upsampled masks: do not redraw them with the model's mask "
                        "refiner (the default model has one; see docs/default-model.md)")


def warn_if_brightfield(args, image, rgb: bool) -> None:
    """One line on stderr when the default model is given an image that looks like dark
    objects on a bright background (it has only seen bright objects on a dark one): the
    first plane of ``image`` is looked at."""
    if args.model != "default" or getattr(args, "checkpoint", None):
        return
    import sys

    import numpy as np

    from ..engine.preprocess import bright_background

    lead = np.ndim(image) - (3 if rgb else 2)
    plane = image[(0,) * lead] if lead > 0 else image
    if bright_background(plane):
        print("napari-sam: warning: the image looks like dark objects on a bright background "
              "(brightfield, H&E); the default model has only seen bright objects on a dark "
              "background and fails there: invert the image first, or use --model vit_b",
              file=sys.stderr)


def load_model(args):
    """The model that :func:`add_model_args`'s options name.

    Every command loads its model through this function, called as ``_common.load_model`` so
    that tests can replace it in one place.
    """
    from .. import build_model  # torch: only when a command needs a model

    model = build_model(args.model, checkpoint=args.checkpoint, device=args.device)
    if getattr(args, "no_refine", False):
        model.mask_refiner = None
    return model


# --------------------------------------------------------------------------- training data


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


def read_pairs(images_dir: str, labels_dir: str | None, holdout_every: int = 0):
    """The images of ``images_dir`` and their label images (same file names in ``labels_dir``),
    without the held-out ones.

    Returns
    -------
    tuple of list of numpy.ndarray
        ``(images, labels)``, in sorted file-name order.
    """
    from ..data.io import read_image
    from ..training import holdout_split  # torch: only for training commands

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


def training_examples(args, images, labels, synthetic_stream, crop: int):
    """The training stream a command's data options ask for: the folder's crops, the generator,
    or both mixed at ``--real-fraction``."""
    from .. import training  # torch: only for training commands

    if not args.images:
        return synthetic_stream()
    real = training.folder_examples(images, labels, crop, args.seed,
                                    crop_range=getattr(args, "real_crop_range", None))
    if not args.synthetic:
        return real
    return training.mixed_examples([real, synthetic_stream()],
                                   [args.real_fraction, 1.0 - args.real_fraction], args.seed)


# --------------------------------------------------------------------------- automatic options


def _number_or_off(text: str) -> float | str:
    """A number, or "off" (the step is skipped: the parameter becomes None)."""
    if text.strip().lower() == "off":
        return "off"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'off', got {text!r}") from None


#: AutomaticParams fields exposed as options of ``automatic`` and ``evaluate --automatic``:
#: (field, type, help).
AUTOMATIC_OPTIONS = [
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
    ("part_score_margin", _number_or_off, ("drop masks that are parts of a larger convex mask "
                                           "scoring at most this much lower; 'off' keeps parts")),
    ("merge_solidity", _number_or_off, ("merge touching objects whose union fills at least this "
                                        "fraction of its convex hull; 'off' never merges")),
]


def add_automatic_options(p: argparse.ArgumentParser) -> None:
    """One option per entry of :data:`AUTOMATIC_OPTIONS` (default None: AutomaticParams')."""
    for name, typ, text in AUTOMATIC_OPTIONS:
        p.add_argument("--" + name.replace("_", "-"), type=typ, default=None,
                       help=f"{text} (default: see docs/automatic.md)")


def automatic_params(args):
    """The :class:`~napari_sam.workflows.automatic.AutomaticParams` of the options given."""
    from ..workflows.automatic import AutomaticParams  # torch

    kwargs = {
        name: getattr(args, name)
        for name, _, _ in AUTOMATIC_OPTIONS
        if getattr(args, name, None) is not None
    }
    kwargs.update({name: None for name, value in kwargs.items() if value == "off"})
    try:
        return AutomaticParams(**kwargs)
    except ValueError as e:
        raise InputError(str(e)) from None
