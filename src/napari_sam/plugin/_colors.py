"""The plugin's colours: prompts, the preview, and label colours that never look like it."""

from __future__ import annotations

import numpy as np
from napari.utils.colormaps import CyclicLabelColormap, label_colormap
from napari.utils.colormaps.standardize_color import transform_color

__all__ = ["NEGATIVE_COLOR", "POSITIVE_COLOR", "PREVIEW_COLOR", "committed_colormap"]

POSITIVE_COLOR = "#00ff00"
NEGATIVE_COLOR = "#ff00ff"
PREVIEW_COLOR = "#00e5ff"


def committed_colormap(min_distance: float = 0.45) -> CyclicLabelColormap:
    """napari's label colours without those close to the preview's (RGB distance in [0, 1]
    units): a committed object never looks like the preview."""
    base = label_colormap(49)
    preview = np.asarray(transform_color(PREVIEW_COLOR)[0][:3])
    keep = np.linalg.norm(base.colors[1:, :3] - preview, axis=1) >= min_distance
    return CyclicLabelColormap(colors=np.concatenate([base.colors[:1], base.colors[1:][keep]]))
