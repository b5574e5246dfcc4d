"""One training sample from a Dataset: the only place a sample is built.

The loader (``colabrcnn/data/loader.py``), ``load_image_gt`` (matterport's function,
re-exported by ``colabrcnn.utils``) and the benchmarks all go through
:class:`SampleBuilder`. One image goes through two stages::

    stage 1 (deterministic, cacheable)            stage 2 (random, every time)
    decode -> masks -> resize by the config's     augment -> pad / crop to IMAGE_SHAPE
    scale (cv2) -> compact masks                  -> boxes, mini-masks, RPN targets

Stage 1 is ``colabrcnn/data/decode.py`` (:class:`DecodedSample`, what
``colabrcnn/data/cache.py`` keeps); the augmentation forms accepted and how they are
applied are ``colabrcnn/data/augment.py`` (:class:`Augmenter`); this module is stage 2.
Augmentation runs at training resolution, after resizing, as in matterport (an
augmentation that changes the image size is followed by another resize). Without
augmentation stage 2 is only padding and targets. ``no_augmentation_sources``: images
whose ``source`` is listed are never augmented.
"""
from __future__ import annotations

import cv2
import numpy as np

from ..errors import AnnotationError, ConfigError
from ..model import anchors, transform
from .augment import Augmenter
# decode_sample is looked up here (benchmarks/loader.py times it by patching
# ``sample.decode_sample``); DecodedSample and pack_masks stay importable from here.
from .decode import (DecodedSample, compact, decode_sample, full_masks,  # noqa: F401
                     image_reference, pack_masks, resize_by, tighten, training_scale)

INPUT_NAMES = ("input_image", "input_image_meta", "input_rpn_match", "input_rpn_bbox",
               "input_gt_class_ids", "input_gt_boxes", "input_gt_masks")


class Placed:
    """A sample after augmentation and placement into IMAGE_SHAPE (before molding).

    image [h, w, C] uint8 (augmented, not padded); (oy, ox): where IMAGE_SHAPE's origin
    lies in ``image`` (negative: padding); out_h, out_w: the placed extent; boxes [N, 4]
    int32 tight (y1, x1, y2, x2) in IMAGE_SHAPE's frame, y2/x2 exclusive; crops: each
    instance's mask inside its box; class_ids [N] int32; window, scale and
    original_shape for the image meta; style: Config.DETECTOR_STYLE, what the padding
    holds ("matterport": a zero pixel; "torchvision": the mean colour, 0 once molded,
    as torchvision pads its normalised batch).
    """

    __slots__ = ("image", "oy", "ox", "out_h", "out_w", "shape", "boxes", "crops",
                 "class_ids", "window", "scale", "original_shape", "style")

    def __init__(self, **kw):
        for k, v in kw.items():
            setattr(self, k, v)

    def padded_image(self, mean=None):
        """The image as IMAGE_SHAPE uint8, zero padding (``transform.pad_to_shape`` of
        ``transform.resize_image``'s result); with style "torchvision" and ``mean``
        (MEAN_PIXEL) the padding is the mean colour rounded to uint8."""
        out = np.zeros(self.shape, np.uint8)
        if self.style == "torchvision" and mean is not None:
            out[...] = np.clip(np.round(np.asarray(mean, np.float64)), 0, 255
                               ).astype(np.uint8)
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

    def molded_into(self, out, mean, std=None):
        """Write the molded image ((padded pixel - MEAN_PIXEL) / PIXEL_STD) into ``out``;
        std None: no division (PIXEL_STD all ones)."""
        if out.shape != self.shape or out.dtype != np.float32:
            raise ValueError(f"image_out must be float32 {self.shape}, got {out.dtype} "
                             f"{out.shape}")
        r0, r1, c0, c1 = self._overlap()
        # Padding: a zero pixel molded (-MEAN_PIXEL / PIXEL_STD, matterport), or 0
        # (torchvision pads after normalising).
        pad = 0.0 if self.style == "torchvision" else -mean
        if r1 > r0 and c1 > c0:
            np.subtract(self._source(r0, r1, c0, c1), mean, out=out[r0:r1, c0:c1])
            out[:r0] = pad
            out[r1:] = pad
            out[r0:r1, :c0] = pad
            out[r0:r1, c1:] = pad
        else:
            out[...] = pad
        if std is not None:
            np.divide(out, std, out=out)
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
                raise AnnotationError(
                    str(e), image=image_reference(self.dataset, image_id)) from e
            raise
        except (ConfigError, MemoryError):
            raise
        except Exception as e:
            raise AnnotationError(
                f"cannot build a training sample ({type(e).__name__}: {e})",
                image=image_reference(self.dataset, image_id)) from e

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
            s2 = training_scale(img.shape, c)
            if s2 != 1:
                img, packed = resize_by(img, planes.transpose(1, 2, 0) if n else None, s2,
                                        c.DETECTOR_STYLE)
                planes = (np.ascontiguousarray(packed.transpose(2, 0, 1)) if n
                          else np.zeros((0,) + img.shape[:2], np.uint8))
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
                                                    c.IMAGE_MAX_DIM, c.IMAGE_RESIZE_MODE, rng,
                                                    c.DETECTOR_STYLE)
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
                      window=window, scale=scale, original_shape=dec.original_shape,
                      style=c.DETECTOR_STYLE)

    def _build(self, image_id, rng, image_out=None):
        c = self.config
        p = self._placed(image_id, rng)
        shape = p.shape
        # Molded straight into the output (transform.mold_image of the padded image).
        molded = image_out if image_out is not None else np.empty(shape, np.float32)
        p.molded_into(molded, np.asarray(c.MEAN_PIXEL, np.float32), transform.pixel_std(c))
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
            gt_masks = full_masks(shape, boxes, crops, n_max)

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

    ``augmentation``: see ``colabrcnn/data/augment.py``. ``cache``: a cache object from
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
            or callable(image, masks, class_ids) (see ``colabrcnn/data/augment.py``).
        use_mini_mask: masks as MINI_MASK_SHAPE crops of their boxes instead of full size.
        rng: optional numpy Generator (augmentation, random crops) for repeatable results.

    Returns:
        image [H, W, C] uint8 at IMAGE_SHAPE (zero padded; DETECTOR_STYLE "torchvision":
        at the top-left, padded with MEAN_PIXEL rounded), image_meta (see
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
    return p.padded_image(config.MEAN_PIXEL), image_meta, p.class_ids, p.boxes, mask
