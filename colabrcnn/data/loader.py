"""Training batches for the Keras model.

``DataGenerator`` is a ``keras.utils.PyDataset``: each item is one batch as a dict keyed
by the training model's input names (``INPUT_NAMES``). Ground truth is padded to
MAX_GT_INSTANCES and the RPN targets are computed in NumPy, as matterport did, so the
model's graph stays static. Each sample is built by ``colabrcnn/data/sample.py``
(decode, resize, augment, pad/crop, targets); decoded images are kept by the caches of
``colabrcnn/data/cache.py``.

Workers
-------
``workers=2, use_multiprocessing=True`` suits a 2-core Colab. Keras forks the worker
processes anew every epoch. Batches are the same whatever the number of workers (each
sample's random generator is seeded from (seed, epoch, batch, position)).
"""
from __future__ import annotations

import numpy as np

from ..model import anchors
from ..errors import AnnotationError
from .cache import make_cache
from .sample import INPUT_NAMES, SampleBuilder

try:  # keras is light to import without a backend call, but keep the module importable
    from keras.utils import PyDataset as _PyDataset
except Exception:  # pragma: no cover - keras missing: doctor reports it
    _PyDataset = object


class DataGenerator(_PyDataset):
    """Batches of training inputs from a prepared Dataset.

    Args:
        dataset: a prepared Dataset (annotation readers, shapes, or a matterport-style
            subclass).
        config: the Config.
        shuffle: shuffle the images every epoch.
        augmentation: None, an albumentations transform/Compose, the callable of
            ``augmentation_callable``, or callable(image, masks, class_ids).
        seed: makes shuffling, augmentation, crops and RPN sampling repeatable; a batch
            depends only on (seed, epoch, batch index), not on the number of workers.
        steps: batches per epoch (default: one pass over the images).
        cache: None, "ram" or "disk" (or a cache object): keep decoded, resized images
            so that later epochs do not decode again (module docstring).
        cache_dir: folder of the disk cache (default :func:`default_cache_dir`); for
            "ram" with multiprocessing, the shared folder to use.
        no_augmentation_sources: dataset sources whose images are not augmented.
        cache_max_gb: size limit of the RAM cache (default: half the free memory).
        workers, use_multiprocessing, max_queue_size: keras.utils.PyDataset's. On a
            2-core Colab, ``workers=2, use_multiprocessing=True`` keeps the GPU fed.

    Images whose instances all vanished (e.g. after a crop) are still used: they teach
    the model background.
    """

    def __init__(self, dataset, config, shuffle=True, augmentation=None, seed=None,
                 steps=None, cache=None, cache_dir=None, no_augmentation_sources=None,
                 cache_max_gb=None, **kwargs):
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
            raise AnnotationError("the dataset has no images; call prepare() after adding "
                                  "images, and check the annotation paths")
        self.steps = steps or max(1, int(np.ceil(len(self.image_ids) / self.batch_size)))
        self.cache = make_cache(cache, cache_dir=cache_dir, max_gb=cache_max_gb,
                                multiprocessing=bool(getattr(self, "use_multiprocessing",
                                                             False)))
        self.builder = SampleBuilder(dataset, config, augmentation, self.cache,
                                     no_augmentation_sources)
        # Anchors and their search index (built by a first RPN-target call), made once
        # here: worker processes (forked anew every epoch) inherit them.
        anchors.build_rpn_targets(anchors.get_anchors(config, config.IMAGE_SHAPE),
                                np.zeros((0,), np.int32), np.zeros((0, 4)), config,
                                rng=np.random.default_rng(0))
        self._order = self._make_order(0)

    def _make_order(self, epoch):
        rng = np.random.default_rng(None if self.seed is None else (self.seed, epoch))
        reps = int(np.ceil(self.steps * self.batch_size / len(self.image_ids))) + 1
        order = np.concatenate([rng.permutation(self.image_ids) if self.shuffle
                                else self.image_ids for _ in range(reps)])
        return order

    def __len__(self):
        return self.steps

    def set_epoch(self, epoch: int) -> None:
        """Put the generator at ``epoch``: the batch order of that epoch (seeded by
        (seed, epoch)), so a resumed run sees the batches an uninterrupted one would."""
        self.epoch = int(epoch)
        self._order = self._make_order(self.epoch)

    def on_epoch_end(self):
        self.epoch += 1
        self._order = self._make_order(self.epoch)

    def __getitem__(self, index):
        ids = self._order[index * self.batch_size:(index + 1) * self.batch_size]
        c = self.config
        images = np.empty((len(ids), int(c.IMAGE_SHAPE[0]), int(c.IMAGE_SHAPE[1]),
                           int(c.IMAGE_SHAPE[2])), np.float32)
        samples = []
        for j, image_id in enumerate(ids):
            rng = np.random.default_rng(
                None if self.seed is None else (self.seed, self.epoch, index, j))
            samples.append(self.builder.build(int(image_id), rng, image_out=images[j]))
        batch = {"input_image": images}
        for k in INPUT_NAMES[1:]:
            batch[k] = np.stack([s[k] for s in samples])
        return batch

    def cache_info(self):
        """This process's cache counters (hits, misses, writes, rebuilt) and size."""
        if self.cache is None:
            return None
        info = dict(self.cache.stats)
        info.update(kind=self.cache.kind, entries=len(self.cache),
                    folder=getattr(self.cache, "folder", None))
        return info

    def close(self):
        """Drop the RAM cache, remove its temporary shared-memory folder."""
        if self.cache is not None:
            self.cache.close()
