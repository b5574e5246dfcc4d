"""Model pieces against NumPy references (TensorFlow backend, CPU, tiny inputs)."""
import os
import sys

import numpy as np
import pytest

from keras import ops

from colabrcnn import Config, utils
from colabrcnn.model import boxes as kboxes
from colabrcnn.model.detection import DetectionLayer
from colabrcnn.model.losses import MRCNNBBoxLoss, MRCNNClassLoss, MRCNNMaskLoss, RPNBBoxLoss
from colabrcnn.model.roi_align import PyramidROIAlign, roi_levels
from colabrcnn.model.targets import DetectionTargetLayer

sys.path.insert(0, os.path.dirname(__file__))
from ops_reference import crop_and_resize_numpy  # noqa: E402


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


class TinyConfig(Config):
    NAME = "tiny"
    NUM_CLASSES = 4
    BACKBONE = "resnet18"
    IMAGE_MIN_DIM = 128
    IMAGE_MAX_DIM = 128
    RPN_ANCHOR_SCALES = (8, 16, 32, 64, 128)
    RPN_TRAIN_ANCHORS_PER_IMAGE = 64
    MAX_GT_INSTANCES = 8


# --------------------------------------------------------------------------- boxes
def test_iou_matches_hand_computed_values():
    a = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [5, 5, 5, 9]], np.float32)
    b = np.array([[0, 0, 10, 10], [5, 5, 15, 15], [20, 20, 30, 30]], np.float32)
    expected = np.array([[1, 25 / 175, 0], [1, 25 / 175, 0], [0, 0, 0]], np.float32)
    np.testing.assert_allclose(utils.compute_overlaps(a, b), expected, rtol=1e-6)
    np.testing.assert_allclose(_np(kboxes.overlaps(a[None], b[None]))[0], expected, rtol=1e-6)


def test_box_deltas_round_trip_numpy_and_keras():
    rng = np.random.default_rng(0)
    y1x1 = rng.uniform(0, 50, (20, 2))
    hw = rng.uniform(1, 40, (20, 2))
    box = np.concatenate([y1x1, y1x1 + hw], 1).astype(np.float32)
    gt = box + rng.normal(0, 3, box.shape).astype(np.float32)
    gt[:, 2:] = np.maximum(gt[:, 2:], gt[:, :2] + 1)
    d = utils.box_refinement(box, gt)
    np.testing.assert_allclose(utils.apply_box_deltas(box, d), gt, atol=1e-3)
    dk = _np(kboxes.box_refinement(box, gt))
    np.testing.assert_allclose(dk, d, atol=1e-5)
    np.testing.assert_allclose(_np(kboxes.apply_box_deltas(box, dk)), gt, atol=1e-3)
    # Degenerate boxes give zero deltas, not NaN.
    z = _np(kboxes.box_refinement(np.zeros((1, 4), np.float32), gt[:1]))
    assert np.all(z == 0)


def test_norm_denorm_boxes_round_trip():
    shape = (128, 96)
    b = np.array([[0, 0, 128, 96], [10, 20, 30, 40]], np.int32)
    n = utils.norm_boxes(b, shape)
    np.testing.assert_allclose(n[0], [0, 0, 1, 1])
    np.testing.assert_array_equal(utils.denorm_boxes(n, shape), b)


# ------------------------------------------------------------------------- anchors
def test_anchor_count_and_positions():
    cfg = TinyConfig()
    anchors = utils.get_anchors(cfg)
    shapes = utils.compute_backbone_shapes(cfg, cfg.IMAGE_SHAPE)
    np.testing.assert_array_equal(shapes, [[32, 32], [16, 16], [8, 8], [4, 4], [2, 2]])
    assert anchors.shape == (3 * sum(h * w for h, w in shapes), 4)
    # First P2 anchor: centre (0, 0), scale 8, ratio 0.5 (width / height).
    h, w = 8 / np.sqrt(0.5), 8 * np.sqrt(0.5)
    np.testing.assert_allclose(anchors[0], [-h / 2, -w / 2, h / 2, w / 2], rtol=1e-5)
    # The next cell along x is one stride (4 px) further, same three ratios.
    np.testing.assert_allclose(anchors[3] - anchors[0], [0, 4, 0, 4], atol=1e-5)
    # P3 anchors start after all P2 anchors and have stride 8, scale 16.
    p3 = anchors[3 * 32 * 32:]
    np.testing.assert_allclose(p3[4] - p3[1], [0, 8, 0, 8], atol=1e-5)
    np.testing.assert_allclose(p3[1, 2] - p3[1, 0], 16, rtol=1e-5)


