"""COCO metrics through pycocotools: ground truth and detections as COCO records,
bbox and segm AP/AR, per class, and a text table of them.

Boxes follow the package convention (y1, x1, y2, x2) with exclusive ends, which becomes
COCO's [x, y, width, height]. Category ids are the dataset's internal class ids.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os

import numpy as np

from ..boxes import extract_bboxes
from .common import detect_stream, progress, select_ids, split_crowd, write_json

logger = logging.getLogger(__name__)

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl",
                "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
IOU_TYPES = ("bbox", "segm")


def encode_mask(mask):
    """H x W bool mask -> COCO RLE {"size": [h, w], "counts": str} (JSON-ready)."""
    from pycocotools import mask as mask_util
    rle = mask_util.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def to_xywh(box):
    """(y1, x1, y2, x2), exclusive ends -> COCO [x, y, w, h] as plain floats."""
    y1, x1, y2, x2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


def ground_truth_annotations(dataset, image_id):
    """One image's COCO image entry and ground-truth annotations (without ids)."""
    masks, class_ids = dataset.load_mask(image_id)
    masks = np.asarray(masks, dtype=bool)
    h, w = masks.shape[:2]
    masks, class_ids, crowd_masks, crowd_ids = split_crowd(dataset, image_id, masks,
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
                         "bbox": to_xywh(boxes[i]), "iscrowd": iscrowd})
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
               "bbox": to_xywh(rois[i]), "score": float(scores[i])}
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


def category_names(dataset):
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


def make_coco(images, categories, anns):
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
    for image_id in progress(image_ids, desc="ground truth", verbose=verbose):
        image, a = ground_truth_annotations(dataset, image_id)
        images.append(image)
        anns.extend(a)
    return make_coco(images, category_names(dataset), anns)


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
    coco_dt = make_coco(coco_gt.dataset["images"], coco_gt.dataset["categories"], dts)
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


def compute_metrics(coco_gt, dt_anns, out_json=None):
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
        write_json(out_json, metrics)
    return metrics


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
    return compute_metrics(coco_gt, dt, out_json)


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
    image_ids = select_ids(dataset, image_ids, limit)
    images, gt, dt = [], [], []
    for image_id, r in detect_stream(model, dataset, image_ids, batch_size, verbose):
        image, anns = ground_truth_annotations(dataset, image_id)
        images.append(image)
        gt.extend(anns)
        dt.extend(result_annotations(image_id, r, min_score))
    coco_gt = make_coco(images, category_names(dataset), gt)
    if out_json is None:
        out_json = _default_json(model, "coco_metrics.json")
    if results_json:
        write_json(results_json, dt)
    metrics = compute_metrics(coco_gt, dt, out_json or None)
    if verbose:
        logger.info("%s", format_metrics(metrics))
    return metrics


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
