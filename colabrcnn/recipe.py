"""Where the weights came from, and the training recipe that fits.

matterport's defaults (BatchNorm frozen, SGD at 0.001-0.02) assume a backbone loaded
from COCO or ImageNet weights. From random weights a frozen BatchNorm normalises
nothing (mean 0, variance 1) and such a run barely learns (issue 16: held-out mask AP50
0.02 after 15 CPU minutes; the zero-initialised residual gammas of model/backbone.py
keep a random bottleneck ResNet from exploding, yet frozen-BN SGD still found no
held-out nucleus on ResNet-50, see the README). The recipe is the same for every
backbone: on ResNet-18, -50 and -101 none of the variants measured did better.
This module records what ``load_weights`` loaded (:func:`weights_origin`), resolves
``TRAIN_BN = "auto"`` from it and decides whether ``train()`` uses the from-scratch
recipe of the ``SCRATCH_*`` Config settings (measured with ``benchmarks/learning.py``).

    origin = model.weights_origin      # {"source": "random", "backbone_loaded": False, ...}
    from_scratch(origin)               # True: BatchNorm trains, the scratch recipe applies
"""
from __future__ import annotations

import os
import re
import warnings

from .config import Config

# The heads (what layers="heads" trains); every other weighted layer is the backbone
# (conv1, res2a_branch2a, ... or the layers of a callable BACKBONE).
HEAD_LAYER = re.compile(r"(mrcnn_.*)|(rpn_.*)|(fpn_.*)")

# Settings that choose the optimizer: a value different from Config's default means the
# caller chose, and the from-scratch recipe stays out of the way.
OPTIMIZER_SETTINGS = ("OPTIMIZER", "LEARNING_MOMENTUM", "LR_SCHEDULE", "LR_WARMUP_STEPS",
                      "LR_STEP_EPOCHS", "LR_STEP_FACTOR")

# Layer presets that freeze (part of) the backbone.
FROZEN_BACKBONE_PRESETS = ("heads", "3+", "4+", "5+")

RANDOM = {"source": "random", "path": None, "backbone_loaded": False, "scratch_run": False}


def random_origin() -> dict:
    """The origin of a freshly built model: random weights everywhere."""
    return dict(RANDOM)


def weights_origin(path, report: dict, state: dict | None = None,
                   previous: dict | None = None) -> dict:
    """What a ``load_weights`` call brought in.

    path: the file loaded; report: ``weights.load_weights``'s report (``loaded`` layer
    names, ``layout``); state: the file's ``training_state`` (our checkpoints) or None.
    previous: the model's origin before this call; a load that brings no backbone
    layer (heads only) keeps the previous backbone's origin.

    Returns {"source": "coco" | "imagenet" | "torchvision" | "checkpoint" |
    "weights file", "path",
    "backbone_loaded": whether any backbone layer was loaded, "scratch_run": the file
    is a checkpoint of a run that started from random weights (resuming it keeps that
    run's recipe)}.
    """
    loaded = list(report.get("loaded", []))
    backbone = any(not HEAD_LAYER.fullmatch(n) for n in loaded)
    name = os.path.basename(str(path)).lower()
    layout = str(report.get("layout", ""))
    scratch_run = False
    if state is not None:
        source = "checkpoint"
        scratch_run = str(state.get("weights_origin", "")) == "random"
    elif layout == "torchvision":
        source = "torchvision"
    elif "keras-applications" in layout or "keras3" in layout or "imagenet" in name \
            or "resnet50_weights" in name or "resnet101_weights" in name:
        source = "imagenet"
    elif "coco" in name:
        source = "coco"
    else:
        source = "weights file"
    if not backbone and previous is not None:
        # Heads only (e.g. a file of another backbone): the backbone is what it was.
        return {**previous, "heads_from": str(path)}
    return {"source": source, "path": str(path), "backbone_loaded": bool(backbone),
            "scratch_run": scratch_run}


