"""Make docs/images/widget.png: napari with the 3D nuclei sample and the Segment Anything widget.

The script opens the sample stack, loads ``--model``, clicks a positive point on a nucleus of
the middle slice, commits it, clicks a second nucleus so that its live preview shows too, and
saves a screenshot of the whole window.

    python docs/make_screenshot.py --model vit_b
    python docs/make_screenshot.py --model path/to/finetuned.pth --device cuda
    xvfb-run -a -s "-screen 0 1600x1000x24" python docs/make_screenshot.py --model vit_b

``--model tiny`` uses a tiny model with random weights: only for checking the layout (its masks
are noise).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PLUGIN = "napari-sam-nd"


def _parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        default="default",
        help="registry name, checkpoint file, or 'tiny' (random weights, layout only)",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")
    parser.add_argument("--out", default=str(HERE / "images" / "widget.png"))
    parser.add_argument("--size", default="1500x950", help="window size WxH (default: %(default)s)")
    return parser.parse_args(argv)


def _ensure_plugin() -> None:
    """Register the manifest when the package is used from a checkout without pip install."""
    import npe2

    pm = npe2.PluginManager.instance()
    pm.discover()
    if PLUGIN not in pm:
        pm.register(str(ROOT / "napari.yaml"))


def _wait(widget, app, what: str, timeout: float = 600.0) -> None:
    start = time.time()
    while widget.is_busy:
        app.processEvents()
        time.sleep(0.02)
        if time.time() - start > timeout:
            raise TimeoutError(f"gave up waiting for {what}: {widget.status_label.value}")
    for _ in range(5):
        app.processEvents()


def _nucleus_centres(labels2d: np.ndarray, n: int) -> list[tuple[int, int]]:
    """Pixels deep inside the ``n`` largest objects of a label image, largest first."""
    from scipy import ndimage

    ids, counts = np.unique(labels2d[labels2d > 0], return_counts=True)
    centres = []
    for obj_id in ids[np.argsort(counts)[::-1][:n]]:
        dist = ndimage.distance_transform_edt(np.pad(labels2d == obj_id, 1))[1:-1, 1:-1]
        centres.append(tuple(int(v) for v in np.unravel_index(np.argmax(dist), dist.shape)))
    return centres


def _load_model(name: str, device: str | None):
    if name == "tiny":
        import torch

        from napari_sam.models.build import build_sam, tiny_config

        torch.manual_seed(0)
        print("warning: --model tiny has random weights; the masks are noise", file=sys.stderr)
        return build_sam(tiny_config())
    from napari_sam import build_model

    return build_model(name, device=device)


def main(argv=None) -> int:
    args = _parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_sam.plugin import launch
    from napari_sam.plugin._sample_data import Z_ANISOTROPY
    from napari_sam.data.synthetic import make_nuclei_3d

    _ensure_plugin()
    viewer = launch(sample="nuclei_3d", show=True)
    app = QApplication.instance()
    viewer.window.resize(width, height)
    app.processEvents()
    widget = next(w for w in viewer.window.dock_widgets.values() if type(w).__name__ == "SamWidget")
    image = viewer.layers["nuclei 3D"]

    widget.set_model(_load_model(args.model, args.device), args.model)
    # the same stack as the sample (same generator call), for its ground-truth nuclei
    _, truth = make_nuclei_3d(image.data.shape, seed=0, z_anisotropy=Z_ANISOTROPY)
    z = int(np.argmax((truth > 0).sum(axis=(1, 2))))
    viewer.dims.set_point(0, float(image.data_to_world([z, 0, 0])[0]))
    _wait(widget, app, "the embedding")

    first, second = _nucleus_centres(truth[z], 2)
    widget.points_layer.add([z, *first])
    _wait(widget, app, "the preview")
    ids = widget.commit()
    print(f"committed object(s) {ids} on z={z}")
    widget.points_layer.add([z, *second])
    _wait(widget, app, "the second preview")
    viewer.layers.selection.active = widget.points_layer
    viewer.reset_view()
    app.processEvents()

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(out), canvas_only=False, flash=False)
    print(f"wrote {out}")
    viewer.close()
    del napari
    return 0


if __name__ == "__main__":
    sys.exit(main())
