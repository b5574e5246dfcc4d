"""Error analysis: per image what was found, missed, invented or confused, the
worst images and a summary over them."""
from __future__ import annotations

import numpy as np

from ..boxes import compute_overlaps_masks, extract_bboxes
from .ap import compute_ap
from .common import class_name, split_crowd


def analyze_errors(dataset, results, image_ids=None, iou_threshold=0.5, min_score=None):
    """Per image: what was found, what was missed, what was invented, what was confused.

    Matching is by mask IoU, greedy in score order, class-aware (COCO's rule). Then an
    unmatched prediction and an unmatched ground truth of *another* class overlapping by
    ``iou_threshold`` or more form a class confusion (not also counted as a false positive
    and a miss). Each remaining false positive gets a ``kind``: "duplicate" (it covers a
    ground truth already matched), "localization" (best IoU with any ground truth in
    [0.1, iou_threshold)) or "background". Predictions lying on a crowd region are
    ``ignored``. Prediction indices refer to the result arrays as given.

    Returns one dict per image: image_id, index (position in ``results``), reference,
    num_gt, num_pred, matches [{gt, pred, class_id, class_name, iou, score}],
    matched_ious, mean_iou (None without matches), false_positives [{pred, class_id,
    class_name, score, best_iou, kind}], misses [{gt, class_id, class_name, best_iou,
    area}], confusions [{gt, pred, gt_class_id, gt_class, pred_class_id, pred_class, iou,
    score}], ignored [pred indices], ap50 (matterport's per-image AP at
    ``iou_threshold``) and num_errors (false positives + misses + confusions).
    """
    image_ids = list(dataset.image_ids if image_ids is None else image_ids)
    results = list(results)
    if len(results) != len(image_ids):
        raise ValueError(f"got {len(results)} results for {len(image_ids)} images")
    names = getattr(dataset, "class_names", None)
    out = []
    for index, (image_id, r) in enumerate(zip(image_ids, results)):
        gt_masks, gt_ids = dataset.load_mask(image_id)
        gt_masks, gt_ids, crowd_masks, _ = split_crowd(
            dataset, image_id, np.asarray(gt_masks, bool), gt_ids)
        scores = np.asarray(r["scores"], dtype=np.float64).reshape(-1)
        pred_ids = np.asarray(r["class_ids"]).reshape(-1)
        pred_masks = np.asarray(r["masks"], dtype=bool)
        if pred_masks.ndim != 3 or pred_masks.shape[:2] != gt_masks.shape[:2]:
            raise ValueError(f"image {image_id}: prediction masks have shape "
                             f"{pred_masks.shape}, expected {gt_masks.shape[:2]} x N")
        keep = np.arange(len(scores)) if min_score is None else \
            np.where(scores >= min_score)[0]
        order = keep[np.argsort(-scores[keep], kind="stable")]
        ious = compute_overlaps_masks(pred_masks, gt_masks)   # [P, G]
        gt_pred = -np.ones(len(gt_ids), dtype=np.int64)
        pred_gt = -np.ones(len(scores), dtype=np.int64)
        # 1. Class-aware greedy matching in score order.
        for i in order:
            cand = [j for j in range(len(gt_ids)) if gt_pred[j] < 0
                    and gt_ids[j] == pred_ids[i] and ious[i, j] >= iou_threshold]
            if cand:
                j = max(cand, key=lambda j: ious[i, j])
                gt_pred[j], pred_gt[i] = i, j
        matches = [{"gt": int(j), "pred": int(gt_pred[j]), "class_id": int(gt_ids[j]),
                    "class_name": class_name(names, gt_ids[j]), "iou": float(ious[gt_pred[j], j]),
                    "score": float(scores[gt_pred[j]])}
                   for j in range(len(gt_ids)) if gt_pred[j] >= 0]
        # 2. Class confusions among what is left, highest IoU first.
        confusions = []
        pairs = sorted(((ious[i, j], i, j) for i in order if pred_gt[i] < 0
                        for j in range(len(gt_ids)) if gt_pred[j] < 0
                        and gt_ids[j] != pred_ids[i] and ious[i, j] >= iou_threshold),
                       reverse=True)
        confused_pred, confused_gt = set(), set()
        for iou, i, j in pairs:
            if i in confused_pred or j in confused_gt:
                continue
            confused_pred.add(i)
            confused_gt.add(j)
            confusions.append({"gt": int(j), "pred": int(i), "gt_class_id": int(gt_ids[j]),
                               "gt_class": class_name(names, gt_ids[j]),
                               "pred_class_id": int(pred_ids[i]),
                               "pred_class": class_name(names, pred_ids[i]), "iou": float(iou),
                               "score": float(scores[i])})
        # 3. The rest: false positives (or ignored on crowd regions) and misses.
        false_positives, ignored = [], []
        crowd_any = crowd_masks.any(axis=-1) if crowd_masks.shape[-1] else None
        for i in order:
            if pred_gt[i] >= 0 or i in confused_pred:
                continue
            if crowd_any is not None:
                area = pred_masks[..., i].sum()
                if area and (pred_masks[..., i] & crowd_any).sum() / area >= iou_threshold:
                    ignored.append(int(i))
                    continue
            best = float(ious[i].max()) if len(gt_ids) else 0.0
            best_j = int(ious[i].argmax()) if len(gt_ids) else -1
            if best >= iou_threshold and gt_pred[best_j] >= 0 and \
                    gt_ids[best_j] == pred_ids[i]:
                kind = "duplicate"
            elif best >= 0.1:
                kind = "localization"
            else:
                kind = "background"
            false_positives.append({"pred": int(i), "class_id": int(pred_ids[i]),
                                    "class_name": class_name(names, pred_ids[i]),
                                    "score": float(scores[i]), "best_iou": best,
                                    "kind": kind})
        misses = []
        for j in range(len(gt_ids)):
            if gt_pred[j] >= 0 or j in confused_gt:
                continue
            best = float(ious[keep, j].max()) if len(keep) else 0.0
            misses.append({"gt": int(j), "class_id": int(gt_ids[j]),
                           "class_name": class_name(names, gt_ids[j]), "best_iou": best,
                           "area": int(gt_masks[..., j].sum())})
        ap50, *_ = compute_ap(extract_bboxes(gt_masks), gt_ids, gt_masks,
                              np.asarray(r["rois"]).reshape(-1, 4)[keep], pred_ids[keep],
                              scores[keep], pred_masks[..., keep], iou_threshold=iou_threshold)
        matched_ious = [m["iou"] for m in matches]
        out.append({
            "image_id": int(image_id), "index": index,
            "reference": str(dataset.image_reference(image_id)),
            "num_gt": int(len(gt_ids)), "num_pred": int(len(keep)),
            "matches": matches, "matched_ious": matched_ious,
            "mean_iou": float(np.mean(matched_ious)) if matched_ious else None,
            "false_positives": false_positives, "misses": misses, "confusions": confusions,
            "ignored": ignored, "ap50": float(ap50),
            "num_errors": len(false_positives) + len(misses) + len(confusions)})
    return out


