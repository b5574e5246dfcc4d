"""matterport's ``utils`` module: the NumPy helpers of the data pipeline, the model
wrapper and evaluation, gathered from their homes so ``colabrcnn.utils.X`` keeps working.

Boxes: ``colabrcnn/boxes.py``. Anchors and RPN targets: ``model/anchors.py``. Resizing,
mini-masks, molding and image meta: ``model/transform.py``.
"""
from __future__ import annotations

import numpy as np

from .boxes import (apply_box_deltas, box_refinement, compute_overlaps,  # noqa: F401
                    compute_overlaps_masks, denorm_boxes, extract_bboxes, norm_boxes)
from .model.anchors import (AnchorIndex, anchor_index, build_rpn_targets,  # noqa: F401
                            compute_backbone_shapes, generate_anchors,
                            generate_pyramid_anchors, get_anchors)
from .model.transform import (compose_image_meta, expand_mask, minimize_mask,  # noqa: F401
                              mold_image, pad_to_shape, parse_image_meta, placement,
                              resize_image, resize_mask, resize_scale, scaled_size,
                              unmold_image, unmold_mask)


# -------------------------------------------------------------- ground truth loading
def __getattr__(name):
    # load_image_gt is built by the loader's sample builder (colabrcnn/data/sample.py),
    # which imports this module: re-exported on first use, so neither import needs the
    # other to have finished.
    if name == "load_image_gt":
        from .data.sample import load_image_gt
        return load_image_gt
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ------------------------------------------------------------------ matterport-style AP
def trim_zeros(x):
    """Drop all-zero rows (padding) from a [N, ...] array."""
    return x[~np.all(x == 0, axis=tuple(range(1, x.ndim)))] if len(x) else x


def compute_matches(gt_boxes, gt_class_ids, gt_masks, pred_boxes, pred_class_ids,
                    pred_scores, pred_masks, iou_threshold=0.5, score_threshold=0.0):
    """Greedy matching of predictions to ground truth by mask IoU (matterport's rule).

    Returns gt_match [N_gt] (index of matched prediction or -1), pred_match [N_pred]
    (index of matched GT or -1; predictions sorted by score) and the IoU matrix.
    """
    order = np.argsort(pred_scores)[::-1]
    pred_boxes = pred_boxes[order]
    pred_class_ids = pred_class_ids[order]
    pred_scores = pred_scores[order]
    pred_masks = pred_masks[..., order]
    overlaps = compute_overlaps_masks(pred_masks, gt_masks)
    pred_match = -1 * np.ones([pred_boxes.shape[0]], dtype=np.int32)
    gt_match = -1 * np.ones([gt_boxes.shape[0]], dtype=np.int32)
    for i in range(len(pred_boxes)):
        if pred_scores[i] < score_threshold:
            continue
        for j in np.argsort(overlaps[i])[::-1]:
            if gt_match[j] > -1:
                continue
            if overlaps[i, j] < iou_threshold:
                break
            if pred_class_ids[i] == gt_class_ids[j]:
                gt_match[j] = i
                pred_match[i] = j
                break
    return gt_match, pred_match, overlaps


def compute_ap(gt_boxes, gt_class_ids, gt_masks, pred_boxes, pred_class_ids, pred_scores,
               pred_masks, iou_threshold=0.5):
    """Mask AP at one IoU threshold for one image (matterport's VOC-style AP).

    Returns mAP, precisions, recalls, overlaps. An image with no GT and no
    predictions scores 1.0; GT without predictions scores 0.
    """
    gt_match, pred_match, overlaps = compute_matches(
        gt_boxes, gt_class_ids, gt_masks, pred_boxes, pred_class_ids, pred_scores,
        pred_masks, iou_threshold)
    if len(gt_match) == 0:
        return (1.0 if len(pred_match) == 0 else 0.0), np.array([]), np.array([]), overlaps
    precisions = np.cumsum(pred_match > -1) / (np.arange(len(pred_match)) + 1)
    recalls = np.cumsum(pred_match > -1).astype(np.float32) / len(gt_match)
    precisions = np.concatenate([[0], precisions, [0]])
    recalls = np.concatenate([[0], recalls, [1]])
    for i in range(len(precisions) - 2, -1, -1):
        precisions[i] = np.maximum(precisions[i], precisions[i + 1])
    indices = np.where(recalls[:-1] != recalls[1:])[0] + 1
    m_ap = float(np.sum((recalls[indices] - recalls[indices - 1]) * precisions[indices]))
    return m_ap, precisions, recalls, overlaps


def compute_ap_range(gt_box, gt_class_id, gt_mask, pred_box, pred_class_id, pred_score,
                     pred_mask, iou_thresholds=None, verbose=0):
    """Mean of compute_ap over IoU thresholds (default 0.5:0.95:0.05)."""
    if iou_thresholds is None:
        iou_thresholds = np.arange(0.5, 1.0, 0.05)
    aps = [compute_ap(gt_box, gt_class_id, gt_mask, pred_box, pred_class_id, pred_score,
                      pred_mask, iou_threshold=t)[0] for t in iou_thresholds]
    if verbose:
        print(f"AP @{iou_thresholds[0]:.2f}-{iou_thresholds[-1]:.2f}:\t {np.mean(aps):.3f}")
    return float(np.mean(aps))
