"""One training sample from a Dataset: the only place a sample is built.

The loader (``colabrcnn/data/loader.py``), ``load_image_gt`` (matterport's function,
re-exported by ``colabrcnn.utils``) and the benchmarks all go through
:class:`SampleBuilder`. One image goes through two stages::

    stage 1 (deterministic, cacheable)            stage 2 (random, every time)
    decode -> masks -> resize by the config's     augment -> pad / crop to IMAGE_SHAPE
    scale (cv2) -> compact masks                  -> boxes, mini-masks, RPN targets

Stage 1 gives a :class:`DecodedSample`: the image already resized to the size training
uses (about IMAGE_MAX_DIM, never padded) and each instance as its tight box plus the
bit-packed mask inside it. Augmentation therefore runs at training resolution, after
resizing, as in matterport (an augmentation that changes the image size is followed by
another resize). Without augmentation stage 2 is only padding and targets. Stage 1 is
what ``colabrcnn/data/cache.py`` keeps.

Augmentation
------------
``augmentation`` is None, an albumentations transform/Compose, the callable of
``colabrcnn.data.augment.augmentation_callable`` (unwrapped to its pipeline), or any
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
``no_augmentation_sources``: images whose ``source`` is listed are never augmented.

(Over 500 lines on purpose: the whole path of one sample, from decoding to the model's
inputs, in one file, so there is one implementation to read and to test.)
"""
from __future__ import annotations

import copy
import inspect
import random
import threading

import cv2
import numpy as np

from ..model import anchors, transform
from ..errors import AnnotationError, ConfigError
from .augment import (AugmentationCallable, apply_augmentation, call_pipeline,
                      is_albumentations, keeps_packed_masks)
from .dataset import to_rgb_uint8

INPUT_NAMES = ("input_image", "input_image_meta", "input_rpn_match", "input_rpn_bbox",
               "input_gt_class_ids", "input_gt_boxes", "input_gt_masks")

# Bump when DecodedSample's content or layout changes: old cache files are then ignored.
CACHE_VERSION = 1


