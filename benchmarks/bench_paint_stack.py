"""GUI-thread time of writing many objects on many slices into a Labels layer (``paint_stack``).

Compares, in one run and on the same data, the batched ``paint_stack`` (one merged label plane
per slice, a few vectorised ``data_setitem`` calls) with the previous mask-by-mask path (one
``paint_mask`` / ``data_setitem`` per object and slice, still used for targets on another
grid), and ``paint_label_stack`` given the same result as one label image per slice (the form
"segment everything" produces; no mask per object). The Labels layer sits in a napari viewer
(not shown), so view refreshes are included.
Each variant writes into a fresh copy of the same layer; the median of ``--repeats`` runs of
wall time is reported, with the number of ``data_setitem`` calls.

    xvfb-run -a python benchmarks/bench_paint_stack.py [--objects 300] [--slices 20] [--size 1024]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def make_objects(n_objects, n_slices, size, rng):
    """``{value: {slice: (size, size) bool}}`` discs; one mask array shared by all slices."""
    rr, cc = np.mgrid[0:size, 0:size]
    objects = {}
    for k in range(n_objects):
        r, c = rng.integers(20, size - 20, 2)
        radius = rng.integers(8, 20)
        mask = (rr - r) ** 2 + (cc - c) ** 2 <= radius**2
        objects[1000 + k] = {i: mask for i in range(n_slices)}
    return objects


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=300)
    parser.add_argument("--slices", type=int, default=20)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import napari

    from napari_sam.plugin._layers import Plane
    from napari_sam.plugin._stack import _paint_stack_each, paint_label_stack, paint_stack

    rng = np.random.default_rng(0)
    shape = (args.slices, args.size, args.size)
    objects = make_objects(args.objects, args.slices, args.size, rng)
    base = np.zeros(shape, dtype=np.int32)
    base[:, : args.size // 4, : args.size // 4] = 7  # an existing object the masks must keep

    viewer = napari.Viewer(show=False)
    image = viewer.add_image(np.zeros(shape, dtype=np.uint8))
    plane = Plane((1, 2), (0, 0, 0), shape, (0.0, 0.0, 0.0))

    def legacy(target, overwrite):
        with target.block_history():
            return _paint_stack_each(
                target,
                image,
                plane,
                0,
                objects,
                overwrite,
                None,
                sum(len(v) for v in objects.values()),
            )

    def batched(target, overwrite):
        return paint_stack(target, image, plane, 0, objects, overwrite)

    # the same objects as label images: first object wins (keep), last wins (overwrite)
    composites = {}
    for overwrite in (False, True):
        lab = np.zeros(shape[1:], dtype=np.int64)
        for value, masks in objects.items():
            sel = masks[0] if overwrite else masks[0] & (lab == 0)
            lab[sel] = value
        composites[overwrite] = {i: lab for i in range(args.slices)}

    def label_planes(target, overwrite):
        return paint_label_stack(target, image, plane, 0, composites[overwrite], overwrite)

    results = {}
    for overwrite in (False, True):
        variants = {"mask by mask": legacy, "batched": batched, "label planes": label_planes}
        times: dict[str, list[float]] = {name: [] for name in variants}
        calls: dict[str, int] = {}
        outputs = {}
        for _ in range(args.repeats):
            for name, fn in variants.items():
                target = viewer.add_labels(base.copy())
                count = [0]
                original = target.data_setitem

                def counting(*a, _orig=original, _count=count, **k):
                    _count[0] += 1
                    return _orig(*a, **k)

                target.data_setitem = counting
                t0 = time.perf_counter()
                written = fn(target, overwrite)
                times[name].append(time.perf_counter() - t0)
                calls[name] = count[0]
                outputs[name] = (written, target.data.copy())
                target.undo()
                assert np.array_equal(target.data, base), "undo did not restore the layer"
                viewer.layers.remove(target)
        same = outputs["mask by mask"][0] == outputs["batched"][0] and all(
            np.array_equal(outputs["mask by mask"][1], outputs[name][1])
            for name in ("batched", "label planes")
        )
        results[overwrite] = (times, calls, same)

    print(
        f"{args.objects} objects x {args.slices} slices into a {shape} int32 Labels layer "
        f"(median of {args.repeats}, wall time on the calling thread)"
    )
    print(f"{'overwrite':>9}  {'variant':>12}  {'time (s)':>8}  {'setitem calls':>13}  ratio")
    for overwrite, (times, calls, same) in results.items():
        slow = statistics.median(times["mask by mask"])
        for name in variants:
            t = statistics.median(times[name])
            print(f"{overwrite!s:>9}  {name:>12}  {t:8.3f}  {calls[name]:13d}  {slow / t:5.1f}x")
        print(f"{'':>9}  identical result: {same}")
    viewer.close()


if __name__ == "__main__":
    main()
