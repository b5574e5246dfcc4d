"""NumPy box helpers: boxes are (y1, x1, y2, x2) in pixels with y2/x2 exclusive, as in
matterport, unless a function says "normalized" (then 0..1 with (0, 0, 1, 1) the whole
image, where the last pixel row/column maps to 1 - see ``norm_boxes``).

The graph's Keras versions of these are in ``model/boxes.py``.
"""
from __future__ import annotations

import numpy as np


def extract_bboxes(mask: np.ndarray) -> np.ndarray:
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


def compute_overlaps(boxes1, boxes2) -> np.ndarray:
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


def compute_overlaps_masks(masks1: np.ndarray, masks2: np.ndarray) -> np.ndarray:
    """Mask IoU: [H, W, N1], [H, W, N2] -> [N1, N2]."""
    if masks1.shape[-1] == 0 or masks2.shape[-1] == 0:
        return np.zeros((masks1.shape[-1], masks2.shape[-1]), dtype=np.float32)
    m1 = np.reshape(masks1 > .5, (-1, masks1.shape[-1])).astype(np.float32)
    m2 = np.reshape(masks2 > .5, (-1, masks2.shape[-1])).astype(np.float32)
    a1, a2 = m1.sum(0), m2.sum(0)
    inter = m1.T @ m2
    union = a1[:, None] + a2[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0).astype(np.float32)


def box_refinement(box, gt_box) -> np.ndarray:
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


def apply_box_deltas(boxes, deltas) -> np.ndarray:
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


def norm_boxes(boxes, shape, style: str = "matterport") -> np.ndarray:
    """Pixel boxes -> normalized.

    style "matterport": (y1, x1, y2 - 1, x2 - 1) / (h - 1, w - 1) (matterport's rule,
    which its weights learned); "torchvision": (y1, x1, y2, x2) / (h, w), a plain
    rescaling, so box deltas mean the same in pixels and in normalized units
    (Config.DETECTOR_STYLE).
    """
    h, w = shape[:2]
    if style == "torchvision":
        scale = np.array([h, w, h, w], dtype=np.float32)
        return (np.asarray(boxes, dtype=np.float32) / scale).astype(np.float32)
    scale = np.array([h - 1, w - 1, h - 1, w - 1], dtype=np.float32)
    shift = np.array([0, 0, 1, 1], dtype=np.float32)
    return ((np.asarray(boxes, dtype=np.float32) - shift) / scale).astype(np.float32)


def denorm_boxes(boxes, shape, style: str = "matterport") -> np.ndarray:
    """Normalized boxes -> pixel boxes (inverse of norm_boxes): int32 for matterport's
    style, float32 (unrounded, as torchvision reports them) for "torchvision"."""
    h, w = shape[:2]
    if style == "torchvision":
        scale = np.array([h, w, h, w], dtype=np.float32)
        return (np.asarray(boxes, dtype=np.float32) * scale).astype(np.float32)
    scale = np.array([h - 1, w - 1, h - 1, w - 1], dtype=np.float32)
    shift = np.array([0, 0, 1, 1], dtype=np.float32)
    return np.around(np.asarray(boxes, dtype=np.float32) * scale + shift).astype(np.int32)


def compute_iou(box, boxes, box_area, boxes_area):
    """IoU of one box [4] with boxes [N, 4], given their areas (matterport's helper;
    the areas are passed in so a caller computes them once)."""
    y1 = np.maximum(box[0], boxes[:, 0])
    y2 = np.minimum(box[2], boxes[:, 2])
    x1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[3], boxes[:, 3])
    intersection = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    union = box_area + boxes_area[:] - intersection[:]
    return intersection / union


def non_max_suppression(boxes, scores, threshold):
    """Greedy NMS in NumPy: indices (int32, best score first) of the boxes kept.

    boxes [N, (y1, x1, y2, x2)], scores [N]; a box is dropped when its IoU with a kept,
    higher-scoring box exceeds ``threshold``.
    """
    boxes = np.asarray(boxes)
    if boxes.dtype.kind != "f":
        boxes = boxes.astype(np.float32)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    order = np.asarray(scores).argsort()[::-1]
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        iou = compute_iou(boxes[i], boxes[order[1:]], area[i], area[order[1:]])
        order = order[1:][iou <= threshold]
    return np.array(keep, dtype=np.int32)


def compute_recall(pred_boxes, gt_boxes, iou):
    """Share of GT boxes that some prediction overlaps by at least ``iou``.

    Returns (recall, indices of the predictions that reach ``iou`` with a GT box).
    """
    overlaps = compute_overlaps(pred_boxes, gt_boxes)
    iou_max = np.max(overlaps, axis=1)
    iou_argmax = np.argmax(overlaps, axis=1)
    positive_ids = np.where(iou_max >= iou)[0]
    matched_gt_boxes = iou_argmax[positive_ids]
    return len(set(matched_gt_boxes.tolist())) / gt_boxes.shape[0], positive_ids
