"""Image molding in NumPy, like torchvision's detection ``transform``: what goes into
the network and how its outputs map back to the original image.

resize_image / resize_mask / placement / resize_scale / scaled_size / pad_to_shape:
    matterport's resize modes (square, pad64, crop, none), static output shapes.
minimize_mask / expand_mask / unmold_mask: mini-masks and predicted masks <-> image masks.
paste_mask: a predicted mask into the image as torchvision's paste_masks_in_image.
mold_image / unmold_image: uint8 RGB <-> network input ((x - MEAN_PIXEL) / PIXEL_STD).
compose_image_meta / parse_image_meta: the per-image meta vector.
mold_inputs / unmold_detections: a batch of images in, one image's detections out
    (``MaskRCNN.mold_inputs`` / ``MaskRCNN.unmold_detections`` call these).
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from ..boxes import denorm_boxes, norm_boxes
from ..errors import ConfigError


# ---------------------------------------------------------------------------- images
def resize_scale(shape, min_dim: int | None = None, max_dim: int | None = None,
                 min_scale: float | None = None, mode: str = "square",
                 style: str = "matterport") -> float:
    """The scale ``resize_image`` applies to an image of ``shape`` (H, W, ...).

    style (Config.DETECTOR_STYLE) "torchvision" in ``square`` mode: torchvision's
    GeneralizedRCNNTransform rule, the short side to ``min_dim`` unless the long side
    would pass ``max_dim`` (min(min_dim / short, max_dim / long)). matterport's square
    rule differs by more than rounding: it never shrinks an image to ``min_dim``
    (scale >= 1 before the ``max_dim`` cap), so a 1000 x 1200 photo at 800 / 1333 stays
    1000 x 1200 there but is 800 x 960 in torchvision. Other modes keep matterport's rule.
    """
    if mode == "none":
        return 1.0
    h, w = int(shape[0]), int(shape[1])
    if style == "torchvision" and mode == "square" and min_dim and max_dim:
        scale = min_dim / min(h, w)
        if min_scale and scale < min_scale:
            scale = min_scale
        return min(scale, max_dim / max(h, w))
    scale = 1.0
    if min_dim:
        scale = max(1.0, min_dim / min(h, w))
    if min_scale and scale < min_scale:
        scale = min_scale
    if max_dim and mode == "square":
        image_max = max(h, w)
        if round(image_max * scale) > max_dim:
            scale = max_dim / image_max
    return scale


def scaled_size(shape, scale: float, style: str = "matterport") -> tuple[int, int]:
    """(height, width) of an image of ``shape`` resized by ``scale`` (as resize_image):
    rounded (matterport), or floored as torch's ``interpolate(scale_factor=...,
    recompute_scale_factor=True)`` in torchvision's transform (style "torchvision")."""
    h, w = int(shape[0]), int(shape[1])
    if scale == 1:
        return h, w
    if style == "torchvision":
        # float64 products, floored: torch.nn.functional.interpolate's output size.
        return max(1, math.floor(float(h) * scale)), max(1, math.floor(float(w) * scale))
    return max(1, round(h * scale)), max(1, round(w * scale))


