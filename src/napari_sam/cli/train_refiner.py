"""``napari-sam train-refiner``: train the mask refiner of a frozen model."""

from __future__ import annotations

import json
from pathlib import Path

from ..data.files import atomic_write_text
from . import _common
from ._common import InputError


def register(sub) -> None:
    """Add the ``train-refiner`` command to ``sub`` (the parser's sub-parsers)."""
    tr = sub.add_parser(
        "train-refiner",
        help="train the mask refiner of a model (the model itself stays frozen)",
        description=(
            "The mask refiner redraws each mask's boundary at the image's resolution from the "
            "pixels around it. The frozen model first segments objects of the training images "
            "from simulated prompts (a point, a noisy box, a corrective click); the refiner is "
            "then trained for --epochs on those masks. The output is the model's weights with "
            "the refiner's. Resumable: the examples are kept in <out>.examples.npz and the "
            "training state in <out>.state.pt; rerun the same command to continue."
        ),
    )
    _common.add_training_data_args(tr, "folder of images (.tif) with label images in --labels")
    tr.add_argument("--init", default="default",
                    help="model whose refiner is trained: registry name or checkpoint "
                         "(default: %(default)s)")
    tr.add_argument("--out", required=True, help="output weights file (.pt)")
    tr.add_argument("--n-images", type=int, default=1000,
                    help="training images the model segments (default: %(default)s)")
    tr.add_argument("--objects-per-image", type=int, default=10)
    tr.add_argument("--size-range", type=int, nargs=2, metavar=("MIN", "MAX"), default=(80, 1024),
                    help="with --synthetic: image sides, drawn log-uniformly (default: 80 1024)")
    tr.add_argument("--stack-fraction", type=float, default=0.3,
                    help="with --synthetic: fraction of z slices of 3D stacks (default: 0.3)")
    tr.add_argument("--ranges", choices=("v0.5", "v0.4", "mixed"), default="v0.4",
                    help="with --synthetic: the generator's training ranges (default: v0.4, "
                         "those of the default model)")
    tr.add_argument("--crop", type=int, default=1024,
                    help="with --images: largest training crop side (default: %(default)s)")
    tr.add_argument("--width", type=int, default=32,
                    help="channels of the refiner's hidden layers (default: %(default)s)")
    tr.add_argument("--epochs", type=int, default=8)
    tr.add_argument("--lr", type=float, default=2e-3)
    tr.add_argument("--batch-size", type=int, default=64)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    tr.add_argument("--log", help="write the per-epoch log (JSON lines) here")
    tr.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")
    tr.set_defaults(handler=run)


def run(args) -> int:
    """Run ``train-refiner``; returns the exit code. Bad input raises :class:`InputError`."""
    import torch  # only for this command: --help stays fast

    from .. import training
    from ..modeling import MaskRefiner
    from ..models.build import build_model
    from ..training import refiner as rt

    out = Path(args.out)
    _common.check_outputs([("--out", out), ("--log", args.log)],
                          [("--init model", args.init), *_common.training_inputs(args)])
    for name in ("n_images", "epochs", "batch_size", "objects_per_image", "width"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0.0 <= args.stack_fraction <= 1.0:
        raise InputError(f"--stack-fraction must be in [0, 1], got {args.stack_fraction}")
    if args.threads:
        torch.set_num_threads(args.threads)
    _common.check_training_data_args(args)
    images = labels = None
    if args.images:
        images, labels = _common.read_pairs(args.images, args.labels, args.holdout_every)
    model = build_model(args.init, device=args.device)
    data = _refiner_examples(args, model, images, labels, out.with_name(out.name + ".examples.npz"))

    torch.manual_seed(args.seed)
    refiner = rt.attach_refiner(model, MaskRefiner(width=args.width))

    def report(epoch: int, total: int, entry: dict) -> None:
        print(f"epoch {epoch}/{total} loss {entry['loss']:.4f} held-out crop IoU "
              f"{entry['val_iou_before']:.3f} -> {entry['val_iou']:.3f}", flush=True)

    log = rt.train_refiner(refiner, data, epochs=args.epochs, lr=args.lr,
                           batch_size=args.batch_size, seed=args.seed,
                           state_path=out.with_name(out.name + ".state.pt"), progress=report)
    training.save_atomic(model.state_dict(), out)
    if args.log:
        atomic_write_text(args.log, "\n".join(json.dumps(e) for e in log) + "\n")
    print(f"wrote {out}")
    return 0


def _refiner_examples(args, model, images, labels, examples_path: Path):
    """The refiner's training examples: read back from ``examples_path`` when a previous run
    left them there, else the frozen ``model``'s masks of simulated prompts (then kept there).
    """
    from .. import training
    from ..training import refiner as rt

    if examples_path.exists():
        data = rt.RefinerExamples.load(examples_path)
        print(f"{len(data)} examples from {examples_path}")
        return data
    lo, hi = args.size_range
    if args.synthetic and not 8 <= lo <= hi:
        raise InputError(f"--size-range must be 8 <= MIN <= MAX, got {lo} {hi}")
    stream = _common.training_examples(
        args, images, labels,
        lambda: training.synthetic_examples(args.seed, size_range=(lo, hi), size_log=True,
                                            stack_fraction=args.stack_fraction,
                                            ranges=args.ranges),
        args.crop)

    def simulated(done: int, total: int) -> None:
        if done % 20 == 0 or done == total:
            print(f"image {done}/{total}", flush=True)

    data = rt.simulate_refiner_examples(model, stream, args.n_images, seed=args.seed,
                                        objects_per_image=args.objects_per_image,
                                        progress=simulated)
    if len(data) < 10:
        raise InputError(f"only {len(data)} objects were segmented: too few to train on")
    data.save(examples_path)
    print(f"{len(data)} examples (the model's mean IoU {data.base_iou.mean():.3f}), "
          f"kept in {examples_path}")
    return data
