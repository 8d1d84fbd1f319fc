"""``napari-sam train-decoder``: train an instance-segmentation decoder for a frozen model."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..data.files import atomic_write_text
from . import _common
from ._common import InputError


def register(sub) -> None:
    """Add the ``train-decoder`` command to ``sub`` (the parser's sub-parsers)."""
    tr = sub.add_parser(
        "train-decoder",
        help="train an instance-segmentation decoder for a model (segment everything in one "
             "decoder pass; the model itself stays frozen)",
        description=(
            "The decoder predicts, from the image embedding, the foreground and each pixel's "
            "distances to its object's centre and boundary; `napari-sam automatic --mode "
            "decoder` and the viewer's segment everything turn them into objects by a seeded "
            "watershed. Every training image is embedded once (whole, and its 2 x 2 crops), "
            "then only the decoder is trained. The output is the model's weights (float16) "
            "with the decoder's. Resumable: the training state is kept in <out>.state.pt; "
            "rerun the same command to continue."
        ),
    )
    tr.add_argument("--images", required=True, help="folder of images (.tif, .npy)")
    tr.add_argument("--labels", required=True, help="folder of label images, same file names")
    tr.add_argument("--holdout-every", type=int, default=0, metavar="N",
                    help="leave out every N-th image by sorted name (the validation split of "
                         "benchmarks/evaluate_real.py; 0: train on all)")
    tr.add_argument("--model", default="default",
                    help="model the decoder is trained for: registry name or checkpoint "
                         "(default: %(default)s)")
    tr.add_argument("--out", required=True, help="output weights file (.pt)")
    tr.add_argument("--steps", type=int, default=3000)
    tr.add_argument("--initial-features", type=int, default=8,
                    help="channels of the decoder's finest level (default: %(default)s)")
    tr.add_argument("--upscale", type=int, choices=(8, 16), default=8,
                    help="decoder output pixels per embedding pixel: 8 (the model input's "
                         "resolution for the default model) or 16 (micro-sam's layout)")
    tr.add_argument("--crop", type=int, default=32,
                    help="embedding window per training sample, 0 for whole embeddings "
                         "(default: %(default)s)")
    tr.add_argument("--no-crops", action="store_true",
                    help="embed only whole images, not also their 2 x 2 crops")
    tr.add_argument("--no-mosaics", action="store_true",
                    help="no 2 x 2 mosaics of images (objects at half scale)")
    tr.add_argument("--lr", type=float, default=1e-3)
    tr.add_argument("--batch-size", type=int, default=4)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    tr.add_argument("--log", help="write the training log (JSON lines) here")
    tr.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")
    tr.set_defaults(handler=run, synthetic=False)


def run(args) -> int:
    """Run ``train-decoder``; returns the exit code. Bad input raises :class:`InputError`."""
    import torch  # only for this command: --help stays fast

    from .. import training
    from ..models.build import build_model
    from ..training import instance_decoder as idt

    out = Path(args.out)
    _common.check_outputs([("--out", out), ("--log", args.log)],
                          [("--model", args.model), *_common.training_inputs(args)])
    for name in ("steps", "batch_size", "initial_features"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.crop < 0:
        raise InputError(f"--crop must be >= 0, got {args.crop}")
    if args.lr <= 0:
        raise InputError(f"--lr must be > 0, got {args.lr}")
    if args.holdout_every < 0 or args.holdout_every == 1:
        raise InputError(f"--holdout-every must be 0 or >= 2, got {args.holdout_every}")
    if args.threads:
        torch.set_num_threads(args.threads)
    images, labels = _common.read_pairs(args.images, args.labels, args.holdout_every)
    if any(lab.ndim != 2 for lab in labels):
        raise InputError("train-decoder takes 2D label images (H, W)")
    model = build_model(args.model, device=args.device)
    for p in model.parameters():
        p.requires_grad_(False)

    t0 = time.perf_counter()

    def embedded(done: int, total: int) -> None:
        if done % 50 == 0 or done == total:
            print(f"embedded {done}/{total} views", flush=True)

    data = idt.decoder_examples(model, images, labels, upscale=args.upscale,
                                crops=not args.no_crops, mosaics=not args.no_mosaics,
                                progress=embedded)
    print(f"{len(data)} views of {len(images)} images embedded in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    torch.manual_seed(args.seed)
    decoder = idt.attach_instance_decoder(model, args.initial_features, args.upscale)

    def report(step: int, total: int, entry: dict) -> None:
        print(f"step {step}/{total} loss {entry['loss']:.4f} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)

    log = idt.train_instance_decoder(
        decoder, data, steps=args.steps, lr=args.lr, batch_size=args.batch_size,
        crop=args.crop or None, seed=args.seed,
        state_path=out.with_name(out.name + ".state.pt"), progress=report)
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    training.save_atomic(state, out)
    if args.log:
        atomic_write_text(args.log, "\n".join(json.dumps(e) for e in log) + "\n")
    print(f"wrote {out}")
    return 0