def test_rpn_targets_follow_matterport_rules():
    cfg = TinyConfig()
    anchors = utils.get_anchors(cfg)
    gt_boxes = np.array([[10, 10, 40, 40], [60, 70, 100, 90]], np.int32)
    gt_ids = np.array([1, 2], np.int32)
    match, bbox = utils.build_rpn_targets(anchors, gt_ids, gt_boxes, cfg,
                                          rng=np.random.default_rng(0))
    iou = utils.compute_overlaps(anchors, gt_boxes)
    pos = np.where(match == 1)[0]
    neg = np.where(match == -1)[0]
    assert 0 < len(pos) <= cfg.RPN_TRAIN_ANCHORS_PER_IMAGE // 2
    assert len(pos) + len(neg) == cfg.RPN_TRAIN_ANCHORS_PER_IMAGE
    assert np.all(iou[neg].max(1) < 0.3)
    # Every GT has its best anchor among the positives.
    for j in range(2):
        assert np.any(np.isin(np.where(iou[:, j] == iou[:, j].max())[0], pos))
    # Deltas decode back to each positive's best GT box.
    deltas = bbox[:len(pos)] * cfg.RPN_BBOX_STD_DEV
    decoded = utils.apply_box_deltas(anchors[pos], deltas)
    np.testing.assert_allclose(decoded, gt_boxes[iou[pos].argmax(1)], atol=1e-3)
    assert np.all(bbox[len(pos):] == 0)


# -------------------------------------------------------------------- ROI sampling
def _target_inputs(rng, batch=2, props=60, gts=4, mini=(28, 28)):
    gt_boxes = np.zeros((batch, gts, 4), np.float32)
    gt_ids = np.zeros((batch, gts), np.int32)
    gt_masks = np.zeros((batch,) + mini + (gts,), bool)
    for b in range(batch):
        for g in range(gts - 1):  # the last GT slot stays padding
            y, x = rng.uniform(0.05, 0.6, 2)
            gt_boxes[b, g] = [y, x, y + rng.uniform(0.15, 0.35), x + rng.uniform(0.15, 0.35)]
            gt_ids[b, g] = rng.integers(1, 4)
            m = np.zeros(mini, bool)
            m[4:20, 6:26] = True  # an off-centre block: crops must land right
            m[10:14, :] = True
            gt_masks[b, ..., g] = m
    p = rng.uniform(0, 0.8, (batch, props, 2))
    proposals = np.concatenate([p, p + rng.uniform(0.05, 0.3, (batch, props, 2))], -1)
    proposals[:, -5:] = 0  # padding rows
    return proposals.astype(np.float32), gt_ids, gt_boxes, gt_masks


