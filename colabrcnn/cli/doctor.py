"""``colabrcnn doctor``: Python, Keras, backend and GPU, and what to fix."""
from __future__ import annotations

import argparse

from .. import __version__, env

HELP = "check Python, Keras, backend and GPU, and say what to fix"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--strict", action="store_true",
                        help="exit with status 1 when problems are found (for CI)")


def run(args: argparse.Namespace) -> int:
    report = env.doctor()
    print(f"colabrcnn {__version__}")
    print(env.format_report(report))
    return 1 if (args.strict and report.problems) else 0
