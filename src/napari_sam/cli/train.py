"""``napari-sam train``: train or fine-tune a model with SAM's interactive training scheme."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..data.files import atomic_write_text
from . import _common
from ._common import InputError


def register(sub) -> None:
    """Add the ``train`` command to ``sub`` (the parser's sub-parsers)."""
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
    _common.add_training_data_args(tr, "folder of images (.tif) to fine-tune on")
    tr.add_argument("--init", default="default",
                    help="model to start from: registry name or checkpoint (default: %(default)s)")
    tr.add_argument("--from-scratch", action="store_true",
                    help="random initial weights of the --init architecture")
    tr.add_argument("--img-size", type=int, default=None,
                    help="train at this model input size (position embedding resampled); the "
                         "output is converted back to the architecture's size")
    tr.add_argument("--crop", type=int, default=None,
                    help="image side for training crops (default: the input size)")
    tr.add_argument("--synthetic-crop", type=int, default=None,
                    help="side of the generator's images when mixed with --images (default: "
                         "--crop): e.g. whole real images (--crop 1024) beside synthetic ones at "
                         "the model's own scale (--synthetic-crop 512)")
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
    tr.add_argument("--iou-rank-weight", type=float, default=0.0,
                    help="one-point prompts: also teach the IoU head the order of the three "
                         "outputs (the viewer keeps the highest), with this weight")
    tr.add_argument("--interior-clicks", type=float, default=0.0, metavar="F",
                    help="this fraction of the objects get their first point in the deep "
                         "interior (where users click) instead of anywhere in the mask")
    tr.add_argument("--small-object-bias", type=float, default=0.0, metavar="B",
                    help="draw each image's training objects with probability proportional "
                         "to area^-B (0: uniformly; 0.5: small objects such as micronuclei "
                         "beside their nucleus more often)")
    tr.add_argument("--real-crop-range", type=int, nargs=2, default=None, metavar=("MIN", "MAX"),
                    help="with --images: each crop's side drawn log-uniformly in this range "
                         "(the objects seen at several scales) instead of --crop")
    tr.add_argument("--window-fraction", type=float, default=0.0,
                    help="decode the objects of this fraction of the images against a window "
                         "of the image embedding around each, as propagation and segment "
                         "everything do in the viewer")
    tr.add_argument("--window-tokens", type=int, nargs=2, default=(16, 32),
                    metavar=("MIN", "MAX"), help="window side in tokens (default 16 32)")
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
    tr.add_argument("--train-only", nargs="+", metavar="PREFIX", default=None,
                    help="train only the parameters whose names start with one of these "
                         "prefixes (e.g. mask_decoder.iou_prediction_head: recalibrate the IoU "
                         "head of a fine-tuned model); the others stay frozen")
    tr.set_defaults(handler=run)


def run(args) -> int:
    """Run ``train``; returns the exit code. Bad input raises :class:`InputError`."""
    import torch  # only for this command: --help stays fast

    from .. import training

    out = Path(args.out)
    _common.check_outputs([("--out", out), ("--log", args.log)],
                          [("--init model", args.init), *_common.training_inputs(args)])
    if not 0.0 <= args.stack_fraction <= 1.0:
        raise InputError(f"--stack-fraction must be in [0, 1], got {args.stack_fraction}")
    if args.synthetic_crop is not None and args.synthetic_crop < 16:
        raise InputError(f"--synthetic-crop must be at least 16 px, got {args.synthetic_crop}")
    if not args.other_outputs_weight >= 0:
        raise InputError(f"--other-outputs-weight must be >= 0, got {args.other_outputs_weight}")
    if not args.iou_rank_weight >= 0:
        raise InputError(f"--iou-rank-weight must be >= 0, got {args.iou_rank_weight}")
    if not 0.0 <= args.interior_clicks <= 1.0:
        raise InputError(f"--interior-clicks must be in [0, 1], got {args.interior_clicks}")
    if not 0.0 <= args.small_object_bias <= 2.0:
        raise InputError(f"--small-object-bias must be in [0, 2], got {args.small_object_bias}")
    crop_range = args.real_crop_range
    if crop_range is not None and not 16 <= crop_range[0] <= crop_range[1]:
        raise InputError("--real-crop-range must be MIN MAX with 16 <= MIN <= MAX, got "
                         f"{args.real_crop_range[0]} {args.real_crop_range[1]}")
    if not 0.0 <= args.window_fraction <= 1.0:
        raise InputError(f"--window-fraction must be in [0, 1], got {args.window_fraction}")
    if not 1 <= args.window_tokens[0] <= args.window_tokens[1]:
        raise InputError("--window-tokens must be MIN MAX with 1 <= MIN <= MAX, got "
                         f"{args.window_tokens[0]} {args.window_tokens[1]}")
    if args.threads:
        torch.set_num_threads(args.threads)
    _common.check_training_data_args(args)
    images = labels = None
    if args.images:
        images, labels = _common.read_pairs(args.images, args.labels, args.holdout_every)
    model, config = _initial_model(args)
    if args.train_only:
        _freeze_all_but(model, args.train_only)
    final_size = model.img_size
    if args.img_size and args.img_size != final_size:
        model = training.with_input_size(model, config, args.img_size)
    crop = args.crop or model.img_size
    synthetic_crop = args.synthetic_crop or crop
    size_range = tuple(args.size_range) if args.size_range else None
    examples = _common.training_examples(
        args, images, labels,
        lambda: training.synthetic_examples(args.seed, (synthetic_crop, synthetic_crop),
                                            size_range=size_range,
                                            stack_fraction=args.stack_fraction,
                                            size_log=args.size_log, ranges=args.ranges),
        crop)
    cfg = _train_config(args, model.img_size, crop)
    stage_out = out.with_name(out.name + ".stage.pt") if model.img_size != final_size else out
    log = training.train(model, examples, cfg, stage_out, resume=not args.no_resume,
                         progress=_progress_printer())
    if model.img_size != final_size:
        model = training.with_input_size(model, config, final_size)
        training.save_atomic(model.state_dict(), out)
    if args.log:
        atomic_write_text(args.log, "\n".join(json.dumps(e) for e in log) + "\n")
    print(f"wrote {out}")
    return 0


def _initial_model(args):
    """The model ``--init`` names (random weights with ``--from-scratch``) on ``--device``, and
    its architecture's config."""
    from ..models.build import MODEL_CONFIGS, build_model, build_sam, resolve_model_name
    from ..models.checkpoint import infer_model_type
    from ..models.device import resolve_device

    if args.from_scratch:
        config = MODEL_CONFIGS[resolve_model_name(args.init)]
        model = build_sam(config)
    else:
        model = build_model(args.init, device=args.device)
        name = infer_model_type(model.state_dict()) or resolve_model_name(args.init)
        config = MODEL_CONFIGS[name]
    return model.to(resolve_device(args.device)), config


def _freeze_all_but(model, prefixes: list[str]) -> None:
    """Freeze every parameter whose name starts with none of ``prefixes``."""
    names = [name for name, _ in model.named_parameters()]
    trained = [name for name in names if name.startswith(tuple(prefixes))]
    if not trained:
        heads = sorted({".".join(name.split(".")[:2]) for name in names})
        raise InputError(f"--train-only {' '.join(prefixes)} matches no parameter of the model; "
                         f"its modules include: {', '.join(heads)}")
    for name, param in model.named_parameters():
        param.requires_grad_(name in trained)


def _train_config(args, img_size: int, crop: int):
    """The :class:`~napari_sam.training.TrainConfig` of the options; ``extra`` records the data
    and the model input size in the checkpoint's state."""
    from .. import training

    return training.TrainConfig(
        steps=args.steps, lr=args.lr, warmup_steps=args.warmup, focal_ramp_steps=args.focal_ramp,
        objects_per_image=args.objects_per_image, refine_rounds=args.refine_rounds,
        maskonly_rounds=args.maskonly_rounds, seed=args.seed,
        other_outputs_weight=args.other_outputs_weight, iou_rank_weight=args.iou_rank_weight,
        interior_click_fraction=args.interior_clicks, window_fraction=args.window_fraction,
        small_object_bias=args.small_object_bias,
        window_tokens=tuple(args.window_tokens),
        extra={"init": args.init, "from_scratch": args.from_scratch, "img_size": img_size,
               "crop": crop, "synthetic_crop": args.synthetic_crop,
               "size_range": args.size_range,
               "stack_fraction": args.stack_fraction, "size_log": args.size_log,
               "ranges": args.ranges,
               "synthetic": args.synthetic, "images": args.images,
               "real_fraction": args.real_fraction if args.images and args.synthetic else None,
               "holdout_every": args.holdout_every, "train_only": args.train_only,
               "real_crop_range": args.real_crop_range},
    )


def _progress_printer():
    """A ``progress(step, total, stats)`` callback that prints every 10th step."""
    clock = {"t": time.monotonic()}

    def progress(step, total, stats):
        if step % 10 == 0 or step == total:
            rate = (time.monotonic() - clock["t"]) / 10
            clock["t"] = time.monotonic()
            print(f"step {step}/{total} loss {stats['loss']:.4f} iou(first) "
                  f"{stats['iou_first']:.3f} iou(last) {stats['iou_last']:.3f} "
                  f"{rate:.2f} s/step", flush=True)

    return progress
