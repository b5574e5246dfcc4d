"""Measure a model: COCO metrics through pycocotools, matterport's AP, and error analysis.

    from colabrcnn import evaluate
    metrics = evaluate.coco_metrics(model, val_dataset)          # runs detect() itself
    metrics["segm"]["AP50"], metrics["per_class"]["balloon"]["segm"]

    results = model.detect(images)                               # or bring your own results
    metrics = evaluate.coco_metrics_from_results(val_dataset, results, image_ids)
    analysis = evaluate.analyze_errors(val_dataset, results, image_ids)
    evaluate.html_report(val_dataset, results, analysis, model.log_dir)   # errors.html

Metric values are floats in [0, 1], or **None where COCO leaves them undefined**
(pycocotools writes -1): a class, or an object-size range (small/medium/large), with no
ground truth in the evaluated images. None is never averaged in: the overall AP is the
mean over the classes that have ground truth, as in COCO. Images without any prediction
count with all their ground truth missed (AP 0 if no image has a prediction), never NaN.

Ground truth comes from the Dataset: ``load_mask`` (instances whose class id is negative
are crowd regions, matterport's convention) and, where the dataset has it,
``load_crowd_mask`` (COCO ``iscrowd=1`` regions of the annotation readers). Crowd regions
are COCO crowd annotations: detections on them are neither matched nor penalised.
Boxes follow the package convention (y1, x1, y2, x2) with exclusive ends, which becomes
COCO's [x, y, width, height]. Category ids are the dataset's internal class ids.
"""
from __future__ import annotations

import contextlib
import html
import io
import json
import os
import urllib.parse

import numpy as np

from .utils import (compute_ap, compute_ap_range, compute_matches,  # noqa: F401 (re-exported)
                    compute_overlaps_masks, extract_bboxes)

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl",
                "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
IOU_TYPES = ("bbox", "segm")

__all__ = ["coco_metrics", "coco_metrics_from_results", "evaluate_ap", "evaluate_model",
           "compute_ap",
           "compute_ap_range", "compute_matches", "analyze_errors", "worst_images",
           "summarize_errors",
           "html_report", "format_metrics", "build_coco_ground_truth", "result_annotations",
           "to_coco_results", "encode_mask", "METRIC_NAMES"]


def _progress(iterable=None, total=None, desc=None, verbose=1):
    from tqdm.auto import tqdm
    return tqdm(iterable, total=total, desc=desc, disable=not verbose, leave=verbose > 1)


# ------------------------------------------------------------------ COCO records
def encode_mask(mask):
    """H x W bool mask -> COCO RLE {"size": [h, w], "counts": str} (JSON-ready)."""
    from pycocotools import mask as mask_util
    rle = mask_util.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _xywh(box):
    """(y1, x1, y2, x2), exclusive ends -> COCO [x, y, w, h] as plain floats."""
    y1, x1, y2, x2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


def _dataset_crowd(dataset, image_id, masks, class_ids):
    """(instance masks, class ids, crowd masks, crowd class ids) of one image."""
    class_ids = np.asarray(class_ids, dtype=np.int64)
    crowd = class_ids < 0
    crowd_masks, crowd_ids = masks[..., crowd], -class_ids[crowd]
    masks, class_ids = masks[..., ~crowd], class_ids[~crowd]
    if hasattr(dataset, "load_crowd_mask"):
        cm, cid = dataset.load_crowd_mask(image_id)
        if len(cid):
            crowd_masks = np.concatenate([crowd_masks, cm.astype(bool)], axis=-1)
            crowd_ids = np.concatenate([crowd_ids, np.abs(np.asarray(cid, np.int64))])
    return masks, class_ids, crowd_masks, crowd_ids


