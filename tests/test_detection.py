"""Detection layer (model/detection.py): per-class NMS, thresholds, window clipping."""
import numpy as np

from colabrcnn.model.detection import DetectionLayer
from layer_checks import round_trip, to_numpy as _np


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


def test_detection_layer_round_trip():
    copy = round_trip(DetectionLayer(5, 0.7, 0.3, [0.1, 0.1, 0.2, 0.2]))
    assert (copy.max_instances, copy.min_confidence) == (5, 0.7)
