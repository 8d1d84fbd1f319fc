"""``python -m napari_sam.cli``: the ``napari-sam`` command."""

import sys

from ._main import main

if __name__ == "__main__":  # guarded: walking the package (tests/test_headless.py) imports this
    sys.exit(main())
