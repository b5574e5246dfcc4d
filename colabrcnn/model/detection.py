"""Inference: ROIs + head outputs -> final detections with per-class NMS."""
import keras
from keras import ops

from . import ops as cops
from .boxes import TORCHVISION_LOG_SCALE_CLIP, apply_box_deltas, clip_to_window


# Candidates (ROI, class) that DetectionLayer's torchvision style passes to NMS (see
# DetectionLayer.call_torchvision for why this is exact on realistic inputs).
TORCHVISION_CANDIDATES = 4096


@keras.saving.register_keras_serializable(package="colabrcnn")
class DetectionLayer(keras.layers.Layer):
    """Inputs: rois [B, R, 4] normalized, mrcnn_class probs [B, R, NC],
    mrcnn_bbox [B, R, NC, 4], window [B, 4] normalized (where the real image sits).

    Output: [B, max_instances, (y1, x1, y2, x2, class_id, score)] normalized, sorted by
    score, zero rows past the last detection.

    style "matterport": one candidate per ROI, its best class (matterport's
    DetectionLayer). "torchvision" (Config.DETECTOR_STYLE; boxes normalized by (h, w)
    of ``image_shape``): every (ROI, class >= 1) pair is a candidate, as torchvision's
    ``RoIHeads.postprocess_detections`` (see ``call_torchvision``).
    """

    def __init__(self, max_instances, min_confidence, nms_threshold, bbox_std_dev,
                 style="matterport", image_shape=None, candidates=TORCHVISION_CANDIDATES,
                 **kwargs):
        super().__init__(**kwargs)
        self.max_instances = int(max_instances)
        self.min_confidence = float(min_confidence)
        self.nms_threshold = float(nms_threshold)
        self.bbox_std_dev = [float(v) for v in bbox_std_dev]
        if style not in ("matterport", "torchvision"):
            raise ValueError(f"style must be 'matterport' or 'torchvision', got {style!r}")
        if style == "torchvision" and image_shape is None:
            raise ValueError("style='torchvision' needs image_shape (its minimum box size "
                             "is in pixels)")
        self.style = style
        self.image_shape = None if image_shape is None else \
            [int(v) for v in image_shape[:2]]
        self.candidates = int(candidates)

    def call(self, rois, probs, deltas, window):
        if self.style == "torchvision":
            return self.call_torchvision(rois, probs, deltas, window)
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
        return self.per_class_nms(boxes, class_ids, ops.where(keep, scores, -1.0))

    def per_class_nms(self, boxes, class_ids, scores):
        """boxes [B, N, 4] normalized (inside [0, 1]), class_ids [B, N] int32, scores
        [B, N] (-1 for candidates already dropped) -> the detections [B, max_instances,
        6] that survive NMS within each class, by score, zero rows after the last."""
        # Per-class NMS in one call: shift each class to its own region of the plane
        # so boxes of different classes never overlap (torchvision's batched_nms).
        shift = ops.cast(ops.expand_dims(class_ids, -1), "float32") * 2.0
        idx, num = cops.non_max_suppression(boxes + shift, scores, self.max_instances,
                                            self.nms_threshold, score_threshold=0.0)
        valid = ops.arange(self.max_instances)[None, :] < ops.expand_dims(num, -1)
        sel_boxes = ops.take_along_axis(boxes, ops.expand_dims(idx, -1), axis=1)
        sel_class = ops.cast(ops.take_along_axis(class_ids, idx, axis=1), "float32")
        sel_scores = ops.take_along_axis(scores, idx, axis=1)
        valid = ops.logical_and(valid, sel_scores >= 0.0)
        det = ops.concatenate([sel_boxes, sel_class[..., None], sel_scores[..., None]], -1)
        return ops.where(ops.expand_dims(valid, -1), det, 0.0)

    def call_torchvision(self, rois, probs, deltas, window):
        """torchvision's postprocess_detections with static shapes.

        Every (ROI, class >= 1) pair is a candidate box: the ROI refined by that class's
        deltas (clamped at log(1000/16)) and clipped to the window; kept when its score
        is > min_confidence, the box is at least 1e-2 px on both sides and no
        higher-scoring box of its class overlaps it by IoU > nms_threshold; the best
        max_instances by score remain.
        """
        probs = ops.cast(probs, "float32")
        rois = ops.cast(rois, "float32")
        num_rois, nc = int(probs.shape[1]), int(probs.shape[2])
        n = num_rois * (nc - 1)
        d = ops.cast(deltas, "float32")[:, :, 1:, :] * ops.convert_to_tensor(
            self.bbox_std_dev, "float32")                                    # [B, R, NC-1, 4]
        # torchvision's BoxCoder.decode: log-scales clamped at log(1000/16).
        boxes = apply_box_deltas(ops.expand_dims(rois, 2), d,
                                 TORCHVISION_LOG_SCALE_CLIP)               # [B, R, NC-1, 4]
        boxes = clip_to_window(ops.reshape(boxes, (-1, n, 4)),
                               ops.cast(window, "float32"))                # [B, n, 4]
        scores = ops.reshape(probs[:, :, 1:], (-1, n))                     # [B, n]
        class_ids = ops.tile(ops.arange(1, nc, dtype="int32"), (num_rois,))  # [n]
        class_ids = ops.broadcast_to(class_ids[None], ops.shape(scores))
        h, w = self.image_shape
        big = ops.logical_and((boxes[..., 2] - boxes[..., 0]) * float(h) >= 1e-2,
                              (boxes[..., 3] - boxes[..., 1]) * float(w) >= 1e-2)
        roi_ok = ops.any(ops.not_equal(rois, 0.0), axis=-1)               # [B, R] padding
        roi_ok = ops.reshape(ops.repeat(ops.expand_dims(roi_ok, -1), nc - 1, axis=-1),
                             (-1, n))
        keep = ops.logical_and(ops.logical_and(scores > self.min_confidence, big), roi_ok)
        scores = ops.where(keep, scores, -1.0)
        # Static shapes: NMS runs on the top K candidates by score only (K =
        # self.candidates), not on all R * (NC - 1) pairs (90,000 for COCO). Greedy NMS
        # visits boxes in descending score order and a box's fate depends only on the
        # boxes before it, so the result is exactly torchvision's whenever (a) at most
        # K candidates pass the score and size tests (all of them are then in the top
        # K), or (b) NMS keeps max_instances boxes among the top K (any box further
        # down would rank after those). A trained COCO model keeps a few hundred to a
        # few thousand pairs above 0.05 from 1000 proposals; K = 4096 covers that and
        # its NMS is 8 tiles of 512. (Each ROI has at most 19 classes above 0.05, so
        # K >= 19 * R would make it exact for every input.)
        k = min(self.candidates, n)
        top_scores, top = ops.top_k(scores, k)                              # [B, K]
        top = ops.cast(top, "int32")
        top_boxes = ops.take_along_axis(boxes, ops.expand_dims(top, -1), axis=1)
        top_class = ops.take_along_axis(class_ids, top, axis=1)
        # (Boxes are clipped to the window, inside [0, 1].)
        return self.per_class_nms(top_boxes, top_class, top_scores)

    def compute_output_shape(self, rois_shape, probs_shape, deltas_shape, window_shape):
        return (rois_shape[0], self.max_instances, 6)

    def get_config(self):
        return {**super().get_config(), "max_instances": self.max_instances,
                "min_confidence": self.min_confidence, "nms_threshold": self.nms_threshold,
                "bbox_std_dev": self.bbox_std_dev, "style": self.style,
                "image_shape": self.image_shape, "candidates": self.candidates}
