"""NumPy box helpers (colabrcnn/boxes.py) and their Keras twins (model/boxes.py)."""
import numpy as np
from keras import ops

from colabrcnn import utils
from colabrcnn.model import boxes as kboxes


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


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


def test_extract_bboxes_and_mask_iou():
    masks = np.zeros((20, 30, 3), bool)
    masks[2:6, 3:13, 0] = True      # 4 x 10 = 40 px
    masks[4:8, 8:18, 1] = True      # overlaps mask 0 on 2 x 5 = 10 px
    np.testing.assert_array_equal(utils.extract_bboxes(masks),
                                  [[2, 3, 6, 13], [4, 8, 8, 18], [0, 0, 0, 0]])
    iou = utils.compute_overlaps_masks(masks, masks)
    np.testing.assert_allclose(iou[0, 1], 10 / 70, rtol=1e-6)
    np.testing.assert_allclose(np.diag(iou), [1, 1, 0])
