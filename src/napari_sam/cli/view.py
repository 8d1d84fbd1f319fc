"""``napari-sam view``: open napari with the plugin docked on an image or a sample."""

from __future__ import annotations


def register(sub) -> None:
    """Add the ``view`` command to ``sub`` (the parser's sub-parsers)."""
    view = sub.add_parser("view", help="open napari with the plugin docked on an image or sample")
    view.add_argument("image", nargs="?", help="image file; a synthetic sample if omitted")
    view.add_argument("--sample", default="nuclei_3d", choices=["nuclei_2d", "nuclei_3d"],
                      help="sample to open when no image is given (default: %(default)s)")
    view.add_argument("--model", default=None, help="model to preselect in the widget")
    view.set_defaults(handler=run)


def run(args) -> int:
    """Open the viewer and block until it is closed; returns 0."""
    # napari and Qt: only for this command (the rest of the CLI is headless)
    import napari

    from ..plugin._launch import launch

    launch(image_path=args.image, sample=args.sample, model=args.model)
    napari.run()
    return 0
