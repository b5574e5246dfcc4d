"""matterport's graph helpers with its signatures, in ``keras.ops`` (any backend).

matterport wrote these with TensorFlow 1 ops; here they are plain ``keras.ops`` on
tensors (eager arrays or symbolic Keras tensors), with matterport's shapes:
boxes ``[N, (y1, x1, y2, x2)]``, normalized unless said otherwise. The builders
(``resnet_graph``, ``identity_block``, ``conv_block``, ``rpn_graph``,
``build_rpn_model``) wrap ours with matterport's argument lists and make layers with
matterport's names. ``colabrcnn.model`` re-exports all of them.
"""
from __future__ import annotations

import math

from keras import ops

from ..errors import ConfigError
from .backbone import bottleneck_block
from .backbone import resnet_graph as _resnet_graph
from .boxes import clip_to_window, overlaps
from .rpn import build_rpn_model as _build_rpn_model


# ------------------------------------------------------------------------ boxes
def apply_box_deltas_graph(boxes, deltas):
    """Refine boxes [N, 4] by deltas [N, (dy, dx, log(dh), log(dw))] -> [N, 4]."""
    height = boxes[:, 2] - boxes[:, 0]
    width = boxes[:, 3] - boxes[:, 1]
    center_y = boxes[:, 0] + 0.5 * height + deltas[:, 0] * height
    center_x = boxes[:, 1] + 0.5 * width + deltas[:, 1] * width
    height = height * ops.exp(deltas[:, 2])
    width = width * ops.exp(deltas[:, 3])
    y1 = center_y - 0.5 * height
    x1 = center_x - 0.5 * width
    return ops.stack([y1, x1, y1 + height, x1 + width], axis=1)


def clip_boxes_graph(boxes, window):
    """Clip boxes [N, 4] to window [4] (y1, x1, y2, x2)."""
    window = ops.cast(window, boxes.dtype)
    return clip_to_window(boxes[None], window[None])[0]


def box_refinement_graph(box, gt_box):
    """Deltas [N, (dy, dx, log(dh), log(dw))] that turn box [N, 4] into gt_box."""
    box = ops.cast(box, "float32")
    gt_box = ops.cast(gt_box, "float32")
    height = box[:, 2] - box[:, 0]
    width = box[:, 3] - box[:, 1]
    gt_height = gt_box[:, 2] - gt_box[:, 0]
    gt_width = gt_box[:, 3] - gt_box[:, 1]
    dy = (gt_box[:, 0] + 0.5 * gt_height - box[:, 0] - 0.5 * height) / height
    dx = (gt_box[:, 1] + 0.5 * gt_width - box[:, 1] - 0.5 * width) / width
    return ops.stack([dy, dx, ops.log(gt_height / height), ops.log(gt_width / width)],
                     axis=1)


def overlaps_graph(boxes1, boxes2):
    """IoU of every pair: [N, 4], [M, 4] -> [N, M] (0 where the union is empty)."""
    return overlaps(boxes1[None], boxes2[None])[0]


def _scale_shift(shape, dtype):
    # shape: [..., (height, width)] -> scale (h-1, w-1, h-1, w-1), shift (0, 0, 1, 1)
    shape = ops.cast(shape, dtype)
    h, w = shape[..., 0:1], shape[..., 1:2]
    scale = ops.concatenate([h, w, h, w], axis=-1) - 1.0
    shift = ops.convert_to_tensor([0.0, 0.0, 1.0, 1.0], dtype=dtype)
    return scale, shift


def norm_boxes_graph(boxes, shape):
    """Pixel boxes -> normalized; shape [..., (height, width)] in pixels."""
    boxes = ops.cast(boxes, "float32")
    scale, shift = _scale_shift(shape, "float32")
    return (boxes - shift) / scale


