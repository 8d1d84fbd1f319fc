"""The npe2 manifest, the sample data, the dock widget contribution and the launcher."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
from conftest import PLUGIN, ROOT

from napari_sam.plugin import SamWidget


def test_manifest_is_valid_and_its_commands_import():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_file(ROOT / "napari.yaml")
    assert manifest.name == PLUGIN
    assert [w.display_name for w in manifest.contributions.widgets] == ["Segment Anything"]
    assert {s.key for s in manifest.contributions.sample_data} == {"nuclei_2d", "nuclei_3d"}
    for command in manifest.contributions.commands:
        module, _, attr = command.python_name.partition(":")
        assert callable(getattr(importlib.import_module(module), attr))
    # the package's napari.yaml (for editable installs) is the root one
    packaged = ROOT / "src" / "napari_sam" / "napari.yaml"
    assert packaged.resolve() == (ROOT / "napari.yaml").resolve()


def test_sample_data():
    from napari_sam.plugin._sample_data import nuclei_2d, nuclei_3d

    [(image2d, _meta2d, kind2d)] = nuclei_2d()
    [(image3d, meta3d, kind3d)] = nuclei_3d()
    assert kind2d == kind3d == "image"
    assert image2d.ndim == 2 and image2d.std() > 0
    assert image3d.ndim == 3 and image3d.shape[0] > 1
    assert meta3d["scale"][0] > meta3d["scale"][1]  # anisotropic z, shown to scale
    np.testing.assert_array_equal(nuclei_2d()[0][0], image2d)  # same sample every time


def test_dock_widget_and_sample_from_the_plugin(plugin_viewer, qtbot):
    viewer = plugin_viewer()
    viewer.open_sample(PLUGIN, "nuclei_3d")
    assert viewer.layers[0].data.ndim == 3
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment Anything")
    assert isinstance(widget, SamWidget)
    assert widget.image is viewer.layers["nuclei 3D"]
    assert {"SAM points", "SAM boxes", "SAM preview"} <= {layer.name for layer in viewer.layers}
    qtbot.waitUntil(lambda: not widget.is_busy)


def test_launch(plugin_viewer, monkeypatch, tmp_path, qtbot):
    import napari
    import tifffile

    from napari_sam.plugin import launch

    monkeypatch.setattr(napari, "Viewer", lambda show=True: plugin_viewer())
    viewer = launch(sample="nuclei_2d", show=False)
    assert next(layer.name for layer in viewer.layers) == "nuclei 2D"
    widgets = [w for w in viewer.window.dock_widgets.values() if isinstance(w, SamWidget)]
    assert len(widgets) == 1

    path = Path(tmp_path) / "stack.tif"
    stack = np.arange(4 * 16 * 16, dtype=np.uint16).reshape(4, 16, 16)
    tifffile.imwrite(path, stack, photometric="minisblack")
    viewer = launch(image_path=path, show=False)
    assert viewer.layers["stack"].data.shape == (4, 16, 16)
    widget = next(w for w in viewer.window.dock_widgets.values() if isinstance(w, SamWidget))
    qtbot.waitUntil(lambda: not widget.is_busy)
