"""``napari-sam models``: list the model names the registry knows."""

from __future__ import annotations


def register(sub) -> None:
    """Add the ``models`` command to ``sub`` (the parser's sub-parsers)."""
    p = sub.add_parser("models", help="list the model names the registry knows")
    p.set_defaults(handler=run)


def run(args) -> int:
    """Print one registry name per line; returns 0."""
    from ..models.build import list_models  # torch: the registry lives with the model builder

    for name in list_models():
        print(name)
    return 0
