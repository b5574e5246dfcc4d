"""Pyramid ROIAlign: crop each ROI from the pyramid level that suits its size.

matterport sorts boxes by level and calls crop_and_resize per level, which needs
dynamic shapes. Here all levels P2..P5 are flattened into one table and every box
samples its own level by index arithmetic: one bilinear gather per sample point,
static shapes, and no 4x work of cropping every box from every level. Sampling
follows ``tf.image.crop_and_resize`` (what matterport and its weights used): sample
i of n lies at y1 * (h - 1) + i * (y2 - y1) * (h - 1) / (n - 1); outside the map -> 0.
"""
import math

import keras
import numpy as np
from keras import ops

from .ops import BORDER_SLACK


def roi_levels(boxes, image_shape):
    """Pyramid level 2..5 per box (FPN paper, eq. 1): [B, R, 4] -> [B, R] int32."""
    h = boxes[..., 2] - boxes[..., 0]
    w = boxes[..., 3] - boxes[..., 1]
    image_area = float(image_shape[0] * image_shape[1])
    # sqrt(h * w) * sqrt(area) is the box size in pixels; 224 px maps to level 4.
    size = ops.sqrt(ops.maximum(h * w, 1e-12)) * math.sqrt(image_area) / 224.0
    level = 4.0 + ops.round(ops.log(size) / math.log(2.0))
    return ops.cast(ops.clip(level, 2.0, 5.0), "int32")


def sample_corners(boxes, fmaps, pool_shape, image_shape):
    """Where each ROIAlign sample reads, as one table for all levels.

    boxes [B, R, 4] normalized; fmaps [P2, P3, P4, P5] each [B, h, w, C] (static h, w).
    Returns table [B*S, C] (every level's pixels, S per image), idx [B, R, ph, pw, 4]
    int32 rows of the four bilinear corners (top-left, top-right, bottom-left,
    bottom-right) and weights [B, R, ph, pw, 4] float32, zero for samples outside the
    map (``tf.image.crop_and_resize`` semantics).
    """
    ph, pw = pool_shape
    channels = fmaps[0].shape[-1]
    # Static level sizes (the image shape is fixed by the Config).
    shapes = [(int(f.shape[1]), int(f.shape[2])) for f in fmaps]
    sizes = [h * w for h, w in shapes]
    offsets = np.cumsum([0] + sizes[:-1])
    total = int(sum(sizes))

    boxes = ops.cast(boxes, "float32")
    batch = ops.shape(boxes)[0]
    table = ops.concatenate(
        [ops.reshape(f, (batch, -1, channels)) for f in fmaps], axis=1)      # [B, S, C]
    table = ops.reshape(table, (-1, channels))                               # [B*S, C]

    level = roi_levels(boxes, image_shape) - 2                               # [B, R] 0..3
    lh = ops.take(ops.convert_to_tensor([float(s[0]) for s in shapes]), level)
    lw = ops.take(ops.convert_to_tensor([float(s[1]) for s in shapes]), level)
    loff = ops.take(ops.convert_to_tensor(offsets.astype("int32")), level)
    lw_int = ops.take(ops.convert_to_tensor([s[1] for s in shapes], "int32"), level)
    lh_int = ops.take(ops.convert_to_tensor([s[0] for s in shapes], "int32"), level)
    bidx = ops.reshape(ops.arange(batch, dtype="int32"), (-1, 1)) * total
    base = bidx + loff                                                        # [B, R]

    def sample_points(lo, hi, size, n):
        # [B, R] -> [B, R, n] coordinates in the level's pixel grid.
        if n == 1:
            return ops.expand_dims(0.5 * (lo + hi) * (size - 1.0), -1)
        step = (hi - lo) * (size - 1.0) / float(n - 1)
        return (ops.expand_dims(lo * (size - 1.0), -1)
                + ops.expand_dims(step, -1) * ops.arange(n, dtype="float32"))

    ys = sample_points(boxes[..., 0], boxes[..., 2], lh, ph)   # [B, R, ph]
    xs = sample_points(boxes[..., 1], boxes[..., 3], lw, pw)   # [B, R, pw]
    y0 = ops.floor(ys)
    x0 = ops.floor(xs)
    wy = ys - y0
    wx = xs - x0
    hmax = ops.expand_dims(lh, -1) - 1.0
    wmax = ops.expand_dims(lw, -1) - 1.0
    # A box edge on the border (proposals are clipped to the image) can land a rounding
    # error outside after XLA fuses the grid into FMAs; within BORDER_SLACK pixels the
    # border is read, as in ops.crop_and_resize (the indices are clipped below).
    valid_y = ops.cast(ops.logical_and(ys >= -BORDER_SLACK, ys <= hmax + BORDER_SLACK),
                       "float32")
    valid_x = ops.cast(ops.logical_and(xs >= -BORDER_SLACK, xs <= wmax + BORDER_SLACK),
                       "float32")
    # Corner indices clipped into the map (floor may be -1 within the slack; the second
    # corner is then the border too).
    hm = ops.expand_dims(lh_int, -1) - 1
    wm = ops.expand_dims(lw_int, -1) - 1
    y0i, x0i = ops.cast(y0, "int32"), ops.cast(x0, "int32")
    y0i, y1i = ops.minimum(ops.maximum(y0i, 0), hm), ops.minimum(ops.maximum(y0i + 1, 0), hm)
    x0i, x1i = ops.minimum(ops.maximum(x0i, 0), wm), ops.minimum(ops.maximum(x0i + 1, 0), wm)

    row_w = ops.expand_dims(ops.expand_dims(lw_int, -1), -1)   # [B, R, 1, 1]
    base4 = ops.expand_dims(ops.expand_dims(base, -1), -1)

    def rows(yi, xi):                                          # [B, R, ph, pw]
        return base4 + ops.expand_dims(yi, -1) * row_w + ops.expand_dims(xi, -2)

    idx = ops.stack([rows(y0i, x0i), rows(y0i, x1i), rows(y1i, x0i), rows(y1i, x1i)],
                    axis=-1)                                   # [B, R, ph, pw, 4]
    wy = ops.expand_dims(wy * valid_y, -1)                     # [B, R, ph, 1]
    vx = ops.expand_dims(valid_x, -2)                          # [B, R, 1, pw]
    wx = ops.expand_dims(wx, -2)
    vy = ops.expand_dims(valid_y, -1)
    # Outside samples get zero weights; (1 - wy) * valid_y etc. per corner.
    top = (vy - wy) * vx
    bottom = wy * vx
    weights = ops.stack([top * (1 - wx), top * wx, bottom * (1 - wx), bottom * wx],
                        axis=-1)                               # [B, R, ph, pw, 4]
    return table, idx, weights


