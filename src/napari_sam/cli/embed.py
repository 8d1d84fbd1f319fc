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
            "planes that are missing. Every plane a reused store holds is first checked against "
            "its checksum; planes that fail are recomputed and listed. A store computed from "
            "another image, model or normalisation is recreated. Several runs may fill one store "
            "at once: each plane is computed by one of them. --scheduler spreads planes over a "
            "Dask cluster, --workers over a local one."
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
    emb.add_argument("--verify", action=argparse.BooleanOptionalAction, default=True,
                     help="check every plane a reused store holds against its checksum and "
                          "recompute those that fail (default: on; --no-verify skips the check, "
                          "planes are then still checked when read)")
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
    _common.check_outputs([("--out", out)], [("input image", args.image),
                                             *_common.model_inputs(args)], folders=["--out"])
    if out is None:
        _check_cache_folder()
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
    if store is None:  # the automatic store could not be written after all
        raise InputError("cannot write the automatic embedding store: give --out")
    bad: dict[tuple[int, ...], str] = {}
    if store.status == "reused":
        print(f"{store.path}: reusing the store, {store.n_done}/{total} plane(s) already done")
        if args.verify:
            bad = _verify(embedder)
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
    done = store.done_mask()
    repaired = [i for i in bad if embedder.has(i)]
    if repaired:
        print(f"repaired {len(repaired)} plane(s): {_planes_text(repaired)}")
    print(f"wrote {store.path}: {computed} plane(s) computed in {elapsed:.1f} s, "
          f"{int(done.sum())}/{total} done")
    return 0 if done.all() else 1


def _check_cache_folder() -> None:
    """Without ``--out``: refuse a read-only cache folder before anything is computed."""
    from ..engine.plane_store import default_store_dir, writable_location

    folder = default_store_dir()
    if not writable_location(folder):
        raise InputError(f"the cache folder {folder} is not writable: give --out, or set "
                         "NAPARI_SAM_CACHE to a writable folder")


def _verify(embedder) -> dict[tuple[int, ...], str]:
    """Check every stored plane against its checksum, printing what failed (marked to redo)."""
    n = int(embedder.store.done_mask().sum())
    print(f"verifying {n} stored plane(s)...", flush=True)
    bad = embedder.verify()
    if not bad:
        print(f"verified {n} stored plane(s): all intact")
        return bad
    print(f"{len(bad)} stored plane(s) failed verification and will be recomputed:")
    for i, (index, why) in enumerate(bad.items()):
        if i == _LISTED:
            print(f"  ... and {len(bad) - _LISTED} more")
            break
        print(f"  plane {index}: {why}")
    return bad


_LISTED = 20


def _planes_text(planes: list[tuple[int, ...]]) -> str:
    text = ", ".join(str(p) for p in planes[:_LISTED])
    return text + (f" and {len(planes) - _LISTED} more" if len(planes) > _LISTED else "")


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