def from_scratch(origin: dict | None) -> bool:
    """True when the backbone's weights are random, or come from a checkpoint of a run
    that started from random weights (so that a resumed run keeps its recipe)."""
    origin = origin or RANDOM
    return (not origin.get("backbone_loaded")) or bool(origin.get("scratch_run"))


def resolve_train_bn(setting, origin: dict | None) -> bool:
    """TRAIN_BN as used: True/False as set; "auto" trains BatchNorm from scratch only."""
    if setting == "auto":
        return from_scratch(origin)
    return bool(setting)


def explicit_optimizer_settings(config) -> list[str]:
    """The optimizer settings of ``config`` that differ from Config's defaults."""
    out = []
    for name in OPTIMIZER_SETTINGS:
        mine, default = getattr(config, name, None), getattr(Config, name, None)
        if isinstance(default, (list, tuple)):
            mine, default = list(mine), list(default)
        if mine != default:
            out.append(name)
    return out


def use_scratch_recipe(config, origin: dict | None, optimizer=None) -> bool:
    """Whether train() should use the SCRATCH_* recipe: random backbone, OPTIMIZER
    "auto", no optimizer passed and no optimizer setting changed from its default."""
    return (optimizer is None and config.OPTIMIZER == "auto" and from_scratch(origin)
            and not explicit_optimizer_settings(config))


def describe_scratch_recipe(config) -> str:
    """One line saying what the from-scratch recipe is and how to opt out."""
    warmup = (f"{config.SCRATCH_LR_WARMUP_STEPS} warm-up steps, "
              if config.SCRATCH_LR_WARMUP_STEPS else "")
    return (f"Training from random weights: {config.SCRATCH_OPTIMIZER} at "
            f"{config.SCRATCH_LEARNING_RATE:g} ({warmup}{config.SCRATCH_LR_SCHEDULE} "
            f"schedule), BatchNorm trained "
            f"(momentum {config.SCRATCH_BN_MOMENTUM:g}), instead of SGD at the "
            f"learning_rate given. Load COCO/ImageNet weights for matterport's recipe, or "
            f"set OPTIMIZER='sgd' (or pass optimizer=) to choose.")


def warn_frozen_random_backbone(layers, origin: dict | None) -> bool:
    """Warn when a preset that freezes backbone stages is trained on random weights;
    returns whether it warned."""
    if layers not in FROZEN_BACKBONE_PRESETS or not from_scratch(origin) \
            or (origin or {}).get("scratch_run"):
        return False
    warnings.warn(
        f"layers={layers!r} freezes backbone layers, but the backbone has random weights "
        f"(nothing was loaded with load_weights): those layers will stay random features "
        f"and the model will learn little. Train layers='all', or load pretrained weights "
        f"first: model.load_weights(weights.fetch('coco'), by_name=True, "
        f"exclude=weights.HEADS).", UserWarning, stacklevel=3)
    return True


def batchnorm_layers(keras_model):
    """Every BatchNorm layer of ours (they carry ``train_bn``), nested models included."""
    seen, out = set(), []

    def visit(layer):
        if id(layer) in seen:
            return
        seen.add(id(layer))
        if hasattr(layer, "train_bn"):
            out.append(layer)
        for sub in getattr(layer, "layers", None) or []:
            visit(sub)
        inner = getattr(layer, "inner", None)  # Remat wrappers hold their block here
        if inner is not None:
            visit(inner)

    for layer in keras_model.layers:
        visit(layer)
    return out


def set_batchnorm(keras_model, train_bn: bool, momentum: float | None = None) -> int:
    """Switch our BatchNorm layers between trained and frozen statistics (and set their
    moving-average momentum). Takes effect at the next compile. Returns the count."""
    layers = batchnorm_layers(keras_model)
    for layer in layers:
        layer.train_bn = bool(train_bn)
        if momentum is not None:
            layer.momentum = float(momentum)
    return len(layers)