def ground_truth_annotations(dataset, image_id):
    """One image's COCO image entry and ground-truth annotations (without ids)."""
    masks, class_ids = dataset.load_mask(image_id)
    masks = np.asarray(masks, dtype=bool)
    h, w = masks.shape[:2]
    masks, class_ids, crowd_masks, crowd_ids = _dataset_crowd(dataset, image_id, masks,
                                                              class_ids)
    anns = []
    for group, ids, iscrowd in ((masks, class_ids, 0), (crowd_masks, crowd_ids, 1)):
        boxes = extract_bboxes(group)
        for i in range(len(ids)):
            area = int(group[..., i].sum())
            if area == 0:
                continue
            anns.append({"image_id": int(image_id), "category_id": int(ids[i]),
                         "segmentation": encode_mask(group[..., i]), "area": float(area),
                         "bbox": _xywh(boxes[i]), "iscrowd": iscrowd})
    image = {"id": int(image_id), "height": int(h), "width": int(w),
             "file_name": str(dataset.image_reference(image_id))}
    return image, anns


def result_annotations(image_id, result, min_score=None):
    """A detect() result dict -> COCO result annotations (bbox, RLE mask, score)."""
    rois = np.asarray(result["rois"]).reshape(-1, 4)
    class_ids = np.asarray(result["class_ids"]).reshape(-1)
    scores = np.asarray(result.get("scores", np.ones(len(class_ids)))).reshape(-1)
    masks = result.get("masks")
    anns = []
    for i in range(len(class_ids)):
        if min_score is not None and scores[i] < min_score:
            continue
        ann = {"image_id": int(image_id), "category_id": int(class_ids[i]),
               "bbox": _xywh(rois[i]), "score": float(scores[i])}
        if masks is not None:
            ann["segmentation"] = encode_mask(np.asarray(masks)[..., i])
        anns.append(ann)
    return anns


def to_coco_results(results, image_ids, min_score=None):
    """detect() results for ``image_ids`` -> one list in COCO's results format."""
    image_ids = list(image_ids)
    if len(image_ids) != len(results):
        raise ValueError(f"{len(results)} results for {len(image_ids)} image ids")
    out = []
    for image_id, r in zip(image_ids, results):
        out.extend(result_annotations(image_id, r, min_score))
    return out


def _category_names(dataset):
    names = list(getattr(dataset, "class_names", None) or
                 [c["name"] for c in dataset.class_info])
    cats, seen = [], set()
    for cid in range(1, len(names)):
        name = str(names[cid])
        if name in seen:  # two sources can share a class name: keep keys apart
            name = f"{name} ({cid})"
        seen.add(name)
        cats.append({"id": cid, "name": name})
    return cats


