"""``colabrcnn demo``: train a small model on synthetic shapes, detect, save pictures."""
from __future__ import annotations

import argparse

from ..demo import run_demo

HELP = "train a small model on synthetic shapes, then detect and save pictures"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo",
                        help="folder for the run (checkpoints, log, pictures)")
    parser.add_argument("--epochs", type=int, default=40,
                        help="epochs of 20 steps (default 40: about five minutes on a CPU)")
    parser.add_argument("--train-images", type=int, default=500)
    parser.add_argument("--val-images", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    run_demo(out_dir=args.out, epochs=args.epochs, train_images=args.train_images,
             val_images=args.val_images, seed=args.seed)
    return 0
