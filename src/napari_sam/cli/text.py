"""``napari-sam segment IMAGE --text QUERY``: the text-prompt mode of :mod:`.segment`.

:func:`add_text_args` adds its options to the ``segment`` parser; ``segment`` hands over to
:func:`run_text_segment` when ``--text`` is given. CLIP and torch are imported only there.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from ..data.files import atomic_path
from ..data.io import read_image, write_labels
from . import _common
from ._common import InputError

DEFAULT_CLIP = "ViT-B-32:openai"


def add_text_args(seg: argparse.ArgumentParser) -> None:
    """Add the text-prompt options to the ``segment`` sub-command."""
    g = seg.add_argument_group(
        "text prompts (CLIP)",
        "Keep the candidate objects that CLIP matches to a text. Candidates are the objects of "
        "--candidates, or SAM's automatic segmentation of each plane. Each object is cut out "
        "(box plus margin, outside of the object dimmed), embedded with CLIP and compared with "
        "the text and the negatives; kept: the query beats every negative, or --threshold / "
        "--top-k.",
    )
    g.add_argument("--text", metavar="QUERY", help="what to segment, e.g. 'nucleus'")
    g.add_argument("--negative", action="append", default=None, metavar="TEXT",
                   help="a competing description (repeatable; default: 'background')")
    g.add_argument("--clip", default=DEFAULT_CLIP, metavar="MODEL:TAG|MODEL:PATH",
                   help="CLIP model: an open_clip pretrained tag (downloaded once), a local "
                        "weights file, or CONFIG.json:PATH (default: %(default)s)")
    g.add_argument("--candidates", metavar="LABELS",
                   help="label image of candidate objects (default: automatic segmentation)")
    g.add_argument("--threshold", type=float, default=None,
                   help="keep objects whose probability (or --score similarity) is at least this")
    g.add_argument("--top-k", type=int, default=None, metavar="K",
                   help="keep at most the K best objects per plane")
    g.add_argument("--score", choices=["probability", "similarity"], default="probability",
                   help="the score --threshold and the ranking use (default: %(default)s)")
    g.add_argument("--margin", type=float, default=None,
                   help="crop margin per side, fraction of the object's box (default: 0.25)")
    g.add_argument("--background", choices=["dim", "blank", "keep"], default=None,
                   help="pixels outside the object in its crop (default: dim)")
    g.add_argument("--template", default=None,
                   help="prompt template with {}, e.g. 'a microscopy image of a {}.'")
    g.add_argument("--scores-csv", metavar="CSV", help="write every candidate's scores here")
    g.add_argument("--offline", action="store_true",
                   help="never download CLIP weights (fail with instructions instead)")


def run_text_segment(args) -> int:
    """Run ``segment --text``; returns the exit code. Bad input raises :class:`InputError`."""
    # torch and the CLIP wrapper: only for --text
    from ..engine.preprocess import estimate_intensity_range
    from ..workflows.segment import is_rgb, spatial_shape

    negatives = _check_text_args(args)
    image = read_image(args.image)
    rgb = is_rgb(image) if args.rgb is None else args.rgb
    shape = spatial_shape(image, rgb)
    if len(shape) < 2 or min(shape[-2:]) < 1:
        raise InputError(f"{args.image}: not an image with two spatial axes (shape {image.shape})")
    candidates = _read_candidates(args.candidates, shape) if args.candidates else None

    from ..workflows.text import ClipScorer

    crop_params = _crop_params(args)
    scorer = ClipScorer(args.clip, device=args.device, isolate=False, download=not args.offline)
    model = _common.load_model(args) if candidates is None else None
    intensity_range = None if (rgb and image.dtype == np.uint8) else estimate_intensity_range(image)
    labels, rows = _segment_planes(
        args, image, shape, candidates, scorer, model, negatives, crop_params,
        intensity_range, rgb,
    )
    out = Path(args.out)
    write_labels(out, labels)
    if args.scores_csv:
        _write_scores_csv(args.scores_csv, rows, len(shape) - 2)
    n_kept = sum(r[4] for r in rows)
    print(f"wrote {out}: {n_kept} of {len(rows)} candidate object(s) match {args.text!r}, "
          f"shape {labels.shape}")
    return 0


def _check_text_args(args) -> list[str]:
    """Check the options that need no file read; returns the negative texts."""
    if args.points or args.box:
        raise InputError("--text cannot be combined with --points/--box prompts")
    if not args.text.strip():
        raise InputError("--text is empty")
    if args.top_k is not None and args.top_k < 1:
        raise InputError("--top-k must be at least 1")
    _common.check_out_dir(args.out)
    if args.scores_csv:
        _common.check_out_dir(args.scores_csv)
    negatives = args.negative if args.negative is not None else ["background"]
    if args.threshold is None and args.top_k is None and not [n for n in negatives if n.strip()]:
        raise InputError("without --negative, give --threshold or --top-k")
    return negatives


def _read_candidates(path: str, shape: tuple[int, ...]) -> np.ndarray:
    candidates = read_image(path)
    if candidates.dtype.kind not in "iub":
        raise InputError(f"{path}: labels must be integers, got {candidates.dtype}")
    if tuple(candidates.shape) != tuple(shape):
        raise InputError(
            f"candidates {candidates.shape} do not match the image's spatial shape {shape}"
        )
    return candidates


def _crop_params(args):
    from ..workflows.text import CropParams

    crop_kwargs = {}
    if args.margin is not None:
        crop_kwargs["margin"] = args.margin
    if args.background is not None:
        crop_kwargs["background"] = args.background
    try:
        return CropParams(**crop_kwargs)
    except ValueError as exc:
        raise InputError(str(exc)) from exc


def _segment_planes(args, image, shape, candidates, scorer, model, negatives, crop_params,
                    intensity_range, rgb) -> tuple[np.ndarray, list[tuple]]:
    """Segment each 2D plane by text.

    Returns
    -------
    labels : numpy.ndarray
        The kept objects, with ``shape``; automatic candidates numbered uniquely in the stack.
    rows : list of tuple
        ``(plane, label, similarity, probability, kept)`` for every candidate object.
    """
    from ..workflows.text import segment_by_text

    labels = np.zeros(shape, dtype=np.int32)
    rows = []
    offset = 0
    for plane in np.ndindex(*shape[:-2]):
        cand = candidates[plane] if candidates is not None else None
        plane_labels, scores = segment_by_text(
            scorer, image[plane], args.text, candidates=cand, model=model, negatives=negatives,
            threshold=args.threshold, top_k=args.top_k, use=args.score, crop_params=crop_params,
            template=args.template, intensity_range=intensity_range, rgb=rgb,
        )
        kept = set(np.unique(plane_labels[plane_labels > 0]).tolist())
        if candidates is None and plane_labels.any():
            # automatic candidates are numbered per plane: make them unique in the stack
            plane_labels[plane_labels > 0] += offset
        ids_out = scores.ids + (offset if candidates is None else 0)
        for k, oid in enumerate(scores.ids):
            rows.append((plane, int(ids_out[k]), float(scores.similarity[k]),
                         float(scores.probability[k]), int(oid) in kept))
        if candidates is None and len(scores.ids):
            offset += int(scores.ids.max())
        labels[plane] = plane_labels
    return labels, rows


def _write_scores_csv(path, rows, nlead: int) -> None:
    with atomic_path(path, suffix=".csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([f"axis-{i}" for i in range(nlead)]
                   + ["label", "text_similarity", "text_probability", "selected"])
        for plane, oid, sim, prob, kept in rows:
            w.writerow([*plane, oid, f"{sim:.6f}", f"{prob:.6f}", int(kept)])
