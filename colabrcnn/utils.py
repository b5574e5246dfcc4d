"""NumPy helpers shared by the data pipeline, the model wrapper and evaluation.

Boxes are (y1, x1, y2, x2) in pixels with y2/x2 exclusive, as in matterport, unless
a function says "normalized" (then 0..1 with (0, 0, 1, 1) the whole image, where the
last pixel row/column maps to 1 - see ``norm_boxes``).
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from .errors import ConfigError


# ----------------------------------------------------------------------------- boxes
def extract_bboxes(mask):
    """Tight boxes of H x W x N masks -> [N, (y1, x1, y2, x2)] int32, (0,0,0,0) if empty."""
    n = mask.shape[-1]
    boxes = np.zeros([n, 4], dtype=np.int32)
    for i in range(n):
        m = mask[:, :, i]
        rows = np.where(np.any(m, axis=1))[0]
        cols = np.where(np.any(m, axis=0))[0]
        if rows.size:
            boxes[i] = (rows[0], cols[0], rows[-1] + 1, cols[-1] + 1)
    return boxes


def compute_overlaps(boxes1, boxes2):
    """IoU of every box pair: [N1, 4], [N2, 4] -> [N1, N2]. Zero-area boxes give 0."""
    b1 = np.asarray(boxes1, dtype=np.float64)[:, None, :]
    b2 = np.asarray(boxes2, dtype=np.float64)[None, :, :]
    y1 = np.maximum(b1[..., 0], b2[..., 0])
    x1 = np.maximum(b1[..., 1], b2[..., 1])
    y2 = np.minimum(b1[..., 2], b2[..., 2])
    x2 = np.minimum(b1[..., 3], b2[..., 3])
    inter = np.maximum(y2 - y1, 0) * np.maximum(x2 - x1, 0)
    a1 = (b1[..., 2] - b1[..., 0]) * (b1[..., 3] - b1[..., 1])
    a2 = (b2[..., 2] - b2[..., 0]) * (b2[..., 3] - b2[..., 1])
    union = a1 + a2 - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0).astype(np.float32)


def compute_overlaps_masks(masks1, masks2):
    """Mask IoU: [H, W, N1], [H, W, N2] -> [N1, N2]."""
    if masks1.shape[-1] == 0 or masks2.shape[-1] == 0:
        return np.zeros((masks1.shape[-1], masks2.shape[-1]), dtype=np.float32)
    m1 = np.reshape(masks1 > .5, (-1, masks1.shape[-1])).astype(np.float32)
    m2 = np.reshape(masks2 > .5, (-1, masks2.shape[-1])).astype(np.float32)
    a1, a2 = m1.sum(0), m2.sum(0)
    inter = m1.T @ m2
    union = a1[:, None] + a2[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0).astype(np.float32)


def box_refinement(box, gt_box):
    """Deltas (dy, dx, log dh, log dw) that turn ``box`` into ``gt_box``; [N, 4] each."""
    box = np.asarray(box, dtype=np.float32)
    gt_box = np.asarray(gt_box, dtype=np.float32)
    h = box[:, 2] - box[:, 0]
    w = box[:, 3] - box[:, 1]
    cy = box[:, 0] + 0.5 * h
    cx = box[:, 1] + 0.5 * w
    gh = gt_box[:, 2] - gt_box[:, 0]
    gw = gt_box[:, 3] - gt_box[:, 1]
    gcy = gt_box[:, 0] + 0.5 * gh
    gcx = gt_box[:, 1] + 0.5 * gw
    return np.stack([(gcy - cy) / h, (gcx - cx) / w, np.log(gh / h), np.log(gw / w)], axis=1)


def apply_box_deltas(boxes, deltas):
    """Inverse of box_refinement: [N, 4] boxes and [N, 4] deltas -> [N, 4] boxes."""
    boxes = np.asarray(boxes, dtype=np.float32)
    deltas = np.asarray(deltas, dtype=np.float32)
    h = boxes[:, 2] - boxes[:, 0]
    w = boxes[:, 3] - boxes[:, 1]
    cy = boxes[:, 0] + 0.5 * h + deltas[:, 0] * h
    cx = boxes[:, 1] + 0.5 * w + deltas[:, 1] * w
    h = h * np.exp(deltas[:, 2])
    w = w * np.exp(deltas[:, 3])
    return np.stack([cy - 0.5 * h, cx - 0.5 * w, cy + 0.5 * h, cx + 0.5 * w], axis=1)


def norm_boxes(boxes, shape):
    """Pixel boxes -> normalized: (y1, x1, y2 - 1, x2 - 1) / (h - 1, w - 1)."""
    h, w = shape[:2]
    scale = np.array([h - 1, w - 1, h - 1, w - 1], dtype=np.float32)
    shift = np.array([0, 0, 1, 1], dtype=np.float32)
    return ((np.asarray(boxes, dtype=np.float32) - shift) / scale).astype(np.float32)


def denorm_boxes(boxes, shape):
    """Normalized boxes -> pixel boxes (inverse of norm_boxes), int32."""
    h, w = shape[:2]
    scale = np.array([h - 1, w - 1, h - 1, w - 1], dtype=np.float32)
    shift = np.array([0, 0, 1, 1], dtype=np.float32)
    return np.around(np.asarray(boxes, dtype=np.float32) * scale + shift).astype(np.int32)


# ---------------------------------------------------------------------------- images
def resize_scale(shape, min_dim=None, max_dim=None, min_scale=None, mode="square"):
    """The scale ``resize_image`` applies to an image of ``shape`` (H, W, ...)."""
    if mode == "none":
        return 1.0
    h, w = int(shape[0]), int(shape[1])
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


def scaled_size(shape, scale):
    """(height, width) of an image of ``shape`` resized by ``scale`` (as resize_image)."""
    h, w = int(shape[0]), int(shape[1])
    if scale == 1:
        return h, w
    return max(1, round(h * scale)), max(1, round(w * scale))


def placement(shape, min_dim=None, max_dim=None, mode="square", rng=None):
    """Where a resized image of ``shape`` goes: resize_image's padding and crop.

    Returns (padding, crop, window): padding [(top, bottom), (left, right), (0, 0)] is
    applied first, then crop (y, x, h, w) or None; window (y1, x1, y2, x2) is the real
    image inside the result. ``crop`` mode draws the crop from ``rng``.
    """
    h, w = int(shape[0]), int(shape[1])
    if mode == "none":
        return [(0, 0), (0, 0), (0, 0)], None, (0, 0, h, w)
    if mode == "square":
        top = (max_dim - h) // 2
        left = (max_dim - w) // 2
        padding = [(top, max_dim - h - top), (left, max_dim - w - left), (0, 0)]
        return padding, None, (top, left, h + top, w + left)
    if mode == "pad64":
        if min_dim % 64 != 0:
            raise ConfigError("IMAGE_MIN_DIM must be a multiple of 64 in 'pad64' mode")
        ph = (64 - h % 64) % 64
        pw = (64 - w % 64) % 64
        top, left = ph // 2, pw // 2
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


def resize_image(image, min_dim=None, max_dim=None, min_scale=None, mode="square",
                 rng=None):
    """Resize keeping the aspect ratio, as matterport's modes do.

    Returns (image, window, scale, padding, crop):
      window (y1, x1, y2, x2): where the real image sits in the result (excluding padding)
      padding [(top, bottom), (left, right), (0, 0)]; crop (y, x, h, w) or None.
    ``crop`` picks a random min_dim x min_dim crop (``rng``: numpy Generator).
    """
    image_dtype = image.dtype
    h, w = image.shape[:2]
    if mode == "none":
        return image, (0, 0, h, w), 1.0, [(0, 0), (0, 0), (0, 0)], None
    if mode not in ("square", "pad64", "crop"):
        raise ConfigError(f"Unknown IMAGE_RESIZE_MODE {mode!r}")
    scale = resize_scale((h, w), min_dim, max_dim, min_scale, mode)
    if scale != 1:
        nh, nw = scaled_size((h, w), scale)
        image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
        if image.ndim == 2:
            image = image[..., None]
    padding, crop, window = placement(image.shape, min_dim, max_dim, mode, rng)
    if any(p != (0, 0) for p in padding[:2]):
        image = np.pad(image, padding, mode="constant", constant_values=0)
    if crop is not None:
        y, x, ch, cw = crop
        image = image[y:y + ch, x:x + cw]
    return image.astype(image_dtype), window, scale, padding, crop


def resize_mask(mask, scale, padding, crop=None):
    """Apply resize_image's scale/padding/crop to an H x W x N mask (nearest)."""
    mask = np.asarray(mask)
    h, w, n = mask.shape
    if scale != 1 and n:
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        parts = []
        # cv2.resize handles at most 512 channels at a time.
        for i in range(0, n, 512):
            part = cv2.resize(mask[..., i:i + 512].astype(np.uint8), (nw, nh),
                              interpolation=cv2.INTER_NEAREST)
            parts.append(part.reshape(nh, nw, -1))
        mask = np.concatenate(parts, axis=-1)
    elif scale != 1:
        mask = np.zeros((max(1, round(h * scale)), max(1, round(w * scale)), 0), mask.dtype)
    mask = np.pad(mask, padding, mode="constant", constant_values=0)
    if crop is not None:
        y, x, ch, cw = crop
        mask = mask[y:y + ch, x:x + cw]
    return mask.astype(bool)