def _make_coco(images, categories, anns):
    from pycocotools.coco import COCO
    coco = COCO()
    coco.dataset = {"images": list(images), "categories": list(categories),
                    "annotations": [dict(a, id=k + 1) for k, a in enumerate(anns)]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def build_coco_ground_truth(dataset, image_ids=None, verbose=0):
    """A pycocotools COCO object holding the dataset's ground truth for ``image_ids``."""
    image_ids = list(dataset.image_ids if image_ids is None else image_ids)
    images, anns = [], []
    for image_id in _progress(image_ids, desc="ground truth", verbose=verbose):
        image, a = ground_truth_annotations(dataset, image_id)
        images.append(image)
        anns.extend(a)
    return _make_coco(images, _category_names(dataset), anns)


# ------------------------------------------------------------------ COCO evaluation
def _mean_valid(values):
    values = np.asarray(values, dtype=np.float64)
    values = values[values > -1]
    return float(values.mean()) if values.size else None


def _run_cocoeval(coco_gt, dt_anns, iou_type):
    """COCOeval after evaluate() and accumulate(), quietly; handles no detections."""
    from pycocotools import mask as mask_util
    from pycocotools.cocoeval import COCOeval
    dts = []
    for a in dt_anns:
        a = dict(a, iscrowd=0)
        if iou_type == "segm":
            # Area from the mask, so small/medium/large mean the same as for the GT
            # (loadRes would use the box area when a result has a box).
            a["area"] = float(mask_util.area(a["segmentation"]))
        else:
            a["area"] = float(a["bbox"][2] * a["bbox"][3])
            a.pop("segmentation", None)
        dts.append(a)
    coco_dt = _make_coco(coco_gt.dataset["images"], coco_gt.dataset["categories"], dts)
    ev = COCOeval(coco_gt, coco_dt, iou_type)
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
        ev.accumulate()
    return ev


def _summary(ev):
    """The 12 numbers of COCOeval.summarize(), with -1 turned into None."""
    p = ev.params
    precision = ev.eval["precision"]      # [T, R, K, A, M]
    recall = ev.eval["recall"]            # [T, K, A, M]
    area = {lbl: i for i, lbl in enumerate(p.areaRngLbl)}
    m100 = p.maxDets.index(100) if 100 in p.maxDets else len(p.maxDets) - 1
    t50 = int(np.argmin(np.abs(p.iouThrs - 0.5)))
    t75 = int(np.argmin(np.abs(p.iouThrs - 0.75)))
    out = {
        "AP": _mean_valid(precision[:, :, :, area["all"], m100]),
        "AP50": _mean_valid(precision[t50, :, :, area["all"], m100]),
        "AP75": _mean_valid(precision[t75, :, :, area["all"], m100]),
        "APs": _mean_valid(precision[:, :, :, area["small"], m100]),
        "APm": _mean_valid(precision[:, :, :, area["medium"], m100]),
        "APl": _mean_valid(precision[:, :, :, area["large"], m100]),
    }
    for i, md in enumerate(p.maxDets):
        out[f"AR{md}"] = _mean_valid(recall[:, :, area["all"], i])
    out["ARs"] = _mean_valid(recall[:, :, area["small"], m100])
    out["ARm"] = _mean_valid(recall[:, :, area["medium"], m100])
    out["ARl"] = _mean_valid(recall[:, :, area["large"], m100])
    return {k: out.get(k) for k in METRIC_NAMES}


def _per_class(ev):
    """{category id: AP (0.5:0.95, all areas, 100 detections) or None}."""
    p = ev.params
    m100 = p.maxDets.index(100) if 100 in p.maxDets else len(p.maxDets) - 1
    precision = ev.eval["precision"]
    return {int(cid): _mean_valid(precision[:, :, k, 0, m100])
            for k, cid in enumerate(p.catIds)}


def _metrics(coco_gt, dt_anns, out_json=None):
    categories = coco_gt.dataset["categories"]
    metrics, per_class = {}, {c["name"]: {} for c in categories}
    has_masks = all("segmentation" in a for a in dt_anns)
    for iou_type in IOU_TYPES:
        if iou_type == "segm" and not has_masks:
            metrics[iou_type] = {k: None for k in METRIC_NAMES}
            for c in categories:
                per_class[c["name"]][iou_type] = None
            continue
        ev = _run_cocoeval(coco_gt, dt_anns, iou_type)
        metrics[iou_type] = _summary(ev)
        by_id = _per_class(ev)
        for c in categories:
            per_class[c["name"]][iou_type] = by_id.get(c["id"])
    gt = coco_gt.dataset["annotations"]
    with_pred = {a["image_id"] for a in dt_anns}
    metrics["per_class"] = per_class
    metrics["num_images"] = len(coco_gt.dataset["images"])
    metrics["num_ground_truth"] = sum(1 for a in gt if not a["iscrowd"])
    metrics["num_crowd"] = sum(1 for a in gt if a["iscrowd"])
    metrics["num_predictions"] = len(dt_anns)
    metrics["images_without_predictions"] = sum(
        1 for im in coco_gt.dataset["images"] if im["id"] not in with_pred)
    if out_json:
        _write_json(out_json, metrics)
    return metrics


def _write_json(path, data):
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)
    return path


