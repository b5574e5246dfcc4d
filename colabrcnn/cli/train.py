"""``colabrcnn train``: the command line of :meth:`MaskRCNN.train` (and of notebook 02).

    colabrcnn train                                   # built-in shapes, as `colabrcnn demo`
    colabrcnn train --annotations balloon/train --val-annotations balloon/val \\
        --weights coco --layers heads --epochs 30 --augment light --fit-gpu
    colabrcnn train --annotations data/ --config IMAGE_MAX_DIM=512 IMAGES_PER_GPU=1
    colabrcnn train --annotations data/ --config my_config.json --resume none

Run it again after an interruption and it continues from the newest checkpoint of the
same NAME in ``--model-dir`` (``--resume auto``, the default, as ``train()``).

Registered in :data:`colabrcnn.cli.SUBCOMMANDS`. Light at import time; Keras and the
model load inside :func:`run`.
"""
from __future__ import annotations

import json
import math
import os
import re

from .. import memory, notebook, weights
from ..config import Config
from ..data.augment import default_augmentation
from ..data.formats import load
from ..data.shapes import shapes
from ..data.split import train_val_split
from ..demo import ShapesConfig, scratch_optimizer
from ..errors import ConfigError

HELP = ("train on your annotations (or the built-in shapes): MaskRCNN.train on the "
        "command line, resumes by itself")

WEIGHT_CHOICES = "coco, imagenet, a file path or URL, or none"
# Settings Config.__init__ derives; a saved config.json holds them but they are not inputs.
_DERIVED = {"BATCH_SIZE", "IMAGE_SHAPE", "IMAGE_META_SIZE"}
_TUPLES = ("MINI_MASK_SHAPE", "MASK_SHAPE", "RPN_ANCHOR_SCALES", "RPN_ANCHOR_RATIOS",
           "BACKBONE_STRIDES")
SHAPES_DEFAULT_IMAGES = 500   # as `colabrcnn demo`
SHAPES_DEFAULT_EPOCHS = 40
DATA_DEFAULT_EPOCHS = 30      # matterport's balloon recipe: 30 epochs of the heads


def add_arguments(parser):
    data = parser.add_argument_group("data (none given: the built-in shapes, as the demo)")
    source = data.add_mutually_exclusive_group()
    source.add_argument("--annotations", metavar="PATH",
                        help="training annotations: VIA, COCO, LabelMe or a mask folder "
                             "(the format is detected; see colabrcnn.data.formats.load)")
    source.add_argument("--shapes", type=int, metavar="N",
                        help=f"train on N synthetic shapes images (default without "
                             f"--annotations: {SHAPES_DEFAULT_IMAGES})")
    data.add_argument("--image-dir", help="folder of the images, when the annotation file "
                                          "does not sit next to them")
    data.add_argument("--val-annotations", metavar="PATH",
                      help="separate validation annotations (default: split --annotations)")
    data.add_argument("--val-fraction", type=float, default=0.2,
                      help="share of the images kept for validation (default 0.2; 0: no "
                           "validation)")

    model = parser.add_argument_group("model")
    model.add_argument("--config", nargs="+", action="extend", default=[],
                       metavar="JSON|FILE|KEY=VALUE",
                       help="Config settings: KEY=VALUE pairs (values as JSON: "
                            "IMAGE_MAX_DIM=512 BACKBONE=resnet50 MINI_MASK_SHAPE=[28,28]), "
                            "an inline JSON object, or a JSON file (e.g. a run's "
                            "config.json); later ones win")
    model.add_argument("--name", help="Config NAME: names the run folder and checkpoints "
                                      "(default: from the data)")
    model.add_argument("--weights", default=None,
                       help=f"starting weights: {WEIGHT_CHOICES} (default: coco with "
                            f"--annotations, none for shapes)")
    model.add_argument("--exclude-heads", action="store_true",
                       help="leave the class-specific head layers out when loading "
                            "--weights PATH (always done for coco)")

    train = parser.add_argument_group("training (defaults as MaskRCNN.train)")
    train.add_argument("--layers", default=None,
                       help="heads, 3+, 4+, 5+, all, or a regular expression (default: "
                            "heads with pretrained weights, all from scratch)")
    train.add_argument("--epochs", type=int, default=None,
                       help=f"train up to this epoch, counted over resumed runs (default "
                            f"{DATA_DEFAULT_EPOCHS} with --annotations, "
                            f"{SHAPES_DEFAULT_EPOCHS} for shapes)")
    train.add_argument("--lr", type=float, default=None,
                       help="learning rate (default: the Config's LEARNING_RATE; shapes: "
                            "Adam at 0.001 with a cosine decay, as the demo)")
    train.add_argument("--model-dir", default="runs/train",
                       help="folder of run folders (a Drive folder on Colab)")
    train.add_argument("--resume", default="auto", metavar="auto|none|PATH",
                       help="auto: continue from the newest checkpoint of this NAME in "
                            "--model-dir; none: start over; PATH: from that checkpoint")
    train.add_argument("--fit-gpu", action="store_true",
                       help="change memory settings until training fits this GPU "
                            "(colabrcnn.memory.fit_to_gpu); prints each change")
    train.add_argument("--gpu-memory", default=None,
                       help="with --fit-gpu: the GPU memory to fit, e.g. 15GB (default: "
                            "the GPU found)")
    train.add_argument("--augment", choices=["none", "light", "medium"], default="none",
                       help="augmentation (colabrcnn.data.default_augmentation); default none")
    train.add_argument("--on-oom", choices=["raise", "reduce"], default="raise",
                       help="on out-of-memory: raise with advice, or halve the batch and "
                            "continue from the last checkpoint")
    train.add_argument("--seed", type=int, default=None)
    train.add_argument("--quiet", action="store_true",
                       help="one line per epoch instead of progress bars (for log files)")


