"""Anchors and RPN targets (model/anchors.py) against matterport's rules."""
import numpy as np

from colabrcnn import utils
from colabrcnn.model import anchors as anchors_lib
from tiny_model import tiny_config


def test_anchor_count_and_positions():
    cfg = tiny_config(128)
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
    cfg = tiny_config(128)
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


def test_anchor_index_finds_every_anchor_that_touches_a_box():
    cfg = tiny_config(128)
    anchors = utils.get_anchors(cfg)
    boxes = np.array([[10, 10, 40, 40], [100, 0, 128, 20], [50, 50, 51, 51]], np.float32)
    index = anchors_lib.anchor_index(anchors)
    assert anchors_lib.anchor_index(anchors) is index  # cached per array
    found = index.touching(boxes)
    iou = utils.compute_overlaps(anchors, boxes)
    # A superset of the anchors with any overlap (the brute-force reference).
    assert set(np.flatnonzero(iou.max(1) > 0)) <= set(found.tolist())
    found_03 = index.touching(boxes, min_iou=0.3)
    assert set(np.flatnonzero(iou.max(1) >= 0.3)) <= set(found_03.tolist())
    assert len(found_03) < len(found)  # the size filter prunes
