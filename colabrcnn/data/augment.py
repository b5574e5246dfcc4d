"""Image + instance-mask augmentation with albumentations.

    aug = default_augmentation("medium", seed=0)
    image, masks, class_ids = apply_augmentation(aug, image, masks, class_ids)

``apply_augmentation`` moves every instance mask with its image (albumentations applies
geometric transforms to ``masks=`` with nearest-neighbour interpolation and leaves them
out of colour transforms), then drops instances whose mask vanished (cropped or rotated
out of the picture) from both the masks and the class ids, so the two stay aligned.

Any albumentations transform or Compose works, as does ``None`` (no augmentation).
Seeding: albumentations 2 draws from the pipeline's own generator, set by
``A.Compose(..., seed=s)`` (``default_augmentation(seed=s)``) or
``pipeline.set_random_seed(s)``; the same seed gives the same sequence of results.
Data-loading workers that share a pipeline should each call ``set_random_seed`` with a
different seed, or they repeat each other's augmentations.

The training loader (:class:`Augmenter`, used by ``colabrcnn/data/sample.py``)
------------------------------------------------------------------------------
``augmentation`` is None, an albumentations transform/Compose, the callable of
:func:`augmentation_callable` (unwrapped to its pipeline), or any
``callable(image, masks, class_ids)`` returning the same three (it also gets ``rng=``, a
numpy Generator, if it takes that argument). albumentations pipelines are re-seeded for
every sample from the sample's seed, each thread using its own copy, so batches are the
same for a given ``seed`` whatever ``workers``/``use_multiprocessing`` are. For
pipelines made of transforms that only move pixels (flips, rotations, affine, crops,
resizes, pads with nearest-neighbour masks and a zero mask fill, and colour transforms)
the instance masks travel bit-packed, eight per channel, which is exact and several times
faster; other pipelines get one mask per instance. Instances that vanish (cropped or
rotated out) are removed from boxes, masks and class ids together; images whose
instances all vanished, or that had none, are kept (they teach background).
"""
from __future__ import annotations

import copy
import inspect
import os
import random
import threading

import cv2
import numpy as np

from ..errors import AnnotationError
from .decode import bit_planes, full_masks, pack_masks

LEVELS = ("none", "light", "medium")


def _albumentations():
    # albumentations asks PyPI for a newer version on import unless told not to: slow on
    # Colab and useless offline.
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations as A
    return A