def coco_metrics_from_results(dataset, results, image_ids=None, out_json=None,
                              min_score=None, verbose=0):
    """COCO bbox and mask metrics of detect()-style results against the dataset.

    results: one dict per image of ``image_ids`` (default: all of the dataset's), with
    ``rois`` [N, (y1, x1, y2, x2)], ``class_ids`` [N], ``scores`` [N], ``masks`` H x W x N
    (without ``masks``, the segm metrics are None). Returns::

        {"bbox": {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100",
                  "ARs", "ARm", "ARl"},
         "segm": {...the same...},
         "per_class": {class name: {"bbox": AP, "segm": AP}},
         "num_images", "num_ground_truth", "num_crowd", "num_predictions",
         "images_without_predictions"}

    Values are None where COCO leaves them undefined (see the module docstring). With
    ``out_json`` the dict is also written there as JSON (None -> null).
    """
    image_ids = list(dataset.image_ids if image_ids is None else image_ids)
    results = list(results)
    if len(results) != len(image_ids):
        raise ValueError(f"got {len(results)} results for {len(image_ids)} images; pass "
                         f"image_ids in the order of the results")
    coco_gt = build_coco_ground_truth(dataset, image_ids, verbose=verbose)
    dt = to_coco_results(results, image_ids, min_score=min_score)
    return _metrics(coco_gt, dt, out_json)


def _select_ids(dataset, image_ids, limit):
    image_ids = list(dataset.image_ids if image_ids is None else image_ids)
    return image_ids[:limit] if limit else image_ids


def _detect_stream(model, dataset, image_ids, batch_size=None, verbose=1, desc="detect"):
    """Yield (image_id, result) with a progress bar, batch by batch (masks are not kept)."""
    bs = int(batch_size or getattr(getattr(model, "config", None), "BATCH_SIZE", 1) or 1)
    bar = _progress(total=len(image_ids), desc=desc, verbose=verbose)
    try:
        for start in range(0, len(image_ids), bs):
            chunk = image_ids[start:start + bs]
            results = model.detect([dataset.load_image(i) for i in chunk])
            for image_id, r in zip(chunk, results):
                yield image_id, r
            bar.update(len(chunk))
    finally:
        bar.close()


def _default_json(model, name):
    log_dir = getattr(model, "log_dir", None)
    if log_dir and os.path.isdir(log_dir):
        return os.path.join(log_dir, name)
    return None


def coco_metrics(model, dataset, image_ids=None, limit=None, out_json=None, verbose=1,
                 batch_size=None, min_score=None, results_json=None):
    """Run ``model.detect`` over the dataset and compute COCO metrics (see
    :func:`coco_metrics_from_results` for the returned dict).

    limit: only the first ``limit`` images. Masks are turned into RLE image by image, so
    memory does not grow with full-size masks. out_json: where to write the metrics;
    None writes ``coco_metrics.json`` in the model's run folder when that folder exists,
    False writes nothing. results_json: also write the detections in COCO results format.
    """
    image_ids = _select_ids(dataset, image_ids, limit)
    images, gt, dt = [], [], []
    for image_id, r in _detect_stream(model, dataset, image_ids, batch_size, verbose):
        image, anns = ground_truth_annotations(dataset, image_id)
        images.append(image)
        gt.extend(anns)
        dt.extend(result_annotations(image_id, r, min_score))
    coco_gt = _make_coco(images, _category_names(dataset), gt)
    if out_json is None:
        out_json = _default_json(model, "coco_metrics.json")
    if results_json:
        _write_json(results_json, dt)
    metrics = _metrics(coco_gt, dt, out_json or None)
    if verbose:
        print(format_metrics(metrics))
    return metrics


def evaluate_ap(model, dataset, image_ids=None, limit=None, iou_threshold=0.5, verbose=1,
                batch_size=None, return_per_image=False):
    """matterport's metric: mean over images of the per-image mask AP at one IoU.

    Returns the mean (float), or (mean, [AP per image]) with ``return_per_image``.
    Crowd regions are left out of the ground truth.
    """
    image_ids = _select_ids(dataset, image_ids, limit)
    aps = []
    for image_id, r in _detect_stream(model, dataset, image_ids, batch_size, verbose,
                                      desc="AP"):
        gt_masks, gt_ids = dataset.load_mask(image_id)
        gt_masks, gt_ids, _, _ = _dataset_crowd(dataset, image_id,
                                                np.asarray(gt_masks, bool), gt_ids)
        ap, *_ = compute_ap(extract_bboxes(gt_masks), gt_ids, gt_masks, r["rois"],
                            r["class_ids"], r["scores"], r["masks"],
                            iou_threshold=iou_threshold)
        aps.append(float(ap))
    mean = float(np.mean(aps)) if aps else 0.0
    if verbose:
        print(f"mAP@{iou_threshold:.2f} over {len(aps)} images: {mean:.3f}")
    return (mean, aps) if return_per_image else mean


