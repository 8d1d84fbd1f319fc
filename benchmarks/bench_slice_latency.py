"""How long a newly shown slice of a 3D stack takes to be ready in the viewer, against
``SamPredictor.set_image`` on the same plane alone.

"Ready" is the moment the widget's predictor holds the new slice's embedding (a click decodes
at once), measured from the change of the viewer's current step, with Qt's events running.
Three ways, in one run, on the same model and stack, each on slices never embedded before:

- ``no prefetch``: the widget embeds only the slices shown;
- ``prefetch, old``: neighbours are prefetched, and the shown slice waits for the neighbour being
  encoded (the embedder's compute lock), as before issue 20's fix;
- ``prefetch, new``: asking for the shown slice abandons the neighbour's encoding at the
  encoder's next part of a block (``plugin/_workers.install_yield_points``).

The jump happens while a neighbour of the previous slice is being encoded (``--into`` of a
``set_image`` after its prefetch started). Before each jump, ``set_image`` on the target plane
alone is timed (the same minutes on a shared machine); medians of ``--jumps`` jumps, and the
median of the per-jump ratios. "start" is the time from the jump to the start of the slice's
embedding: napari's own slicing and the widget's 60 ms debounce.

    xvfb-run -a python benchmarks/bench_slice_latency.py [--model default] [--size 512]
"""

from __future__ import annotations

import argparse
import statistics
import time


def _pump(until, timeout=120.0) -> float:
    """Run Qt's events until ``until()``; the seconds it took."""
    from qtpy.QtWidgets import QApplication

    start = time.perf_counter()
    while not until():
        QApplication.processEvents()
        if time.perf_counter() - start > timeout:
            raise TimeoutError("the slice never became ready")
        time.sleep(0.001)
    return time.perf_counter() - start


def _ready(widget, layer):
    from napari_sam.plugin._layers import current_plane

    key = current_plane(layer, widget.viewer.dims).key

    def check():
        held = widget.session.embedding_key
        return held is not None and held[1] == key

    return check


def time_jumps(viewer, widget, layer, model, mode, jumps, into):
    """Per jump in ``mode``: ``(set_image s, start s, ready s)``: ``SamPredictor.set_image`` on the
    target plane alone, just before the jump; from the jump to the start of the slice's
    embedding (the viewer's own slicing and the widget's debounce); from the jump to ready."""
    import napari_sam.plugin.session as session_module
    from napari_sam.engine.predictor import SamPredictor
    from napari_sam.plugin._workers import install_yield_points

    session_module.install_yield_points = (
        (lambda m: []) if mode == "prefetch, old" else install_yield_points
    )
    widget.prefetch_slices = 0 if mode == "no prefetch" else 2
    widget.set_model(model, mode)  # new token: nothing of the other modes is reused
    rows = []
    n = layer.data.shape[0]
    for j in range(jumps):
        start_z, target_z = 3 + 12 * j, 3 + 12 * j + 6
        if target_z >= n:
            break
        t0 = time.perf_counter()
        SamPredictor(model).set_image(layer.data[target_z])  # the same minutes, the same plane
        alone = time.perf_counter() - t0
        viewer.dims.set_current_step(0, start_z)
        _pump(_ready(widget, layer))
        if mode != "no prefetch":
            _pump(lambda: widget.is_prefetching)
            _sleep_pumping(into * alone)  # a neighbour is being encoded now
        t0 = time.perf_counter()
        viewer.dims.set_current_step(0, target_z)
        ready = _ready(widget, layer)
        started = _pump(lambda ready=ready: widget.session.job is not None or ready())
        rows.append((alone, started, started + _pump(ready)))
        _pump(lambda: not widget.is_busy and not widget.is_prefetching)
    session_module.install_yield_points = install_yield_points
    return rows


def _sleep_pumping(seconds: float) -> None:
    end = time.perf_counter() + seconds
    _pump(lambda: time.perf_counter() >= end)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="registry name or 'tiny'")
    parser.add_argument("--size", type=int, default=512, help="plane side in pixels")
    parser.add_argument("--jumps", type=int, default=3)
    parser.add_argument("--into", type=float, default=0.3,
                        help="jump this fraction of a set_image after the prefetch started")
    args = parser.parse_args()

    import napari
    import torch

    from napari_sam import build_model
    from napari_sam.data.synthetic import make_nuclei_3d
    from napari_sam.engine.predictor import SamPredictor
    from napari_sam.plugin import SamWidget

    if args.model == "tiny":
        from napari_sam.models.build import build_sam, tiny_config

        model = build_sam(tiny_config()).eval()
    else:
        model = build_model(args.model, device="cpu")
    stack, _ = make_nuclei_3d((12 * args.jumps + 4, args.size, args.size), seed=0)

    SamPredictor(model).set_image(stack[0])  # warm-up
    viewer = napari.Viewer(show=False)
    layer = viewer.add_image(stack, name="stack")
    widget = SamWidget(viewer, load_default=False)
    widget.disk_cache.value = False  # every slice is computed, none read from an earlier run
    viewer.window.add_dock_widget(widget)
    print(f"model {args.model}, planes {args.size} x {args.size}, torch threads "
          f"{torch.get_num_threads()}, {args.jumps} jumps per way")
    print(f"{'way':<16}{'set_image s':>12}{'start s':>9}{'ready s':>9}{'max s':>7}"
          f"{'ready / set_image':>19}")
    for mode in ("no prefetch", "prefetch, old", "prefetch, new"):
        rows = time_jumps(viewer, widget, layer, model, mode, args.jumps, args.into)
        alone, start, ready = (statistics.median(r[k] for r in rows) for k in range(3))
        ratio = statistics.median(r[2] / r[0] for r in rows)
        print(f"{mode:<16}{alone:>12.3f}{start:>9.3f}{ready:>9.3f}"
              f"{max(r[2] for r in rows):>7.3f}{ratio:>19.2f}")
    viewer.close()


if __name__ == "__main__":
    main()