def placement(shape, min_dim: int | None = None, max_dim: int | None = None,
              mode: str = "square", rng: np.random.Generator | None = None,
              style: str = "matterport") -> tuple:
    """Where a resized image of ``shape`` goes: resize_image's padding and crop.

    Returns (padding, crop, window): padding [(top, bottom), (left, right), (0, 0)] is
    applied first, then crop (y, x, h, w) or None; window (y1, x1, y2, x2) is the real
    image inside the result. ``crop`` mode draws the crop from ``rng``.
    style (Config.DETECTOR_STYLE): "matterport" centres the image in ``square`` and
    ``pad64`` modes; "torchvision" puts it at the top-left (padding below and to the
    right only), as torchvision's batch canvas. ``crop`` (training only) and ``none``
    are the same in both.
    """
    h, w = int(shape[0]), int(shape[1])
    top_left = style == "torchvision"
    if mode == "none":
        return [(0, 0), (0, 0), (0, 0)], None, (0, 0, h, w)
    if mode == "square":
        top = 0 if top_left else (max_dim - h) // 2
        left = 0 if top_left else (max_dim - w) // 2
        padding = [(top, max_dim - h - top), (left, max_dim - w - left), (0, 0)]
        return padding, None, (top, left, h + top, w + left)
    if mode == "pad64":
        if min_dim % 64 != 0:
            raise ConfigError("IMAGE_MIN_DIM must be a multiple of 64 in 'pad64' mode")
        ph = (64 - h % 64) % 64
        pw = (64 - w % 64) % 64
        top, left = (0, 0) if top_left else (ph // 2, pw // 2)
        padding = [(top, ph - top), (left, pw - left), (0, 0)]
        return padding, None, (top, left, h + top, w + left)
    if mode == "crop":
        rng = rng or np.random.default_rng()
        padding = [(0, 0), (0, 0), (0, 0)]
        if h < min_dim or w < min_dim:
            # Small image: pad up to the crop size first (top-left), then crop.
            ph, pw = max(0, min_dim - h), max(0, min_dim - w)
            padding = [(0, ph), (0, pw), (0, 0)]
            h, w = h + ph, w + pw
        y = int(rng.integers(0, h - min_dim + 1))
        x = int(rng.integers(0, w - min_dim + 1))
        return padding, (y, x, min_dim, min_dim), (0, 0, min_dim, min_dim)
    raise ConfigError(f"Unknown IMAGE_RESIZE_MODE {mode!r}")


def resize_image(image: np.ndarray, min_dim: int | None = None, max_dim: int | None = None,
                 min_scale: float | None = None, mode: str = "square",
                 rng: np.random.Generator | None = None, style: str = "matterport"
                 ) -> tuple:
    """Resize keeping the aspect ratio, as matterport's modes do.

    Returns (image, window, scale, padding, crop):
      window (y1, x1, y2, x2): where the real image sits in the result (excluding padding)
      padding [(top, bottom), (left, right), (0, 0)]; crop (y, x, h, w) or None.
    ``crop`` picks a random min_dim x min_dim crop (``rng``: numpy Generator).
    style (Config.DETECTOR_STYLE) "torchvision": torchvision's scale rule and size
    rounding in ``square`` mode (``resize_scale``, ``scaled_size``) and the image at
    the top-left (``placement``). The padding is a zero pixel either way (``mold_inputs``
    molds torchvision's to 0 as it pads after normalising).
    """
    image_dtype = image.dtype
    h, w = image.shape[:2]
    if mode == "none":
        return image, (0, 0, h, w), 1.0, [(0, 0), (0, 0), (0, 0)], None
    if mode not in ("square", "pad64", "crop"):
        raise ConfigError(f"Unknown IMAGE_RESIZE_MODE {mode!r}")
    scale = resize_scale((h, w), min_dim, max_dim, min_scale, mode, style)
    if scale != 1:
        nh, nw = scaled_size((h, w), scale, style)
        image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
        if image.ndim == 2:
            image = image[..., None]
    padding, crop, window = placement(image.shape, min_dim, max_dim, mode, rng, style)
    if any(p != (0, 0) for p in padding[:2]):
        image = np.pad(image, padding, mode="constant", constant_values=0)
    if crop is not None:
        y, x, ch, cw = crop
        image = image[y:y + ch, x:x + cw]
    return image.astype(image_dtype), window, scale, padding, crop


def resize_mask(mask: np.ndarray, scale: float, padding, crop=None,
                style: str = "matterport") -> np.ndarray:
    """Apply resize_image's scale/padding/crop to an H x W x N mask (nearest); style:
    resize_image's (the size rounding)."""
    mask = np.asarray(mask)
    h, w, n = mask.shape
    nh, nw = scaled_size((h, w), scale, style)
    if scale != 1 and n:
        parts = []
        # cv2.resize handles at most 512 channels at a time.
        for i in range(0, n, 512):
            part = cv2.resize(mask[..., i:i + 512].astype(np.uint8), (nw, nh),
                              interpolation=cv2.INTER_NEAREST)
            parts.append(part.reshape(nh, nw, -1))
        mask = np.concatenate(parts, axis=-1)
    elif scale != 1:
        mask = np.zeros((nh, nw, 0), mask.dtype)
    mask = np.pad(mask, padding, mode="constant", constant_values=0)
    if crop is not None:
        y, x, ch, cw = crop
        mask = mask[y:y + ch, x:x + cw]
    return mask.astype(bool)


def resize(image: np.ndarray, output_shape, order: int = 1, mode: str = "constant",
           cval=0, clip: bool = True, preserve_range: bool = False,
           anti_aliasing: bool = False, anti_aliasing_sigma=None) -> np.ndarray:
    """scikit-image's ``transform.resize`` with matterport's defaults (bilinear, no
    anti-aliasing): matterport's ``utils.resize``."""
    import skimage.transform  # scikit-image loads slowly; only this helper needs it
    return skimage.transform.resize(image, output_shape, order=order, mode=mode, cval=cval,
                                    clip=clip, preserve_range=preserve_range,
                                    anti_aliasing=anti_aliasing,
                                    anti_aliasing_sigma=anti_aliasing_sigma)


def pad_to_shape(image: np.ndarray, shape) -> np.ndarray:
    """Pad H x W x C at the bottom/right up to shape[:2] (keeps shapes static)."""
    h, w = image.shape[:2]
    th, tw = int(shape[0]), int(shape[1])
    if h > th or w > tw:
        raise ConfigError(
            f"image of {h}x{w} does not fit in IMAGE_SHAPE {th}x{tw}; raise IMAGE_MAX_DIM "
            f"or use IMAGE_RESIZE_MODE='square'")
    if (h, w) == (th, tw):
        return image
    pad = [(0, th - h), (0, tw - w)] + [(0, 0)] * (image.ndim - 2)
    return np.pad(image, pad, mode="constant", constant_values=0)


def minimize_mask(bbox, mask: np.ndarray, mini_shape) -> np.ndarray:
    """Crop each mask to its box and resize to mini_shape: [H, W, N] -> [h, w, N] bool."""
    mini = np.zeros(tuple(mini_shape) + (mask.shape[-1],), dtype=bool)
    for i in range(mask.shape[-1]):
        y1, x1, y2, x2 = bbox[i][:4]
        m = mask[y1:y2, x1:x2, i]
        if m.size == 0:
            continue
        m = cv2.resize(m.astype(np.float32), (mini_shape[1], mini_shape[0]),
                       interpolation=cv2.INTER_LINEAR)
        mini[:, :, i] = m >= 0.5
    return mini


def expand_mask(bbox, mini_mask: np.ndarray, image_shape) -> np.ndarray:
    """Inverse of minimize_mask: [h, w, N] -> [H, W, N] bool."""
    mask = np.zeros(tuple(image_shape[:2]) + (mini_mask.shape[-1],), dtype=bool)
    for i in range(mask.shape[-1]):
        y1, x1, y2, x2 = bbox[i][:4]
        h, w = y2 - y1, x2 - x1
        if h <= 0 or w <= 0:
            continue
        m = cv2.resize(mini_mask[:, :, i].astype(np.float32), (w, h),
                       interpolation=cv2.INTER_LINEAR)
        mask[y1:y2, x1:x2, i] = m >= 0.5
    return mask


def unmold_mask(mask: np.ndarray, bbox, image_shape, threshold: float = 0.5) -> np.ndarray:
    """A predicted [h, w] float mask inside ``bbox`` -> full-image H x W bool mask."""
    y1, x1, y2, x2 = [int(v) for v in bbox]
    full = np.zeros(tuple(image_shape[:2]), dtype=bool)
    # Clip to the image: the box may stick out a little after refinement.
    cy1, cx1 = max(y1, 0), max(x1, 0)
    cy2, cx2 = min(y2, image_shape[0]), min(x2, image_shape[1])
    if y2 - y1 <= 0 or x2 - x1 <= 0 or cy2 <= cy1 or cx2 <= cx1:
        return full
    m = cv2.resize(mask.astype(np.float32), (x2 - x1, y2 - y1), interpolation=cv2.INTER_LINEAR)
    full[cy1:cy2, cx1:cx2] = m[cy1 - y1:cy2 - y1, cx1 - x1:cx2 - x1] >= threshold
    return full


def paste_mask(mask: np.ndarray, bbox, image_shape, padding: int = 1,
               threshold: float = 0.5) -> np.ndarray:
    """torchvision's ``paste_masks_in_image`` for one [M, M] float mask and a float
    pixel box (y1, x1, y2, x2) -> full-image H x W bool mask (probability > threshold).

    The mask is padded by ``padding`` zeros and the box grown by (M + 2 * padding) / M
    about its centre, both truncated to whole pixels (float32 arithmetic, as torch
    does); the padded mask is resized bilinearly (half-pixel centres: cv2 INTER_LINEAR
    on float32 is torch's ``interpolate(mode="bilinear", align_corners=False)``) to
    (y2 - y1 + 1) x (x2 - x1 + 1) and pasted with its top-left at (y1, x1).
    """
    mask = np.asarray(mask, dtype=np.float32)
    m = mask.shape[-1]
    padded = np.pad(mask, padding)
    scale = np.float32(float(m + 2 * padding) / m)
    y1, x1, y2, x2 = np.asarray(bbox, dtype=np.float32)[:4]
    h_half = (y2 - y1) * np.float32(0.5) * scale
    w_half = (x2 - x1) * np.float32(0.5) * scale
    yc = (y2 + y1) * np.float32(0.5)
    xc = (x2 + x1) * np.float32(0.5)
    # float -> int64 truncates toward zero, as torch's .to(torch.int64).
    y1, x1, y2, x2 = (int(np.float32(v)) for v in (yc - h_half, xc - w_half,
                                                   yc + h_half, xc + w_half))
    h, w = max(y2 - y1 + 1, 1), max(x2 - x1 + 1, 1)
    full = np.zeros(tuple(image_shape[:2]), dtype=bool)
    resized = cv2.resize(padded, (w, h), interpolation=cv2.INTER_LINEAR)
    y0, x0 = max(y1, 0), max(x1, 0)
    y_end, x_end = min(y2 + 1, image_shape[0]), min(x2 + 1, image_shape[1])
    if y_end > y0 and x_end > x0:
        full[y0:y_end, x0:x_end] = resized[y0 - y1:y_end - y1, x0 - x1:x_end - x1] \
            > threshold
    return full


def pixel_std(config) -> np.ndarray | None:
    """Config.PIXEL_STD as float32, or None when it is all ones (matterport's molding,
    kept bit for bit: nothing is divided)."""
    std = getattr(config, "PIXEL_STD", None)
    if std is None or np.all(np.asarray(std) == 1):
        return None
    return np.asarray(std, np.float32)


def mold_image(images: np.ndarray, config) -> np.ndarray:
    """uint8 RGB -> float32 (x - MEAN_PIXEL) / PIXEL_STD (what the network and the
    weights expect; PIXEL_STD is ones, i.e. just minus the mean, unless a config such
    as TorchvisionR50FPN sets it)."""
    std = pixel_std(config)
    if std is None:
        return images.astype(np.float32) - config.MEAN_PIXEL
    # float32 throughout, as the loader's molding (data/sample.py), so both agree exactly.
    return (images.astype(np.float32) - np.asarray(config.MEAN_PIXEL, np.float32)) / std


def unmold_image(normalized_images: np.ndarray, config) -> np.ndarray:
    """Inverse of mold_image: float32 -> uint8 RGB."""
    std = pixel_std(config)
    if std is not None:
        normalized_images = normalized_images * std
    return (normalized_images + config.MEAN_PIXEL).clip(0, 255).astype(np.uint8)


# ----------------------------------------------------------------------- image meta
def compose_image_meta(image_id, original_image_shape, image_shape, window, scale,
                       active_class_ids) -> np.ndarray:
    """[1 + 3 + 3 + 4 + 1 + NUM_CLASSES] float32 vector describing one molded image."""
    return np.array([image_id] + list(original_image_shape) + list(image_shape)
                    + list(window) + [scale] + list(active_class_ids), dtype=np.float32)


def parse_image_meta(meta) -> dict[str, np.ndarray]:
    """Inverse of compose_image_meta for a batch [B, META] -> dict of arrays."""
    meta = np.asarray(meta)
    return {
        "image_id": meta[:, 0].astype(np.int32),
        "original_image_shape": meta[:, 1:4].astype(np.int32),
        "image_shape": meta[:, 4:7].astype(np.int32),
        "window": meta[:, 7:11].astype(np.int32),
        "scale": meta[:, 11].astype(np.float32),
        "active_class_ids": meta[:, 12:].astype(np.int32),
    }


# ------------------------------------------------------------------ network in / out
def inference_image_shape(config) -> np.ndarray:
    """[H, W, C] of the inference graph's input: IMAGE_SHAPE, except that ``crop``
    mode (training on crops) detects on whole images resized square to IMAGE_MAX_DIM."""
    c = config
    if c.IMAGE_RESIZE_MODE == "crop":
        return np.array([c.IMAGE_MAX_DIM, c.IMAGE_MAX_DIM, c.IMAGE_CHANNEL_COUNT])
    return np.asarray(c.IMAGE_SHAPE)


def mold_inputs(images, config) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resize/pad uint8 RGB images for the inference graph.

    Returns molded_images [N, H, W, 3] float32, image_metas [N, META], windows [N, 4].
    With DETECTOR_STYLE "torchvision" the image sits at the top-left and the padding
    is 0 after molding (torchvision pads the normalised batch with zeros: the mean
    colour); with "matterport" it is centred and a zero pixel (-MEAN_PIXEL molded).
    """
    c = config
    style = c.DETECTOR_STYLE
    mode = "square" if c.IMAGE_RESIZE_MODE == "crop" else c.IMAGE_RESIZE_MODE
    shape = inference_image_shape(c)
    molded, metas, windows = [], [], []
    for image in images:
        m, window, scale, padding, crop = resize_image(
            image, min_dim=c.IMAGE_MIN_DIM, min_scale=c.IMAGE_MIN_SCALE,
            max_dim=c.IMAGE_MAX_DIM, mode=mode, style=style)
        m = pad_to_shape(m, shape)
        meta = compose_image_meta(0, image.shape, m.shape, window, scale,
                                  np.zeros([c.NUM_CLASSES], dtype=np.int32))
        m = mold_image(m, c)
        if style == "torchvision":
            y1, x1, y2, x2 = window
            m[y2:], m[:, x2:] = 0.0, 0.0  # top-left placement: padding below, right
        molded.append(m)
        metas.append(meta)
        windows.append(window)
    return np.stack(molded), np.stack(metas), np.array(windows)


def unmold_detections(detections, mrcnn_mask, original_image_shape, image_shape,
                      window, style: str = "matterport"
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One image's network outputs -> boxes, class ids, scores and full-size masks.

    detections [N, (y1, x1, y2, x2, class_id, score)] normalized, zero-padded;
    mrcnn_mask [N, h, w, NUM_CLASSES]. Returns rois [n, 4] original pixels, class_ids
    [n], scores [n], masks [H, W, n] bool at the original size.
    style (Config.DETECTOR_STYLE): "matterport" - int32 rois, masks resized into the
    box (``unmold_mask``); "torchvision" - float32 rois as torchvision reports them,
    masks pasted as its paste_masks_in_image (``paste_mask``).
    """
    n = int(np.sum(detections[:, 4] > 0))
    boxes = detections[:n, :4]
    class_ids = detections[:n, 4].astype(np.int32)
    scores = detections[:n, 5]
    masks = mrcnn_mask[np.arange(n), :, :, class_ids]
    # Normalized (molded image) -> normalized (window) -> original pixels.
    wy1, wx1, wy2, wx2 = norm_boxes(np.array(window)[None], image_shape[:2], style)[0]
    shift = np.array([wy1, wx1, wy1, wx1])
    scale = np.array([wy2 - wy1, wx2 - wx1, wy2 - wy1, wx2 - wx1])
    boxes = denorm_boxes((boxes - shift) / scale, original_image_shape[:2], style)
    keep = np.where((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) > 0)[0]
    boxes, class_ids, scores, masks = boxes[keep], class_ids[keep], scores[keep], \
        masks[keep]
    paste = paste_mask if style == "torchvision" else unmold_mask
    full = [paste(masks[i], boxes[i], original_image_shape) for i in range(len(keep))]
    full = np.stack(full, axis=-1) if full else \
        np.zeros(tuple(original_image_shape[:2]) + (0,), dtype=bool)
    return boxes, class_ids, scores, full