def evaluate_model(model, dataset, out_dir, image_ids=None, limit=None, k=20,
                   iou_threshold=0.5, min_score=None, batch_size=None, verbose=1):
    """Everything at once, in one pass over the images (masks are not kept): COCO
    metrics (``out_dir/coco_metrics.json``), per-class AP chart (``per_class_ap.png``),
    error analysis (``error_analysis.json``) and the error browser (``errors.html``,
    the ``k`` worst images, detected again for their pictures; k=0: no report).

    Returns {"metrics", "analysis", "metrics_json", "per_class_png", "analysis_json",
    "report"}.
    """
    from . import visualize
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    image_ids = _select_ids(dataset, image_ids, limit)
    images, gt, dt, analysis = [], [], [], []
    for index, (image_id, r) in enumerate(
            _detect_stream(model, dataset, image_ids, batch_size, verbose)):
        image, anns = ground_truth_annotations(dataset, image_id)
        images.append(image)
        gt.extend(anns)
        dt.extend(result_annotations(image_id, r, min_score))
        a = analyze_errors(dataset, [r], [image_id], iou_threshold, min_score)[0]
        a["index"] = index
        analysis.append(a)
    coco_gt = _make_coco(images, _category_names(dataset), gt)
    metrics_json = os.path.join(out_dir, "coco_metrics.json")
    metrics = _metrics(coco_gt, dt, metrics_json)
    if verbose:
        print(format_metrics(metrics))
    per_class_png = os.path.join(out_dir, "per_class_ap.png")
    fig = visualize.plot_per_class_ap(metrics, per_class_png)
    import matplotlib.pyplot as plt
    plt.close(fig)
    analysis_json = _write_json(os.path.join(out_dir, "error_analysis.json"),
                                {"summary": summarize_errors(analysis), "images": analysis})
    report = None
    if k:
        worst = worst_images(analysis, k)
        again = model.detect([dataset.load_image(a["image_id"]) for a in worst]) \
            if worst else []
        results = {a["index"]: r for a, r in zip(worst, again)}
        report = html_report(dataset, results, analysis, out_dir, k=k)
        if verbose:
            print(f"error browser: {report}")
    return {"metrics": metrics, "analysis": analysis, "metrics_json": metrics_json,
            "per_class_png": per_class_png, "analysis_json": analysis_json,
            "report": report}


def format_metrics(metrics):
    """A small text table of the metrics (None printed as 'n/a')."""
    def fmt(v):
        return "  n/a" if v is None else f"{v:5.3f}"
    lines = [f"{'':6}" + "".join(f"{k:>7}" for k in METRIC_NAMES)]
    for t in IOU_TYPES:
        if t in metrics:
            lines.append(f"{t:6}" + "".join(f"{fmt(metrics[t][k]):>7}" for k in METRIC_NAMES))
    per_class = metrics.get("per_class") or {}
    if per_class:
        width = max(10, max(len(n) for n in per_class))
        lines.append("")
        lines.append(f"{'class':{width}}  bbox AP  segm AP")
        for name, v in per_class.items():
            lines.append(f"{name:{width}}  {fmt(v.get('bbox')):>7}  {fmt(v.get('segm')):>7}")
    return "\n".join(lines)