def pad_to_shape(image, shape):
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


def minimize_mask(bbox, mask, mini_shape):
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


def expand_mask(bbox, mini_mask, image_shape):
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


def unmold_mask(mask, bbox, image_shape, threshold=0.5):
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


def mold_image(images, config):
    """uint8 RGB -> float32 minus MEAN_PIXEL (what the network and the weights expect)."""
    return images.astype(np.float32) - config.MEAN_PIXEL


def unmold_image(normalized_images, config):
    return (normalized_images + config.MEAN_PIXEL).clip(0, 255).astype(np.uint8)


# ----------------------------------------------------------------------- image meta
def compose_image_meta(image_id, original_image_shape, image_shape, window, scale,
                       active_class_ids):
    """[1 + 3 + 3 + 4 + 1 + NUM_CLASSES] float32 vector describing one molded image."""
    return np.array([image_id] + list(original_image_shape) + list(image_shape)
                    + list(window) + [scale] + list(active_class_ids), dtype=np.float32)


def parse_image_meta(meta):
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


# -------------------------------------------------------------------------- anchors
def compute_backbone_shapes(config, image_shape):
    """[[h, w], ...] of the feature maps P2..P6 for a given image shape."""
    if callable(config.BACKBONE):
        return np.asarray(config.COMPUTE_BACKBONE_SHAPE(image_shape))
    return np.array([[int(math.ceil(image_shape[0] / s)), int(math.ceil(image_shape[1] / s))]
                     for s in config.BACKBONE_STRIDES])