def test_roi_sampling_proportions_deltas_and_mask_crops():
    rng = np.random.default_rng(1)
    proposals, gt_ids, gt_boxes, gt_masks = _target_inputs(rng)
    T, ratio = 20, 0.25
    layer = DetectionTargetLayer(T, ratio, [0.1, 0.1, 0.2, 0.2], (8, 8), True, seed=3)
    rois, cls, deltas, masks, valid = [_np(t) for t in
                                       layer(proposals, gt_ids, gt_boxes, gt_masks)]
    n_pos = int(T * ratio)
    assert rois.shape == (2, T, 4) and masks.shape == (2, T, 8, 8) and valid.shape == (2, T)
    for b in range(2):
        real = gt_ids[b] > 0
        iou = utils.compute_overlaps(rois[b], gt_boxes[b][real])
        pos = valid[b, :n_pos] > 0
        assert pos.sum() >= 1  # GT boxes join the proposals
        assert np.all(iou[:n_pos][pos].max(1) >= 0.5)
        neg = valid[b, n_pos:] > 0
        assert neg.sum() > 0 and np.all(iou[n_pos:][neg].max(1) < 0.5)
        assert np.all(cls[b, n_pos:] == 0) and np.all(cls[b, :n_pos][pos] > 0)
        assert np.all(rois[b][valid[b] == 0] == 0)
        for i in np.where(pos)[0]:
            j = iou[i].argmax()
            assert cls[b, i] == gt_ids[b][real][j]
            decoded = utils.apply_box_deltas(rois[b, i:i + 1],
                                             deltas[b, i:i + 1] * [0.1, 0.1, 0.2, 0.2])
            np.testing.assert_allclose(decoded[0], gt_boxes[b][real][j], atol=1e-4)
            # Mask target: the ROI expressed in the GT box frame, cropped from the
            # mini-mask, rounded.
            gy1, gx1, gy2, gx2 = gt_boxes[b][real][j]
            y1, x1, y2, x2 = rois[b, i]
            box = np.array([[(y1 - gy1) / (gy2 - gy1), (x1 - gx1) / (gx2 - gx1),
                             (y2 - gy1) / (gy2 - gy1), (x2 - gx1) / (gx2 - gx1)]])
            ref = crop_and_resize_numpy(gt_masks[b][..., real][None, ..., j:j + 1]
                                        .astype(np.float32), box, np.array([0]), (8, 8))
            np.testing.assert_array_equal(masks[b, i], np.round(ref[0, ..., 0]))


def test_roi_sampling_is_capped_by_positive_ratio():
    rng = np.random.default_rng(2)
    proposals, gt_ids, gt_boxes, gt_masks = _target_inputs(rng, props=40)
    # Make many proposals copies of GT boxes: more positives than the cap.
    proposals[:, :30] = np.repeat(gt_boxes[:, :1], 30, axis=1)
    layer = DetectionTargetLayer(16, 0.25, [0.1, 0.1, 0.2, 0.2], (8, 8), True, seed=0)
    _, cls, _, _, valid = [_np(t) for t in layer(proposals, gt_ids, gt_boxes, gt_masks)]
    assert np.all(valid[:, :4] == 1) and np.all(cls[:, :4] > 0)
    assert np.all(cls[:, 4:] == 0)


# ---------------------------------------------------------------------- ROIAlign
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


# --------------------------------------------------------------------- detection
def test_detection_layer_per_class_nms_threshold_and_window():
    rois = np.zeros((1, 6, 4), np.float32)
    rois[0, 0] = [0.1, 0.1, 0.4, 0.4]
    rois[0, 1] = [0.11, 0.1, 0.41, 0.4]   # overlaps roi 0, same class -> suppressed
    rois[0, 2] = [0.1, 0.11, 0.4, 0.41]   # overlaps roi 0, other class -> kept
    rois[0, 3] = [0.6, 0.6, 0.9, 0.9]     # low score -> dropped
    rois[0, 4] = [0.5, 0.1, 0.95, 0.3]    # sticks out of the window -> clipped
    probs = np.zeros((1, 6, 3), np.float32)
    probs[0, :, 0] = 1  # background by default (also the zero padding roi 5)
    probs[0, 0] = [0.05, 0.95, 0]
    probs[0, 1] = [0.1, 0.9, 0]
    probs[0, 2] = [0.2, 0, 0.8]
    probs[0, 3] = [0.5, 0.5, 0]
    probs[0, 4] = [0.1, 0, 0.9]
    deltas = np.zeros((1, 6, 3, 4), np.float32)
    window = np.array([[0.0, 0.0, 0.8, 1.0]], np.float32)
    det = _np(DetectionLayer(5, 0.7, 0.3, [0.1, 0.1, 0.2, 0.2])(rois, probs, deltas, window))
    assert det.shape == (1, 5, 6)
    kept = det[0][det[0, :, 4] > 0]
    np.testing.assert_allclose(kept[:, 5], [0.95, 0.9, 0.8], rtol=1e-6)
    np.testing.assert_array_equal(kept[:, 4], [1, 2, 2])
    np.testing.assert_allclose(kept[1, :4], [0.5, 0.1, 0.8, 0.3], atol=1e-6)  # clipped
    assert np.all(det[0, 3:] == 0)


