"""Box arithmetic in keras.ops (backend-agnostic, static shapes).

Boxes are (y1, x1, y2, x2), normalized to 0..1 unless stated; any leading batch
dimensions are allowed ([..., 4]).
"""
import math

from keras import ops


# torchvision's BoxCoder clamp of log-scales, log(1000 / 16) (Config.DETECTOR_STYLE).
TORCHVISION_LOG_SCALE_CLIP = math.log(1000.0 / 16)


def apply_box_deltas(boxes, deltas, max_log_scale=4.135):
    """Refine boxes by (dy, dx, log dh, log dw): [..., 4], [..., 4] -> [..., 4].

    max_log_scale: clamp of log dh / log dw (4.135, log(1000/16) rounded, is ours;
    TORCHVISION_LOG_SCALE_CLIP is torchvision's exact value).
    """
    h = boxes[..., 2] - boxes[..., 0]
    w = boxes[..., 3] - boxes[..., 1]
    cy = boxes[..., 0] + 0.5 * h + deltas[..., 0] * h
    cx = boxes[..., 1] + 0.5 * w + deltas[..., 1] * w
    # Clamp log-scales so an untrained head cannot overflow exp (log(1000/16)).
    h = h * ops.exp(ops.minimum(deltas[..., 2], max_log_scale))
    w = w * ops.exp(ops.minimum(deltas[..., 3], max_log_scale))
    return ops.stack([cy - 0.5 * h, cx - 0.5 * w, cy + 0.5 * h, cx + 0.5 * w], axis=-1)


def clip_to_window(boxes, window):
    """Clip boxes to a per-image window (y1, x1, y2, x2).

    boxes [B, N, 4]; window [B, 4] -> [B, N, 4].
    """
    w = ops.expand_dims(window, 1)  # [B, 1, 4]
    y1 = ops.maximum(ops.minimum(boxes[..., 0], w[..., 2]), w[..., 0])
    x1 = ops.maximum(ops.minimum(boxes[..., 1], w[..., 3]), w[..., 1])
    y2 = ops.maximum(ops.minimum(boxes[..., 2], w[..., 2]), w[..., 0])
    x2 = ops.maximum(ops.minimum(boxes[..., 3], w[..., 3]), w[..., 1])
    return ops.stack([y1, x1, y2, x2], axis=-1)


def box_refinement(box, gt_box):
    """Deltas turning box into gt_box: [..., 4], [..., 4] -> [..., 4].

    Degenerate (zero-size) boxes give zero deltas instead of inf/NaN.
    """
    eps = 1e-8
    h = box[..., 2] - box[..., 0]
    w = box[..., 3] - box[..., 1]
    cy = box[..., 0] + 0.5 * h
    cx = box[..., 1] + 0.5 * w
    gh = gt_box[..., 2] - gt_box[..., 0]
    gw = gt_box[..., 3] - gt_box[..., 1]
    gcy = gt_box[..., 0] + 0.5 * gh
    gcx = gt_box[..., 1] + 0.5 * gw
    ok = ops.logical_and(ops.logical_and(h > eps, w > eps), ops.logical_and(gh > eps, gw > eps))
    hs = ops.where(ok, h, 1.0)
    ws = ops.where(ok, w, 1.0)
    ghs = ops.where(ok, gh, 1.0)
    gws = ops.where(ok, gw, 1.0)
    d = ops.stack([(gcy - cy) / hs, (gcx - cx) / ws, ops.log(ghs / hs), ops.log(gws / ws)],
                  axis=-1)
    return ops.where(ops.expand_dims(ok, -1), d, 0.0)


def overlaps(boxes1, boxes2):
    """IoU matrix: [B, N, 4], [B, M, 4] -> [B, N, M]; zero-area pairs give 0."""
    b1 = ops.expand_dims(boxes1, 2)  # [B, N, 1, 4]
    b2 = ops.expand_dims(boxes2, 1)  # [B, 1, M, 4]
    y1 = ops.maximum(b1[..., 0], b2[..., 0])
    x1 = ops.maximum(b1[..., 1], b2[..., 1])
    y2 = ops.minimum(b1[..., 2], b2[..., 2])
    x2 = ops.minimum(b1[..., 3], b2[..., 3])
    inter = ops.maximum(y2 - y1, 0.0) * ops.maximum(x2 - x1, 0.0)
    a1 = (b1[..., 2] - b1[..., 0]) * (b1[..., 3] - b1[..., 1])
    a2 = (b2[..., 2] - b2[..., 0]) * (b2[..., 3] - b2[..., 1])
    union = a1 + a2 - inter
    return ops.where(union > 0, inter / ops.maximum(union, 1e-12), 0.0)


def norm_boxes(boxes, shape, style="matterport"):
    """Pixel boxes -> normalized (same rules as utils.norm_boxes). shape: (h, w) ints;
    style "torchvision": a plain / (h, w, h, w) (Config.DETECTOR_STYLE)."""
    h, w = float(shape[0]), float(shape[1])
    if style == "torchvision":
        return boxes / ops.convert_to_tensor([h, w, h, w], dtype=boxes.dtype)
    scale = ops.convert_to_tensor([h - 1, w - 1, h - 1, w - 1], dtype=boxes.dtype)
    shift = ops.convert_to_tensor([0.0, 0.0, 1.0, 1.0], dtype=boxes.dtype)
    return (boxes - shift) / scale
