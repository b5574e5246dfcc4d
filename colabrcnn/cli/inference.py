"""What ``colabrcnn evaluate`` and ``colabrcnn predict`` share: the model options and
loading the inference model from them."""
from __future__ import annotations

import argparse

from ..checkpoint import load_inference


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--weights, --config, --batch-size, --min-score (evaluate and predict)."""
    parser.add_argument("--weights", required=True,
                        help="an .h5 weights file (checkpoint or matterport's) or a "
                             ".keras export")
    parser.add_argument("--config",
                        help="JSON of Config settings (a file, e.g. written by "
                             "Config.to_json(), or an inline JSON object); optional when "
                             "the run folder's config.json, the checkpoint's saved config "
                             "or a .keras export's .config.json is there")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images detected at once (default: the Config's BATCH_SIZE)")
    parser.add_argument("--min-score", type=float, default=None,
                        help="drop detections scoring below this")


def load_model(args: argparse.Namespace):
    """The inference model named by --weights/--config."""
    return load_inference(args.weights, args.config, model_dir=args.out)
