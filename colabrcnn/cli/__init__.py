"""The ``colabrcnn`` command (also ``python -m colabrcnn``): one module per subcommand.

Each subcommand module (``doctor.py``, ``demo.py``, ``train.py``, ``validate.py``,
``convert.py``, ``fetch_weights.py``, ``evaluate.py``, ``predict.py``) has a ``HELP``
line, an ``add_arguments(parser)`` that declares its options and a ``run(args) -> int``
that does the work; :data:`SUBCOMMANDS` registers them. To add one, write such a
module and register it::

    SUBCOMMANDS["train"] = Subcommand(train.HELP, train.add_arguments, train.run)

Subcommand modules import Keras and the model only inside ``run`` (everything else they
import is Keras-free), so that ``colabrcnn --help`` and ``colabrcnn doctor`` stay fast
and keep working when Keras is broken.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Callable

from .. import __version__
from ..errors import ColabRCNNError
from . import (convert, demo, doctor, evaluate, fetch_weights, predict, train,
               validate)


@dataclass(frozen=True)
class Subcommand:
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _from_module(module) -> Subcommand:
    return Subcommand(module.HELP, module.add_arguments, module.run)


SUBCOMMANDS: dict[str, Subcommand] = {
    "doctor": _from_module(doctor),
    "demo": _from_module(demo),
    "train": _from_module(train),
    "validate": _from_module(validate),
    "convert": _from_module(convert),
    "fetch-weights": _from_module(fetch_weights),
    "evaluate": _from_module(evaluate),
    "predict": _from_module(predict),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="colabrcnn",
        description="Mask R-CNN instance segmentation on Keras 3 for Colab/Kaggle GPUs.")
    parser.add_argument("--version", action="store_true",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, command in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=command.help, description=command.help)
        command.add_arguments(sub_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: sys.argv[1:]); return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help or a usage error: argparse already printed
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    if args.version:
        print(f"colabrcnn {__version__}")
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(SUBCOMMANDS[args.command].run(args) or 0)
    except ColabRCNNError as e:
        # Our own errors carry a message written for the user; no traceback needed.
        print(f"colabrcnn {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


__all__ = ["Subcommand", "SUBCOMMANDS", "build_parser", "main"]
