"""``colabrcnn evaluate``: COCO metrics, per-class AP chart and an HTML error browser.

    colabrcnn evaluate --weights run/mask_rcnn_balloon_0030.h5 --config run/config.json \\
        --annotations balloon/val --out runs/eval
"""
from __future__ import annotations

import argparse
import os

from ..data.formats import load
from ..data.shapes import shapes
from ..evaluate import evaluate_model
from .inference import add_model_arguments, load_model

HELP = ("COCO metrics, per-class AP chart and an HTML error browser for a model on "
        "annotated images")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--annotations",
                      help="annotations to evaluate on (VIA, COCO, LabelMe or mask folder; "
                           "see colabrcnn.data.formats.load)")
    data.add_argument("--shapes", type=int, metavar="N",
                      help="evaluate on N synthetic shapes images instead")
    parser.add_argument("--image-dir", help="folder of the images, when the annotation "
                                            "file does not sit next to them")
    parser.add_argument("--seed", type=int, default=1000, help="seed for --shapes")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images")
    parser.add_argument("--report", type=int, default=20, metavar="K",
                        help="worst images in the HTML error browser (0: none)")
    parser.add_argument("--iou", type=float, default=0.5,
                        help="IoU threshold of the error analysis")
    parser.add_argument("--out", default="runs/evaluate",
                        help="folder for coco_metrics.json, per_class_ap.png, errors.html")


def _evaluation_dataset(args, config):
    if args.shapes:
        size = int(config.IMAGE_MAX_DIM)
        return shapes(args.shapes, size, seed=args.seed)
    kw = {"image_dir": args.image_dir} if args.image_dir else {}
    return load(args.annotations, **kw)


def run(args: argparse.Namespace) -> int:
    os.makedirs(args.out, exist_ok=True)
    model = load_model(args)
    dataset = _evaluation_dataset(args, model.config)
    done = evaluate_model(model, dataset, args.out, limit=args.limit, k=args.report,
                          iou_threshold=args.iou, min_score=args.min_score,
                          batch_size=args.batch_size, verbose=1)
    print(f"metrics: {done['metrics_json']}")
    print(f"per-class AP chart: {done['per_class_png']}")
    return 0
