"""Anchors and RPN training targets, in NumPy (the loader builds targets per image).

compute_backbone_shapes: feature map sizes P2..P6 for an image shape.
generate_anchors / generate_pyramid_anchors / get_anchors: pixel anchors, P2 first,
    ordered by cell then ratio (the RPN head's output order).
build_rpn_targets: matterport's anchor labels (1 / -1 / 0) and box deltas.
"""
from __future__ import annotations

import math

import numpy as np

from ..boxes import box_refinement, compute_overlaps


def compute_backbone_shapes(config, image_shape) -> np.ndarray:
    """[[h, w], ...] of the feature maps P2..P6 for a given image shape."""
    if callable(config.BACKBONE):
        return np.asarray(config.COMPUTE_BACKBONE_SHAPE(image_shape))
    return np.array([[int(math.ceil(image_shape[0] / s)), int(math.ceil(image_shape[1] / s))]
                     for s in config.BACKBONE_STRIDES])


def generate_anchors(scale: float, ratios, shape, feature_stride: int,
                     anchor_stride: int, style: str = "matterport") -> np.ndarray:
    """Anchors of one level: [h * w * len(ratios), (y1, x1, y2, x2)] in pixels.

    Ordered by cell (row-major), then by ratio, matching the RPN head's output order.
    style "torchvision" (Config.DETECTOR_STYLE): half-sizes rounded to whole pixels, as
    torchvision's AnchorGenerator rounds its base anchors (same centres, stride * i).
    """
    ratios = np.asarray(ratios, dtype=np.float64)
    heights = scale / np.sqrt(ratios)   # ratio = width / height
    widths = scale * np.sqrt(ratios)
    if style == "torchvision":
        # torch.round of (-w/2, -h/2, w/2, h/2): half to even, symmetric about 0.
        heights = 2 * np.round(heights / 2)
        widths = 2 * np.round(widths / 2)
    shifts_y = np.arange(0, shape[0], anchor_stride) * feature_stride
    shifts_x = np.arange(0, shape[1], anchor_stride) * feature_stride
    shifts_x, shifts_y = np.meshgrid(shifts_x, shifts_y)
    box_widths, box_centers_x = np.meshgrid(widths, shifts_x)
    box_heights, box_centers_y = np.meshgrid(heights, shifts_y)
    centers = np.stack([box_centers_y, box_centers_x], axis=2).reshape([-1, 2])
    sizes = np.stack([box_heights, box_widths], axis=2).reshape([-1, 2])
    return np.concatenate([centers - 0.5 * sizes, centers + 0.5 * sizes], axis=1)


def generate_pyramid_anchors(scales, ratios, feature_shapes, feature_strides,
                             anchor_stride: int, style: str = "matterport") -> np.ndarray:
    """All levels' anchors concatenated, P2 first: [A, 4] pixels."""
    return np.concatenate([
        generate_anchors(scales[i], ratios, feature_shapes[i], feature_strides[i],
                         anchor_stride, style) for i in range(len(scales))], axis=0)


def get_anchors(config, image_shape=None) -> np.ndarray:
    """Pixel anchors for the config's (or the given) image shape; cached per shape."""
    image_shape = tuple(int(v) for v in (image_shape if image_shape is not None
                                         else config.IMAGE_SHAPE)[:2])
    style = getattr(config, "DETECTOR_STYLE", "matterport")
    key = (image_shape, tuple(config.RPN_ANCHOR_SCALES), tuple(config.RPN_ANCHOR_RATIOS),
           tuple(config.BACKBONE_STRIDES), config.RPN_ANCHOR_STRIDE, style)
    cache = _ANCHOR_CACHE
    if key not in cache:
        shapes = compute_backbone_shapes(config, image_shape)
        cache[key] = generate_pyramid_anchors(
            config.RPN_ANCHOR_SCALES, config.RPN_ANCHOR_RATIOS, shapes,
            config.BACKBONE_STRIDES, config.RPN_ANCHOR_STRIDE, style).astype(np.float32)
    return cache[key]


_ANCHOR_CACHE: dict = {}


# ---------------------------------------------------------------------- RPN targets
class AnchorIndex:
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


def anchor_index(anchors: np.ndarray) -> AnchorIndex:
    """The (cached) AnchorIndex of an anchors array; get_anchors returns cached arrays."""
    key = id(anchors)
    hit = _ANCHOR_INDEX.get(key)
    if hit is not None and hit[0] is anchors:
        return hit[1]
    index = AnchorIndex(anchors)
    if len(_ANCHOR_INDEX) >= 8:
        _ANCHOR_INDEX.clear()
    _ANCHOR_INDEX[key] = (anchors, index)  # holding the array keeps its id unique
    return index


def build_rpn_targets(anchors, gt_class_ids, gt_boxes, config,
                      rng=None) -> tuple[np.ndarray, np.ndarray]:
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
    index = anchor_index(anchors) if num_anchors else None

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
