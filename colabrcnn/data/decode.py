"""Stage 1 of a training sample: decode, resize to the training scale, compact masks.

:func:`decode_sample` loads one image and its masks from a Dataset and gives a
:class:`DecodedSample`: the image already resized to the size training uses (about
IMAGE_MAX_DIM, never padded) and each instance as its tight box plus the bit-packed mask
inside it. It is deterministic, so ``colabrcnn/data/cache.py`` keeps it; stage 2
(augmentation, placement, targets) is ``colabrcnn/data/sample.py``.

The mask helpers here move instance masks as bit planes (eight instances per uint8
channel, bit k % 8 of channel k // 8 is instance k), which keeps nearest-neighbour
resizing and pixel-moving augmentation exact and several times faster than one mask
per instance; ``colabrcnn/data/augment.py`` uses them too.
"""
from __future__ import annotations

import cv2
import numpy as np

from ..errors import AnnotationError
from ..model import transform
from .dataset import to_rgb_uint8

CACHE_VERSION = 1


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


def full_masks(shape, boxes, crops, count=None):
    """Compact instances -> [H, W, count] bool (matterport's layout; count: N default,
    more pads with empty masks)."""
    masks = np.zeros(tuple(shape[:2]) + (len(crops) if count is None else count,), bool)
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


def image_reference(dataset, image_id):
    """``dataset.image_reference(image_id)`` for error messages, never raising."""
    try:
        return dataset.image_reference(image_id)
    except Exception:
        return f"image_id {image_id}"


def training_scale(shape, config):
    """The scale ``transform.resize_image`` applies to an image of ``shape``."""
    return transform.resize_scale(shape, config.IMAGE_MIN_DIM, config.IMAGE_MAX_DIM,
                                  config.IMAGE_MIN_SCALE, config.IMAGE_RESIZE_MODE,
                                  config.DETECTOR_STYLE)


def resize_by(image, packed, scale, style="matterport"):
    """Image [H, W, C] (bilinear) and packed masks [H, W, P] or None (nearest) scaled by
    ``scale`` -> (image [h, w, C], packed [h, w, P] or None); style: the size rounding
    (``transform.scaled_size``, Config.DETECTOR_STYLE)."""
    nh, nw = transform.scaled_size(image.shape, scale, style)
    image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    if image.ndim == 2:
        image = image[..., None]
    if packed is not None:
        packed = resize_nearest(packed, nh, nw)
    return image, packed


def decode_sample(dataset, config, image_id):
    """Stage 1: load the image and its masks and resize both to the training scale.

    The scale is what ``transform.resize_image`` would use for the config; masks are resized
    nearest-neighbour while bit-packed (eight instances per channel: exact and fast),
    then cut to their boxes. Instances that vanish when shrinking are dropped.
    """
    ref = image_reference(dataset, image_id)
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
    scale = training_scale(image.shape, config)
    packed = pack_masks(masks) if n else None  # [H, W, ceil(N / 8)]
    if scale != 1:
        image, packed = resize_by(image, packed, scale, config.DETECTOR_STYLE)
    planes = np.ascontiguousarray(packed.transpose(2, 0, 1)) if n else None
    boxes, crops, keep = compact(planes, n)
    return DecodedSample.from_crops(np.ascontiguousarray(image), boxes, crops,
                                    class_ids[keep], original_shape, scale)