# ============================================================================ stage 1: decode
class DecodedSample:
    """An image resized to its training scale, with compact instance masks.

    image [h, w, C] uint8 (not padded); boxes [N, 4] int32 tight (y1, x1, y2, x2),
    y2/x2 exclusive, in ``image``; class_ids [N] int32; ``bits``/``offsets``: instance
    k's mask inside its box is ``np.packbits`` of it at bits[offsets[k]:offsets[k+1]];
    original_shape: the decoded image's shape; scale: original -> ``image``.
    """

    __slots__ = ("image", "boxes", "class_ids", "bits", "offsets", "original_shape",
                 "scale")

    def __init__(self, image, boxes, class_ids, bits, offsets, original_shape, scale):
        self.image = image
        self.boxes = boxes
        self.class_ids = class_ids
        self.bits = bits
        self.offsets = offsets
        self.original_shape = tuple(int(v) for v in original_shape)
        self.scale = float(scale)

    @classmethod
    def from_crops(cls, image, boxes, crops, class_ids, original_shape, scale):
        packed = [np.packbits(c.reshape(-1)) for c in crops]
        offsets = np.zeros((len(packed) + 1,), np.int64)
        offsets[1:] = np.cumsum([p.size for p in packed]) if packed else []
        bits = np.concatenate(packed) if packed else np.zeros((0,), np.uint8)
        return cls(image, np.asarray(boxes, np.int32).reshape(-1, 4),
                   np.asarray(class_ids, np.int32).reshape(-1), bits, offsets,
                   original_shape, scale)

    def __len__(self):
        return int(self.boxes.shape[0])

    def crop(self, k):
        """Instance k's mask inside its box: [y2 - y1, x2 - x1] bool."""
        y1, x1, y2, x2 = (int(v) for v in self.boxes[k])
        h, w = y2 - y1, x2 - x1
        part = self.bits[self.offsets[k]:self.offsets[k + 1]]
        return np.unpackbits(part, count=h * w).reshape(h, w).view(bool)

    def crops(self):
        return [self.crop(k) for k in range(len(self))]

    @property
    def nbytes(self):
        return int(self.image.nbytes + self.boxes.nbytes + self.class_ids.nbytes
                   + self.bits.nbytes + self.offsets.nbytes)

    def freeze(self):
        """Make the arrays read-only (cached samples are shared between uses)."""
        for name in ("image", "boxes", "class_ids", "bits", "offsets"):
            getattr(self, name).flags.writeable = False
        return self

    # -- serialisation (the disk cache) --
    def to_arrays(self):
        return {"image": self.image, "boxes": self.boxes, "class_ids": self.class_ids,
                "bits": self.bits, "offsets": self.offsets,
                "info": np.array(list(self.original_shape) + [self.scale], np.float64),
                "version": np.array([CACHE_VERSION], np.int64)}

    @classmethod
    def from_arrays(cls, arrays):
        """Rebuild from ``to_arrays`` output; ValueError if anything is inconsistent."""
        version = np.asarray(arrays["version"])
        if version.shape != (1,) or int(version[0]) != CACHE_VERSION:
            raise ValueError("cache format version differs")
        image = np.asarray(arrays["image"])
        boxes = np.asarray(arrays["boxes"])
        class_ids = np.asarray(arrays["class_ids"])
        bits = np.asarray(arrays["bits"])
        offsets = np.asarray(arrays["offsets"])
        info = np.asarray(arrays["info"])
        n = boxes.shape[0] if boxes.ndim == 2 else -1
        if image.dtype != np.uint8 or image.ndim != 3 or boxes.dtype != np.int32 or \
                boxes.ndim != 2 or boxes.shape[1] != 4 or class_ids.shape != (n,) or \
                offsets.shape != (n + 1,) or bits.dtype != np.uint8 or bits.ndim != 1 or \
                info.ndim != 1 or info.size < 2:
            raise ValueError("cached arrays have unexpected shapes")
        h, w = image.shape[:2]
        sizes = (boxes[:, 2] - boxes[:, 0]).astype(np.int64) * (boxes[:, 3] - boxes[:, 1])
        if n and (boxes[:, :2].min() < 0 or boxes[:, 2].max() > h or boxes[:, 3].max() > w
                  or sizes.min() <= 0):
            raise ValueError("cached boxes lie outside the image")
        if offsets[0] != 0 or offsets[-1] != bits.size or \
                not np.array_equal(np.diff(offsets), (sizes + 7) // 8):
            raise ValueError("cached mask bits do not match the boxes")
        return cls(image, boxes, class_ids, bits, offsets,
                   tuple(int(v) for v in info[:-1]), float(info[-1]))


def as_image(image, config, ref):
    """The dataset's image as [H, W, C] uint8 (RGB when IMAGE_CHANNEL_COUNT is 3)."""
    image = np.asarray(image)
    channels = int(config.IMAGE_CHANNEL_COUNT)
    if image.ndim == 3 and image.shape[2] == channels and image.dtype == np.uint8:
        return image
    if channels == 3:
        return to_rgb_uint8(image, ref)
    if image.ndim == 2 and channels == 1:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] != channels:
        raise AnnotationError(f"load_image returned an array of shape {image.shape}, but "
                              f"IMAGE_CHANNEL_COUNT is {channels}", image=ref)
    return np.clip(image, 0, 255).astype(np.uint8)


def pack_masks(masks):
    """[H, W, N] masks -> [H, W, ceil(N / 8)] uint8, bit (k % 8) of channel k // 8 = mask k.

    ``np.packbits(masks != 0, axis=-1, bitorder="little")``, computed on a copy padded to
    a multiple of 8 instances and packed flat: packbits along a short last axis is
    several times slower. Column-major masks (pycocotools' layout) are copied in their
    own memory order.
    """
    m = np.asarray(masks)
    h, w, n = m.shape
    p = (n + 7) // 8
    transposed = m.strides[0] < m.strides[1]
    if transposed:
        m = m.transpose(1, 0, 2)
    full = np.zeros(m.shape[:2] + (8 * p,), bool)  # [rows, cols, 8P]
    if m.dtype == bool:
        full[..., :n] = m
    else:
        np.not_equal(m, 0, out=full[..., :n])
    out = np.packbits(full.reshape(-1), bitorder="little").reshape(m.shape[:2] + (p,))
    return np.ascontiguousarray(out.transpose(1, 0, 2)) if transposed else out