def generate_anchors(scale, ratios, shape, feature_stride, anchor_stride):
    """Anchors of one level: [h * w * len(ratios), (y1, x1, y2, x2)] in pixels.

    Ordered by cell (row-major), then by ratio, matching the RPN head's output order.
    """
    ratios = np.asarray(ratios, dtype=np.float64)
    heights = scale / np.sqrt(ratios)   # ratio = width / height
    widths = scale * np.sqrt(ratios)
    shifts_y = np.arange(0, shape[0], anchor_stride) * feature_stride
    shifts_x = np.arange(0, shape[1], anchor_stride) * feature_stride
    shifts_x, shifts_y = np.meshgrid(shifts_x, shifts_y)
    box_widths, box_centers_x = np.meshgrid(widths, shifts_x)
    box_heights, box_centers_y = np.meshgrid(heights, shifts_y)
    centers = np.stack([box_centers_y, box_centers_x], axis=2).reshape([-1, 2])
    sizes = np.stack([box_heights, box_widths], axis=2).reshape([-1, 2])
    return np.concatenate([centers - 0.5 * sizes, centers + 0.5 * sizes], axis=1)


def generate_pyramid_anchors(scales, ratios, feature_shapes, feature_strides, anchor_stride):
    """All levels' anchors concatenated, P2 first: [A, 4] pixels."""
    return np.concatenate([
        generate_anchors(scales[i], ratios, feature_shapes[i], feature_strides[i],
                         anchor_stride) for i in range(len(scales))], axis=0)


def get_anchors(config, image_shape=None):
    """Pixel anchors for the config's (or the given) image shape; cached per shape."""
    image_shape = tuple(int(v) for v in (image_shape if image_shape is not None
                                         else config.IMAGE_SHAPE)[:2])
    key = (image_shape, tuple(config.RPN_ANCHOR_SCALES), tuple(config.RPN_ANCHOR_RATIOS),
           tuple(config.BACKBONE_STRIDES), config.RPN_ANCHOR_STRIDE)
    cache = _ANCHOR_CACHE
    if key not in cache:
        shapes = compute_backbone_shapes(config, image_shape)
        cache[key] = generate_pyramid_anchors(
            config.RPN_ANCHOR_SCALES, config.RPN_ANCHOR_RATIOS, shapes,
            config.BACKBONE_STRIDES, config.RPN_ANCHOR_STRIDE).astype(np.float32)
    return cache[key]


