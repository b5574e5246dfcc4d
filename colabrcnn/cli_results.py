"""``colabrcnn evaluate`` and ``colabrcnn predict``: arguments and runners.

Registered in :data:`colabrcnn.cli.SUBCOMMANDS`. Light at import time (argparse only);
Keras and the model load inside ``run``.

    colabrcnn evaluate --weights run/mask_rcnn_balloon_0030.h5 --config run/config.json \\
        --annotations balloon/val --out runs/eval
    colabrcnn predict --weights balloon.keras --images photos/ --out runs/predict \\
        --classes balloon
"""
from __future__ import annotations

import os


def _model_arguments(parser):
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


def _load_model(args):
    from .checkpoint import load_inference  # lazy: keeps the CLI light at import time
    return load_inference(args.weights, args.config, model_dir=args.out)


# ------------------------------------------------------------------ evaluate
def evaluate_arguments(parser):
    _model_arguments(parser)
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
        from .data.shapes import shapes
        size = int(config.IMAGE_MAX_DIM)
        return shapes(args.shapes, size, seed=args.seed)
    from .data.formats import load
    kw = {"image_dir": args.image_dir} if args.image_dir else {}
    return load(args.annotations, **kw)


def evaluate_run(args):
    from .evaluate import evaluate_model
    os.makedirs(args.out, exist_ok=True)
    model = _load_model(args)
    dataset = _evaluation_dataset(args, model.config)
    done = evaluate_model(model, dataset, args.out, limit=args.limit, k=args.report,
                          iou_threshold=args.iou, min_score=args.min_score,
                          batch_size=args.batch_size, verbose=1)
    print(f"metrics: {done['metrics_json']}")
    print(f"per-class AP chart: {done['per_class_png']}")
    return 0


# ------------------------------------------------------------------ predict
def predict_arguments(parser):
    _model_arguments(parser)
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


def predict_run(args):
    from .predict import predict_folder, predict_video
    class_names = None
    if args.classes:
        class_names = ["BG"] + [c.strip() for c in args.classes.split(",") if c.strip()]
    if args.video:
        out = args.out
        if not out.lower().endswith((".avi", ".mp4", ".mov", ".mkv")):
            stem = os.path.splitext(os.path.basename(args.video))[0]
            out = os.path.join(out, f"{stem}_pred.avi")
        args.out = os.path.dirname(os.path.abspath(out))
        model = _load_model(args)
        done = predict_video(model, args.video, out, class_names,
                             batch_size=args.batch_size, min_score=args.min_score)
        print(f"{done['frames']} frames, {done['instances']} instances -> {out}")
        return 0
    model = _load_model(args)
    done = predict_folder(model, args.images, args.out, class_names,
                          batch_size=args.batch_size, save_overlays=not args.no_overlays,
                          mask_format=None if args.mask_format == "none" else args.mask_format,
                          coco_json=not args.no_coco_json, recursive=args.recursive,
                          min_score=args.min_score)
    return 1 if not done["images"] else 0
