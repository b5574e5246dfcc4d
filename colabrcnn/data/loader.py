"""Training batches for the Keras model.

``DataGenerator`` is a ``keras.utils.PyDataset``: each item is one batch as a dict keyed
by the training model's input names. Ground truth is padded to MAX_GT_INSTANCES and the
RPN targets are computed here in NumPy, as matterport did, so the model's graph stays
static.
"""
from __future__ import annotations

import numpy as np

from .. import utils

try:  # keras is light to import without a backend call, but keep the module importable
    from keras.utils import PyDataset as _PyDataset
except Exception:  # pragma: no cover - keras missing: doctor reports it
    _PyDataset = object


INPUT_NAMES = ("input_image", "input_image_meta", "input_rpn_match", "input_rpn_bbox",
               "input_gt_class_ids", "input_gt_boxes", "input_gt_masks")


def build_training_sample(dataset, config, image_id, augmentation=None, rng=None):
    """One image's model inputs (unbatched) as a dict keyed like INPUT_NAMES."""
    rng = rng if rng is not None else np.random.default_rng()
    image, image_meta, class_ids, boxes, masks = utils.load_image_gt(
        dataset, config, image_id, augmentation=augmentation, rng=rng)
    anchors = utils.get_anchors(config, image.shape)
    rpn_match, rpn_bbox = utils.build_rpn_targets(anchors, class_ids, boxes, config, rng=rng)

    n = config.MAX_GT_INSTANCES
    if class_ids.shape[0] > n:
        # More instances than the model takes: a random subset each time it is seen.
        keep = np.sort(rng.choice(class_ids.shape[0], n, replace=False))
        class_ids, boxes, masks = class_ids[keep], boxes[keep], masks[..., keep]
    gt_class_ids = np.zeros((n,), np.int32)
    gt_boxes = np.zeros((n, 4), np.float32)
    gt_masks = np.zeros(masks.shape[:2] + (n,), bool)
    k = class_ids.shape[0]
    gt_class_ids[:k] = class_ids
    gt_boxes[:k] = boxes
    gt_masks[..., :k] = masks
    return {
        "input_image": utils.mold_image(image, config),
        "input_image_meta": image_meta,
        "input_rpn_match": rpn_match[:, None].astype(np.int32),
        "input_rpn_bbox": rpn_bbox,
        "input_gt_class_ids": gt_class_ids,
        "input_gt_boxes": gt_boxes,
        "input_gt_masks": gt_masks,
    }


class DataGenerator(_PyDataset):
    """Batches of training inputs from a prepared Dataset.

    Images whose instances all vanished (e.g. after a crop) are still used: they teach
    the model background. ``seed`` makes shuffling, crops and RPN sampling repeatable.
    """

    def __init__(self, dataset, config, shuffle=True, augmentation=None, seed=None,
                 steps=None, **kwargs):
        super().__init__(**kwargs)
        self.dataset = dataset
        self.config = config
        self.shuffle = shuffle
        self.augmentation = augmentation
        self.batch_size = config.BATCH_SIZE
        self.seed = seed
        self.epoch = 0
        self.image_ids = np.asarray(dataset.image_ids)
        if len(self.image_ids) == 0:
            from ..errors import AnnotationError
            raise AnnotationError("the dataset has no images; call prepare() after adding "
                                  "images, and check the annotation paths")
        self.steps = steps or max(1, int(np.ceil(len(self.image_ids) / self.batch_size)))
        self._order = self._make_order(0)

    def _make_order(self, epoch):
        rng = np.random.default_rng(None if self.seed is None else (self.seed, epoch))
        reps = int(np.ceil(self.steps * self.batch_size / len(self.image_ids))) + 1
        order = np.concatenate([rng.permutation(self.image_ids) if self.shuffle
                                else self.image_ids for _ in range(reps)])
        return order

    def __len__(self):
        return self.steps

    def on_epoch_end(self):
        self.epoch += 1
        self._order = self._make_order(self.epoch)

    def __getitem__(self, index):
        ids = self._order[index * self.batch_size:(index + 1) * self.batch_size]
        samples = []
        for j, image_id in enumerate(ids):
            rng = np.random.default_rng(
                None if self.seed is None else (self.seed, self.epoch, index, j))
            samples.append(build_training_sample(self.dataset, self.config, int(image_id),
                                                 self.augmentation, rng))
        return {k: np.stack([s[k] for s in samples]) for k in INPUT_NAMES}
