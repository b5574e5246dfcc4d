"""``colabrcnn predict``: detect on a folder of images or a video.

    colabrcnn predict --weights balloon.keras --images photos/ --out runs/predict \\
        --classes balloon
"""
from __future__ import annotations

import argparse
import os

from ..predict import predict_folder, predict_video
from .inference import add_model_arguments, load_model

HELP = ("detect on a folder of images (overlays, mask PNGs, COCO JSON) or a video")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", help="folder of images to detect on")
    source.add_argument("--video", help="a video file to detect on, frame by frame")
    parser.add_argument("--out", default="runs/predict",
                        help="output folder (for --video: the output video is "
                             "OUT/<name>.avi unless OUT ends in .avi/.mp4)")
    parser.add_argument("--classes",
                        help="class names in class-id order, comma-separated, without "
                             "the background (e.g. 'balloon' or 'cat,dog')")
    parser.add_argument("--mask-format", default="instance_png",
                        choices=["instance_png", "per_instance", "none"],
                        help="instance_png: one uint16 PNG per image (0 = background, "
                             "k = k-th instance); per_instance: one PNG per instance")
    parser.add_argument("--no-overlays", action="store_true", help="do not save overlays")
    parser.add_argument("--no-coco-json", action="store_true",
                        help="do not write coco_predictions.json")
    parser.add_argument("--recursive", action="store_true",
                        help="also images in sub-folders")


def run(args: argparse.Namespace) -> int:
    class_names = None
    if args.classes:
        class_names = ["BG"] + [c.strip() for c in args.classes.split(",") if c.strip()]
    if args.video:
        out = args.out
        if not out.lower().endswith((".avi", ".mp4", ".mov", ".mkv")):
            stem = os.path.splitext(os.path.basename(args.video))[0]
            out = os.path.join(out, f"{stem}_pred.avi")
        args.out = os.path.dirname(os.path.abspath(out))
        model = load_model(args)
        done = predict_video(model, args.video, out, class_names,
                             batch_size=args.batch_size, min_score=args.min_score)
        print(f"{done['frames']} frames, {done['instances']} instances -> {out}")
        return 0
    model = load_model(args)
    done = predict_folder(model, args.images, args.out, class_names,
                          batch_size=args.batch_size, save_overlays=not args.no_overlays,
                          mask_format=None if args.mask_format == "none" else args.mask_format,
                          coco_json=not args.no_coco_json, recursive=args.recursive,
                          min_score=args.min_score)
    return 1 if not done["images"] else 0
