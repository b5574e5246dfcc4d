"""Configuration, with matterport's attribute names and defaults.

Subclass and override class attributes, exactly as with matterport::

    class ShapesConfig(Config):
        NAME = "shapes"
        NUM_CLASSES = 1 + 3
        IMAGE_MIN_DIM = IMAGE_MAX_DIM = 128

or pass overrides as keywords: ``Config(NAME="shapes", NUM_CLASSES=4)``.
Derived values (BATCH_SIZE, IMAGE_SHAPE, IMAGE_META_SIZE) are computed in
``__init__`` and every setting is validated there; an impossible setting raises
:class:`colabrcnn.errors.ConfigError` saying what to change.

Over 500 lines on purpose: every setting, its matterport default and its check sit in
one file, the one users read to learn what they can set.
"""
from __future__ import annotations

import copy
import json

import numpy as np

from .errors import ConfigError

BACKBONES = ("resnet18", "resnet50", "resnet101")
RESIZE_MODES = ("square", "pad64", "crop", "none")
OPTIMIZERS = ("sgd", "adam", "adamw")
# Whose architecture conventions BACKBONE_STYLE / DETECTOR_STYLE follow.
STYLES = ("matterport", "torchvision")
LOSS_NAMES = ("rpn_class_loss", "rpn_bbox_loss", "mrcnn_class_loss",
              "mrcnn_bbox_loss", "mrcnn_mask_loss")


