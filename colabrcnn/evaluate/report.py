"""The error browser (``errors.html``) and ``evaluate_model``, which writes every
result file of an evaluation in one pass over the images."""
from __future__ import annotations

import html
import logging
import os
import urllib.parse

import numpy as np

from .. import visualize
from ..boxes import extract_bboxes
from .analysis import analyze_errors, summarize_errors, worst_images
from .coco import (category_names, compute_metrics, format_metrics, ground_truth_annotations,
                   make_coco, result_annotations)
from .common import detect_stream, select_ids, split_crowd, write_json

logger = logging.getLogger(__name__)

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
        gt_masks, gt_ids, _, _ = split_crowd(dataset, image_id,
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


def evaluate_model(model, dataset, out_dir, image_ids=None, limit=None, k=20,
                   iou_threshold=0.5, min_score=None, batch_size=None, verbose=1):
    """Everything at once, in one pass over the images (masks are not kept): COCO
    metrics (``out_dir/coco_metrics.json``), per-class AP chart (``per_class_ap.png``),
    error analysis (``error_analysis.json``) and the error browser (``errors.html``,
    the ``k`` worst images, detected again for their pictures; k=0: no report).

    Returns {"metrics", "analysis", "metrics_json", "per_class_png", "analysis_json",
    "report"}.
    """
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    image_ids = select_ids(dataset, image_ids, limit)
    images, gt, dt, analysis = [], [], [], []
    for index, (image_id, r) in enumerate(
            detect_stream(model, dataset, image_ids, batch_size, verbose)):
        image, anns = ground_truth_annotations(dataset, image_id)
        images.append(image)
        gt.extend(anns)
        dt.extend(result_annotations(image_id, r, min_score))
        a = analyze_errors(dataset, [r], [image_id], iou_threshold, min_score)[0]
        a["index"] = index
        analysis.append(a)
    coco_gt = make_coco(images, category_names(dataset), gt)
    metrics_json = os.path.join(out_dir, "coco_metrics.json")
    metrics = compute_metrics(coco_gt, dt, metrics_json)
    if verbose:
        logger.info("%s", format_metrics(metrics))
    per_class_png = os.path.join(out_dir, "per_class_ap.png")
    fig = visualize.plot_per_class_ap(metrics, per_class_png)
    import matplotlib.pyplot as plt
    plt.close(fig)
    analysis_json = write_json(os.path.join(out_dir, "error_analysis.json"),
                                {"summary": summarize_errors(analysis), "images": analysis})
    report = None
    if k:
        worst = worst_images(analysis, k)
        again = model.detect([dataset.load_image(a["image_id"]) for a in worst]) \
            if worst else []
        results = {a["index"]: r for a, r in zip(worst, again)}
        report = html_report(dataset, results, analysis, out_dir, k=k)
        if verbose:
            logger.info("error browser: %s", report)
    return {"metrics": metrics, "analysis": analysis, "metrics_json": metrics_json,
            "per_class_png": per_class_png, "analysis_json": analysis_json,
            "report": report}