# ------------------------------------------------------------------ error analysis
def _name(class_names, cid):
    cid = int(cid)
    if class_names is not None and 0 <= cid < len(class_names):
        return str(class_names[cid])
    return str(cid)


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
        gt_masks, gt_ids, crowd_masks, _ = _dataset_crowd(
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
                    "class_name": _name(names, gt_ids[j]), "iou": float(ious[gt_pred[j], j]),
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
                               "gt_class": _name(names, gt_ids[j]),
                               "pred_class_id": int(pred_ids[i]),
                               "pred_class": _name(names, pred_ids[i]), "iou": float(iou),
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
                                    "class_name": _name(names, pred_ids[i]),
                                    "score": float(scores[i]), "best_iou": best,
                                    "kind": kind})
        misses = []
        for j in range(len(gt_ids)):
            if gt_pred[j] >= 0 or j in confused_gt:
                continue
            best = float(ious[keep, j].max()) if len(keep) else 0.0
            misses.append({"gt": int(j), "class_id": int(gt_ids[j]),
                           "class_name": _name(names, gt_ids[j]), "best_iou": best,
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


# ------------------------------------------------------------------ HTML report
ERROR_COLOR = (255, 0, 0)       # misses and false positives
CONFUSION_COLOR = (255, 140, 0)  # class confusions


def _outline(image, boxes, color, thickness=2):
    import cv2
    for y1, x1, y2, x2 in boxes:
        cv2.rectangle(image, (int(x1), int(y1)), (max(int(x1), int(x2) - 1),
                                                  max(int(y1), int(y2) - 1)),
                      color, thickness)
    return image


def _thumbnail(image, size):
    import cv2
    h, w = image.shape[:2]
    scale = min(1.0, float(size) / max(h, w))
    if scale < 1.0:
        image = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))),
                           interpolation=cv2.INTER_AREA)
    return image


def _href(target, out_dir):
    """A relative (else absolute file://) link from the report folder to ``target``."""
    target = os.path.abspath(str(target))
    try:
        rel = os.path.relpath(target, out_dir)
    except ValueError:  # another drive on Windows
        return "file://" + urllib.parse.quote(target.replace(os.sep, "/"))
    return urllib.parse.quote(rel.replace(os.sep, "/"))