# ------------------------------------------------------------------- config
def _value(text):
    """A KEY=VALUE value: JSON if it parses (numbers, lists, true/false/null), Python's
    True/False/None, else the string itself."""
    text = text.strip()
    python = {"True": True, "False": False, "None": None}
    if text in python:
        return python[text]
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_config_overrides(items):
    """``--config`` items -> {SETTING: value}; later items win."""
    out = {}
    for item in items or []:
        item = item.strip()
        if not item:
            continue
        if item.startswith("{"):
            try:
                data = json.loads(item)
            except ValueError as e:
                raise ConfigError(f"--config {item!r} is not valid JSON ({e})") from None
        elif "=" in item and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", item.split("=", 1)[0]):
            key, value = item.split("=", 1)
            data = {key.strip().upper(): _value(value)}
        elif os.path.isfile(item):
            try:
                with open(item) as f:
                    data = json.load(f)
            except ValueError as e:
                raise ConfigError(f"config file {item} is not valid JSON ({e})") from None
        else:
            raise ConfigError(f"--config {item!r}: give KEY=VALUE (e.g. IMAGE_MAX_DIM=512), "
                              f"a JSON object, or an existing JSON file")
        if not isinstance(data, dict):
            raise ConfigError(f"--config {item!r} must be an object of SETTING: value pairs")
        out.update(data)
    out = {k: v for k, v in out.items() if k not in _DERIVED}
    for key in _TUPLES:
        if isinstance(out.get(key), list):
            out[key] = tuple(out[key])
    return out


def _safe_name(text):
    name = re.sub(r"[^\w-]+", "_", str(text)).strip("_").lower()
    return name or "model"


_GENERIC = ("train", "training", "val", "valid", "validation", "images", "annotations",
            "labelme", "data", "dataset")


def _data_name(path):
    """A run name from the data's folder: balloon/train/via.json -> "balloon"."""
    path = os.path.abspath(os.fspath(path))
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    name = os.path.basename(folder)
    if name.lower() in _GENERIC:
        name = os.path.basename(os.path.dirname(folder)) or name
    return _safe_name(name)


# --------------------------------------------------------------------- data
def _load(path, image_dir):
    kw = {"image_dir": image_dir} if image_dir else {}
    return load(path, **kw)


def _datasets(args, overrides):
    """-> (train, val, base_config, default_name, from_shapes)."""
    if args.annotations:
        train = _load(args.annotations, args.image_dir)
        if args.val_annotations:
            val = _load(args.val_annotations, args.image_dir)
        elif not args.val_fraction:
            val = None
        elif len(train.image_ids) >= 2:
            train, val = train_val_split(train, args.val_fraction, seed=args.seed or 0)
        else:
            print("One image only: validating on the training image.")
            val = train
        names = list(train.class_names)
        base = Config(NAME="data", NUM_CLASSES=len(names))
        return train, val, base, _data_name(args.annotations), False
    base = ShapesConfig()
    size = int(overrides.get("IMAGE_MAX_DIM", base.IMAGE_MAX_DIM))
    count = args.shapes if args.shapes else SHAPES_DEFAULT_IMAGES
    if count < 1:
        raise ConfigError(f"--shapes must be at least 1, got {count}")
    n_val = 8 if not args.shapes else max(1, min(50, round(count * args.val_fraction)))
    seed = args.seed or 0
    val = shapes(n_val, size, seed=seed + 1000) if args.val_fraction else None
    return shapes(count, size, seed=seed), val, base, "shapes", True


def build_config(args, train, val, base, default_name, overrides):
    """The training Config: the base (matterport's defaults for your data, ShapesConfig
    for shapes), NAME, one epoch = one pass over the training images unless
    STEPS_PER_EPOCH is given, then the --config overrides."""
    settings = {"NAME": args.name or default_name}
    if "NUM_CLASSES" in overrides and overrides["NUM_CLASSES"] != base.NUM_CLASSES:
        raise ConfigError(f"NUM_CLASSES={overrides['NUM_CLASSES']} but the data has "
                          f"{base.NUM_CLASSES - 1} classes + background; leave NUM_CLASSES "
                          f"out, it is read from the data")
    if args.annotations:
        batch = int(overrides.get("IMAGES_PER_GPU", base.IMAGES_PER_GPU)) * \
            int(overrides.get("GPU_COUNT", base.GPU_COUNT))
        settings["STEPS_PER_EPOCH"] = max(1, math.ceil(len(train.image_ids) / batch))
        if val is not None:
            settings["VALIDATION_STEPS"] = max(1, math.ceil(len(val.image_ids) / batch))
    settings.update(overrides)
    settings["NAME"] = _safe_name(settings["NAME"])
    return base.copy(**settings)


