"""Region proposal network: the shared RPN head, proposal selection and the RPN losses.

build_rpn_model: one pyramid level [B, h, w, C] -> objectness logits/probs and box deltas
    per anchor (one set of weights, ``rpn_model``, applied to every level).
ProposalLayer: RPN scores and deltas -> a fixed number of ROIs per image (top-k, NMS;
    matterport's way or torchvision's, per level).
RPNClassLoss / RPNBBoxLoss: the losses against ``build_rpn_targets`` (``model/anchors.py``).
"""
import keras
import numpy as np
from keras import layers, ops

from ..boxes import norm_boxes
from . import ops as cops
from .anchors import generate_pyramid_anchors
from .boxes import TORCHVISION_LOG_SCALE_CLIP, apply_box_deltas, clip_to_window
from .losses import masked_mean, smooth_l1


def build_rpn_model(anchors_per_location: int, anchor_stride: int, depth: int,
                    channels: int = 512) -> keras.Model:
    """RPN head applied to every pyramid level with shared weights ('rpn_model').

    [B, h, w, depth] -> rpn_class_logits [B, h*w*A, 2], rpn_probs [B, h*w*A, 2],
    rpn_bbox [B, h*w*A, 4] (deltas), A = anchors_per_location. channels: width of the
    shared 3x3 conv (Config.RPN_CONV_CHANNELS; matterport 512, torchvision 256).
    """
    fmap = keras.Input(shape=(None, None, depth), name="input_rpn_feature_map")
    # Normal(0.01) weights and zero biases throughout (detectron2's RPN head): the first
    # objectness logits are ~0, an RPN class loss of about ln 2.
    shared = layers.Conv2D(int(channels), 3, padding="same", activation="relu",
                           strides=anchor_stride, name="rpn_conv_shared",
                           kernel_initializer=keras.initializers.RandomNormal(stddev=0.01))(fmap)
    x = layers.Conv2D(2 * anchors_per_location, 1, name="rpn_class_raw",
                      kernel_initializer=keras.initializers.RandomNormal(stddev=0.01))(shared)
    logits = layers.Reshape((-1, 2))(x)
    probs = layers.Activation("softmax", name="rpn_class_xxx", dtype="float32")(logits)
    x = layers.Conv2D(4 * anchors_per_location, 1, name="rpn_bbox_pred",
                      kernel_initializer=keras.initializers.RandomNormal(stddev=0.01))(shared)
    bbox = layers.Reshape((-1, 4))(x)
    return keras.Model(fmap, [logits, probs, bbox], name="rpn_model")


ANCHOR_PARAM_KEYS = ("scales", "ratios", "feature_shapes", "feature_strides",
                     "anchor_stride", "image_shape")
# Score of the proposals that are not there (removed as too small, or past NMS's output).
_NO_SCORE = -1e30
# torchvision's RPN drops boxes with a side under 1e-3 pixels before NMS.
TORCHVISION_MIN_SIZE = 1e-3


def anchors_from_params(params: dict, style: str = "matterport") -> np.ndarray:
    """Normalized anchors [A, 4] from their generation parameters (see ProposalLayer);
    style: Config.DETECTOR_STYLE (anchor rounding and normalization rule)."""
    pixels = generate_pyramid_anchors(
        params["scales"], params["ratios"], params["feature_shapes"],
        params["feature_strides"], params["anchor_stride"], style).astype(np.float32)
    return norm_boxes(pixels, params["image_shape"], style)