# ---------------------------------------------------------------- validate() helpers
def _typed_as_text(value, allow_none=False):
    """What to write instead of text typed into a form ('0.9' -> 0.9, 'none' -> None)."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    if allow_none and text.lower() in ("none", "null", ""):
        return "None"
    if text.lower() in ("true", "false"):
        return text.capitalize()
    try:
        float(text)
    except ValueError:
        return None
    return text


def _got(name, value, allow_none=False):
    """'got X' plus, for text that looks like a value, what to write instead."""
    fix = _typed_as_text(value, allow_none)
    if fix is not None:
        return (f"got the text {value!r}: write {name} = {fix} (without quotes; a Colab "
                f"form field of type 'raw' or 'number' gives one)")
    return f"got {value!r} ({type(value).__name__})"


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value):
    return (isinstance(value, (int, float, np.integer, np.floating))
            and not isinstance(value, (bool, np.bool_)) and bool(np.isfinite(value)))


def _range_text(low, high, low_open, high_open):
    if high is None:
        return f"> {low:g}" if low_open else f">= {low:g}"
    return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def _in_range(value, low, high, low_open, high_open):
    if low is not None and (value <= low if low_open else value < low):
        return False
    return high is None or (value < high if high_open else value <= high)


def _check_int(name, value, low=None, alternatives=""):
    if not _is_int(value) or (low is not None and value < low):
        what = "a positive integer" if low == 1 else f"an integer >= {low}"
        raise ConfigError(f"{name} must be {what}{' ' + alternatives if alternatives else ''},"
                          f" {_got(name, value)}.")


def _check_number(name, value, low=None, high=None, low_open=False, high_open=False,
                  allow_none=False, note=""):
    if value is None and allow_none:
        return
    ok = _is_number(value) and _in_range(value, low, high, low_open, high_open)
    if not ok:
        rng = "" if low is None else " " + _range_text(low, high, low_open, high_open)
        none = " or None" if allow_none else ""
        raise ConfigError(f"{name} must be a number{rng}{none}{f' ({note})' if note else ''}"
                          f", {_got(name, value, allow_none)}.")


def _check_choice(name, value, choices):
    if not any(value is c or (isinstance(c, str) and value == c) for c in choices):
        listed = ", ".join(repr(c) for c in choices)
        raise ConfigError(f"{name} must be one of {listed}, {_got(name, value)}.")


def _check_sequence(name, value, length=None, integer=False, low=None, high=None,
                    low_open=False, note=""):
    items = list(value) if isinstance(value, (list, tuple, np.ndarray)) else None
    kind = "whole numbers" if integer else "numbers"
    size = f"{length} " if length else ""
    want = f"{name} must be a list of {size}{kind}" + \
        ("" if low is None else " " + _range_text(low, high, low_open, False)) + \
        (f" ({note})" if note else "")
    if items is None or (length is not None and len(items) != length) or \
            (length is None and name != "LR_STEP_EPOCHS" and not items):
        raise ConfigError(f"{want}, {_got(name, value)}.")
    for i, v in enumerate(items):
        ok = (_is_int(v) or (_is_number(v) and float(v).is_integer())) if integer \
            else _is_number(v)
        if not ok or not _in_range(v, low, high, low_open, False):
            raise ConfigError(f"{want}; {name}[{i}] is wrong, {_got(f'{name}[{i}]', v)}.")


def _as_float_array(name, value):
    """A setting held as a float32 array (MEAN_PIXEL, *_STD_DEV); text is a ConfigError."""
    try:
        if isinstance(value, str) or (isinstance(value, (list, tuple)) and
                                      any(isinstance(v, str) for v in value)):
            raise ValueError
        return np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a list of numbers, {_got(name, value)}.") from None



class Config:
    """Base configuration. Override in a subclass or with keywords."""

    # Name of the run; used in log folder and checkpoint names.
    NAME = None

    # GPUs to use and images per GPU. matterport trains 2 images of 1024x1024 on a
    # 12 GB GPU; on Colab's T4 use colabrcnn's memory levers instead of guessing.
    # Each global batch is IMAGES_PER_GPU * GPU_COUNT images, split across the devices
    # (data parallel: JAX keras.distribution, TF tf.distribute; see colabrcnn.distribute).
    # "auto": every accelerator the Keras backend finds (1 on a CPU-only machine),
    # resolved when the MaskRCNN is built, not here (Config() imports no backend); until
    # then BATCH_SIZE counts one device. Kaggle's "GPU T4 x2" -> 2; a TPU -> its cores.
    GPU_COUNT = 1
    IMAGES_PER_GPU = 2

    # Steps per epoch; it need not match the dataset size.
    STEPS_PER_EPOCH = 1000
    VALIDATION_STEPS = 50

    # "resnet50", "resnet101", "resnet18" (small, for CPU demos and tests) or a
    # callable(input_image, config) -> [C2, C3, C4, C5].
    BACKBONE = "resnet101"
    # Only needed with a callable BACKBONE: callable(image_shape) -> [[h, w], ...].
    COMPUTE_BACKBONE_SHAPE = None
    BACKBONE_STRIDES = [4, 8, 16, 32, 64]

    # Size of the fully connected layers of the classification head.
    FPN_CLASSIF_FC_LAYERS_SIZE = 1024
    # Channels of the top-down feature pyramid.
    TOP_DOWN_PYRAMID_SIZE = 256

    # Number of classes including background.
    NUM_CLASSES = 1

    # Anchor side lengths in pixels, one per pyramid level P2..P6.
    RPN_ANCHOR_SCALES = (32, 64, 128, 256, 512)
    # width/height ratios of anchors at each location.
    RPN_ANCHOR_RATIOS = [0.5, 1, 2]
    # 1: an anchor at every feature-map cell; 2: every other cell, ...
    RPN_ANCHOR_STRIDE = 1
    # NMS threshold for RPN proposals.
    RPN_NMS_THRESHOLD = 0.7
    # Anchors per image used for RPN training.
    RPN_TRAIN_ANCHORS_PER_IMAGE = 256
    # Top anchors (by RPN score) kept before NMS: of all levels together, or of each
    # pyramid level with DETECTOR_STYLE = "torchvision" (torchvision's pre_nms_top_n).
    PRE_NMS_LIMIT = 6000
    # ROIs kept after NMS.
    POST_NMS_ROIS_TRAINING = 2000
    POST_NMS_ROIS_INFERENCE = 1000

    # Masks stored at MINI_MASK_SHAPE inside their box: saves memory for big images.
    USE_MINI_MASK = True
    MINI_MASK_SHAPE = (56, 56)

    # "square": resize and pad to IMAGE_MAX_DIM x IMAGE_MAX_DIM.
    # "pad64": resize, then pad to multiples of 64 (padded further to IMAGE_SHAPE so
    #          that shapes stay static).
    # "crop": random IMAGE_MIN_DIM x IMAGE_MIN_DIM crops in training; the lowest-memory
    #         way to train on big images. Inference uses "square" at IMAGE_MAX_DIM.
    # "none": no resizing; images must fit in IMAGE_MAX_DIM x IMAGE_MAX_DIM.
    IMAGE_RESIZE_MODE = "square"
    IMAGE_MIN_DIM = 800
    IMAGE_MAX_DIM = 1024
    IMAGE_MIN_SCALE = 0
    IMAGE_CHANNEL_COUNT = 3

    # RGB mean subtracted from images (ImageNet mean, as the published weights expect).
    MEAN_PIXEL = np.array([123.7, 116.8, 103.9])

    # ROIs per image fed to the heads in training, and the fraction of positives.
    TRAIN_ROIS_PER_IMAGE = 200
    ROI_POSITIVE_RATIO = 0.33

    # ROIAlign output sizes for the box head and the mask head.
    POOL_SIZE = 7
    MASK_POOL_SIZE = 14
    # Shape of predicted masks (the mask head upsamples MASK_POOL_SIZE by 2).
    MASK_SHAPE = [28, 28]

    # Ground-truth instances used per image.
    MAX_GT_INSTANCES = 100

    # Box refinement standard deviations.
    RPN_BBOX_STD_DEV = np.array([0.1, 0.1, 0.2, 0.2])
    BBOX_STD_DEV = np.array([0.1, 0.1, 0.2, 0.2])

    # Final detections.
    DETECTION_MAX_INSTANCES = 100
    DETECTION_MIN_CONFIDENCE = 0.7
    DETECTION_NMS_THRESHOLD = 0.3

    # SGD settings (matterport's; the paper uses 0.02 but that explodes in Keras).
    LEARNING_RATE = 0.001
    LEARNING_MOMENTUM = 0.9
    WEIGHT_DECAY = 0.0001

    LOSS_WEIGHTS = {
        "rpn_class_loss": 1.0,
        "rpn_bbox_loss": 1.0,
        "mrcnn_class_loss": 1.0,
        "mrcnn_bbox_loss": 1.0,
        "mrcnn_mask_loss": 1.0,
    }

    # Train the heads on RPN proposals (True) or on given ROIs (False).
    USE_RPN_ROIS = True

    # Train BatchNorm layers. "auto": frozen, as matterport (small batches give bad
    # statistics), when load_weights() loaded the backbone (COCO, ImageNet, a checkpoint);
    # trained when the backbone is random: frozen statistics of random weights normalise
    # nothing and such a run barely learns. True/False force it.
    TRAIN_BN = "auto"

    # Gradient norm clipping.
    GRADIENT_CLIP_NORM = 5.0

    # ---- Additions to matterport's settings (safe defaults) ----
    # Memory levers. Each trades something for GPU memory; colabrcnn.fit_to_gpu picks
    # them for you and explains the choice.
    # float16 compute with loss scaling: about half the activation memory and faster on
    # GPUs with tensor cores (T4, V100, A100, L4); "auto" turns it on there only.
    MIXED_PRECISION = "auto"
    # Accumulate gradients over k steps before an update: keeps the effective batch
    # (IMAGES_PER_GPU * k) when IMAGES_PER_GPU must shrink. Costs time, not memory.
    GRADIENT_ACCUMULATION_STEPS = 1
    # Recompute backbone activations in the backward pass instead of storing them:
    # less memory, about 20-30% more time.
    REMAT = False

    # Disconnect-proof checkpoints: every epoch and every N minutes (None: epochs only);
    # keep the newest K (plus the best by validation loss).
    CHECKPOINT_EVERY_MINUTES = 10
    CHECKPOINT_KEEP = 3

    # Learning-rate schedule: "constant" (matterport), "step" (x LR_STEP_FACTOR at each
    # epoch in LR_STEP_EPOCHS) or "cosine" (to 0 at the last epoch of the train() call);
    # with a linear warm-up over LR_WARMUP_STEPS steps.
    LR_SCHEDULE = "constant"
    LR_WARMUP_STEPS = 0
    LR_STEP_EPOCHS = []
    LR_STEP_FACTOR = 0.1

    # Optimizer. "auto": matterport's SGD (LEARNING_MOMENTUM, train()'s learning_rate,
    # the LR_* schedule) when the backbone was loaded, and the SCRATCH_* recipe below
    # when it is random. "sgd", "adam" or "adamw" force one, with train()'s
    # learning_rate and the LR_* schedule.
    OPTIMIZER = "auto"
    # The from-scratch recipe, used when the backbone is random, OPTIMIZER is "auto",
    # no optimizer is passed to train() and no LR_*/LEARNING_MOMENTUM setting was
    # changed; measured on real annotated images with benchmarks/learning.py. The
    # schedule runs over the epochs of the train() call; BatchNorm trains with the
    # given moving-average momentum (0.99, Keras' default, lags for hundreds of steps).
    # Measured (ResNet-18, CPU): Adam 0.001 with a cosine decay reached held-out mask
    # AP50 0.5 on DSB 2018 nuclei within 50 steps with momentum 0.9 (0.0 with 0.99), where
    # frozen-BN SGD had 0.0 after 250; AdamW with a 50-step warm-up did worse in 100 steps.
    SCRATCH_OPTIMIZER = "adam"
    SCRATCH_LEARNING_RATE = 0.001
    SCRATCH_LR_SCHEDULE = "cosine"
    SCRATCH_LR_WARMUP_STEPS = 0
    SCRATCH_BN_MOMENTUM = 0.9

    # ---- torchvision's Mask R-CNN inside this model (colabrcnn.TorchvisionR50FPN sets
    # all of these; the defaults are matterport's model, which its weights need).
    # "torchvision": ResNet v1.5 (stride on the 3x3 conv of a bottleneck), PyTorch's
    # symmetric padding of strided convs and the stem's max-pool, convs without bias,
    # BatchNorm epsilon 1e-5. "matterport": Caffe-style ResNet as in mask_rcnn_coco.h5.
    BACKBONE_STYLE = "matterport"
    # Images are (pixel - MEAN_PIXEL) / PIXEL_STD; torchvision's ImageNet std in 0-255
    # units is [58.395, 57.12, 57.375].
    PIXEL_STD = np.array([1.0, 1.0, 1.0])
    # Channels of the RPN's shared 3x3 conv (matterport 512, torchvision 256).
    RPN_CONV_CHANNELS = 512
    # BatchNorm after the convs of the box and mask heads (matterport's heads have it,
    # torchvision's v1 heads do not).
    HEAD_BATCHNORM = True
    # "torchvision": its box geometry and post-processing - boxes normalized by the
    # image size (not size - 1), anchors rounded to whole pixels, per-level top
    # PRE_NMS_LIMIT proposals with NMS per level and deltas clamped at log(1000/16),
    # its ROIAlign (aligned=False, 2x2 samples per bin, level = floor(4 + log2(s/224))),
    # every class of every box as a candidate detection, and masks pasted as its
    # paste_masks_in_image; images resized as its transform ("square" mode: the short
    # side to IMAGE_MIN_DIM unless the long side would pass IMAGE_MAX_DIM), placed at
    # the top-left of the canvas, padded with the mean colour (0 once molded), and
    # proposals clipped to the image, not the canvas. "matterport": matterport's.
    DETECTOR_STYLE = "matterport"

    def __init__(self, **overrides):
        for key, value in overrides.items():
            if not key.isupper() or not hasattr(type(self), key):
                raise ConfigError(
                    f"Unknown Config setting '{key}'. Settings are upper case, e.g. "
                    f"IMAGES_PER_GPU; see Config.display() for the list.")
            setattr(self, key, value)
        # Copy mutable class-level defaults so instances never share them.
        for key in self.setting_names():
            value = getattr(self, key)
            if isinstance(value, (list, dict, np.ndarray)):
                setattr(self, key, copy.deepcopy(value))
        for name in ("MEAN_PIXEL", "PIXEL_STD", "RPN_BBOX_STD_DEV", "BBOX_STD_DEV"):
            setattr(self, name, _as_float_array(name, getattr(self, name)))
        self.validate()

        # GPU_COUNT="auto" counts one device until a model resolves it
        # (colabrcnn.distribute.resolve_gpu_count updates BATCH_SIZE then).
        self.BATCH_SIZE = self.IMAGES_PER_GPU * (1 if self.GPU_COUNT == "auto"
                                                 else self.GPU_COUNT)
        if self.IMAGE_RESIZE_MODE == "crop":
            side = self.IMAGE_MIN_DIM
        else:
            side = self.IMAGE_MAX_DIM
        self.IMAGE_SHAPE = np.array([side, side, self.IMAGE_CHANNEL_COUNT])
        # image_id(1) + original shape(3) + molded shape(3) + window(4) + scale(1)
        # + active class ids(NUM_CLASSES)
        self.IMAGE_META_SIZE = 1 + 3 + 3 + 4 + 1 + self.NUM_CLASSES

    # ------------------------------------------------------------------ checks
    def validate(self):
        """Raise ConfigError naming the setting and the fix for any impossible value.

        Every setting is checked for its type and range, so a mistake (a number typed
        as text in a Colab form, "none" for None, a list of the wrong length) stops here
        with a message saying what to write, not later inside training.
        """
        def need(cond, msg):
            if not cond:
                raise ConfigError(msg)

        def positive_int(name):
            _check_int(name, getattr(self, name), low=1)

        # ---- types and ranges, setting by setting
        if self.GPU_COUNT != "auto":
            _check_int("GPU_COUNT", self.GPU_COUNT, low=1, alternatives="or 'auto'")
        for name in ("IMAGES_PER_GPU", "STEPS_PER_EPOCH", "VALIDATION_STEPS",
                     "NUM_CLASSES", "RPN_ANCHOR_STRIDE", "RPN_TRAIN_ANCHORS_PER_IMAGE",
                     "PRE_NMS_LIMIT", "POST_NMS_ROIS_TRAINING", "POST_NMS_ROIS_INFERENCE",
                     "TRAIN_ROIS_PER_IMAGE", "POOL_SIZE", "MASK_POOL_SIZE",
                     "MAX_GT_INSTANCES", "DETECTION_MAX_INSTANCES", "IMAGE_MAX_DIM",
                     "IMAGE_MIN_DIM", "IMAGE_CHANNEL_COUNT", "TOP_DOWN_PYRAMID_SIZE",
                     "FPN_CLASSIF_FC_LAYERS_SIZE", "GRADIENT_ACCUMULATION_STEPS",
                     "CHECKPOINT_KEEP"):
            positive_int(name)
        _check_int("LR_WARMUP_STEPS", self.LR_WARMUP_STEPS, low=0)
        _check_number("IMAGE_MIN_SCALE", self.IMAGE_MIN_SCALE, low=0,
                      note="0 turns it off", allow_none=True)
        _check_number("RPN_NMS_THRESHOLD", self.RPN_NMS_THRESHOLD, low=0, high=1,
                      low_open=True, note="an IoU threshold")
        _check_number("DETECTION_NMS_THRESHOLD", self.DETECTION_NMS_THRESHOLD, low=0,
                      high=1, low_open=True, note="an IoU threshold")
        _check_number("DETECTION_MIN_CONFIDENCE", self.DETECTION_MIN_CONFIDENCE, low=0,
                      high=1, high_open=True, note="a score")
        _check_number("ROI_POSITIVE_RATIO", self.ROI_POSITIVE_RATIO, low=0, high=1,
                      low_open=True, note="a fraction of the ROIs, e.g. 0.33")
        _check_number("LEARNING_RATE", self.LEARNING_RATE, low=0, low_open=True,
                      note="e.g. 0.001")
        _check_number("LEARNING_MOMENTUM", self.LEARNING_MOMENTUM, low=0, high=1,
                      high_open=True, note="SGD momentum, e.g. 0.9")
        _check_number("WEIGHT_DECAY", self.WEIGHT_DECAY, low=0,
                      note="L2 regularisation, e.g. 0.0001; 0 turns it off")
        _check_number("GRADIENT_CLIP_NORM", self.GRADIENT_CLIP_NORM, low=0, low_open=True,
                      allow_none=True, note="None turns clipping off")
        _check_number("CHECKPOINT_EVERY_MINUTES", self.CHECKPOINT_EVERY_MINUTES, low=0,
                      low_open=True, allow_none=True, note="None: at epoch ends only")
        _check_number("LR_STEP_FACTOR", self.LR_STEP_FACTOR, low=0, low_open=True,
                      note="the learning rate is multiplied by it, e.g. 0.1")
        for name in ("USE_MINI_MASK", "USE_RPN_ROIS", "REMAT"):
            _check_choice(name, getattr(self, name), (True, False))
        _check_choice("TRAIN_BN", self.TRAIN_BN, (True, False, None, "auto"))
        _check_choice("MIXED_PRECISION", self.MIXED_PRECISION,
                      (True, False, "auto", "mixed_float16", "mixed_bfloat16"))
        _check_choice("LR_SCHEDULE", self.LR_SCHEDULE, ("constant", "step", "cosine"))
        _check_choice("OPTIMIZER", self.OPTIMIZER, ("auto",) + OPTIMIZERS)
        _check_choice("SCRATCH_OPTIMIZER", self.SCRATCH_OPTIMIZER, OPTIMIZERS)
        _check_number("SCRATCH_LEARNING_RATE", self.SCRATCH_LEARNING_RATE, low=0,
                      low_open=True, note="e.g. 0.001")
        _check_choice("SCRATCH_LR_SCHEDULE", self.SCRATCH_LR_SCHEDULE,
                      ("constant", "step", "cosine"))
        _check_int("SCRATCH_LR_WARMUP_STEPS", self.SCRATCH_LR_WARMUP_STEPS, low=0)
        _check_number("SCRATCH_BN_MOMENTUM", self.SCRATCH_BN_MOMENTUM, low=0, high=1,
                      low_open=True, high_open=True, note="e.g. 0.9")
        _check_choice("BACKBONE_STYLE", self.BACKBONE_STYLE, STYLES)
        _check_choice("DETECTOR_STYLE", self.DETECTOR_STYLE, STYLES)
        _check_choice("HEAD_BATCHNORM", self.HEAD_BATCHNORM, (True, False))
        _check_int("RPN_CONV_CHANNELS", self.RPN_CONV_CHANNELS, low=1)
        need(self.NAME is None or isinstance(self.NAME, str),
             f"NAME must be text (it names the run folders), got {self.NAME!r}.")
        _check_sequence("BACKBONE_STRIDES", self.BACKBONE_STRIDES, length=5, integer=True,
                        low=1, note="the stride of each pyramid level P2..P6, e.g. "
                        "[4, 8, 16, 32, 64]")
        need(list(self.BACKBONE_STRIDES) == sorted(self.BACKBONE_STRIDES),
             f"BACKBONE_STRIDES must grow from P2 to P6, e.g. [4, 8, 16, 32, 64], got "
             f"{list(self.BACKBONE_STRIDES)}.")
        _check_sequence("RPN_ANCHOR_SCALES", self.RPN_ANCHOR_SCALES, length=5, low=0,
                        low_open=True, note="one anchor size in pixels per pyramid level "
                        "P2..P6, e.g. (32, 64, 128, 256, 512)")
        _check_sequence("RPN_ANCHOR_RATIOS", self.RPN_ANCHOR_RATIOS, low=0, low_open=True,
                        note="width/height ratios of the anchors, e.g. [0.5, 1, 2]")
        _check_sequence("MINI_MASK_SHAPE", self.MINI_MASK_SHAPE, length=2, integer=True,
                        low=1, note="(height, width), e.g. (56, 56)")
        _check_sequence("MASK_SHAPE", self.MASK_SHAPE, length=2, integer=True, low=1,
                        note="twice MASK_POOL_SIZE, e.g. [28, 28]")
        _check_sequence("MEAN_PIXEL", self.MEAN_PIXEL, low=0, high=255,
                        note="the mean of each image channel, e.g. [123.7, 116.8, 103.9]")
        _check_sequence("PIXEL_STD", self.PIXEL_STD, low=0, low_open=True,
                        note="the standard deviation each image channel is divided by "
                        "after MEAN_PIXEL is subtracted, e.g. [1, 1, 1]")
        for name in ("BBOX_STD_DEV", "RPN_BBOX_STD_DEV"):
            _check_sequence(name, getattr(self, name), length=4, low=0, low_open=True,
                            note="(dy, dx, dh, dw), e.g. [0.1, 0.1, 0.2, 0.2]")
        _check_sequence("LR_STEP_EPOCHS", self.LR_STEP_EPOCHS, integer=True, low=1,
                        note="the epochs at which the learning rate drops, e.g. [20, 40]; "
                        "[] for none")
        need(list(self.LR_STEP_EPOCHS) == sorted(set(self.LR_STEP_EPOCHS)),
             f"LR_STEP_EPOCHS must list distinct epochs in increasing order, e.g. [20, 40], "
             f"got {list(self.LR_STEP_EPOCHS)}.")
        need(isinstance(self.LOSS_WEIGHTS, dict),
             f"LOSS_WEIGHTS must be a dict {{loss name: weight}}, got {self.LOSS_WEIGHTS!r}.")
        unknown = set(self.LOSS_WEIGHTS) - set(LOSS_NAMES)
        need(not unknown,
             f"LOSS_WEIGHTS has unknown losses {sorted(unknown)}; the losses are "
             f"{', '.join(LOSS_NAMES)}.")
        for loss, weight in self.LOSS_WEIGHTS.items():
            _check_number(f"LOSS_WEIGHTS['{loss}']", weight, low=0, note="0 turns it off")
        need(self.COMPUTE_BACKBONE_SHAPE is None or callable(self.COMPUTE_BACKBONE_SHAPE),
             "COMPUTE_BACKBONE_SHAPE must be None or a callable(image_shape), got "
             f"{self.COMPUTE_BACKBONE_SHAPE!r}.")

        # ---- settings that must agree with each other
        need(self.NUM_CLASSES >= 2,
             f"NUM_CLASSES is {self.NUM_CLASSES}, but it counts the background too: "
             f"set NUM_CLASSES = 1 + the number of your classes (at least 2).")
        need(self.BACKBONE in BACKBONES or callable(self.BACKBONE),
             f"Unknown BACKBONE {self.BACKBONE!r}: use one of {', '.join(BACKBONES)} or "
             f"a callable(input_image, config) returning [C2, C3, C4, C5].")
        if callable(self.BACKBONE):
            need(callable(self.COMPUTE_BACKBONE_SHAPE),
                 "A callable BACKBONE needs COMPUTE_BACKBONE_SHAPE, a callable(image_shape) "
                 "returning the [height, width] of each pyramid level.")
        need(self.IMAGE_RESIZE_MODE in RESIZE_MODES,
             f"Unknown IMAGE_RESIZE_MODE {self.IMAGE_RESIZE_MODE!r}: use one of "
             f"{', '.join(RESIZE_MODES)}.")
        need(self.IMAGE_MAX_DIM % 64 == 0,
             f"IMAGE_MAX_DIM must be divisible by 64 (the backbone halves the image 6 "
             f"times), got {self.IMAGE_MAX_DIM}: use {max(64, self.IMAGE_MAX_DIM // 64 * 64)} "
             f"or {(self.IMAGE_MAX_DIM // 64 + 1) * 64}.")
        if self.IMAGE_RESIZE_MODE == "crop":
            need(self.IMAGE_MIN_DIM % 64 == 0,
                 f"With IMAGE_RESIZE_MODE='crop' the crops are IMAGE_MIN_DIM square, so "
                 f"IMAGE_MIN_DIM must be divisible by 64, got {self.IMAGE_MIN_DIM}.")
        need(self.IMAGE_MIN_DIM <= self.IMAGE_MAX_DIM,
             f"IMAGE_MIN_DIM ({self.IMAGE_MIN_DIM}) is larger than IMAGE_MAX_DIM "
             f"({self.IMAGE_MAX_DIM}): lower IMAGE_MIN_DIM or raise IMAGE_MAX_DIM.")
        need(np.shape(self.MEAN_PIXEL) == (self.IMAGE_CHANNEL_COUNT,),
             f"MEAN_PIXEL has {np.size(self.MEAN_PIXEL)} values but IMAGE_CHANNEL_COUNT is "
             f"{self.IMAGE_CHANNEL_COUNT}: give one mean per channel.")
        need(np.shape(self.PIXEL_STD) == (self.IMAGE_CHANNEL_COUNT,),
             f"PIXEL_STD has {np.size(self.PIXEL_STD)} values but IMAGE_CHANNEL_COUNT is "
             f"{self.IMAGE_CHANNEL_COUNT}: give one standard deviation per channel.")
        if self.DETECTOR_STYLE == "torchvision":
            # PRE_NMS_LIMIT counts per pyramid level: the levels together keep up to
            # one per anchor scale times as many.
            levels = len(self.RPN_ANCHOR_SCALES)
            need(max(self.POST_NMS_ROIS_TRAINING, self.POST_NMS_ROIS_INFERENCE)
                 <= levels * self.PRE_NMS_LIMIT,
                 f"POST_NMS_ROIS_TRAINING/INFERENCE ({self.POST_NMS_ROIS_TRAINING}/"
                 f"{self.POST_NMS_ROIS_INFERENCE}) cannot exceed the {levels} pyramid "
                 f"levels times PRE_NMS_LIMIT ({self.PRE_NMS_LIMIT} per level with "
                 f"DETECTOR_STYLE='torchvision').")
        else:
            need(self.POST_NMS_ROIS_TRAINING <= self.PRE_NMS_LIMIT
                 and self.POST_NMS_ROIS_INFERENCE <= self.PRE_NMS_LIMIT,
                 f"POST_NMS_ROIS_TRAINING/INFERENCE ({self.POST_NMS_ROIS_TRAINING}/"
                 f"{self.POST_NMS_ROIS_INFERENCE}) cannot exceed PRE_NMS_LIMIT "
                 f"({self.PRE_NMS_LIMIT}).")
        need(self.TRAIN_ROIS_PER_IMAGE <= self.POST_NMS_ROIS_TRAINING,
             f"TRAIN_ROIS_PER_IMAGE ({self.TRAIN_ROIS_PER_IMAGE}) cannot exceed "
             f"POST_NMS_ROIS_TRAINING ({self.POST_NMS_ROIS_TRAINING}).")
        need(list(self.MASK_SHAPE) == [2 * self.MASK_POOL_SIZE] * 2,
             f"MASK_SHAPE {list(self.MASK_SHAPE)} must be twice MASK_POOL_SIZE "
             f"({self.MASK_POOL_SIZE}): the mask head upsamples once by 2.")
        need(not (self.REMAT and self.TRAIN_BN is True),
             "REMAT recomputes the backbone in the backward pass, which would update "
             "BatchNorm statistics twice: use REMAT with TRAIN_BN = False or 'auto' (the "
             "default; colabrcnn.train checks REMAT when 'auto' trains BatchNorm).")

    # ------------------------------------------------------------- helpers
    @classmethod
    def setting_names(cls) -> list[str]:
        """Every setting a Config (sub)class declares (upper-case class attributes)."""
        names = set()
        for klass in cls.__mro__:
            names.update(k for k in vars(klass) if k.isupper())
        return sorted(names)

    def to_dict(self):
        """All settings (derived ones included) as plain JSON-friendly values."""
        out = {}
        for key in sorted(set(self.setting_names()) | {k for k in vars(self) if k.isupper()}):
            value = getattr(self, key)
            if callable(value):
                value = getattr(value, "__name__", repr(value))
            elif isinstance(value, np.ndarray):
                value = value.tolist()
            elif isinstance(value, tuple):
                value = list(value)
            out[key] = value
        return out

    def to_json(self):
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def copy(self, **overrides):
        """A new Config of the same class with some settings changed (re-validated)."""
        values = {k: getattr(self, k) for k in self.setting_names()}
        values.update(overrides)
        new = type(self).__new__(type(self))
        try:
            type(self).__init__(new, **values)
        except TypeError:  # a subclass __init__ without **overrides
            new = copy.deepcopy(self)
            for k, v in overrides.items():
                setattr(new, k, v)
            Config.__init__(new)
        return new

    def display(self):
        """Print every setting, as matterport did."""
        print("\nConfigurations:")
        for key, value in self.to_dict().items():
            print(f"{key:30} {value}")
        print("\n")

    def __repr__(self):
        return f"<{type(self).__name__} NAME={self.NAME!r} BACKBONE={self.BACKBONE!r} " \
               f"NUM_CLASSES={self.NUM_CLASSES} IMAGE_SHAPE={list(self.IMAGE_SHAPE)}>"


class TorchvisionR50FPN(Config):
    """torchvision's ``maskrcnn_resnet50_fpn`` (v1) in this model, for its COCO weights::

        config = TorchvisionR50FPN(NAME="mine", NUM_CLASSES=1 + 3)   # or keep 91
        model = MaskRCNN("training", config, "logs")
        model.load_weights(weights.fetch("torchvision-coco"), by_name=True,
                           exclude=weights.HEADS)

    Its ResNet-50 v1.5 with frozen BatchNorm, (x - mean) / std input scaling, a 256-wide
    RPN conv with anchor ratios h/w (0.5, 1, 2) (our w/h [2, 1, 0.5], same order), box
    coder weights (1, 1, 1, 1) for the RPN and (10, 10, 5, 5) for the heads, per-level
    proposal selection, BatchNorm-free heads and its post-processing thresholds.
    NUM_CLASSES 91 is torchvision's COCO label space (category ids, with gaps).
    torchvision resizes to a short side of 800 and a long side of at most 1333; here
    IMAGE_MAX_DIM is 1344, the next multiple of 64.
    """
    NAME = "torchvision_r50_fpn"
    BACKBONE = "resnet50"
    BACKBONE_STYLE = "torchvision"
    DETECTOR_STYLE = "torchvision"
    HEAD_BATCHNORM = False
    RPN_CONV_CHANNELS = 256
    NUM_CLASSES = 91
    MEAN_PIXEL = np.array([123.675, 116.28, 103.53])
    PIXEL_STD = np.array([58.395, 57.12, 57.375])
    RPN_ANCHOR_RATIOS = [2, 1, 0.5]
    RPN_BBOX_STD_DEV = np.array([1.0, 1.0, 1.0, 1.0])
    BBOX_STD_DEV = np.array([0.1, 0.1, 0.2, 0.2])
    PRE_NMS_LIMIT = 1000
    POST_NMS_ROIS_INFERENCE = 1000
    POST_NMS_ROIS_TRAINING = 2000
    DETECTION_MIN_CONFIDENCE = 0.05
    DETECTION_NMS_THRESHOLD = 0.5
    DETECTION_MAX_INSTANCES = 100
    TRAIN_ROIS_PER_IMAGE = 512
    ROI_POSITIVE_RATIO = 0.25
    IMAGE_MIN_DIM = 800
    IMAGE_MAX_DIM = 1344
