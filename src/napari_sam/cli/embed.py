"""``napari-sam embed``: precompute the embeddings of every plane of an image into a zarr store,
locally or on a Dask cluster."""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from ..data.io import open_image_lazy
from . import _common
from ._common import InputError


def register(sub) -> None:
    """Add the ``embed`` command to ``sub`` (the parser's sub-parsers)."""
    emb = sub.add_parser(
        "embed",
        help="precompute the embeddings of every plane of an image into a zarr store",
        description=(
            "Embed every 2D plane of an image (TIFF, zarr, npy) into a zarr store that the "
            "plugin and later runs reuse. Resumable: rerun the same command to compute only the "
            "planes that are missing. A store computed from another image, model or "
            "normalisation is recreated. --scheduler spreads planes over a Dask cluster, "
            "--workers over a local one."
        ),
    )
    emb.add_argument("image", help="image file (.tif, .zarr, .npy)")
    emb.add_argument("--out", default=None,
                     help="embedding store to write (a .zarr folder); default: the automatic "
                          "store in the cache folder, where the napari plugin finds it")
    emb.add_argument("--axis", type=int, nargs="+", default=None, metavar="A",
                     help="the stack axes the planes are taken along (default: all but the last "
                          "two spatial axes)")
    emb.add_argument("--rgb", action=argparse.BooleanOptionalAction, default=None,
                     help="treat the last axis as RGB (default: guessed from the shape)")
    emb.add_argument("--intensity-range", type=float, nargs=2, metavar=("LOW", "HIGH"),
                     help="normalisation range (default: robust percentiles of the whole image)")
    where = emb.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDRESS",
                       help="Dask scheduler address (e.g. tcp://host:8786) to spread planes over")
    where.add_argument("--workers", type=int, metavar="N",
                       help="start a local Dask cluster of N worker processes")
    _common.add_model_args(emb)
    emb.set_defaults(handler=run)


def run(args) -> int:
    """Run ``embed``; returns 0 when every plane is in the store, 1 when some are still missing.
    Bad input raises :class:`InputError`."""
    # torch (the model), zarr (the store): only for this command
    from ..engine.cluster import EmbedJob, make_embedder
    from ..workflows.segment import is_rgb

    if args.workers is not None and args.workers < 1:
        raise InputError("--workers must be at least 1")
    out = Path(args.out).expanduser() if args.out else None
    if out is not None:
        _common.check_out_dir(out)
    if args.intensity_range and not args.intensity_range[1] > args.intensity_range[0]:
        raise InputError("--intensity-range: HIGH must be larger than LOW")
    image = open_image_lazy(args.image)
    rgb = is_rgb(image) if args.rgb is None else args.rgb
    spatial = tuple(image.shape[:-1] if rgb else image.shape)
    if len(spatial) < 2 or min(spatial) < 1:
        raise InputError(f"{args.image}: not an image with two spatial axes (shape {image.shape})")
    axes = _plane_axes(args.axis, len(spatial))

    model = _common.load_model(args)
    model_path = Path(args.model).expanduser()
    is_file = model_path.exists()
    job = EmbedJob(
        image=str(Path(args.image).expanduser().resolve()),
        store=str(out.resolve()) if out is not None else "auto",
        model=str(model_path.resolve()) if is_file else args.model,
        checkpoint=str(Path(args.checkpoint).expanduser().resolve()) if args.checkpoint else None,
        device=args.device,
        axes=axes,
        rgb=bool(rgb),
        intensity_range=tuple(args.intensity_range) if args.intensity_range else None,
        model_name=model_path.name if is_file else (
            f"{args.model}+{Path(args.checkpoint).name}" if args.checkpoint else args.model),
    )
    embedder = make_embedder(job, model)
    total = embedder.n_planes
    print(f"{args.image}: {total} plane(s) of {embedder.original_size[0]}x"
          f"{embedder.original_size[1]} along axes {axes}; hashing the image...", flush=True)
    store = embedder.store
    if store.status == "reused":
        print(f"{store.path}: reusing the store, {store.n_done}/{total} plane(s) already done")
    elif store.status == "recreated":
        print(f"{store.path}: recreated ({store.reason})")
    job = dataclasses.replace(
        job, store=str(store.path), intensity_range=embedder.intensity_range,
        fingerprint=embedder.fingerprint,
    )
    todo = embedder.missing()
    start = time.monotonic()
    computed = _precompute(args, embedder, job, todo)
    elapsed = time.monotonic() - start
    print(f"wrote {store.path}: {computed} plane(s) computed in {elapsed:.1f} s, "
          f"{store.n_done}/{total} done")
    return 0 if store.n_done == total else 1


def _plane_axes(stack_axes: list[int] | None, ndim: int) -> tuple[int, int]:
    """The two plane axes that ``--axis`` (the stack axes) leaves of ``ndim`` spatial axes."""
    if stack_axes is None:
        return (ndim - 2, ndim - 1)
    norm = set()
    for a in stack_axes:
        if not -ndim <= a < ndim:
            raise InputError(f"--axis {a} is out of range for an image with {ndim} spatial axes")
        norm.add(a % ndim)
    rest = [a for a in range(ndim) if a not in norm]
    if len(rest) != 2:
        raise InputError(
            f"--axis {' '.join(map(str, stack_axes))} leaves {len(rest)} plane axes of {ndim}; "
            "give all the axes but two"
        )
    return (rest[0], rest[1])


def _precompute(args, embedder, job, todo: list[tuple[int, ...]]) -> int:
    """Embed the planes ``todo`` (those missing from the store), here or on the Dask cluster of
    ``--scheduler`` / ``--workers``, printing progress; returns the number of planes computed."""
    from ..engine.cluster import precompute_distributed

    already = embedder.n_planes - len(todo)
    clock = {"t": 0.0}

    def progress(done: int, n: int) -> None:
        now = time.monotonic()
        if done == n or now - clock["t"] >= 2.0:
            clock["t"] = now
            print(f"embedded {already + done}/{embedder.n_planes} planes", flush=True)

    if not (args.scheduler or args.workers):
        return embedder.precompute(todo, progress=progress)
    from distributed import Client, LocalCluster  # optional dependency: only for a cluster

    if args.scheduler:
        with Client(args.scheduler) as client:
            return precompute_distributed(client, job, todo, progress=progress)
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        return precompute_distributed(client, job, todo, progress=progress)