def denorm_boxes_graph(boxes, shape):
    """Normalized boxes -> pixel boxes (int32); shape [..., (height, width)]."""
    boxes = ops.cast(boxes, "float32")
    scale, shift = _scale_shift(shape, "float32")
    return ops.cast(ops.round(boxes * scale + shift), "int32")


def log2_graph(x):
    """Base-2 logarithm."""
    return ops.log(x) / math.log(2.0)


def parse_image_meta_graph(meta):
    """Split a batch of image metas [B, META] into its parts (tensors, as stored)."""
    return {
        "image_id": meta[:, 0],
        "original_image_shape": meta[:, 1:4],
        "image_shape": meta[:, 4:7],
        "window": meta[:, 7:11],
        "scale": meta[:, 11],
        "active_class_ids": meta[:, 12:],
    }


def smooth_l1_loss(y_true, y_pred):
    """Element-wise smooth-L1: 0.5 d^2 where |d| < 1, else |d| - 0.5."""
    diff = ops.abs(y_true - y_pred)
    less_than_one = ops.cast(diff < 1.0, diff.dtype)
    return less_than_one * 0.5 * diff ** 2 + (1 - less_than_one) * (diff - 0.5)


def batch_slice(inputs, graph_fn, batch_size, names=None):
    """Run ``graph_fn`` on each of the first ``batch_size`` items of ``inputs`` and
    stack the results (one tensor, or a list for several outputs).

    For graph code written per image; ``names`` is accepted and unused (Keras ops
    carry no names).
    """
    if not isinstance(inputs, list):
        inputs = [inputs]
    outputs = []
    for i in range(batch_size):
        out = graph_fn(*[x[i] for x in inputs])
        outputs.append(out if isinstance(out, (tuple, list)) else [out])
    result = [ops.stack(list(o), axis=0) for o in zip(*outputs)]
    return result[0] if len(result) == 1 else result


# --------------------------------------------------------------------- builders
def resnet_graph(input_image, architecture, stage5=False, train_bn=True):
    """ResNet body -> [C1, C2, C3, C4, C5] (C5 None unless ``stage5``), matterport's
    layer names; ``architecture``: "resnet50", "resnet101" (or "resnet18")."""
    c1, c2, c3, c4, c5 = _resnet_graph(input_image, architecture, train_bn=train_bn)
    return [c1, c2, c3, c4, c5 if stage5 else None]


def _check_bias(use_bias):
    if not use_bias:
        raise ConfigError("use_bias=False is not provided: matterport's ResNet (and its "
                          "weight files) have conv biases; leave use_bias=True")


def identity_block(input_tensor, kernel_size, filters, stage, block, use_bias=True,
                   train_bn=True):
    """Bottleneck block with an identity shortcut (layers res{stage}{block}_branch2a..)."""
    _check_bias(use_bias)
    return bottleneck_block(input_tensor, kernel_size, filters, stage, block,
                            strides=None, train_bn=train_bn)


def conv_block(input_tensor, kernel_size, filters, stage, block, strides=(2, 2),
               use_bias=True, train_bn=True):
    """Bottleneck block with a strided projection shortcut (res{stage}{block}_branch1)."""
    _check_bias(use_bias)
    return bottleneck_block(input_tensor, kernel_size, filters, stage, block,
                            strides=strides, train_bn=train_bn)


def build_rpn_model(anchor_stride, anchors_per_location, depth):
    """The RPN head as a Keras model ("rpn_model"), matterport's argument order.

    Outputs rpn_class_logits [B, H*W*A, 2], rpn_probs [B, H*W*A, 2], rpn_bbox
    [B, H*W*A, 4] for a feature map [B, H, W, depth].
    """
    return _build_rpn_model(anchors_per_location, anchor_stride, depth)


def rpn_graph(feature_map, anchors_per_location, anchor_stride):
    """[rpn_class_logits, rpn_probs, rpn_bbox] of one feature map."""
    depth = int(feature_map.shape[-1])
    return list(_build_rpn_model(anchors_per_location, anchor_stride, depth)(feature_map))