_ANCHOR_CACHE: dict = {}


# ---------------------------------------------------------------------- RPN targets
class _AnchorIndex:
    """Anchors grouped by size, to find quickly those that can overlap a box.

    At 1024 x 1024 there are 261,888 anchors but a GT box overlaps only a few thousand,
    and only anchors of about its size can reach the IoU thresholds. Anchors of one
    (height, width) form a regular grid (one per scale and ratio), so the anchors of a
    group that touch a box are a block of rows and columns found by binary search.
    Groups that are not grids (custom anchors) fall back to a band of rows and a test.
    """

    def __init__(self, anchors):
        a = np.asarray(anchors, dtype=np.float64)
        heights = a[:, 2] - a[:, 0]
        widths = a[:, 3] - a[:, 1]
        sizes = np.stack([np.round(heights, 2), np.round(widths, 2)], axis=1)
        _, group_of = np.unique(sizes, axis=0, return_inverse=True)
        group_of = group_of.reshape(-1)
        if len(a) and group_of.max() >= 256:
            # Not a few grids (anchors of arbitrary sizes): one group, searched by band.
            group_of = np.zeros_like(group_of)
        self.groups = []
        for g in range(int(group_of.max()) + 1 if len(a) else 0):
            ids = np.flatnonzero(group_of == g)
            ids = ids[np.lexsort((a[ids, 1], a[ids, 0]))]  # by top, then left
            ga = a[ids]
            group = {"hmax": float((ga[:, 2] - ga[:, 0]).max()),
                     "wmax": float((ga[:, 3] - ga[:, 1]).max()),
                     "amin": float(((ga[:, 2] - ga[:, 0]) * (ga[:, 3] - ga[:, 1])).min()),
                     "ids": ids, "tops": ga[:, 0], "a": ga, "grid": None}
            ys, xs = np.unique(ga[:, 0]), np.unique(ga[:, 1])
            if len(ys) * len(xs) == len(ids) and \
                    np.array_equal(ga[:, 0].reshape(len(ys), len(xs)),
                                   np.broadcast_to(ys[:, None], (len(ys), len(xs)))) and \
                    np.array_equal(ga[:, 1].reshape(len(ys), len(xs)),
                                   np.broadcast_to(xs[None, :], (len(ys), len(xs)))):
                group["grid"] = (ys, xs, ids.reshape(len(ys), len(xs)))
            self.groups.append(group)

    def touching(self, boxes, min_iou=0.0):
        """Sorted unique ids of the anchors that may have IoU > 0 (and >= ``min_iou``)
        with one of ``boxes`` [N, 4]: a superset, edges touching included."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        found = []
        bh = boxes[:, 2] - boxes[:, 0]
        bw = boxes[:, 3] - boxes[:, 1]
        eps = 1e-2
        for g in self.groups:
            todo = np.ones(len(boxes), bool)
            if min_iou > 0:
                # IoU <= best possible intersection / smallest possible union.
                inter = np.minimum(bh, g["hmax"]) * np.minimum(bw, g["wmax"])
                union = g["amin"] + bh * bw - inter
                todo = inter >= (min_iou - 1e-3) * np.maximum(union, 1e-12)
                if not todo.any():
                    continue
            sel = boxes[todo]
            if g["grid"] is not None:
                ys, xs, grid = g["grid"]
                r0 = np.searchsorted(ys, sel[:, 0] - g["hmax"] - eps, side="left")
                r1 = np.searchsorted(ys, sel[:, 2] + eps, side="right")
                c0 = np.searchsorted(xs, sel[:, 1] - g["wmax"] - eps, side="left")
                c1 = np.searchsorted(xs, sel[:, 3] + eps, side="right")
                for i in np.flatnonzero((r1 > r0) & (c1 > c0)):
                    found.append(grid[r0[i]:r1[i], c0[i]:c1[i]].reshape(-1))
            else:
                lo = np.searchsorted(g["tops"], sel[:, 0] - g["hmax"] - eps, side="left")
                hi = np.searchsorted(g["tops"], sel[:, 2] + eps, side="right")
                for i in np.flatnonzero(hi > lo):
                    y1, x1, y2, x2 = sel[i]
                    band = g["a"][lo[i]:hi[i]]
                    ok = (band[:, 2] >= y1 - eps) & (band[:, 1] <= x2 + eps) & \
                         (band[:, 3] >= x1 - eps)
                    found.append(g["ids"][lo[i]:hi[i]][ok])
        if not found:
            return np.zeros((0,), np.int64)
        return np.unique(np.concatenate(found))


_ANCHOR_INDEX: dict = {}


def _anchor_index(anchors):
    """The (cached) _AnchorIndex of an anchors array; get_anchors returns cached arrays."""
    key = id(anchors)
    hit = _ANCHOR_INDEX.get(key)
    if hit is not None and hit[0] is anchors:
        return hit[1]
    index = _AnchorIndex(anchors)
    if len(_ANCHOR_INDEX) >= 8:
        _ANCHOR_INDEX.clear()
    _ANCHOR_INDEX[key] = (anchors, index)  # holding the array keeps its id unique
    return index


def build_rpn_targets(anchors, gt_class_ids, gt_boxes, config, rng=None):
    """Which anchors are objects, and their box deltas (matterport's rules).

    anchors [A, 4]; gt_boxes [N, 4] pixels.
    Returns rpn_match [A] int32 (1 positive, -1 negative, 0 neutral) and
    rpn_bbox [RPN_TRAIN_ANCHORS_PER_IMAGE, 4] deltas of the positives (zero padded),
    already divided by RPN_BBOX_STD_DEV.

    IoUs are computed only for the anchors that can matter: those whose size allows an
    IoU of 0.3 with a GT box and that touch it, plus, for a box no anchor reaches 0.3
    with, the anchors touching it. The result is the same as from the full [A, N] IoU
    matrix, which at 1024 px (261,888 anchors) cost most of the loader's time.
    """
    rng = rng if rng is not None else np.random.default_rng()
    anchors = np.asarray(anchors)
    gt_class_ids = np.asarray(gt_class_ids)
    gt_boxes = np.asarray(gt_boxes).reshape(-1, 4)
    num_anchors = anchors.shape[0]
    rpn_match = np.zeros([num_anchors], dtype=np.int32)
    rpn_bbox = np.zeros((config.RPN_TRAIN_ANCHORS_PER_IMAGE, 4), dtype=np.float32)
    index = _anchor_index(anchors) if num_anchors else None

    # Crowd boxes (negative class ids) may not be negatives but are never targets.
    crowd_ix = np.where(gt_class_ids < 0)[0]
    if crowd_ix.shape[0] > 0:
        no_crowd_bool = np.ones([num_anchors], dtype=bool)
        non_crowd_ix = np.where(gt_class_ids > 0)[0]
        near = index.touching(gt_boxes[crowd_ix])
        if near.size:
            crowd_overlaps = compute_overlaps(anchors[near], gt_boxes[crowd_ix])
            no_crowd_bool[near] = np.amax(crowd_overlaps, axis=1) < 0.001
        gt_class_ids = gt_class_ids[non_crowd_ix]
        gt_boxes = gt_boxes[non_crowd_ix]

    anchor_iou_argmax = np.zeros([num_anchors], dtype=np.intp)
    if crowd_ix.shape[0] > 0:
        rpn_match[no_crowd_bool] = -1
    else:
        rpn_match[:] = -1
    # Every anchor starts as a negative (away from crowds). Only the anchors that can
    # reach IoU 0.3 with some GT box (a few thousand of 261,888 at 1024 px) get exact
    # IoUs; all others are below 0.3 with every box and stay negatives.
    if gt_boxes.shape[0]:
        near = index.touching(gt_boxes, min_iou=0.3)
        overlaps = compute_overlaps(anchors[near], gt_boxes)  # [A_near, N]
        if near.size:
            arg = np.argmax(overlaps, axis=1)
            anchor_iou_argmax[near] = arg
            near_max = overlaps[np.arange(near.shape[0]), arg]
            rpn_match[near[near_max >= 0.3]] = 0
        # Every GT box gets its best anchor(s) as positives, whatever the IoU.
        gt_iou_max = (np.max(overlaps, axis=0) if near.size
                      else np.zeros((gt_boxes.shape[0],), np.float32))
        best = [near[np.flatnonzero((overlaps[:, j] == gt_iou_max[j]) & (gt_iou_max[j] > 0))]
                for j in np.flatnonzero(gt_iou_max >= 0.3)]
        for j in np.flatnonzero(gt_iou_max < 0.3):
            # A small (or oddly shaped) box: its best anchor may be anywhere it touches.
            cand = index.touching(gt_boxes[j:j + 1])
            if not cand.size:
                continue
            col = compute_overlaps(anchors[cand], gt_boxes[j:j + 1])[:, 0]
            top = col.max()
            if top > 0:
                hit = cand[col == top]
                best.append(hit)
                # Its positives' GT is the best of their row, as matterport does.
                row = compute_overlaps(anchors[hit], gt_boxes)
                outside = ~np.isin(hit, near)
                anchor_iou_argmax[hit[outside]] = np.argmax(row[outside], axis=1)
        if best:
            rpn_match[np.concatenate(best)] = 1
        if near.size:
            rpn_match[near[near_max >= 0.7]] = 1

    # Balance: at most half positives, negatives fill up to the total.
    ids = np.where(rpn_match == 1)[0]
    extra = len(ids) - config.RPN_TRAIN_ANCHORS_PER_IMAGE // 2
    if extra > 0:
        rpn_match[rng.choice(ids, extra, replace=False)] = 0
    ids = np.where(rpn_match == -1)[0]
    extra = len(ids) - (config.RPN_TRAIN_ANCHORS_PER_IMAGE - np.sum(rpn_match == 1))
    if extra > 0:
        rpn_match[rng.choice(ids, extra, replace=False)] = 0

    ids = np.where(rpn_match == 1)[0]
    if len(ids) and gt_boxes.shape[0]:
        gt = gt_boxes[anchor_iou_argmax[ids]]
        rpn_bbox[:len(ids)] = box_refinement(anchors[ids], gt) / config.RPN_BBOX_STD_DEV
    return rpn_match, rpn_bbox


# -------------------------------------------------------------- ground truth loading
def load_image_gt(dataset, config, image_id, augmentation=None, rng=None):
    """Load, resize and (optionally) augment one image with its instances.

    Returns image [H, W, 3] uint8 at IMAGE_SHAPE, image_meta, class_ids [N] int32,
    bbox [N, 4] int32 pixels, mask [H, W, N] or mini-mask [h, w, N] bool.
    ``augmentation`` is a callable(image, masks, class_ids) -> (image, masks, class_ids)
    applied before resizing (see colabrcnn.data.augment).
    """
    image = dataset.load_image(image_id)
    mask, class_ids = dataset.load_mask(image_id)
    mask = np.asarray(mask, dtype=bool)
    class_ids = np.asarray(class_ids, dtype=np.int32)
    if augmentation is not None:
        image, mask, class_ids = augmentation(image, mask, class_ids)
    original_shape = image.shape
    image, window, scale, padding, crop = resize_image(
        image, min_dim=config.IMAGE_MIN_DIM, max_dim=config.IMAGE_MAX_DIM,
        min_scale=config.IMAGE_MIN_SCALE, mode=config.IMAGE_RESIZE_MODE, rng=rng)
    mask = resize_mask(mask, scale, padding, crop)
    image = pad_to_shape(image, config.IMAGE_SHAPE)
    mask = pad_to_shape(mask, config.IMAGE_SHAPE)

    # Drop instances that the crop (or resizing) removed entirely.
    keep = np.where(np.sum(mask, axis=(0, 1)) > 0)[0]
    mask = mask[:, :, keep]
    class_ids = class_ids[keep]
    bbox = extract_bboxes(mask)

    active_class_ids = np.zeros([config.NUM_CLASSES], dtype=np.int32)
    source_class_ids = dataset.source_class_ids.get(
        dataset.image_info[image_id]["source"], list(range(config.NUM_CLASSES)))
    active_class_ids[[c for c in source_class_ids if c < config.NUM_CLASSES]] = 1

    if config.USE_MINI_MASK:
        mask = minimize_mask(bbox, mask, config.MINI_MASK_SHAPE)
    image_meta = compose_image_meta(image_id, original_shape, image.shape, window, scale,
                                    active_class_ids)
    return image, image_meta, class_ids, bbox, mask


# ------------------------------------------------------------------ matterport-style AP
# compute_matches, compute_ap, compute_ap_range and trim_zeros live in
# colabrcnn/evaluate/ap.py; they stay importable from here as in matterport's utils.
_MOVED_TO_EVALUATE_AP = ("trim_zeros", "compute_matches", "compute_ap", "compute_ap_range")


def __getattr__(name):
    if name in _MOVED_TO_EVALUATE_AP:
        # Imported on first use: evaluate imports this module (no import cycle).
        from .evaluate import ap
        return getattr(ap, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_MOVED_TO_EVALUATE_AP))
