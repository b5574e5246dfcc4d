"""Training targets for the heads: sample ROIs and give each its class, deltas and mask.

Batched and static: every image yields exactly TRAIN_ROIS_PER_IMAGE rows, the first
``positive_count`` slots for positives and the rest for negatives, with a validity
mask for slots that stayed empty. As in torchvision (not matterport), the ground-truth
boxes join the proposals, which gives the heads positives from the first step.
"""
import keras
from keras import ops

from . import ops as cops
from .boxes import box_refinement, overlaps


@keras.saving.register_keras_serializable(package="colabrcnn")
class DetectionTargetLayer(keras.layers.Layer):
    """Inputs:
        proposals [B, P, 4] normalized (zero rows = padding)
        gt_class_ids [B, G] int (0 = padding, < 0 = crowd)
        gt_boxes [B, G, 4] normalized
        gt_masks [B, mh, mw, G] (mini-masks inside each box, or full-image masks)
    Outputs:
        rois [B, T, 4], target_class_ids [B, T] int32, target_deltas [B, T, 4]
        (divided by BBOX_STD_DEV), target_masks [B, T, MASK_H, MASK_W] float 0/1,
        roi_valid [B, T] float (1 where a real ROI sits in the slot).
    """

    def __init__(self, train_rois_per_image, positive_ratio, bbox_std_dev, mask_shape,
                 use_mini_mask, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.train_rois_per_image = int(train_rois_per_image)
        self.positive_ratio = float(positive_ratio)
        self.bbox_std_dev = [float(v) for v in bbox_std_dev]
        self.mask_shape = tuple(int(v) for v in mask_shape)
        self.use_mini_mask = bool(use_mini_mask)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, proposals, gt_class_ids, gt_boxes, gt_masks):
        T = self.train_rois_per_image
        n_pos = int(T * self.positive_ratio)  # spec.positive_count, 0 allowed here
        n_neg = T - n_pos
        gt_class_ids = ops.cast(gt_class_ids, "int32")
        gt_boxes = ops.cast(gt_boxes, "float32")
        proposals = ops.cast(proposals, "float32")

        gt_valid = gt_class_ids > 0                                   # [B, G]
        crowd = gt_class_ids < 0
        # Ground-truth boxes join the proposals (padding rows are zero and stay invalid).
        gt_as_props = ops.where(ops.expand_dims(gt_valid, -1), gt_boxes, 0.0)
        rois = ops.concatenate([proposals, gt_as_props], axis=1)        # [B, P+G, 4]
        roi_ok = ops.any(ops.not_equal(rois, 0.0), axis=-1)          # [B, P+G]

        iou = overlaps(rois, gt_boxes)                                # [B, P+G, G]
        iou_obj = ops.where(ops.expand_dims(gt_valid, 1), iou, -1.0)
        iou_crowd = ops.where(ops.expand_dims(crowd, 1), iou, 0.0)
        roi_iou_max = ops.max(iou_obj, axis=2)                        # [B, P+G]
        no_crowd = ops.max(iou_crowd, axis=2) < 0.001
        positive = ops.logical_and(roi_ok, roi_iou_max >= 0.5)
        negative = ops.logical_and(ops.logical_and(roi_ok, roi_iou_max < 0.5), no_crowd)

        # Random subsets through top-k of random keys restricted to each set.
        shape = ops.shape(roi_iou_max)
        noise = keras.random.uniform(shape, seed=self.seed_generator)
        pos_key = ops.where(positive, noise, -1.0)
        neg_key = ops.where(negative, noise, -1.0)
        pos_val, pos_idx = ops.top_k(pos_key, n_pos)                  # [B, n_pos]
        neg_val, neg_idx = ops.top_k(neg_key, n_neg)                  # [B, n_neg]
        pos_ok = pos_val >= 0.0
        neg_ok = neg_val >= 0.0

        pos_rois = ops.take_along_axis(rois, ops.expand_dims(pos_idx, -1), axis=1)
        neg_rois = ops.take_along_axis(rois, ops.expand_dims(neg_idx, -1), axis=1)

        # Positives: their best ground truth gives class, deltas and mask.
        pos_iou = ops.take_along_axis(iou_obj, ops.expand_dims(pos_idx, -1), axis=1)
        gt_idx = ops.cast(ops.argmax(pos_iou, axis=-1), "int32")      # [B, n_pos]
        pos_gt_boxes = ops.take_along_axis(gt_boxes, ops.expand_dims(gt_idx, -1), axis=1)
        pos_class = ops.take_along_axis(gt_class_ids, gt_idx, axis=1)
        deltas = box_refinement(pos_rois, pos_gt_boxes) / ops.convert_to_tensor(
            self.bbox_std_dev, "float32")

        masks = self._mask_targets(gt_masks, gt_idx, pos_rois, pos_gt_boxes)  # [B,n_pos,h,w]

        pos_okf = ops.cast(pos_ok, "float32")
        neg_okf = ops.cast(neg_ok, "float32")
        rois_out = ops.concatenate([pos_rois * pos_okf[..., None],
                                    neg_rois * neg_okf[..., None]], axis=1)
        class_out = ops.concatenate([pos_class * ops.cast(pos_ok, "int32"),
                                     ops.zeros_like(neg_idx)], axis=1)
        deltas_out = ops.concatenate([deltas * pos_okf[..., None],
                                      ops.zeros(ops.shape(neg_rois), "float32")], axis=1)
        zeros_masks = ops.zeros((shape[0], n_neg) + self.mask_shape, "float32")
        masks_out = ops.concatenate([masks * pos_okf[..., None, None], zeros_masks], axis=1)
        valid_out = ops.concatenate([pos_okf, neg_okf], axis=1)
        return [ops.stop_gradient(t) for t in
                (rois_out, class_out, deltas_out, masks_out, valid_out)]

    def _mask_targets(self, gt_masks, gt_idx, rois, gt_boxes):
        """Crop each positive's GT mask to its ROI and resize to MASK_SHAPE (rounded)."""
        gt_masks = ops.cast(gt_masks, "float32")
        batch = ops.shape(gt_idx)[0]
        n = gt_idx.shape[1]
        g = gt_masks.shape[-1]
        # [B, mh, mw, G] -> [B*G, mh, mw, 1]: one "image" per GT mask.
        m = ops.transpose(gt_masks, (0, 3, 1, 2))
        m = ops.reshape(m, (-1, gt_masks.shape[1], gt_masks.shape[2], 1))
        box_ind = ops.reshape(
            gt_idx + ops.reshape(ops.arange(batch, dtype="int32"), (-1, 1)) * g, (-1,))
        boxes = rois
        if self.use_mini_mask:
            # Mini-masks cover only their GT box: express the ROI in that box's frame.
            y1, x1, y2, x2 = (rois[..., i] for i in range(4))
            gy1, gx1, gy2, gx2 = (gt_boxes[..., i] for i in range(4))
            gh = ops.maximum(gy2 - gy1, 1e-8)
            gw = ops.maximum(gx2 - gx1, 1e-8)
            boxes = ops.stack([(y1 - gy1) / gh, (x1 - gx1) / gw,
                               (y2 - gy1) / gh, (x2 - gx1) / gw], axis=-1)
        crops = cops.crop_and_resize(m, ops.reshape(boxes, (-1, 4)), box_ind,
                                     self.mask_shape)               # [B*n, h, w, 1]
        crops = ops.reshape(crops, (batch, n) + self.mask_shape)
        return ops.round(crops)

    def compute_output_shape(self, proposals_shape, gt_class_ids_shape, gt_boxes_shape,
                             gt_masks_shape):
        b, T = proposals_shape[0], self.train_rois_per_image
        return [(b, T, 4), (b, T), (b, T, 4), (b, T) + self.mask_shape, (b, T)]

    def get_config(self):
        return {**super().get_config(), "train_rois_per_image": self.train_rois_per_image,
                "positive_ratio": self.positive_ratio, "bbox_std_dev": self.bbox_std_dev,
                "mask_shape": list(self.mask_shape), "use_mini_mask": self.use_mini_mask,
                "seed": self.seed}