def resize_nearest(planes_hwp, height, width):
    """cv2 nearest-neighbour resize of [H, W, P] (any P) -> [height, width, P]."""
    parts = []
    for i in range(0, planes_hwp.shape[2], 512):  # cv2 handles at most 512 channels
        part = cv2.resize(np.ascontiguousarray(planes_hwp[..., i:i + 512]), (width, height),
                          interpolation=cv2.INTER_NEAREST)
        parts.append(part.reshape(height, width, -1))
    return np.concatenate(parts, axis=2) if len(parts) > 1 else parts[0]


def compact(planes, n):
    """Bit planes -> tight boxes and crops of the non-empty instances.

    planes [P, H, W] uint8: bit (k % 8) of plane k // 8 is instance k.
    Returns boxes [M, 4] int32, crops (M bool arrays) and the kept indices [M].
    """
    if n == 0:
        return np.zeros((0, 4), np.int32), [], np.zeros((0,), np.int64)
    p, h, w = planes.shape
    shifts = np.arange(8, dtype=np.uint8)[None, :, None]
    rows = np.bitwise_or.reduce(planes, axis=2)  # [P, H]: any pixel in the row, per bit
    cols = np.bitwise_or.reduce(planes, axis=1)  # [P, W]
    rows = ((rows[:, None, :] >> shifts) & 1).reshape(p * 8, h)[:n]
    cols = ((cols[:, None, :] >> shifts) & 1).reshape(p * 8, w)[:n]
    boxes, crops, keep = [], [], []
    for k in range(n):
        r = np.flatnonzero(rows[k])
        if r.size == 0:
            continue
        c = np.flatnonzero(cols[k])
        y1, y2, x1, x2 = int(r[0]), int(r[-1]) + 1, int(c[0]), int(c[-1]) + 1
        crops.append(((planes[k >> 3, y1:y2, x1:x2] >> (k & 7)) & 1).view(bool))
        boxes.append((y1, x1, y2, x2))
        keep.append(k)
    return (np.asarray(boxes, np.int32).reshape(-1, 4), crops,
            np.asarray(keep, np.int64))