def bilinear_from_corners(table, idx, weights, dtype):
    """[B, R, ph, pw, C]: the four corner rows of ``table`` mixed by ``weights``.

    Four gathers; their gradient is a scatter-add into the table.
    """
    weights = ops.cast(weights, dtype)
    out = None
    for k in range(4):
        term = ops.take(table, idx[..., k], axis=0) * weights[..., k:k + 1]
        out = term if out is None else out + term
    return out


@keras.saving.register_keras_serializable(package="colabrcnn")
class PyramidROIAlign(keras.layers.Layer):
    """[B, R, 4] normalized boxes + [P2, P3, P4, P5] -> [B, R, ph, pw, C]."""

    def __init__(self, pool_shape, image_shape, strides=(4, 8, 16, 32), **kwargs):
        super().__init__(**kwargs)
        self.pool_shape = tuple(int(v) for v in pool_shape)
        self.image_shape = tuple(int(v) for v in image_shape[:2])
        self.strides = tuple(int(s) for s in strides)

    def call(self, boxes, p2, p3, p4, p5):
        fmaps = [p2, p3, p4, p5]
        table, idx, weights = sample_corners(boxes, fmaps, self.pool_shape,
                                             self.image_shape)
        return bilinear_from_corners(table, idx, weights, fmaps[0].dtype)

    def compute_output_shape(self, boxes_shape, p2_shape, p3_shape, p4_shape, p5_shape):
        return (boxes_shape[0], boxes_shape[1]) + self.pool_shape + (p2_shape[-1],)

    def get_config(self):
        return {**super().get_config(), "pool_shape": list(self.pool_shape),
                "image_shape": list(self.image_shape), "strides": list(self.strides)}
