"""Shared test setup.

With CUDA builds of torch, importing triton (pulled in by torchvision, which Meta's reference
``segment_anything`` imports) after napari has created its Mesa OpenGL context crashes the process.
Import it here, before any viewer exists, so test order and selection cannot matter. The plugin
itself never imports torchvision (tests/test_headless.py checks the real order in a subprocess).
"""

import importlib.util

if importlib.util.find_spec("torchvision") is not None:
    import torchvision  # noqa: F401