def bit_planes(shape, boxes, crops):
    """Compact instances -> bit planes [ceil(N / 8), H, W] uint8."""
    n = len(crops)
    planes = np.zeros(((n + 7) // 8,) + tuple(shape[:2]), np.uint8)
    for k, (box, crop) in enumerate(zip(boxes, crops)):
        y1, x1, y2, x2 = (int(v) for v in box)
        planes[k >> 3, y1:y2, x1:x2] |= crop.view(np.uint8) << (k & 7)
    return planes


def full_masks(shape, boxes, crops):
    """Compact instances -> [H, W, N] bool (matterport's layout)."""
    masks = np.zeros(tuple(shape[:2]) + (len(crops),), bool)
    for k, (box, crop) in enumerate(zip(boxes, crops)):
        y1, x1, y2, x2 = (int(v) for v in box)
        masks[y1:y2, x1:x2, k] = crop
    return masks


def tighten(crop):
    """(dy1, dx1, dy2, dx2) of the pixels set in a bool crop, or None if empty."""
    rows = np.flatnonzero(crop.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(crop.any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def decode_sample(dataset, config, image_id):
    """Stage 1: load the image and its masks and resize both to the training scale.

    The scale is what ``transform.resize_image`` would use for the config; masks are resized
    nearest-neighbour while bit-packed (eight instances per channel: exact and fast),
    then cut to their boxes. Instances that vanish when shrinking are dropped.
    """
    ref = _reference(dataset, image_id)
    image = as_image(dataset.load_image(image_id), config, ref)
    masks, class_ids = dataset.load_mask(image_id)
    masks = np.asarray(masks)
    class_ids = np.asarray(class_ids).reshape(-1)
    if masks.ndim == 2 and masks.size == 0 and class_ids.size == 0:
        masks = np.zeros(image.shape[:2] + (0,), bool)
    if masks.ndim != 3 or masks.shape[:2] != image.shape[:2]:
        raise AnnotationError(f"load_mask returned masks of shape {masks.shape} for an image "
                              f"of size {image.shape[0]}x{image.shape[1]}; expected "
                              f"{image.shape[0]} x {image.shape[1]} x N", image=ref)
    if masks.shape[2] != class_ids.shape[0]:
        raise AnnotationError(f"load_mask returned {masks.shape[2]} masks but "
                              f"{class_ids.shape[0]} class ids", image=ref)
    if class_ids.size and not np.issubdtype(class_ids.dtype, np.integer):
        if not np.all(np.equal(np.mod(class_ids, 1), 0)):
            raise AnnotationError(f"class ids must be integers, got {class_ids[:5]}",
                                  image=ref)
    class_ids = class_ids.astype(np.int32)
    original_shape = image.shape
    n = masks.shape[2]
    scale = transform.resize_scale(image.shape, config.IMAGE_MIN_DIM, config.IMAGE_MAX_DIM,
                               config.IMAGE_MIN_SCALE, config.IMAGE_RESIZE_MODE)
    packed = pack_masks(masks) if n else None  # [H, W, ceil(N / 8)]
    if scale != 1:
        nh, nw = transform.scaled_size(image.shape, scale)
        image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
        if image.ndim == 2:
            image = image[..., None]
        if n:
            packed = resize_nearest(packed, nh, nw)
    planes = np.ascontiguousarray(packed.transpose(2, 0, 1)) if n else None
    boxes, crops, keep = compact(planes, n)
    return DecodedSample.from_crops(np.ascontiguousarray(image), boxes, crops,
                                    class_ids[keep], original_shape, scale)


# ====================================================================== augmentation
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


# ============================================================================ stage 2
def _reference(dataset, image_id):
    try:
        return dataset.image_reference(image_id)
    except Exception:
        return f"image_id {image_id}"


class Placed:
    """A sample after augmentation and placement into IMAGE_SHAPE (before molding).

    image [h, w, C] uint8 (augmented, not padded); (oy, ox): where IMAGE_SHAPE's origin
    lies in ``image`` (negative: padding); out_h, out_w: the placed extent; boxes [N, 4]
    int32 tight (y1, x1, y2, x2) in IMAGE_SHAPE's frame, y2/x2 exclusive; crops: each
    instance's mask inside its box; class_ids [N] int32; window, scale and
    original_shape for the image meta.
    """

    __slots__ = ("image", "oy", "ox", "out_h", "out_w", "shape", "boxes", "crops",
                 "class_ids", "window", "scale", "original_shape")

    def __init__(self, **kw):
        for k, v in kw.items():
            setattr(self, k, v)

    def padded_image(self):
        """The image as IMAGE_SHAPE uint8, zero padding (``transform.pad_to_shape`` of
        ``transform.resize_image``'s result)."""
        out = np.zeros(self.shape, np.uint8)
        r0, r1, c0, c1 = self._overlap()
        if r1 > r0 and c1 > c0:
            out[r0:r1, c0:c1] = self._source(r0, r1, c0, c1)
        return out

    def _overlap(self):
        """(r0, r1, c0, c1): the rows/columns of IMAGE_SHAPE that hold image pixels."""
        h, w = self.image.shape[:2]
        r0, r1 = max(0, -self.oy), min(self.out_h, h - self.oy)
        c0, c1 = max(0, -self.ox), min(self.out_w, w - self.ox)
        return r0, r1, c0, c1

    def _source(self, r0, r1, c0, c1):
        return self.image[r0 + self.oy:r1 + self.oy, c0 + self.ox:c1 + self.ox]

    def molded_into(self, out, mean):
        """Write the molded image (padded pixel minus MEAN_PIXEL) into ``out``."""
        if out.shape != self.shape or out.dtype != np.float32:
            raise ValueError(f"image_out must be float32 {self.shape}, got {out.dtype} "
                             f"{out.shape}")
        r0, r1, c0, c1 = self._overlap()
        if r1 > r0 and c1 > c0:
            np.subtract(self._source(r0, r1, c0, c1), mean, out=out[r0:r1, c0:c1])
            # Padding holds a zero pixel, molded: -MEAN_PIXEL.
            out[:r0] = -mean
            out[r1:] = -mean
            out[r0:r1, :c0] = -mean
            out[r0:r1, c1:] = -mean
        else:
            out[...] = -mean
        return out

    def full_masks(self):
        """[H, W, N] bool at IMAGE_SHAPE (matterport's layout)."""
        return full_masks(self.shape, self.boxes, self.crops)


def mini_masks(crops, mini_shape, count=None):
    """[mh, mw, count] bool: each instance's mask inside its box resized to
    MINI_MASK_SHAPE, as ``transform.minimize_mask`` (bilinear, then >= 0.5)."""
    mh, mw = (int(v) for v in mini_shape)
    out = np.zeros((mh, mw, len(crops) if count is None else count), bool)
    for i, m in enumerate(crops):
        out[:, :, i] = cv2.resize(m.astype(np.float32), (mw, mh),
                                  interpolation=cv2.INTER_LINEAR) >= 0.5
    return out


def active_class_ids(dataset, config, image_id):
    """[NUM_CLASSES] int32: 1 for the classes of the image's source (matterport's rule)."""
    active = np.zeros([config.NUM_CLASSES], dtype=np.int32)
    source_class_ids = dataset.source_class_ids.get(
        dataset.image_info[image_id]["source"], list(range(config.NUM_CLASSES)))
    active[[i for i in source_class_ids if i < config.NUM_CLASSES]] = 1
    return active


class SampleBuilder:
    """Builds one image's model inputs: stage 1 (cached when a cache is given), then
    augmentation, padding/cropping and targets. Picklable for worker processes.

    ``cache``: None or an object with ``key(dataset, config, image_id)``, ``get(key)``
    and ``put(key, sample)`` (``colabrcnn/data/cache.py``).
    """

    def __init__(self, dataset, config, augmentation=None, cache=None,
                 no_augmentation_sources=None):
        self.dataset = dataset
        self.config = config
        self.augmenter = augmentation if isinstance(augmentation, Augmenter) \
            else Augmenter(augmentation)
        self.cache = cache
        self.no_augmentation_sources = set(no_augmentation_sources or ())
        self._keys = {}

    # -- stage 1 --
    def decoded(self, image_id):
        if self.cache is None:
            return decode_sample(self.dataset, self.config, image_id)
        key = self._keys.get(image_id)
        if key is None:
            key = self._keys[image_id] = self.cache.key(self.dataset, self.config, image_id)
        sample = self.cache.get(key)
        if sample is None:
            sample = decode_sample(self.dataset, self.config, image_id)
            self.cache.put(key, sample)
        return sample

    # -- both stages --
    def build(self, image_id, rng=None, image_out=None):
        """Model inputs of one image (unbatched), a dict keyed like INPUT_NAMES.

        ``image_out``: optional float32 IMAGE_SHAPE array the molded image is written
        into (a slice of the batch array: saves a copy). Any failure is raised as an
        AnnotationError naming the image (ConfigError for settings that cannot work).
        """
        rng = rng if rng is not None else np.random.default_rng()
        return self._named(image_id, self._build, rng, image_out)

    def placed(self, image_id, rng=None):
        """Stage 1, augmentation and placement of one image: a :class:`Placed`, with
        the same error naming as :meth:`build`."""
        rng = rng if rng is not None else np.random.default_rng()
        return self._named(image_id, self._placed, rng)

    def _named(self, image_id, fn, *args):
        image_id = int(image_id)
        try:
            return fn(image_id, *args)
        except AnnotationError as e:
            if e.image is None and e.file is None:
                raise AnnotationError(str(e), image=_reference(self.dataset, image_id)) \
                    from e
            raise
        except (ConfigError, MemoryError):
            raise
        except Exception as e:
            raise AnnotationError(f"cannot build a training sample ({type(e).__name__}: "
                                  f"{e})", image=_reference(self.dataset, image_id)) from e

    def _augments(self, image_id):
        if not self.augmenter:
            return False
        if self.no_augmentation_sources:
            source = self.dataset.image_info[image_id].get("source")
            if source in self.no_augmentation_sources:
                return False
        return True

    def _augmented(self, image_id, rng):
        """(decoded sample, image, boxes, crops, class_ids, scale) after augmentation."""
        c = self.config
        dec = self.decoded(image_id)
        image, boxes, class_ids, scale = dec.image, dec.boxes, dec.class_ids, dec.scale
        crops = dec.crops()
        if not self._augments(image_id):
            return dec, image, boxes, crops, class_ids, scale
        img, planes, ids, n = self.augmenter(image, boxes, crops, class_ids, rng)
        img = np.asarray(img)
        if img.ndim == 2:
            img = img[..., None]
        if img.ndim != 3 or planes.shape[1:] != img.shape[:2]:
            raise AnnotationError(f"the augmentation returned masks of size "
                                  f"{planes.shape[1:]} for an image of shape {img.shape}")
        if img.dtype != np.uint8:
            img = np.clip(np.round(img), 0, 255).astype(np.uint8)
        if img.shape[:2] != image.shape[:2]:
            # The augmentation changed the size: resize again, as resize_image would.
            s2 = transform.resize_scale(img.shape, c.IMAGE_MIN_DIM, c.IMAGE_MAX_DIM,
                                    c.IMAGE_MIN_SCALE, c.IMAGE_RESIZE_MODE)
            if s2 != 1:
                nh, nw = transform.scaled_size(img.shape, s2)
                img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
                img = img[..., None] if img.ndim == 2 else img
                if n:
                    planes = np.ascontiguousarray(resize_nearest(
                        planes.transpose(1, 2, 0), nh, nw).transpose(2, 0, 1))
                else:
                    planes = np.zeros((0, nh, nw), np.uint8)
                scale *= s2
        boxes, crops, keep = compact(planes, n)
        class_ids = ids[keep]
        if self.augmenter.min_area > 1 and crops:
            big = [k for k, m in enumerate(crops) if m.sum() >= self.augmenter.min_area]
            boxes, class_ids = boxes[big], class_ids[big]
            crops = [crops[k] for k in big]
        return dec, img, boxes, crops, class_ids, scale

    def _placed(self, image_id, rng):
        c = self.config
        dec, image, boxes, crops, class_ids, scale = self._augmented(image_id, rng)
        # Pad / crop into IMAGE_SHAPE, as resize_image + pad_to_shape do.
        padding, crop, window = transform.placement(image.shape, c.IMAGE_MIN_DIM,
                                                c.IMAGE_MAX_DIM, c.IMAGE_RESIZE_MODE, rng)
        h, w = image.shape[:2]
        if crop is not None:
            oy, ox, out_h, out_w = crop[0] - padding[0][0], crop[1] - padding[1][0], \
                crop[2], crop[3]
        else:
            oy, ox = -padding[0][0], -padding[1][0]
            out_h, out_w = h + sum(padding[0]), w + sum(padding[1])
        shape = (int(c.IMAGE_SHAPE[0]), int(c.IMAGE_SHAPE[1]), image.shape[2])
        if out_h > shape[0] or out_w > shape[1]:
            raise ConfigError(
                f"image of {out_h}x{out_w} does not fit in IMAGE_SHAPE {shape[0]}x{shape[1]};"
                f" raise IMAGE_MAX_DIM or use IMAGE_RESIZE_MODE='square'")

        # Instances into the same frame; a crop may cut them down or away.
        out_boxes, out_crops, keep = [], [], []
        for k, (box, m) in enumerate(zip(boxes, crops)):
            y1, x1, y2, x2 = (int(v) for v in box)
            y1, x1, y2, x2 = y1 - oy, x1 - ox, y2 - oy, x2 - ox
            cy1, cx1, cy2, cx2 = max(y1, 0), max(x1, 0), min(y2, out_h), min(x2, out_w)
            if cy2 <= cy1 or cx2 <= cx1:
                continue
            if (cy1, cx1, cy2, cx2) != (y1, x1, y2, x2):
                m = m[cy1 - y1:cy2 - y1, cx1 - x1:cx2 - x1]
                t = tighten(m)
                if t is None:
                    continue
                m = m[t[0]:t[2], t[1]:t[3]]
                cy1, cx1, cy2, cx2 = cy1 + t[0], cx1 + t[1], cy1 + t[2], cx1 + t[3]
            out_boxes.append((cy1, cx1, cy2, cx2))
            out_crops.append(m)
            keep.append(k)
        return Placed(image=image, oy=oy, ox=ox, out_h=out_h, out_w=out_w, shape=shape,
                      boxes=np.asarray(out_boxes, np.int32).reshape(-1, 4), crops=out_crops,
                      class_ids=np.asarray(class_ids, np.int32)[np.asarray(keep, np.int64)],
                      window=window, scale=scale, original_shape=dec.original_shape)

    def _build(self, image_id, rng, image_out=None):
        c = self.config
        p = self._placed(image_id, rng)
        shape = p.shape
        # Molded straight into the output (transform.mold_image of the padded image).
        molded = image_out if image_out is not None else np.empty(shape, np.float32)
        p.molded_into(molded, np.asarray(c.MEAN_PIXEL, np.float32))
        boxes, class_ids, crops = p.boxes, p.class_ids, p.crops

        all_anchors = anchors.get_anchors(c, shape)
        rpn_match, rpn_bbox = anchors.build_rpn_targets(all_anchors, class_ids, boxes, c,
                                                        rng=rng)

        n_max = c.MAX_GT_INSTANCES
        if class_ids.shape[0] > n_max:
            # More instances than the model takes: a random subset each time it is seen.
            sel = np.sort(rng.choice(class_ids.shape[0], n_max, replace=False))
            class_ids, boxes = class_ids[sel], boxes[sel]
            crops = [crops[i] for i in sel]
        k = class_ids.shape[0]
        gt_class_ids = np.zeros((n_max,), np.int32)
        gt_boxes = np.zeros((n_max, 4), np.float32)
        gt_class_ids[:k] = class_ids
        gt_boxes[:k] = boxes
        if c.USE_MINI_MASK:
            gt_masks = mini_masks(crops, c.MINI_MASK_SHAPE, n_max)
        else:
            gt_masks = np.zeros(shape[:2] + (n_max,), bool)
            for i, (box, m) in enumerate(zip(boxes, crops)):
                y1, x1, y2, x2 = (int(v) for v in box)
                gt_masks[y1:y2, x1:x2, i] = m

        image_meta = transform.compose_image_meta(
            image_id, p.original_shape, shape, p.window, p.scale,
            active_class_ids(self.dataset, c, image_id))
        return {
            "input_image": molded,
            "input_image_meta": image_meta,
            "input_rpn_match": rpn_match[:, None].astype(np.int32),
            "input_rpn_bbox": rpn_bbox,
            "input_gt_class_ids": gt_class_ids,
            "input_gt_boxes": gt_boxes,
            "input_gt_masks": gt_masks,
        }


def build_training_sample(dataset, config, image_id, augmentation=None, rng=None, *,
                          cache=None, no_augmentation_sources=None):
    """One image's model inputs (unbatched) as a dict keyed like INPUT_NAMES.

    ``augmentation``: see the module docstring. ``cache``: a cache object from
    ``colabrcnn.data.cache.make_cache`` (or None). Raises AnnotationError naming the
    image when the sample cannot be built.
    """
    if isinstance(cache, str):
        raise ValueError("pass a cache object (make_cache('ram') or make_cache('disk')), "
                         "not a string: a new cache per call would never be reused")
    return SampleBuilder(dataset, config, augmentation, cache,
                         no_augmentation_sources).build(image_id, rng)


def _flip_left_right(image, masks, class_ids, rng=None):
    """matterport's ``augment=True``: a horizontal flip half of the time."""
    rng = rng if rng is not None else np.random.default_rng()
    if rng.random() < 0.5:
        return np.fliplr(image), np.fliplr(masks), class_ids
    return image, masks, class_ids


def load_image_gt(dataset, config, image_id, augment=False, augmentation=None,
                  use_mini_mask=False, *, rng=None):
    """matterport's ``load_image_gt``: one image and its instances as training sees them.

    Built by the loader's own :class:`SampleBuilder` (decode, resize, augment, pad/crop),
    so what this returns is what a training batch holds before molding.

    Args:
        augment: matterport's old flag: flip left/right half of the time.
        augmentation: an albumentations transform, ``augmentation_callable``'s callable,
            or callable(image, masks, class_ids) (see ``colabrcnn/data/sample.py``).
        use_mini_mask: masks as MINI_MASK_SHAPE crops of their boxes instead of full size.
        rng: optional numpy Generator (augmentation, random crops) for repeatable results.

    Returns:
        image [H, W, C] uint8 at IMAGE_SHAPE (zero padded), image_meta (see
        ``transform.compose_image_meta``), class_ids [N] int32, bbox [N, 4] int32
        (y1, x1, y2, x2) pixels, y2/x2 exclusive, mask [H, W, N] bool, or
        [mini_h, mini_w, N] with ``use_mini_mask``.
    """
    if augmentation is None and augment:
        augmentation = _flip_left_right
    p = SampleBuilder(dataset, config, augmentation).placed(image_id, rng)
    image_meta = transform.compose_image_meta(int(image_id), p.original_shape, p.shape, p.window,
                                          p.scale, active_class_ids(dataset, config,
                                                                    int(image_id)))
    mask = mini_masks(p.crops, config.MINI_MASK_SHAPE) if use_mini_mask else p.full_masks()
    return p.padded_image(), image_meta, p.class_ids, p.boxes, mask
