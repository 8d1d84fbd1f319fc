"""The ``napari-sam`` command line: the parser built from the command modules, and dispatch.

Each command module has ``register(subparsers)``, which adds its parser and sets its ``run``
as the ``handler`` default, and ``run(args) -> int``. Bad input (missing files, wrong shapes,
unknown models, unreadable checkpoints) prints one line ``napari-sam: error: ...`` to stderr and
exits with code 2; nothing is written half-way. Outputs are checked before anything is computed
(:func:`._common.check_outputs`): one that is a file the command reads (also through a link),
or that cannot be written, is refused.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import (
    automatic,
    embed,
    evaluate,
    models,
    segment,
    train,
    train_decoder,
    train_refiner,
    view,
)
from ._common import PROG, InputError

__all__ = ["COMMANDS", "build_parser", "main"]

#: The command modules, in the order ``napari-sam --help`` lists them.
COMMANDS = (segment, models, evaluate, automatic, train_refiner, train_decoder, train, view, embed)


def build_parser() -> argparse.ArgumentParser:
    """The ``napari-sam`` parser with every command of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Segment Anything for microscopy: headless segmentation and the napari plugin.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``napari-sam`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from .. import __version__

        print(__version__)
        return 0
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except (InputError, ValueError, FileNotFoundError, OSError, RuntimeError) as exc:
        # One line for the user; the class name helps when reporting a bug.
        msg = " ".join(str(exc).split()) or type(exc).__name__
        print(f"{PROG}: error: {msg}", file=sys.stderr)
        return 2