# ------------------------------------------------------------------- weights
def _load_start_weights(model, choice, exclude_heads, verbose):
    c = model.config
    if choice == "coco":
        if c.BACKBONE != "resnet101":
            raise ConfigError(f"the COCO weights are ResNet-101; BACKBONE is {c.BACKBONE!r}: "
                              f"use --config BACKBONE=resnet101, or --weights imagenet / none")
        path, exclude = weights.fetch("coco"), weights.HEADS
    elif choice == "imagenet":
        path, exclude = weights.fetch(weights.imagenet_for(c.BACKBONE)), None
    else:
        path = weights.fetch(choice)
        exclude = weights.HEADS if exclude_heads else None
    model.load_weights(path, by_name=True, exclude=exclude, verbose=verbose)
    return path


def _has_checkpoint(model):
    try:
        model.find_last()
        return True
    except FileNotFoundError:
        return False


# ----------------------------------------------------------------------- run
def run(args):
    import keras  # lazy: Keras and the model load only when training

    from ..model.maskrcnn import MaskRCNN  # lazy: imports Keras

    verbose = 2 if args.quiet else 1
    if args.seed is not None:
        keras.utils.set_random_seed(args.seed)
    if not 0 <= args.val_fraction < 1:
        raise ConfigError(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    overrides = parse_config_overrides(args.config)
    train, val, base, default_name, from_shapes = _datasets(args, overrides)
    config = build_config(args, train, val, base, default_name, overrides)

    choice = (args.weights or ("none" if from_shapes else "coco")).strip()
    pretrained = choice.lower() != "none"
    layers = args.layers or ("heads" if pretrained else "all")
    epochs = args.epochs if args.epochs is not None else \
        (SHAPES_DEFAULT_EPOCHS if from_shapes else DATA_DEFAULT_EPOCHS)
    if epochs < 0:
        raise ConfigError(f"--epochs must be >= 0, got {epochs}")
    resume = {"auto": "auto", "none": False, "false": False, "no": False}.get(
        args.resume.lower(), args.resume)
    if resume not in ("auto", False) and not os.path.isfile(resume):
        raise ConfigError(f"--resume {args.resume}: no such checkpoint file (use auto, none "
                          f"or a path)")

    if args.fit_gpu:
        if args.gpu_memory is None and not notebook.has_gpu():
            print("--fit-gpu: no GPU here (give --gpu-memory to fit another); the config "
                  "is left as it is.")
        else:
            config, _ = memory.fit_to_gpu(config, layers=layers, memory=args.gpu_memory,
                                          verbose=True)

    n_val = f"{len(val.image_ids)} validation images" if val is not None else "no validation"
    print(f"{len(train.image_ids)} training images, {n_val}; classes: "
          f"{', '.join(train.class_names[1:])}")
    model = MaskRCNN("training", config, model_dir=args.model_dir)
    if pretrained:
        if resume == "auto" and _has_checkpoint(model):
            print(f"A checkpoint of '{model.run_name}' is in {args.model_dir}: resuming from "
                  f"it, not loading --weights {choice}.")
        elif resume in ("auto", False):
            path = _load_start_weights(model, choice, args.exclude_heads, 1)
            print(f"Starting from {path}")

    optimizer = None
    learning_rate = args.lr if args.lr is not None else config.LEARNING_RATE
    if from_shapes and args.lr is None and not pretrained:
        learning_rate = 0.001
        optimizer = scratch_optimizer(config, learning_rate, max(1, epochs))
    augmentation = None
    if args.augment != "none":
        augmentation = default_augmentation(args.augment, seed=args.seed)

    model.train(train, val, learning_rate=learning_rate, epochs=epochs, layers=layers,
                augmentation=augmentation, resume=resume, on_oom=args.on_oom,
                optimizer=optimizer, verbose=verbose, seed=args.seed)
    if model.log_dir and os.path.isdir(model.log_dir):
        notebook.save_class_names(model.log_dir, train.class_names)
    try:
        last = model.find_last()
    except FileNotFoundError:
        last = None
    print(f"\nRun folder: {model.log_dir}")
    if last:
        print(f"Last checkpoint: {last}")
        data = f"--annotations {args.val_annotations or args.annotations}" \
            if args.annotations else f"--shapes 8 --seed {(args.seed or 0) + 1000}"
        print(f"Next: colabrcnn evaluate --weights {last} --config "
              f"{os.path.join(model.log_dir, 'config.json')} {data}")
    return 0
