"""The shapes demo: train a small Mask R-CNN from scratch on synthetic shapes, then
detect on images it has not seen and save pictures. Runs on a CPU in a few minutes;
``colabrcnn demo`` is the command line for it.
"""
from __future__ import annotations

import json
import logging
import os
import time

import numpy as np

from . import utils, visualize
from .config import Config
from .data.shapes import shapes

logger = logging.getLogger(__name__)


class ShapesConfig(Config):
    """A small model for 128x128 shapes: ResNet-18, narrow FPN and heads.

    Anchor scales are a quarter of matterport's to match the small objects; BatchNorm
    trains (TRAIN_BN) because the backbone starts from scratch.
    """
    NAME = "shapes"
    NUM_CLASSES = 1 + 3
    BACKBONE = "resnet18"
    IMAGE_MIN_DIM = 128
    IMAGE_MAX_DIM = 128
    IMAGES_PER_GPU = 2
    RPN_ANCHOR_SCALES = (8, 16, 32, 64, 128)
    RPN_TRAIN_ANCHORS_PER_IMAGE = 64
    PRE_NMS_LIMIT = 1000
    POST_NMS_ROIS_TRAINING = 256
    POST_NMS_ROIS_INFERENCE = 128
    TRAIN_ROIS_PER_IMAGE = 32
    TOP_DOWN_PYRAMID_SIZE = 64
    FPN_CLASSIF_FC_LAYERS_SIZE = 128
    MAX_GT_INSTANCES = 8
    MINI_MASK_SHAPE = (28, 28)
    STEPS_PER_EPOCH = 20
    VALIDATION_STEPS = 4
    TRAIN_BN = True
    DETECTION_MIN_CONFIDENCE = 0.5
    DETECTION_MAX_INSTANCES = 16


def scratch_optimizer(config, learning_rate=0.001, epochs=40):
    """Adam with a cosine decay over ``epochs``: the recipe for training from scratch."""
    import keras
    steps = epochs * config.STEPS_PER_EPOCH
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, steps, alpha=0.05)
    return keras.optimizers.Adam(schedule, clipnorm=config.GRADIENT_CLIP_NORM)


def run_demo(out_dir="runs/demo", epochs=40, train_images=500, val_images=8,
             learning_rate=0.001, seed=0, verbose=1):
    """Train on ``train_images`` shapes, detect on ``val_images`` others.

    From scratch, Adam (with a cosine decay) gets much further in a few CPU minutes than
    matterport's SGD, which assumes a pretrained backbone: 600 steps gave mask AP50
    0.57 with Adam against 0.24 with SGD at 0.02 on the held-out images.

    Writes the run folder (checkpoints, log.csv) under ``out_dir``, one overlay PNG per
    validation image (ground truth left, prediction right) and ``demo_metrics.json``.
    Returns a dict with the mask AP50 on the validation images and the paths.
    """
    import keras

    from .model.maskrcnn import MaskRCNN  # lazy: imports Keras

    keras.utils.set_random_seed(seed)
    os.makedirs(out_dir, exist_ok=True)
    train = shapes(train_images, 128, seed=seed)
    val = shapes(val_images, 128, seed=seed + 1000)
    config = ShapesConfig()
    model = MaskRCNN("training", config, model_dir=out_dir)
    optimizer = scratch_optimizer(config, learning_rate, epochs)
    start = time.time()
    model.train(train, val, learning_rate=learning_rate, epochs=epochs, layers="all",
                optimizer=optimizer, resume=False, seed=seed, verbose=verbose)
    train_seconds = time.time() - start

    images = [val.load_image(i) for i in val.image_ids]
    results = model.detect(images)
    aps, pictures = [], []
    for image_id, image, r in zip(val.image_ids, images, results):
        gt_masks, gt_ids = val.load_mask(image_id)
        gt_boxes = utils.extract_bboxes(gt_masks)
        ap, *_ = utils.compute_ap(gt_boxes, gt_ids, gt_masks, r["rois"], r["class_ids"],
                                  r["scores"], r["masks"])
        aps.append(ap)
        left = visualize.draw_instances(image, gt_boxes, gt_masks, gt_ids, val.class_names)
        right = visualize.draw_instances(image, r["rois"], r["masks"], r["class_ids"],
                                         val.class_names, r["scores"])
        gap = np.full((image.shape[0], 4, 3), 255, np.uint8)
        path = os.path.join(model.log_dir, f"val_{image_id:03d}.png")
        visualize.save_image(path, np.concatenate([left, gap, right], axis=1))
        pictures.append(path)
    metrics = {"mask_AP50": float(np.mean(aps)), "per_image_AP50": [float(a) for a in aps],
               "epochs": epochs, "train_seconds": round(train_seconds, 1),
               "backend": keras.backend.backend(), "run_dir": model.log_dir,
               "pictures": pictures}
    with open(os.path.join(model.log_dir, "demo_metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    if verbose:
        logger.info("\nmask AP50 on %d unseen images: %.3f", val_images, metrics["mask_AP50"])
        logger.info("pictures (ground truth | prediction): %s/val_*.png", model.log_dir)
    return metrics