def html_report(dataset, results, analysis, out_dir, k=20, thumb_size=320,
                title="colabrcnn error browser", name="errors.html"):
    """Write ``out_dir/errors.html``: the ``k`` worst images with ground truth and
    prediction overlays (PNG thumbnails in ``out_dir/errors/``), their errors, and links
    to each image file and annotation file. Returns the HTML path.

    In the overlays, missed ground truth and false positives have red boxes, class
    confusions orange ones. ``results`` and ``analysis`` are those given to and returned
    by :func:`analyze_errors` (``analysis[i]["index"]`` points into ``results``).
    """
    from . import visualize

    out_dir = os.path.abspath(str(out_dir))
    thumbs = os.path.join(out_dir, "errors")
    os.makedirs(thumbs, exist_ok=True)
    names = getattr(dataset, "class_names", None)
    summary = summarize_errors(analysis)
    esc = html.escape
    rows = []
    for rank, a in enumerate(worst_images(analysis, k), start=1):
        image_id, r = a["image_id"], results[a["index"]]
        image = dataset.load_image(image_id)
        gt_masks, gt_ids = dataset.load_mask(image_id)
        gt_masks, gt_ids, _, _ = _dataset_crowd(dataset, image_id,
                                                np.asarray(gt_masks, bool), gt_ids)
        gt_boxes = extract_bboxes(gt_masks)
        gt_img = visualize.draw_instances(image, gt_boxes, gt_masks, gt_ids, names)
        _outline(gt_img, [gt_boxes[m["gt"]] for m in a["misses"]], ERROR_COLOR)
        _outline(gt_img, [gt_boxes[c["gt"]] for c in a["confusions"]], CONFUSION_COLOR)
        rois = np.asarray(r["rois"]).reshape(-1, 4)
        pred_img = visualize.draw_instances(image, rois, r["masks"], r["class_ids"], names,
                                            r["scores"])
        _outline(pred_img, [rois[f["pred"]] for f in a["false_positives"]], ERROR_COLOR)
        _outline(pred_img, [rois[c["pred"]] for c in a["confusions"]], CONFUSION_COLOR)
        stem = f"{rank:03d}_image{image_id}"
        gt_png = os.path.join(thumbs, stem + "_gt.png")
        pred_png = os.path.join(thumbs, stem + "_pred.png")
        visualize.save_image(gt_png, _thumbnail(gt_img, thumb_size))
        visualize.save_image(pred_png, _thumbnail(pred_img, thumb_size))

        info = dataset.image_info[image_id] if image_id < len(dataset.image_info) else {}
        image_file = info.get("path")
        ann_file = info.get("file")
        img_link = _href(image_file, out_dir) if image_file else None
        ann_link = _href(ann_file, out_dir) if ann_file else None

        def linked(inner, href):
            return f'<a href="{esc(href)}">{inner}</a>' if href else inner

        gt_thumb = f'<img src="{esc(_href(gt_png, out_dir))}" alt="ground truth">'
        pred_thumb = f'<img src="{esc(_href(pred_png, out_dir))}" alt="prediction">'
        errors = []
        for m in a["misses"]:
            errors.append(f"missed {esc(m['class_name'])} #{m['gt']} "
                          f"(best IoU {m['best_iou']:.2f}, {m['area']} px)")
        for f in a["false_positives"]:
            errors.append(f"false positive {esc(f['class_name'])} #{f['pred']} "
                          f"score {f['score']:.2f} ({f['kind']}, IoU {f['best_iou']:.2f})")
        for c in a["confusions"]:
            errors.append(f"{esc(c['gt_class'])} #{c['gt']} predicted as "
                          f"{esc(c['pred_class'])} #{c['pred']} (IoU {c['iou']:.2f}, "
                          f"score {c['score']:.2f})")
        mean_iou = "n/a" if a["mean_iou"] is None else f"{a['mean_iou']:.2f}"
        links = [linked("image", img_link)] if img_link else ["(embedded image)"]
        if ann_link:
            links.append(linked("annotations", ann_link))
        rows.append(
            f'<tr id="image-{image_id}"><td>{rank}</td>'
            f'<td class="name">{esc(a["reference"])}<br>{" | ".join(links)}<br>'
            f'AP50 {a["ap50"]:.2f}, mean IoU {mean_iou}<br>GT {a["num_gt"]}, '
            f'predicted {a["num_pred"]}, matched {len(a["matches"])}</td>'
            f'<td>{linked(gt_thumb, ann_link or img_link)}</td>'
            f'<td>{linked(pred_thumb, img_link)}</td>'
            f'<td><ul>{"".join(f"<li>{e}</li>" for e in errors) or "<li>none</li>"}'
            f'</ul></td></tr>')

    def num(v):
        return "n/a" if v is None else f"{v:.3f}"
    kinds = ", ".join(f"{k}: {v}" for k, v in sorted(summary["false_positive_kinds"].items()))
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 1em; }}
table {{ border-collapse: collapse; }}
td, th {{ border: 1px solid #ccc; padding: 4px; vertical-align: top; }}
td.name {{ max-width: 18em; word-break: break-all; }}
img {{ max-width: {int(thumb_size)}px; }}
.legend span {{ padding: 0 .4em; color: white; }}
</style></head><body>
<h1>{esc(title)}</h1>
<p>{summary["images"]} images, {summary["ground_truth"]} ground-truth instances,
{summary["predictions"]} predictions: {summary["matches"]} matched (mean mask IoU
{num(summary["mean_matched_iou"])}), {summary["misses"]} missed,
{summary["false_positives"]} false positives ({esc(kinds) or "none"}),
{summary["confusions"]} class confusions. Mean AP50 per image {num(summary["mean_ap50"])}.</p>
<p class="legend">Boxes: <span style="background:#f00">missed / false positive</span>
<span style="background:#ff8c00">class confusion</span>. Showing the {len(rows)} worst
images (lowest AP50 first).</p>
<table><tr><th>#</th><th>image</th><th>ground truth</th><th>prediction</th>
<th>errors</th></tr>
{chr(10).join(rows)}
</table></body></html>
"""
    path = os.path.join(out_dir, name)
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
    return path
