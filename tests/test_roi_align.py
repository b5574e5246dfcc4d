"""Pyramid ROIAlign (model/roi_align.py) against the NumPy crop-and-resize reference."""
import numpy as np
import tensorflow as tf

from colabrcnn.model.roi_align import PyramidROIAlign, roi_levels
from layer_checks import round_trip, to_numpy as _np
from ops_reference import crop_and_resize_numpy


def test_pyramid_roi_align_matches_crop_and_resize_on_each_level():
    rng = np.random.default_rng(0)
    # The level depends on the box size in image pixels; the sampling only on the
    # feature maps' own sizes, which can be small here.
    image_shape = (896, 896)
    fmaps = [rng.normal(size=(2, 128 // s, 128 // s, 3)).astype(np.float32)
             for s in (4, 8, 16, 32)]
    # Boxes of several sizes so that every level is used.
    sizes = np.array([0.05, 0.15, 0.3, 0.7])
    boxes = []
    for s in sizes:
        y, x = rng.uniform(0, 1 - s, 2)
        boxes.append([y, x, y + s, x + s])
    boxes = np.array([boxes, boxes[::-1]], np.float32)  # [2, 4, 4]
    levels = _np(roi_levels(boxes, image_shape))
    assert set(levels.ravel()) == {2, 3, 4, 5}
    out = _np(PyramidROIAlign((7, 7), image_shape)(boxes, *fmaps))
    for b in range(2):
        for r in range(4):
            fm = fmaps[levels[b, r] - 2]
            ref = crop_and_resize_numpy(fm, boxes[b, r:r + 1], np.array([b]), (7, 7))
            np.testing.assert_allclose(out[b, r], ref[0], atol=1e-5)


def test_roi_align_output_shape_and_round_trip():
    layer = PyramidROIAlign((7, 7), (128, 128))
    boxes = np.array([[[0.1, 0.1, 0.5, 0.6]] * 3], np.float32)
    fmaps = [np.ones((1, 128 // s, 128 // s, 5), np.float32) for s in (4, 8, 16, 32)]
    out = _np(layer(boxes, *fmaps))
    assert out.shape == (1, 3, 7, 7, 5)
    np.testing.assert_allclose(out, 1, rtol=1e-6)  # a constant map pools to itself
    copy = round_trip(layer)
    np.testing.assert_allclose(_np(copy(boxes, *fmaps)), out)


def test_roi_align_under_xla_reads_the_border_for_boxes_clipped_to_the_image():
    # Proposals are clipped to [0, 1]: their last sample row/column lies on the map's
    # border, and XLA's fused grid arithmetic can put it a rounding error outside. It
    # must still read the border (as TF's kernel does on the exact grid), not give 0.
    rng = np.random.default_rng(3)
    image_shape = (256, 256)
    fmaps = [rng.normal(size=(2, 256 // s, 256 // s, 4)).astype(np.float32)
             for s in (4, 8, 16, 32)]
    lo = rng.uniform(0.0, 0.8, (2, 48, 2))
    boxes = np.concatenate([lo, np.ones_like(lo)], -1).astype(np.float32)  # y2 = x2 = 1
    boxes[:, ::2, 2] = rng.uniform(0.85, 0.99, 24)                          # some inside
    layer = PyramidROIAlign((7, 7), image_shape)
    out = _np(tf.function(lambda b, *f: layer(b, *f), jit_compile=True)(boxes, *fmaps))
    levels = _np(roi_levels(boxes, image_shape))
    for b in range(2):
        for r in range(48):
            ref = crop_and_resize_numpy(fmaps[levels[b, r] - 2], boxes[b, r:r + 1],
                                        np.array([b]), (7, 7))
            np.testing.assert_allclose(out[b, r], ref[0], atol=1e-4)