def worst_images(analysis, k=20):
    """The ``k`` worst entries of :func:`analyze_errors`, worst first: lowest AP50, then
    most errors, then lowest mean IoU of the matches."""
    def key(a):
        return (a["ap50"], -a["num_errors"],
                a["mean_iou"] if a["mean_iou"] is not None else 0.0, a["image_id"])
    return sorted(analysis, key=key)[:k]


def summarize_errors(analysis):
    """Totals over images: images, ground truth, predictions, matches, errors by kind."""
    fp_kinds = {}
    for a in analysis:
        for fp in a["false_positives"]:
            fp_kinds[fp["kind"]] = fp_kinds.get(fp["kind"], 0) + 1
    ious = [v for a in analysis for v in a["matched_ious"]]
    return {"images": len(analysis),
            "ground_truth": sum(a["num_gt"] for a in analysis),
            "predictions": sum(a["num_pred"] for a in analysis),
            "matches": sum(len(a["matches"]) for a in analysis),
            "false_positives": sum(len(a["false_positives"]) for a in analysis),
            "false_positive_kinds": fp_kinds,
            "misses": sum(len(a["misses"]) for a in analysis),
            "confusions": sum(len(a["confusions"]) for a in analysis),
            "mean_matched_iou": float(np.mean(ious)) if ious else None,
            "mean_ap50": float(np.mean([a["ap50"] for a in analysis])) if analysis else None}
