"""Models as users name them: configurations, the registry, checkpoints, weights and devices.

Builds :mod:`napari_sam.modeling` networks (``build_model("vit_b")``), loads official and
project checkpoints unchanged, and fetches weights into the cache.
"""

from . import microsam  # noqa: F401 -- registers micro-sam's weights (light: no torch)
