"""matterport's AP: greedy mask-IoU matching and VOC-style AP per image
(``compute_matches``, ``compute_ap``, ``compute_ap_range``; also importable from
``colabrcnn.utils`` as in matterport), and its mean over a dataset (``evaluate_ap``)."""
from __future__ import annotations

import logging

import numpy as np

from ..boxes import compute_overlaps_masks, extract_bboxes
from .common import detect_stream, select_ids, split_crowd

logger = logging.getLogger(__name__)


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
                     pred_mask, iou_thresholds=None, verbose=1):
    """Mean of compute_ap over IoU thresholds (default 0.5:0.95:0.05); ``verbose``
    (matterport's default 1) logs the AP at each threshold and the mean."""
    if iou_thresholds is None:
        iou_thresholds = np.arange(0.5, 1.0, 0.05)
    aps = []
    for t in iou_thresholds:
        aps.append(compute_ap(gt_box, gt_class_id, gt_mask, pred_box, pred_class_id,
                              pred_score, pred_mask, iou_threshold=t)[0])
        if verbose:
            logger.info("AP @%.2f:\t %.3f", t, aps[-1])
    if verbose:
        logger.info("AP @%.2f-%.2f:\t %.3f", iou_thresholds[0], iou_thresholds[-1], np.mean(aps))
    return float(np.mean(aps))


def evaluate_ap(model, dataset, image_ids=None, limit=None, iou_threshold=0.5, verbose=1,
                batch_size=None, return_per_image=False):
    """matterport's metric: mean over images of the per-image mask AP at one IoU.

    Returns the mean (float), or (mean, [AP per image]) with ``return_per_image``.
    Crowd regions are left out of the ground truth.
    """
    image_ids = select_ids(dataset, image_ids, limit)
    aps = []
    for image_id, r in detect_stream(model, dataset, image_ids, batch_size, verbose,
                                      desc="AP"):
        gt_masks, gt_ids = dataset.load_mask(image_id)
        gt_masks, gt_ids, _, _ = split_crowd(dataset, image_id,
                                                np.asarray(gt_masks, bool), gt_ids)
        ap, *_ = compute_ap(extract_bboxes(gt_masks), gt_ids, gt_masks, r["rois"],
                            r["class_ids"], r["scores"], r["masks"],
                            iou_threshold=iou_threshold)
        aps.append(float(ap))
    mean = float(np.mean(aps)) if aps else 0.0
    if verbose:
        logger.info("mAP@%.2f over %d images: %.3f", iou_threshold, len(aps), mean)
    return (mean, aps) if return_per_image else mean
