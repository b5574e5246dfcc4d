"""Region proposal network (model/rpn.py): head, ProposalLayer, RPN losses."""
import keras
import numpy as np
import pytest

from colabrcnn import utils
from colabrcnn.model.rpn import ProposalLayer, RPNBBoxLoss, RPNClassLoss, build_rpn_model
from layer_checks import round_trip, to_numpy
from tiny_model import tiny_config


def test_rpn_head_shapes_weights_and_round_trip():
    rpn = build_rpn_model(anchors_per_location=3, anchor_stride=1, depth=16)
    assert rpn.name == "rpn_model"
    x = np.random.default_rng(0).normal(size=(2, 8, 6, 16)).astype(np.float32)
    logits, probs, bbox = [to_numpy(t) for t in rpn(x)]
    assert logits.shape == (2, 8 * 6 * 3, 2) and probs.shape == (2, 144, 2)
    assert bbox.shape == (2, 144, 4)
    np.testing.assert_allclose(probs.sum(-1), 1, rtol=1e-5)
    assert rpn.count_params() == (9 * 16 * 512 + 512) + (512 * 6 + 6) + (512 * 12 + 12)
    assert {"rpn_conv_shared", "rpn_class_raw", "rpn_bbox_pred"} <= \
        {layer.name for layer in rpn.layers}
    copy = keras.Model.from_config(rpn.get_config())
    copy.set_weights(rpn.get_weights())
    np.testing.assert_allclose(to_numpy(copy(x)[2]), bbox, rtol=1e-5, atol=1e-6)


def _proposal_layer(cfg, count=8, nms_threshold=0.3):
    shape = tuple(cfg.IMAGE_SHAPE[:2])
    params = {"scales": list(cfg.RPN_ANCHOR_SCALES), "ratios": list(cfg.RPN_ANCHOR_RATIOS),
              "feature_shapes": utils.compute_backbone_shapes(cfg, shape).tolist(),
              "feature_strides": list(cfg.BACKBONE_STRIDES),
              "anchor_stride": cfg.RPN_ANCHOR_STRIDE, "image_shape": list(shape)}
    return ProposalLayer(None, count, nms_threshold, 100, cfg.RPN_BBOX_STD_DEV,
                         anchor_params=params)


def test_proposals_are_the_best_anchors_after_nms_and_round_trip():
    cfg = tiny_config(64)
    layer = _proposal_layer(cfg)
    anchors = utils.norm_boxes(utils.get_anchors(cfg), (64, 64))
    np.testing.assert_allclose(layer.anchors, anchors)
    a = anchors.shape[0]
    clipped = np.clip(anchors, 0, 1)
    best = 1000
    iou = utils.compute_overlaps(clipped[[best]], clipped)[0]
    dup = int(np.flatnonzero((iou > 0.4) & (iou < 0.99))[0])   # NMS drops it (> 0.3)
    second = int(np.flatnonzero(iou == 0)[0])                   # far away: kept
    scores = np.full((1, a), 0.01, np.float32)
    scores[0, [best, dup, second]] = [0.9, 0.8, 0.7]
    probs = np.stack([1 - scores, scores], -1)
    out = to_numpy(layer(probs, np.zeros((1, a, 4), np.float32)))
    assert out.shape == (1, 8, 4)
    np.testing.assert_allclose(out[0, 0], np.clip(anchors[best], 0, 1), atol=1e-6)
    np.testing.assert_allclose(out[0, 1], np.clip(anchors[second], 0, 1), atol=1e-6)
    copy = round_trip(layer)
    assert copy.get_config()["anchors"] is None  # a few numbers, not the anchor array
    np.testing.assert_allclose(copy.anchors, layer.anchors)


def test_rpn_class_loss_matches_numpy_cross_entropy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 10, 2)).astype(np.float32)
    match = rng.choice([-1, 0, 1], size=(2, 10, 1)).astype(np.int32)
    loss = float(to_numpy(RPNClassLoss()(match, logits)))
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    label = (match[..., 0] == 1).astype(int)
    ce = -np.log(np.take_along_axis(p, label[..., None], -1)[..., 0])
    assert loss == pytest.approx(ce[match[..., 0] != 0].mean(), rel=1e-5)


def test_rpn_bbox_loss_pairs_targets_with_positives_in_anchor_order():
    match = np.zeros((1, 6, 1), np.int32)
    match[0, [1, 4], 0] = 1
    match[0, 2, 0] = -1
    pred = np.zeros((1, 6, 4), np.float32)
    pred[0, 1] = [0.5, 0, 0, 0]     # first positive
    pred[0, 4] = [0, 2.0, 0, 0]     # second positive
    pred[0, 2] = [9, 9, 9, 9]       # a negative: no box loss
    target = np.zeros((1, 3, 4), np.float32)  # 3 slots, 2 used
    loss = float(to_numpy(RPNBBoxLoss()(target, match, pred)))
    # smooth L1: 0.5 * 0.5^2 and 2 - 0.5, over 2 positives x 4 coordinates.
    assert loss == pytest.approx((0.125 + 1.5) / 8)


def test_rpn_bbox_loss_is_zero_not_nan_without_positives():
    v = to_numpy(RPNBBoxLoss()(np.zeros((1, 4, 4)), np.zeros((1, 10, 1), np.int32),
                               np.ones((1, 10, 4))))
    assert float(v) == 0
