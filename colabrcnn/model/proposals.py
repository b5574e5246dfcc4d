"""Proposal selection: RPN scores and deltas -> a fixed number of ROIs per image."""
import keras
import numpy as np
from keras import ops

from . import ops as cops
from .boxes import apply_box_deltas

ANCHOR_PARAM_KEYS = ("scales", "ratios", "feature_shapes", "feature_strides",
                     "anchor_stride", "image_shape")


def anchors_from_params(params):
    """Normalized anchors [A, 4] from their generation parameters (see ProposalLayer)."""
    from .. import utils
    pixels = utils.generate_pyramid_anchors(
        params["scales"], params["ratios"], params["feature_shapes"],
        params["feature_strides"], params["anchor_stride"]).astype(np.float32)
    return utils.norm_boxes(pixels, params["image_shape"])


@keras.saving.register_keras_serializable(package="colabrcnn")
class ProposalLayer(keras.layers.Layer):
    """Top-k anchors by objectness, refined, clipped, then NMS.

    Inputs: rpn_probs [B, A, 2], rpn_bbox [B, A, 4] (deltas / RPN_BBOX_STD_DEV).
    Output: [B, proposal_count, (y1, x1, y2, x2)] normalized, zero-padded where NMS
    kept fewer boxes.

    anchors: [A, 4] normalized, or None with ``anchor_params`` = {scales, ratios,
    feature_shapes, feature_strides, anchor_stride, image_shape} to generate them.
    With ``anchor_params`` the saved config holds those few numbers instead of the
    whole anchor array (which is what a ``.keras`` export stores).
    """

    def __init__(self, anchors, proposal_count, nms_threshold, pre_nms_limit,
                 rpn_bbox_std_dev, anchor_params=None, **kwargs):
        super().__init__(**kwargs)
        self.anchor_params = None
        if anchor_params is not None:
            p = {k: anchor_params[k] for k in ANCHOR_PARAM_KEYS}
            self.anchor_params = {
                "scales": [float(v) for v in p["scales"]],
                "ratios": [float(v) for v in p["ratios"]],
                "feature_shapes": [[int(v) for v in s] for s in p["feature_shapes"]],
                "feature_strides": [int(v) for v in p["feature_strides"]],
                "anchor_stride": int(p["anchor_stride"]),
                "image_shape": [int(v) for v in p["image_shape"][:2]]}
        if anchors is None:
            if self.anchor_params is None:
                raise ValueError("ProposalLayer needs anchors or anchor_params")
            anchors = anchors_from_params(self.anchor_params)
        self.anchors = np.asarray(anchors, dtype=np.float32)  # [A, 4] normalized
        self.proposal_count = int(proposal_count)
        self.nms_threshold = float(nms_threshold)
        self.pre_nms_limit = int(pre_nms_limit)
        self.rpn_bbox_std_dev = [float(v) for v in rpn_bbox_std_dev]

    def call(self, rpn_probs, rpn_bbox):
        scores = ops.cast(rpn_probs[:, :, 1], "float32")           # [B, A]
        deltas = ops.cast(rpn_bbox, "float32") * ops.convert_to_tensor(
            self.rpn_bbox_std_dev, "float32")                          # [B, A, 4]
        k = min(self.pre_nms_limit, self.anchors.shape[0])
        scores, ix = ops.top_k(scores, k)                              # [B, k]
        deltas = ops.take_along_axis(deltas, ops.expand_dims(ix, -1), axis=1)
        anchors = ops.take(ops.convert_to_tensor(self.anchors), ix, axis=0)  # [B, k, 4]
        boxes = ops.clip(apply_box_deltas(anchors, deltas), 0.0, 1.0)
        keep, num_valid = cops.non_max_suppression(
            boxes, scores, self.proposal_count, self.nms_threshold)     # [B, P], [B]
        proposals = ops.take_along_axis(boxes, ops.expand_dims(keep, -1), axis=1)
        valid = ops.arange(self.proposal_count)[None, :] < ops.expand_dims(num_valid, -1)
        # Proposals are treated as constants downstream, as in matterport.
        return ops.stop_gradient(ops.where(ops.expand_dims(valid, -1), proposals, 0.0))

    def compute_output_shape(self, rpn_probs_shape, rpn_bbox_shape):
        return (rpn_probs_shape[0], self.proposal_count, 4)

    def get_config(self):
        config = {**super().get_config(), "proposal_count": self.proposal_count,
                  "nms_threshold": self.nms_threshold, "pre_nms_limit": self.pre_nms_limit,
                  "rpn_bbox_std_dev": self.rpn_bbox_std_dev}
        if self.anchor_params is not None:  # regenerated on load
            return {**config, "anchors": None, "anchor_params": self.anchor_params}
        return {**config, "anchors": self.anchors.tolist()}
