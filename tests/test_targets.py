"""ROI sampling and head targets (model/targets.py) against NumPy references."""
import numpy as np

from colabrcnn import utils
from colabrcnn.model.targets import DetectionTargetLayer
from layer_checks import round_trip, to_numpy as _np
from ops_reference import crop_and_resize_numpy


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


def test_target_layer_round_trip_keeps_its_settings():
    layer = DetectionTargetLayer(16, 0.25, [0.1, 0.1, 0.2, 0.2], (8, 8), True, seed=0)
    copy = round_trip(layer)
    assert (copy.train_rois_per_image, copy.mask_shape, copy.seed) == (16, (8, 8), 0)