def level_anchor_counts(params: dict) -> list[int]:
    """Anchors per pyramid level (P2 first) for ProposalLayer's anchor_params."""
    s = int(params["anchor_stride"])
    return [int(-(-h // s) * -(-w // s) * len(params["ratios"]))
            for h, w in params["feature_shapes"]]


@keras.saving.register_keras_serializable(package="colabrcnn")
class ProposalLayer(keras.layers.Layer):
    """Top-k anchors by objectness, refined, clipped, then NMS.

    style "matterport": inputs rpn_probs [B, A, 2], rpn_bbox [B, A, 4] (deltas /
    RPN_BBOX_STD_DEV); the top ``pre_nms_limit`` anchors of all levels, NMS over all.

    style "torchvision" (Config.DETECTOR_STYLE; torchvision's RegionProposalNetwork.
    filter_proposals): the first input is rpn_class_logits [B, A, 2] and the score is
    the foreground logit minus the background one (torchvision's single objectness
    logit); per pyramid level the top ``pre_nms_limit`` anchors, deltas decoded with
    log-scales clamped at log(1000/16), clipped to the image, boxes with a side under
    1e-3 pixels dropped, NMS within each level; then the best ``proposal_count`` of all
    levels by score. Needs ``anchor_params`` (the level sizes and the image shape).
    An optional third input, window [B, 4] normalized (``MetaWindow``: where the real
    image sits), clips the boxes to the image as torchvision clips to ``image_sizes``;
    without it they are clipped to the whole canvas (graphs saved before it existed).

    Output: [B, proposal_count, (y1, x1, y2, x2)] normalized, sorted by score,
    zero-padded where NMS kept fewer boxes.

    anchors: [A, 4] normalized, or None with ``anchor_params`` = {scales, ratios,
    feature_shapes, feature_strides, anchor_stride, image_shape} to generate them.
    With ``anchor_params`` the saved config holds those few numbers instead of the
    whole anchor array (which is what a ``.keras`` export stores).
    """

    def __init__(self, anchors, proposal_count, nms_threshold, pre_nms_limit,
                 rpn_bbox_std_dev, anchor_params=None, style="matterport", **kwargs):
        super().__init__(**kwargs)
        if style not in ("matterport", "torchvision"):
            raise ValueError(f"unknown ProposalLayer style {style!r}")
        self.style = str(style)
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
        elif self.style == "torchvision":
            raise ValueError("ProposalLayer(style='torchvision') needs anchor_params (its "
                             "per-level top-k and NMS need the level sizes)")
        if anchors is None:
            if self.anchor_params is None:
                raise ValueError("ProposalLayer needs anchors or anchor_params")
            anchors = anchors_from_params(self.anchor_params, self.style)
        self.anchors = np.asarray(anchors, dtype=np.float32)  # [A, 4] normalized
        self.proposal_count = int(proposal_count)
        self.nms_threshold = float(nms_threshold)
        self.pre_nms_limit = int(pre_nms_limit)
        self.rpn_bbox_std_dev = [float(v) for v in rpn_bbox_std_dev]
        if self.style == "torchvision":
            counts = level_anchor_counts(self.anchor_params)
            if sum(counts) != self.anchors.shape[0]:
                raise ValueError(f"anchor_params give {sum(counts)} anchors but anchors "
                                 f"has {self.anchors.shape[0]}")

    def call(self, rpn_scores, rpn_bbox, window=None):
        if self.style == "torchvision":
            return self._torchvision_proposals(rpn_scores, rpn_bbox, window)
        rpn_probs = rpn_scores
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

    def _torchvision_proposals(self, rpn_logits, rpn_bbox, window=None):
        """torchvision's filter_proposals with static shapes (see the class docstring)."""
        logits = ops.cast(rpn_logits, "float32")
        scores = logits[:, :, 1] - logits[:, :, 0]                     # [B, A] logit
        deltas = ops.cast(rpn_bbox, "float32") * ops.convert_to_tensor(
            self.rpn_bbox_std_dev, "float32")                          # [B, A, 4]
        anchors = ops.convert_to_tensor(self.anchors)                  # [A, 4]
        h, w = self.anchor_params["image_shape"]
        min_h, min_w = TORCHVISION_MIN_SIZE / h, TORCHVISION_MIN_SIZE / w  # normalized
        boxes_out, scores_out = [], []
        start = 0
        for n in level_anchor_counts(self.anchor_params):
            k = min(self.pre_nms_limit, n)
            s, ix = ops.top_k(scores[:, start:start + n], k)            # [B, k]
            d = ops.take_along_axis(deltas[:, start:start + n], ops.expand_dims(ix, -1),
                                    axis=1)                            # [B, k, 4]
            a = ops.take(anchors[start:start + n], ix, axis=0)         # [B, k, 4]
            start += n
            b = apply_box_deltas(a, d, TORCHVISION_LOG_SCALE_CLIP)
            # Clipped to the image (the window), or to the canvas without one.
            b = ops.clip(b, 0.0, 1.0) if window is None else \
                clip_to_window(b, ops.cast(window, "float32"))
            big = ops.logical_and(b[..., 2] - b[..., 0] >= min_h,
                                  b[..., 3] - b[..., 1] >= min_w)
            s = ops.where(big, s, _NO_SCORE)
            # NMS within this level only (torchvision's batched_nms by level).
            count = min(self.proposal_count, k)
            keep, num = cops.non_max_suppression(b, s, count, self.nms_threshold,
                                                 score_threshold=_NO_SCORE / 2)
            valid = ops.arange(count)[None, :] < ops.expand_dims(num, -1)
            boxes_out.append(ops.take_along_axis(b, ops.expand_dims(keep, -1), axis=1))
            scores_out.append(ops.where(valid, ops.take_along_axis(s, keep, axis=1),
                                        _NO_SCORE))
        boxes = ops.concatenate(boxes_out, axis=1)                     # [B, N, 4]
        scores = ops.concatenate(scores_out, axis=1)                   # [B, N]
        k = min(self.proposal_count, scores.shape[1])
        best, ix = ops.top_k(scores, k)                                # by score, all levels
        proposals = ops.take_along_axis(boxes, ops.expand_dims(ix, -1), axis=1)
        proposals = ops.where(ops.expand_dims(best > _NO_SCORE / 2, -1), proposals, 0.0)
        if k < self.proposal_count:
            proposals = ops.pad(proposals, [[0, 0], [0, self.proposal_count - k], [0, 0]])
        return ops.stop_gradient(proposals)

    def compute_output_shape(self, rpn_scores_shape, rpn_bbox_shape, window_shape=None):
        return (rpn_scores_shape[0], self.proposal_count, 4)

    def get_config(self):
        config = {**super().get_config(), "proposal_count": self.proposal_count,
                  "nms_threshold": self.nms_threshold, "pre_nms_limit": self.pre_nms_limit,
                  "rpn_bbox_std_dev": self.rpn_bbox_std_dev, "style": self.style}
        if self.anchor_params is not None:  # regenerated on load
            return {**config, "anchors": None, "anchor_params": self.anchor_params}
        return {**config, "anchors": self.anchors.tolist()}


# ------------------------------------------------------------------------ losses
@keras.saving.register_keras_serializable(package="colabrcnn")
class RPNClassLoss(keras.layers.Layer):
    """rpn_match [B, A, 1] (1 / -1 / 0 neutral), rpn_class_logits [B, A, 2]."""

    def call(self, rpn_match, logits):
        match = ops.cast(ops.squeeze(rpn_match, -1), "int32")
        labels = ops.cast(match == 1, "int32")
        ce = keras.losses.sparse_categorical_crossentropy(
            labels, ops.cast(logits, "float32"), from_logits=True)
        return masked_mean(ce, match != 0)


@keras.saving.register_keras_serializable(package="colabrcnn")
class RPNBBoxLoss(keras.layers.Layer):
    """target_bbox [B, K, 4] packed in order of the positive anchors in rpn_match
    [B, A, 1]; rpn_bbox [B, A, 4] predicted deltas."""

    def call(self, target_bbox, rpn_match, rpn_bbox):
        k = target_bbox.shape[1]
        match = ops.cast(ops.squeeze(rpn_match, -1), "int32")
        num_anchors = ops.shape(match)[1]
        # First k positive anchors in index order: top-k of (A - index) on positives.
        key = ops.where(match == 1, num_anchors - ops.arange(num_anchors)[None, :], 0)
        key_val, idx = ops.top_k(key, k)
        pred = ops.take_along_axis(ops.cast(rpn_bbox, "float32"),
                                   ops.expand_dims(idx, -1), axis=1)   # [B, k, 4]
        loss = smooth_l1(ops.cast(target_bbox, "float32") - pred)
        valid = ops.expand_dims(ops.cast(key_val > 0, "float32"), -1) * ops.ones_like(loss)
        return masked_mean(loss, valid)
