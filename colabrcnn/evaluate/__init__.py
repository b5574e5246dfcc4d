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

Modules: :mod:`.coco` (COCO records and metrics), :mod:`.ap` (matterport's AP),
:mod:`.analysis` (error analysis), :mod:`.report` (errors.html and evaluate_model),
:mod:`.common` (what they share). Every name is importable from ``colabrcnn.evaluate``.
"""
from __future__ import annotations

from .analysis import analyze_errors, summarize_errors, worst_images
from .ap import compute_ap, compute_ap_range, compute_matches, evaluate_ap, trim_zeros
from .coco import (IOU_TYPES, METRIC_NAMES, build_coco_ground_truth, coco_metrics,
                   coco_metrics_from_results, encode_mask, format_metrics,
                   ground_truth_annotations, result_annotations, to_coco_results, to_xywh)
from .report import evaluate_model, html_report

__all__ = ["coco_metrics", "coco_metrics_from_results", "evaluate_ap", "evaluate_model",
           "compute_ap", "compute_ap_range", "compute_matches", "trim_zeros",
           "analyze_errors", "worst_images", "summarize_errors", "html_report",
           "format_metrics", "build_coco_ground_truth", "ground_truth_annotations",
           "result_annotations", "to_coco_results", "to_xywh", "encode_mask",
           "METRIC_NAMES", "IOU_TYPES"]
