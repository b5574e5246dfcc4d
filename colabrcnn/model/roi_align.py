"""Pyramid ROIAlign: crop each ROI from the pyramid level that suits its size.

matterport sorts boxes by level and calls crop_and_resize per level, which needs
dynamic shapes. Here all levels P2..P5 are flattened into one table and every box
samples its own level by index arithmetic: one bilinear gather per sample point,
static shapes, and no 4x work of cropping every box from every level. Sampling
follows ``tf.image.crop_and_resize`` (what matterport and its weights used): sample
i of n lies at y1 * (h - 1) + i * (y2 - y1) * (h - 1) / (n - 1); outside the map -> 0.

With ``style="torchvision"`` (Config.DETECTOR_STYLE) it is torchvision's
``MultiScaleRoIAlign``: level floor(4 + log2(sqrt(area) / 224) + 1e-6) and
``roi_align(aligned=False, sampling_ratio=2)``, 2x2 samples per bin averaged (see
``sample_corners_torchvision``).
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


def roi_levels_torchvision(boxes, image_shape):
    """torchvision's LevelMapper: [B, R, 4] normalized ("torchvision" style, plain
    / (h, w)) -> [B, R] int32 level 2..5 = floor(4 + log2(sqrt(area px) / 224) + 1e-6)."""
    h = (boxes[..., 2] - boxes[..., 0]) * float(image_shape[0])
    w = (boxes[..., 3] - boxes[..., 1]) * float(image_shape[1])
    # The floor keeps empty boxes at level 2 (log2 of 1e-12 instead of -inf: no NaN
    # gradient through the level arithmetic on backends that differentiate floor).
    size = ops.sqrt(ops.maximum(h * w, 1e-12))
    level = ops.floor(4.0 + ops.log2(size / 224.0) + 1e-6)
    return ops.cast(ops.clip(level, 2.0, 5.0), "int32")


def _level_table(boxes, fmaps, level):
    """The flattened pyramid and, per box, its level's size and first row (the level
    sizes are static: the image shape is fixed by the Config).

    Returns table [B*S, C], lh / lw [B, R] float32 level height / width, lh_int / lw_int
    [B, R] int32 and base [B, R] int32 (the row of the box's level's pixel (0, 0)).
    """
    channels = fmaps[0].shape[-1]
    shapes = [(int(f.shape[1]), int(f.shape[2])) for f in fmaps]
    sizes = [h * w for h, w in shapes]
    offsets = np.cumsum([0] + sizes[:-1])
    total = int(sum(sizes))
    batch = ops.shape(boxes)[0]
    table = ops.concatenate(
        [ops.reshape(f, (batch, -1, channels)) for f in fmaps], axis=1)      # [B, S, C]
    table = ops.reshape(table, (-1, channels))                               # [B*S, C]
    lh = ops.take(ops.convert_to_tensor([float(s[0]) for s in shapes]), level)
    lw = ops.take(ops.convert_to_tensor([float(s[1]) for s in shapes]), level)
    loff = ops.take(ops.convert_to_tensor(offsets.astype("int32")), level)
    lh_int = ops.take(ops.convert_to_tensor([s[0] for s in shapes], "int32"), level)
    lw_int = ops.take(ops.convert_to_tensor([s[1] for s in shapes], "int32"), level)
    bidx = ops.reshape(ops.arange(batch, dtype="int32"), (-1, 1)) * total
    return table, lh, lw, lh_int, lw_int, bidx + loff


def sample_corners_torchvision(boxes, fmaps, pool_shape, image_shape, sampling_ratio=2):
    """torchvision's ``roi_align(aligned=False, sampling_ratio)`` as corner rows and
    weights, for ``bilinear_from_corners``.

    boxes [B, R, 4] normalized as (y1, x1, y2, x2) / (h, w) of the image; fmaps as in
    ``sample_corners``. In level pixels a box starts at y1 * lh, spans
    max((y2 - y1) * lh, 1); bin i of n holds sampling_ratio^2 samples at
    start + i * bin + (s + 0.5) * bin / sampling_ratio, averaged. Border rules of
    torchvision's compiled kernels: a sample with y < -1 or y > lh (x likewise) is 0,
    else y is clamped to >= 0 and one past the last row reads the last row.
    Returns table [B*S, C], idx and weights [B, R, ph, pw, 4 * sampling_ratio^2].
    """
    ph, pw = pool_shape
    sr = int(sampling_ratio)
    boxes = ops.cast(boxes, "float32")
    level = roi_levels_torchvision(boxes, image_shape) - 2                   # [B, R] 0..3
    table, lh, lw, lh_int, lw_int, base = _level_table(boxes, fmaps, level)

    def e(t):                                                   # [B, R] -> [B, R, 1, 1]
        return ops.expand_dims(ops.expand_dims(t, -1), -1)

    def axis(lo, hi, size, size_int, n):
        # Sample coordinates along one axis, in torchvision's operation order:
        # [B, R] -> corner indices low/high, fraction, validity, each [B, R, n, sr].
        start = lo * size
        length = ops.maximum(hi * size - start, 1.0)
        bin_size = length / float(n)
        pos = (e(start) + ops.reshape(ops.arange(n, dtype="float32"), (n, 1)) * e(bin_size)
               + ops.reshape(ops.arange(sr, dtype="float32") + 0.5, (1, sr))
               * e(bin_size / float(sr)))
        valid = ops.cast(ops.logical_and(pos >= -1.0, pos <= e(size)), "float32")
        pos = ops.maximum(pos, 0.0)
        low = ops.floor(pos)
        last = e(size_int) - 1
        low_i = ops.cast(low, "int32")
        at_end = low_i >= last
        frac = ops.where(at_end, 0.0, pos - low)
        low_i = ops.minimum(low_i, last)
        high_i = ops.minimum(low_i + 1, last)
        return low_i, high_i, frac, valid

    y0, y1, fy, vy = axis(boxes[..., 0], boxes[..., 2], lh, lh_int, ph)     # [B, R, ph, sr]
    x0, x1, fx, vx = axis(boxes[..., 1], boxes[..., 3], lw, lw_int, pw)     # [B, R, pw, sr]
    row_w = ops.expand_dims(ops.expand_dims(lw_int, -1), -1)               # [B, R, 1, 1]
    base4 = ops.expand_dims(ops.expand_dims(base, -1), -1)
    inv = 1.0 / float(sr * sr)
    idx, weights = [], []
    for sy in range(sr):
        wy_top = ops.expand_dims((1.0 - fy[..., sy]) * vy[..., sy] * inv, -1)  # [B, R, ph, 1]
        wy_bot = ops.expand_dims(fy[..., sy] * vy[..., sy] * inv, -1)
        for sx in range(sr):
            wx_left = ops.expand_dims((1.0 - fx[..., sx]) * vx[..., sx], -2)  # [B, R, 1, pw]
            wx_right = ops.expand_dims(fx[..., sx] * vx[..., sx], -2)
            for yi, wy in ((y0[..., sy], wy_top), (y1[..., sy], wy_bot)):
                for xi, wx in ((x0[..., sx], wx_left), (x1[..., sx], wx_right)):
                    idx.append(base4 + ops.expand_dims(yi, -1) * row_w
                               + ops.expand_dims(xi, -2))              # [B, R, ph, pw]
                    weights.append(wy * wx)
    return table, ops.stack(idx, axis=-1), ops.stack(weights, axis=-1)


def sample_corners(boxes, fmaps, pool_shape, image_shape):
    """Where each ROIAlign sample reads, as one table for all levels.

    boxes [B, R, 4] normalized; fmaps [P2, P3, P4, P5] each [B, h, w, C] (static h, w).
    Returns table [B*S, C] (every level's pixels, S per image), idx [B, R, ph, pw, 4]
    int32 rows of the four bilinear corners (top-left, top-right, bottom-left,
    bottom-right) and weights [B, R, ph, pw, 4] float32, zero for samples outside the
    map (``tf.image.crop_and_resize`` semantics).
    """
    ph, pw = pool_shape
    boxes = ops.cast(boxes, "float32")
    level = roi_levels(boxes, image_shape) - 2                               # [B, R] 0..3
    table, lh, lw, lh_int, lw_int, base = _level_table(boxes, fmaps, level)

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
    """[B, R, ph, pw, C]: the K corner rows of ``table`` mixed by ``weights``
    (idx / weights [B, R, ph, pw, K]; K = 4 for one bilinear sample per bin).

    K gathers; their gradient is a scatter-add into the table.
    """
    weights = ops.cast(weights, dtype)
    out = None
    for k in range(int(idx.shape[-1])):
        term = ops.take(table, idx[..., k], axis=0) * weights[..., k:k + 1]
        out = term if out is None else out + term
    return out


@keras.saving.register_keras_serializable(package="colabrcnn")
class PyramidROIAlign(keras.layers.Layer):
    """[B, R, 4] normalized boxes + [P2, P3, P4, P5] -> [B, R, ph, pw, C].

    style: "matterport" (crop_and_resize sampling, matterport's level rule) or
    "torchvision" (its MultiScaleRoIAlign; boxes normalized by (h, w)).
    """

    def __init__(self, pool_shape, image_shape, strides=(4, 8, 16, 32),
                 style="matterport", **kwargs):
        super().__init__(**kwargs)
        self.pool_shape = tuple(int(v) for v in pool_shape)
        self.image_shape = tuple(int(v) for v in image_shape[:2])
        self.strides = tuple(int(s) for s in strides)
        if style not in ("matterport", "torchvision"):
            raise ValueError(f"style must be 'matterport' or 'torchvision', got {style!r}")
        self.style = style

    def call(self, boxes, p2, p3, p4, p5):
        fmaps = [p2, p3, p4, p5]
        sample = sample_corners_torchvision if self.style == "torchvision" \
            else sample_corners
        table, idx, weights = sample(boxes, fmaps, self.pool_shape, self.image_shape)
        return bilinear_from_corners(table, idx, weights, fmaps[0].dtype)

    def compute_output_shape(self, boxes_shape, p2_shape, p3_shape, p4_shape, p5_shape):
        return (boxes_shape[0], boxes_shape[1]) + self.pool_shape + (p2_shape[-1],)

    def get_config(self):
        return {**super().get_config(), "pool_shape": list(self.pool_shape),
                "image_shape": list(self.image_shape), "strides": list(self.strides),
                "style": self.style}
