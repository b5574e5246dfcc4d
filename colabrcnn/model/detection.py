"""Inference: ROIs + head outputs -> final detections with per-class NMS."""
import keras
from keras import ops

from . import ops as cops
from .boxes import apply_box_deltas, clip_to_window


@keras.saving.register_keras_serializable(package="colabrcnn")
class DetectionLayer(keras.layers.Layer):
    """Inputs: rois [B, R, 4] normalized, mrcnn_class probs [B, R, NC],
    mrcnn_bbox [B, R, NC, 4], window [B, 4] normalized (where the real image sits).

    Output: [B, max_instances, (y1, x1, y2, x2, class_id, score)] normalized, sorted by
    score, zero rows past the last detection.
    """

    def __init__(self, max_instances, min_confidence, nms_threshold, bbox_std_dev,
                 **kwargs):
        super().__init__(**kwargs)
        self.max_instances = int(max_instances)
        self.min_confidence = float(min_confidence)
        self.nms_threshold = float(nms_threshold)
        self.bbox_std_dev = [float(v) for v in bbox_std_dev]

    def call(self, rois, probs, deltas, window):
        probs = ops.cast(probs, "float32")
        class_ids = ops.cast(ops.argmax(probs, axis=-1), "int32")             # [B, R]
        scores = ops.max(probs, axis=-1)
        d = ops.take_along_axis(ops.cast(deltas, "float32"),
                                ops.reshape(class_ids, ops.shape(class_ids) + (1, 1)),
                                axis=2)[:, :, 0, :]                            # [B, R, 4]
        d = d * ops.convert_to_tensor(self.bbox_std_dev, "float32")
        boxes = clip_to_window(apply_box_deltas(ops.cast(rois, "float32"), d),
                               ops.cast(window, "float32"))
        roi_ok = ops.any(ops.not_equal(rois, 0.0), axis=-1)
        keep = ops.logical_and(roi_ok, class_ids > 0)
        keep = ops.logical_and(keep, scores >= self.min_confidence)
        nonempty = ops.logical_and(boxes[..., 2] > boxes[..., 0], boxes[..., 3] > boxes[..., 1])
        keep = ops.logical_and(keep, nonempty)
        # Per-class NMS in one call: shift each class to its own region of the plane
        # so boxes of different classes never overlap.
        shift = ops.cast(ops.expand_dims(class_ids, -1), "float32") * 2.0
        nms_scores = ops.where(keep, scores, -1.0)
        idx, num = cops.non_max_suppression(boxes + shift, nms_scores, self.max_instances,
                                            self.nms_threshold, score_threshold=0.0)
        valid = ops.arange(self.max_instances)[None, :] < ops.expand_dims(num, -1)
        sel_boxes = ops.take_along_axis(boxes, ops.expand_dims(idx, -1), axis=1)
        sel_class = ops.cast(ops.take_along_axis(class_ids, idx, axis=1), "float32")
        sel_scores = ops.take_along_axis(nms_scores, idx, axis=1)
        valid = ops.logical_and(valid, sel_scores >= 0.0)
        det = ops.concatenate([sel_boxes, sel_class[..., None], sel_scores[..., None]], -1)
        return ops.where(ops.expand_dims(valid, -1), det, 0.0)

    def compute_output_shape(self, rois_shape, probs_shape, deltas_shape, window_shape):
        return (rois_shape[0], self.max_instances, 6)

    def get_config(self):
        return {**super().get_config(), "max_instances": self.max_instances,
                "min_confidence": self.min_confidence, "nms_threshold": self.nms_threshold,
                "bbox_std_dev": self.bbox_std_dev}
