"""The three Mask R-CNN head losses, under matterport's names, each a layer returning a
scalar (the two RPN losses are in ``model/rpn.py``).

Every loss averages over the elements that count (anchors with a label, valid ROIs,
positive ROIs) and is 0 when there are none, never NaN.
"""
import keras
from keras import ops


def masked_mean(values, weights):
    """Mean of ``values`` where ``weights`` (0 or 1) say so; 0 when none count."""
    weights = ops.cast(weights, "float32")
    return ops.sum(values * weights) / ops.maximum(ops.sum(weights), 1.0)


def smooth_l1(diff):
    """Smooth L1 (Huber with delta 1) of each element."""
    a = ops.abs(diff)
    return ops.where(a < 1.0, 0.5 * a * a, a - 0.5)


@keras.saving.register_keras_serializable(package="colabrcnn")
class MRCNNClassLoss(keras.layers.Layer):
    """target_class_ids [B, T], class logits [B, T, NC], roi_valid [B, T],
    active_class_ids [B, NC] (classes present in the image's source dataset)."""

    def call(self, target_class_ids, logits, roi_valid, active_class_ids):
        target = ops.cast(target_class_ids, "int32")
        logits = ops.cast(logits, "float32")
        ce = keras.losses.sparse_categorical_crossentropy(target, logits, from_logits=True)
        # matterport: no loss for predictions of classes not in this image's source.
        pred_ids = ops.argmax(logits, axis=-1)
        active = ops.take_along_axis(ops.cast(active_class_ids, "float32"),
                                     ops.cast(pred_ids, "int32"), axis=1)
        return masked_mean(ce, ops.cast(roi_valid, "float32") * active)


@keras.saving.register_keras_serializable(package="colabrcnn")
class MRCNNBBoxLoss(keras.layers.Layer):
    """target_deltas [B, T, 4], target_class_ids [B, T], pred deltas [B, T, NC, 4]."""

    def call(self, target_deltas, target_class_ids, pred):
        target = ops.cast(target_class_ids, "int32")
        idx = ops.reshape(target, ops.shape(target) + (1, 1))
        p = ops.take_along_axis(ops.cast(pred, "float32"), idx, axis=2)[:, :, 0, :]
        loss = smooth_l1(ops.cast(target_deltas, "float32") - p)          # [B, T, 4]
        positive = ops.expand_dims(ops.cast(target > 0, "float32"), -1) * ops.ones_like(loss)
        return masked_mean(loss, positive)


@keras.saving.register_keras_serializable(package="colabrcnn")
class MRCNNMaskLoss(keras.layers.Layer):
    """target_masks [B, T, h, w], target_class_ids [B, T], mask logits [B, R, h, w, NC].

    R <= T: the logits may cover only the first R slots (training runs the mask head on
    the positive slots, which the sampler puts first); later slots hold no positives
    and so add nothing to the loss.
    """

    def call(self, target_masks, target_class_ids, mask_logits):
        r = mask_logits.shape[1]
        target_masks = target_masks[:, :r]
        target = ops.cast(target_class_ids[:, :r], "int32")
        idx = ops.reshape(target, ops.shape(target) + (1, 1, 1))
        logits = ops.take_along_axis(ops.cast(mask_logits, "float32"), idx, axis=4)[..., 0]
        bce = keras.losses.binary_crossentropy(
            ops.expand_dims(ops.cast(target_masks, "float32"), -1),
            ops.expand_dims(logits, -1), from_logits=True)               # [B, T, h, w]
        positive = ops.cast(target > 0, "float32")[..., None, None] * ops.ones_like(bce)
        return masked_mean(bce, positive)
