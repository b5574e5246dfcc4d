"""The NumPy parts of matterport's ``mrcnn.model`` that have no other home here.

``colabrcnn.model`` re-exports these (and the rest of matterport's names) lazily; this
module imports no Keras, so ``from colabrcnn.model import log`` stays light.
"""
from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from .anchors import build_rpn_targets as _build_rpn_targets


def log(text, array=None):
    """Print ``text`` and, for an array, its shape, min, max and dtype (matterport's
    one-line summary, used throughout its notebooks)."""
    if array is not None:
        array = np.asarray(array)
        text = text.ljust(25) + "shape: {:20}  ".format(str(array.shape))
        if array.size:
            # bool arrays: min/max as numbers, as NumPy 1 printed them.
            lo, hi = (float(array.min()), float(array.max())) if array.dtype == bool \
                else (array.min(), array.max())
            text += "min: {:10.5f}  max: {:10.5f}".format(lo, hi)
        else:
            text += "min: {:10}  max: {:10}".format("", "")
        text += "  {}".format(array.dtype)
    print(text)


def build_rpn_targets(image_shape, anchors, gt_class_ids, gt_boxes, config):
    """matterport's signature for :func:`colabrcnn.model.anchors.build_rpn_targets`.

    image_shape is unused (as in matterport). Returns rpn_match [A] int32 (1 positive,
    -1 negative, 0 neutral) and rpn_bbox [RPN_TRAIN_ANCHORS_PER_IMAGE, 4] deltas of the
    positive anchors divided by RPN_BBOX_STD_DEV.
    """
    return _build_rpn_targets(anchors, gt_class_ids, gt_boxes, config)


def data_generator(dataset, config, shuffle=True, augment=False, augmentation=None,
                   random_rois=0, batch_size=1, detection_targets=False,
                   no_augmentation_sources=None):
    """matterport's endless generator of training batches, from our loader.

    Yields ``(inputs, [])`` with inputs = [images (molded, float32), image_meta,
    rpn_match [B, A, 1], rpn_bbox, gt_class_ids, gt_boxes, gt_masks], as matterport.
    ``random_rois`` / ``detection_targets`` (training the heads on random ROIs) are
    not provided: the heads train on the RPN's proposals.
    """
    from ..data.loader import DataGenerator  # the loader pulls in Keras: keep it lazy
    if random_rois or detection_targets:
        raise ConfigError("data_generator(random_rois=, detection_targets=) is not "
                          "provided: training the heads on random ROIs (USE_RPN_ROIS="
                          "False) is not supported. Use the default data_generator(dataset,"
                          " config) batches, or MaskRCNN.run_graph to see ROIs and targets.")
    if augment and augmentation is None:
        augmentation = _horizontal_flip
    batch_config = config.copy(IMAGES_PER_GPU=int(batch_size), GPU_COUNT=1)
    gen = DataGenerator(dataset, batch_config, shuffle=shuffle, augmentation=augmentation,
                        no_augmentation_sources=no_augmentation_sources)
    order = ("input_image", "input_image_meta", "input_rpn_match", "input_rpn_bbox",
             "input_gt_class_ids", "input_gt_boxes", "input_gt_masks")
    try:
        while True:
            for index in range(len(gen)):
                batch = gen[index]
                inputs = batch[0] if isinstance(batch, tuple) else batch
                yield [np.asarray(inputs[name]) for name in order], []
            gen.on_epoch_end()
    finally:
        if hasattr(gen, "close"):
            gen.close()


def _horizontal_flip(image, masks, class_ids, rng=None):
    """matterport's deprecated ``augment=True``: a left-right flip half the time."""
    rng = rng if rng is not None else np.random.default_rng()
    if rng.integers(0, 2):
        return np.fliplr(image), np.fliplr(masks), class_ids
    return image, masks, class_ids