def default_augmentation(level="light", seed=None, upright=True):
    """A ready albumentations pipeline for instance segmentation, or None.

    Args:
        level: "none" (returns None), "light" (horizontal flips, mild brightness and
            contrast) or "medium" (plus zoom in/out with shifts and small rotations,
            colour changes, a little blur or noise).
        seed: seed of the pipeline's random generator (reproducible augmentation).
        upright: True for photos, which have an up direction. False (microscopy, aerial
            or top-down images, coins on a table) adds vertical flips and 90-degree
            rotations.
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    if level == "none":
        return None
    A = _albumentations()
    t = [A.HorizontalFlip(p=0.5)]
    if not upright:
        t += [A.VerticalFlip(p=0.5), A.RandomRotate90(p=0.5)]
    if level == "light":
        t += [A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.3)]
    else:
        t += [
            # Zooming in crops, zooming out shrinks objects: scale coverage both ways.
            A.Affine(scale=(0.8, 1.25), translate_percent=(-0.1, 0.1), rotate=(-10, 10),
                     keep_ratio=True, fill=0, fill_mask=0, p=0.5),
            A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
            A.HueSaturationValue(hue_shift_limit=8, sat_shift_limit=15, val_shift_limit=10,
                                 p=0.3),
            A.OneOf([A.GaussianBlur(blur_limit=(3, 5)),
                     A.GaussNoise(std_range=(0.02, 0.06))], p=0.2),
        ]
    return A.Compose(t, seed=seed)


def apply_augmentation(aug, image, masks, class_ids, min_area=1):
    """Augment an image and its instance masks together.

    Args:
        aug: an albumentations transform/Compose (anything called as
            ``aug(image=..., masks=[...])`` returning a dict), or None.
        image: H x W x C uint8 image.
        masks: H x W x N bool instance masks (matterport layout).
        class_ids: N class ids.
        min_area: instances with fewer mask pixels than this afterwards are dropped.

    Returns:
        (image, masks H' x W' x M bool, class_ids M int32) with M <= N.
    """
    image = np.asarray(image)
    masks = np.asarray(masks)
    ids = np.asarray(class_ids, dtype=np.int32).reshape(-1)
    if masks.ndim != 3 or masks.shape[:2] != image.shape[:2] or masks.shape[-1] != len(ids):
        raise AnnotationError(f"masks must be H x W x N matching the image {image.shape[:2]} "
                              f"and {len(ids)} class ids; got masks of shape {masks.shape}")
    if aug is None:
        return image, masks.astype(bool), ids
    if not callable(aug):
        raise TypeError(f"augmentation must be an albumentations transform or None, got "
                        f"{type(aug).__name__}")
    n = masks.shape[-1]
    if n == 0:
        out = call_pipeline(aug, image=image)
        img = out["image"]
        return img, np.zeros(img.shape[:2] + (0,), dtype=bool), ids
    out = call_pipeline(aug, image=image,
                        masks=[np.ascontiguousarray(masks[..., k], dtype=np.uint8)
                               for k in range(n)])
    img = out["image"]
    new = np.stack([np.asarray(m) > 0 for m in out["masks"]], axis=-1)
    if new.shape[:2] != img.shape[:2]:
        raise AnnotationError(f"the augmentation returned masks of size {new.shape[:2]} for "
                              f"an image of size {img.shape[:2]}")
    keep = new.reshape(-1, n).sum(axis=0) >= min_area
    return img, new[..., keep], ids[keep]


class AugmentationCallable:
    """``callable(image, masks, class_ids)`` applying an albumentations ``pipeline``
    (None passes through) and dropping instances under ``min_area`` pixels.

    Picklable with its pipeline, so it travels to data-loading worker processes; the
    loader's :class:`Augmenter` unwraps it to move bit-packed masks.
    """

    def __init__(self, pipeline, min_area=1):
        self.pipeline = pipeline
        self.min_area = min_area

    def __call__(self, image, masks, class_ids):
        return apply_augmentation(self.pipeline, image, masks, class_ids,
                                  min_area=self.min_area)


def augmentation_callable(aug, min_area=1):
    """``callable(image, masks, class_ids)`` applying ``aug`` (None passes through).

    The form matterport-style code passes as ``augmentation=`` (``load_image_gt``,
    ``train``); see :class:`AugmentationCallable`.
    """
    return AugmentationCallable(aug, min_area)


def call_pipeline(aug, **data):
    """``aug(**data)`` for an albumentations-style transform, with errors that say what
    form is expected (imgaug augmenters are not)."""
    try:
        out = aug(**data)
    except TypeError as e:
        if "image" in str(e) or "keyword" in str(e):
            raise TypeError("augmentation must take keyword arguments image= and masks= as "
                            "albumentations transforms do (imgaug augmenters are not "
                            f"supported; use albumentations): {e}") from None
        raise
    if not isinstance(out, dict) or "image" not in out:
        raise TypeError("augmentation must return a dict with 'image' (and 'masks'), as "
                        "albumentations transforms do")
    return out


# Transforms that only move pixels (or pad/crop/resize): with nearest-neighbour mask
# interpolation and a zero mask fill they keep bit-packed masks exact.
PIXEL_MOVING = {
    "HorizontalFlip", "VerticalFlip", "Transpose", "RandomRotate90", "D4",
    "SquareSymmetry", "Rotate", "SafeRotate", "Affine", "ShiftScaleRotate", "Perspective",
    "RandomScale", "Resize", "LongestMaxSize", "SmallestMaxSize", "PadIfNeeded", "Pad",
    "Crop", "CenterCrop", "RandomCrop", "RandomResizedCrop", "RandomSizedCrop",
    "CropAndPad", "ElasticTransform", "GridDistortion", "OpticalDistortion",
    "PiecewiseAffine", "ThinPlateSpline", "NoOp", "ToGray",
}


def is_albumentations(obj):
    """Whether ``obj`` is an albumentations transform (or Compose)."""
    return any(c.__module__.split(".")[0] == "albumentations" for c in type(obj).__mro__)


def keeps_packed_masks(transform):
    """True if every transform in the pipeline keeps bit-packed masks exact."""
    children = getattr(transform, "transforms", None)
    if children is not None and not hasattr(transform, "apply"):  # a Compose/OneOf/...
        return all(keeps_packed_masks(t) for t in children)
    names = {c.__name__ for c in type(transform).__mro__}
    if "ImageOnlyTransform" in names:
        return True
    if type(transform).__name__ not in PIXEL_MOVING:
        return False
    interp = getattr(transform, "mask_interpolation", cv2.INTER_NEAREST)
    if interp not in (None, cv2.INTER_NEAREST, cv2.INTER_NEAREST_EXACT):
        return False
    for name in ("fill_mask", "mask_value", "cval_mask"):  # albumentations 2 / 1.x names
        fill = getattr(transform, name, 0)
        if fill is not None and np.any(np.asarray(fill) != 0):
            return False
    return True


class Augmenter:
    """Applies one of the accepted augmentation forms to a compact sample.

    Picklable (worker processes get their own copy); each thread deep-copies an
    albumentations pipeline once, then re-seeds it per sample.
    """

    def __init__(self, augmentation):
        self.kind = None
        self.pipeline = None
        self.fn = None
        self.min_area = 1
        self.packed = False
        self.pass_rng = False
        if augmentation is None:
            pass
        elif isinstance(augmentation, AugmentationCallable):
            self.pipeline, self.min_area = augmentation.pipeline, augmentation.min_area
            self.kind = None if self.pipeline is None else "pipeline"
        elif is_albumentations(augmentation):
            self.pipeline, self.kind = augmentation, "pipeline"
        elif callable(augmentation):
            self.fn, self.kind = augmentation, "callable"
            try:
                self.pass_rng = "rng" in inspect.signature(augmentation).parameters
            except (TypeError, ValueError):
                self.pass_rng = False
        else:
            raise TypeError("augmentation must be an albumentations transform or Compose, "
                            "a callable(image, masks, class_ids) or None, got "
                            f"{type(augmentation).__name__}")
        if self.kind == "pipeline":
            self.packed = is_albumentations(self.pipeline) and keeps_packed_masks(self.pipeline)
        self._local = threading.local()

    def __bool__(self):
        return self.kind is not None

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_local", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._local = threading.local()

    def _thread_pipeline(self):
        p = getattr(self._local, "pipeline", None)
        if p is None:
            try:
                p = copy.deepcopy(self.pipeline)
            except Exception:  # pragma: no cover - an uncopyable custom transform
                p = self.pipeline
            self._local.pipeline = p
        return p

    def __call__(self, image, boxes, crops, class_ids, rng):
        """Augment a compact sample -> (image, planes [P, H, W] uint8, class_ids, n)."""
        seed = int(rng.integers(0, 2 ** 32))
        shape = image.shape
        n = len(crops)
        if self.kind == "pipeline":
            p = self._thread_pipeline()
            if hasattr(p, "set_random_seed"):
                p.set_random_seed(seed)
            else:  # albumentations 1.x draws from the global generators
                random.seed(seed)
                np.random.seed(seed)
            if self.packed or n == 0:
                planes = bit_planes(shape, boxes, crops)
                data = {"image": np.array(image)}
                if n:
                    data["masks"] = list(planes)
                out = call_pipeline(p, **data)
                img = np.asarray(out["image"])
                planes = (np.stack([np.asarray(m, np.uint8) for m in out["masks"]])
                          if n else np.zeros((0,) + img.shape[:2], np.uint8))
                return img, planes, class_ids, n
            img, masks, ids = apply_augmentation(p, np.array(image),
                                                 full_masks(shape, boxes, crops),
                                                 class_ids, min_area=0)
        else:
            args = (np.array(image), full_masks(shape, boxes, crops), class_ids.copy())
            out = self.fn(*args, rng=rng) if self.pass_rng else self.fn(*args)
            if not isinstance(out, (tuple, list)) or len(out) != 3:
                raise TypeError("an augmentation callable must return (image, masks, "
                                "class_ids)")
            img, masks, ids = (np.asarray(v) for v in out)
        ids = np.asarray(ids).reshape(-1)
        if masks.ndim != 3 or masks.shape[2] != ids.shape[0]:
            raise AnnotationError(f"the augmentation returned masks of shape {masks.shape} "
                                  f"with {ids.shape[0]} class ids")
        planes = (np.ascontiguousarray(pack_masks(masks).transpose(2, 0, 1))
                  if ids.size else np.zeros((0,) + masks.shape[:2], np.uint8))
        return img, planes, ids.astype(np.int32), int(ids.shape[0])
