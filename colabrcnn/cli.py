"""The ``colabrcnn`` command (also ``python -m colabrcnn``).

Subcommands live in :data:`SUBCOMMANDS`: each has a help line, an
``add_arguments(parser)`` that declares its options and a ``run(args) -> int`` that
does the work. To add one, write those two functions and register them::

    SUBCOMMANDS["train"] = Subcommand("train a model", _train_arguments, _train_run)

Import heavy modules (Keras, the model) inside ``run``, so that ``colabrcnn --help``
and ``colabrcnn doctor`` stay fast and keep working when Keras is broken.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Callable

from . import __version__
from . import cli_results
from .errors import ColabRCNNError


@dataclass(frozen=True)
class Subcommand:
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


# ------------------------------------------------------------------ doctor
def _doctor_arguments(parser):
    parser.add_argument("--strict", action="store_true",
                        help="exit with status 1 when problems are found (for CI)")


def _doctor_run(args):
    from . import env
    report = env.doctor()
    print(f"colabrcnn {__version__}")
    print(env.format_report(report))
    return 1 if (args.strict and report.problems) else 0


# -------------------------------------------------------------------- demo
def _demo_arguments(parser):
    parser.add_argument("--out", default="runs/demo",
                        help="folder for the run (checkpoints, log, pictures)")
    parser.add_argument("--epochs", type=int, default=40,
                        help="epochs of 20 steps (default 40: about five minutes on a CPU)")
    parser.add_argument("--train-images", type=int, default=500)
    parser.add_argument("--val-images", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)


def _demo_run(args):
    from .demo import run_demo
    run_demo(out_dir=args.out, epochs=args.epochs, train_images=args.train_images,
             val_images=args.val_images, seed=args.seed)
    return 0


# ------------------------------------------------------------------- train
def _train_arguments(parser):
    from .cli_train import add_arguments
    add_arguments(parser)


def _train_run(args):
    from .cli_train import run
    return run(args)


# ------------------------------------------------------------ annotations
def _validate_arguments(parser):
    from .data.validate import add_cli_arguments
    add_cli_arguments(parser)


def _validate_run(args):
    from .data.validate import run_cli
    return run_cli(args)


def _convert_arguments(parser):
    from .data.convert import add_cli_arguments
    add_cli_arguments(parser)


def _convert_run(args):
    from .data.convert import run_cli
    return run_cli(args)


# ---------------------------------------------------------------- weights
def _fetch_weights_arguments(parser):
    from .weights import add_cli_arguments
    add_cli_arguments(parser)


def _fetch_weights_run(args):
    from .weights import run_cli
    return run_cli(args)


SUBCOMMANDS: dict[str, Subcommand] = {
    "doctor": Subcommand("check Python, Keras, backend and GPU, and say what to fix",
                         _doctor_arguments, _doctor_run),
    "demo": Subcommand("train a small model on synthetic shapes, then detect and save "
                       "pictures", _demo_arguments, _demo_run),
    "train": Subcommand("train on your annotations (or the built-in shapes): "
                        "MaskRCNN.train on the command line, resumes by itself",
                        _train_arguments, _train_run),
    "validate": Subcommand("check annotations and images; list every problem",
                           _validate_arguments, _validate_run),
    "convert": Subcommand("convert annotations (to COCO JSON)", _convert_arguments,
                          _convert_run),
    "fetch-weights": Subcommand("download, verify and cache pretrained weights (coco, "
                                "imagenet-resnet50, keras-resnet50/101)",
                                _fetch_weights_arguments, _fetch_weights_run),
    "evaluate": Subcommand("COCO metrics, per-class AP chart and an HTML error browser "
                           "for a model on annotated images", cli_results.evaluate_arguments,
                           cli_results.evaluate_run),
    "predict": Subcommand("detect on a folder of images (overlays, mask PNGs, COCO JSON) "
                          "or a video", cli_results.predict_arguments,
                          cli_results.predict_run),
}


# -------------------------------------------------------------------- main
def build_parser():
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


def main(argv=None):
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


if __name__ == "__main__":
    sys.exit(main())
