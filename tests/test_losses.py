"""Head losses (model/losses.py; the RPN losses are tested in test_rpn.py)."""
import numpy as np
import pytest

from colabrcnn.model.losses import MRCNNBBoxLoss, MRCNNClassLoss, MRCNNMaskLoss
from colabrcnn.model.rpn import RPNBBoxLoss
from layer_checks import to_numpy as _np


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


def test_mask_loss_matches_numpy_bce_over_positive_rois_of_their_class():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 4, 4, 3)).astype(np.float32)
    target = (rng.uniform(size=(2, 3, 4, 4)) > 0.5).astype(np.float32)
    ids = np.array([[2, 0, 1], [0, 0, 2]], np.int32)
    loss = float(_np(MRCNNMaskLoss()(target, ids, logits)))
    ref = []
    for b, r in zip(*np.nonzero(ids)):
        z = logits[b, r, :, :, ids[b, r]]
        t = target[b, r]
        ref.append(np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z))))
    assert loss == pytest.approx(float(np.mean(ref)), rel=1e-5)
