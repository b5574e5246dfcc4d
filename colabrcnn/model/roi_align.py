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


def roi_levels(boxes, image_shape):
    """Pyramid level 2..5 per box (FPN paper, eq. 1): [B, R, 4] -> [B, R] int32."""
    h = boxes[..., 2] - boxes[..., 0]
    w = boxes[..., 3] - boxes[..., 1]
    image_area = float(image_shape[0] * image_shape[1])
    # sqrt(h * w) * sqrt(area) is the box size in pixels; 224 px maps to level 4.
    size = ops.sqrt(ops.maximum(h * w, 1e-12)) * math.sqrt(image_area) / 224.0
    level = 4.0 + ops.round(ops.log(size) / math.log(2.0))
    return ops.cast(ops.clip(level, 2.0, 5.0), "int32")


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
        ph, pw = self.pool_shape
        dtype = fmaps[0].dtype
        channels = fmaps[0].shape[-1]
        # Static level sizes (the image shape is fixed by the Config).
        shapes = [(int(f.shape[1]), int(f.shape[2])) for f in fmaps]
        sizes = [h * w for h, w in shapes]
        offsets = np.cumsum([0] + sizes[:-1])
        total = int(sum(sizes))

        boxes = ops.cast(boxes, "float32")
        batch = ops.shape(boxes)[0]
        table = ops.concatenate(
            [ops.reshape(f, (batch, -1, channels)) for f in fmaps], axis=1)  # [B, S, C]
        table = ops.reshape(table, (-1, channels))                           # [B*S, C]

        level = roi_levels(boxes, self.image_shape) - 2                      # [B, R] 0..3
        lh = ops.take(ops.convert_to_tensor([float(s[0]) for s in shapes]), level)
        lw = ops.take(ops.convert_to_tensor([float(s[1]) for s in shapes]), level)
        loff = ops.take(ops.convert_to_tensor(offsets.astype("int32")), level)
        lw_int = ops.take(ops.convert_to_tensor([s[1] for s in shapes], "int32"), level)
        lh_int = ops.take(ops.convert_to_tensor([s[0] for s in shapes], "int32"), level)
        bidx = ops.reshape(ops.arange(batch, dtype="int32"), (-1, 1)) * total
        base = bidx + loff                                                    # [B, R]

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
        valid_y = ops.logical_and(ys >= 0.0, ys <= hmax)
        valid_x = ops.logical_and(xs >= 0.0, xs <= wmax)
        y0i = ops.cast(ops.clip(y0, 0.0, 1e9), "int32")
        x0i = ops.cast(ops.clip(x0, 0.0, 1e9), "int32")
        hm = ops.expand_dims(lh_int, -1) - 1
        wm = ops.expand_dims(lw_int, -1) - 1
        y0i, y1i = ops.minimum(y0i, hm), ops.minimum(y0i + 1, hm)
        x0i, x1i = ops.minimum(x0i, wm), ops.minimum(x0i + 1, wm)

        row_w = ops.expand_dims(ops.expand_dims(lw_int, -1), -1)   # [B, R, 1, 1]
        base4 = ops.expand_dims(ops.expand_dims(base, -1), -1)

        def gather(yi, xi):
            idx = base4 + ops.expand_dims(yi, -1) * row_w + ops.expand_dims(xi, -2)
            return ops.take(table, idx, axis=0)                    # [B, R, ph, pw, C]

        wy = ops.cast(ops.expand_dims(ops.expand_dims(wy, -1), -1), dtype)  # [B,R,ph,1,1]
        wx = ops.cast(ops.expand_dims(ops.expand_dims(wx, -2), -1), dtype)  # [B,R,1,pw,1]
        top = gather(y0i, x0i) * (1 - wx) + gather(y0i, x1i) * wx
        bottom = gather(y1i, x0i) * (1 - wx) + gather(y1i, x1i) * wx
        out = top * (1 - wy) + bottom * wy
        valid = ops.logical_and(ops.expand_dims(valid_y, -1), ops.expand_dims(valid_x, -2))
        return out * ops.cast(ops.expand_dims(valid, -1), dtype)

    def compute_output_shape(self, boxes_shape, p2_shape, p3_shape, p4_shape, p5_shape):
        return (boxes_shape[0], boxes_shape[1]) + self.pool_shape + (p2_shape[-1],)

    def get_config(self):
        return {**super().get_config(), "pool_shape": list(self.pool_shape),
                "image_shape": list(self.image_shape), "strides": list(self.strides)}