# ------------------------------------------------------------------------ losses
def test_losses_are_zero_not_nan_without_positives():
    t = np.zeros((1, 4), np.int32)
    assert float(_np(MRCNNBBoxLoss()(np.zeros((1, 4, 4)), t, np.ones((1, 4, 3, 4))))) == 0
    assert float(_np(MRCNNMaskLoss()(np.zeros((1, 4, 2, 2)), t,
                                     np.ones((1, 4, 2, 2, 3))))) == 0
    v = _np(MRCNNClassLoss()(t, np.zeros((1, 4, 3)), np.zeros((1, 4)), np.ones((1, 3))))
    assert float(v) == 0
    v = _np(RPNBBoxLoss()(np.zeros((1, 4, 4)), np.zeros((1, 10, 1), np.int32),
                          np.ones((1, 10, 4))))
    assert float(v) == 0


def test_bbox_loss_uses_the_target_class_deltas():
    pred = np.zeros((1, 2, 3, 4), np.float32)
    pred[0, 0, 2] = [1, 0, 0, 0]  # class-2 prediction off by 1 in dy
    pred[0, 0, 1] = [9, 9, 9, 9]  # other class: must not count
    target_ids = np.array([[2, 0]], np.int32)
    loss = float(_np(MRCNNBBoxLoss()(np.zeros((1, 2, 4), np.float32), target_ids, pred)))
    # smooth L1 of (1, 0, 0, 0) averaged over one positive's 4 coordinates: 0.5 / 4.
    assert loss == pytest.approx(0.125)


# ------------------------------------------------------------------ image prep
@pytest.mark.parametrize("mode", ["square", "pad64", "none"])
def test_resize_modes_keep_shapes_static_and_windows_right(mode):
    cfg = TinyConfig(IMAGE_RESIZE_MODE=mode, IMAGE_MIN_DIM=64)
    image = np.zeros((50, 100, 3), np.uint8)
    image[10:20, 30:60] = 255
    out, window, scale, padding, crop = utils.resize_image(
        image, cfg.IMAGE_MIN_DIM, cfg.IMAGE_MAX_DIM, mode=mode)
    out = utils.pad_to_shape(out, cfg.IMAGE_SHAPE)
    assert out.shape == (128, 128, 3)
    y1, x1, y2, x2 = window
    assert (y2 - y1, x2 - x1) == (round(50 * scale), round(100 * scale))
    mask = utils.resize_mask(np.pad(image[..., :1] > 0, ((0, 0), (0, 0), (0, 0))), scale,
                             padding)
    mask = utils.pad_to_shape(mask, cfg.IMAGE_SHAPE)
    # Mask (nearest) and image (bilinear) agree except on the edge pixels.
    assert (mask[..., 0] != (out[..., 0] > 127)).mean() < 0.002
    assert mask[..., 0].sum() > 0 and not mask[:y1].any() and not mask[y2:].any()
    assert not mask[:, :x1].any() and not mask[:, x2:].any()


def test_crop_mode_crops_to_min_dim():
    cfg = TinyConfig(IMAGE_RESIZE_MODE="crop", IMAGE_MIN_DIM=64)
    assert list(cfg.IMAGE_SHAPE) == [64, 64, 3]
    image = np.arange(200 * 150 * 3, dtype=np.uint32).reshape(200, 150, 3).astype(np.uint8)
    out, window, scale, padding, crop = utils.resize_image(
        image, 64, 128, mode="crop", rng=np.random.default_rng(0))
    assert out.shape == (64, 64, 3)
    y, x, h, w = crop
    np.testing.assert_array_equal(out, image[y:y + 64, x:x + 64])


def test_mini_mask_round_trip():
    mask = np.zeros((64, 64, 1), bool)
    mask[10:40, 20:50, 0] = True
    mask[20:30, 30:40, 0] = False
    bbox = utils.extract_bboxes(mask)
    np.testing.assert_array_equal(bbox, [[10, 20, 40, 50]])
    mini = utils.minimize_mask(bbox, mask, (56, 56))
    back = utils.expand_mask(bbox, mini, mask.shape)
    assert (back == mask).mean() > 0.99
