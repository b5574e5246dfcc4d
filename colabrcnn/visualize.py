"""Pictures of instances: overlays of masks, boxes, class names and scores.

Two families:

* OpenCV, array in -> array out (fast, for files and videos): :func:`draw_instances`,
  :func:`save_image`.
* matplotlib, matterport's functions (for notebooks): :func:`display_instances`,
  :func:`display_differences`, :func:`display_top_masks`, :func:`display_images`, and
  plots of a run: :func:`plot_history` (loss curves) and :func:`plot_per_class_ap`.
  Each returns its Axes/Figure; with no ``ax`` given it is also shown when matplotlib
  has an interactive backend (Colab's inline one), as matterport did.

Colours are stable per class (:func:`class_color`), so "balloon" is the same colour in
every picture and every run.
"""
from __future__ import annotations

import colorsys
import hashlib
import os

import cv2
import numpy as np


def class_color(class_id, class_name=None):
    """A stable, bright RGB colour per class (same class -> same colour, every run)."""
    key = (class_name or str(int(class_id))).encode("utf8")
    hue = int(hashlib.md5(key).hexdigest()[:8], 16) / 0xFFFFFFFF
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return (int(r * 255), int(g * 255), int(b * 255))


def draw_instances(image, boxes, masks, class_ids, class_names=None, scores=None,
                   alpha=0.5, show_boxes=True, show_labels=True):
    """Overlay instances on an RGB uint8 image with OpenCV; returns a new array.

    boxes [N, (y1, x1, y2, x2)], masks [H, W, N] bool, class_ids [N], scores [N] or None.
    Only pixels inside masks (and box outlines and labels) change.
    """
    out = np.array(image, dtype=np.uint8, copy=True)
    n = len(class_ids)
    masks = np.asarray(masks, dtype=bool) if masks is not None else None
    for i in range(n):
        cid = int(class_ids[i])
        name = class_names[cid] if class_names is not None and cid < len(class_names) \
            else str(cid)
        color = np.array(class_color(cid, name), dtype=np.float32)
        if masks is not None and masks.shape[-1] > i:
            m = masks[..., i]
            out[m] = (out[m] * (1 - alpha) + color * alpha).astype(np.uint8)
        if boxes is not None and (show_boxes or show_labels):
            y1, x1, y2, x2 = [int(v) for v in boxes[i]]
            c = tuple(int(v) for v in color)
            if show_boxes:
                cv2.rectangle(out, (x1, y1), (max(x1, x2 - 1), max(y1, y2 - 1)), c, 1)
            if show_labels:
                label = name if scores is None else f"{name} {float(scores[i]):.2f}"
                cv2.putText(out, label, (x1, max(10, y1 - 3)), cv2.FONT_HERSHEY_SIMPLEX,
                            0.35, c, 1, cv2.LINE_AA)
    return out


def save_image(path, image):
    """Write an RGB uint8 image (PNG/JPEG by extension)."""
    ok = cv2.imwrite(str(path), cv2.cvtColor(np.asarray(image, np.uint8), cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"could not write image {path}")
    return path


# ------------------------------------------------------------------ matplotlib helpers
NON_INTERACTIVE = ("agg", "pdf", "ps", "svg", "pgf", "cairo", "template")


def _plt():
    import matplotlib.pyplot as plt
    return plt


def _maybe_show(fig):
    import matplotlib
    if matplotlib.get_backend().lower() not in NON_INTERACTIVE:
        _plt().show()


def _save(fig, out_png):
    if out_png:
        folder = os.path.dirname(os.path.abspath(str(out_png)))
        os.makedirs(folder, exist_ok=True)
        fig.savefig(str(out_png), dpi=100, bbox_inches="tight")


def _unit_color(color):
    """An RGB(A) colour in 0..1, from 0..1 floats or 0..255 values."""
    c = [float(v) for v in color]
    if any(v > 1.0 for v in c[:3]):
        c = [v / 255.0 for v in c[:3]] + c[3:]
    return tuple(c)


def instance_colors(class_ids, class_names=None):
    """One 0..1 RGB colour per instance: its class's stable colour."""
    out = []
    for cid in class_ids:
        cid = int(cid)
        name = class_names[cid] if class_names is not None and 0 <= cid < len(class_names) \
            else None
        out.append(_unit_color(class_color(cid, name)))
    return out


def apply_mask(image, mask, color, alpha=0.5):
    """Blend ``color`` (0..1 RGB) into ``image`` where ``mask`` is set (in place)."""
    color = _unit_color(color)
    for c in range(3):
        image[:, :, c] = np.where(mask == 1,
                                  image[:, :, c] * (1 - alpha) + alpha * color[c] * 255,
                                  image[:, :, c])
    return image


def mask_contours(mask):
    """Outline polygons of a mask as (K, 2) arrays of (x, y), holes included."""
    from skimage.measure import find_contours
    padded = np.zeros((mask.shape[0] + 2, mask.shape[1] + 2), dtype=np.uint8)
    padded[1:-1, 1:-1] = mask
    # Subtract the padding and flip (y, x) to (x, y).
    return [np.fliplr(v) - 1 for v in find_contours(padded, 0.5)]


# ------------------------------------------------------------------ matterport's displays
def display_instances(image, boxes, masks, class_ids, class_names, scores=None, title="",
                      figsize=(16, 16), ax=None, show_mask=True, show_bbox=True,
                      colors=None, captions=None):
    """matterport's picture of instances (matplotlib).

    boxes [N, (y1, x1, y2, x2)] pixels, masks [H, W, N], class_ids [N], class_names
    (list indexed by class id), scores [N] or None. colors: one colour per instance
    (0..1 or 0..255 RGB; default: each class's stable colour). captions: one string per
    instance (default "name score"). Adds per instance one Rectangle patch (show_bbox) and
    one Polygon patch per mask outline (show_mask). Returns the Axes.
    """
    plt = _plt()
    from matplotlib import patches
    from matplotlib.patches import Polygon

    boxes = np.asarray(boxes).reshape(-1, 4) if boxes is not None else None
    n = len(class_ids)
    if not n:
        print("\n*** No instances to display *** \n")
    elif boxes is not None and boxes.shape[0] != n or \
            (masks is not None and np.asarray(masks).shape[-1] != n):
        raise ValueError(f"{n} class ids but boxes {None if boxes is None else boxes.shape} "
                         f"and masks {None if masks is None else np.asarray(masks).shape}")
    auto_show = ax is None
    if ax is None:
        _, ax = plt.subplots(1, figsize=figsize)
    colors = instance_colors(class_ids, class_names) if colors is None else \
        [_unit_color(c) for c in colors]
    height, width = np.asarray(image).shape[:2]
    ax.set_ylim(height + 10, -10)
    ax.set_xlim(-10, width + 10)
    ax.axis("off")
    ax.set_title(title)

    masked = np.array(image, dtype=np.float64, copy=True)
    if masked.ndim == 2:
        masked = np.stack([masked] * 3, axis=-1)
    for i in range(n):
        color = colors[i]
        if boxes is not None and show_bbox:
            y1, x1, y2, x2 = boxes[i]
            if y2 > y1 and x2 > x1:
                ax.add_patch(patches.Rectangle(
                    (x1, y1), x2 - x1, y2 - y1, linewidth=2, alpha=0.7, linestyle="dashed",
                    edgecolor=color, facecolor="none"))
        if captions is None:
            cid = int(class_ids[i])
            label = class_names[cid] if class_names is not None and \
                0 <= cid < len(class_names) else str(cid)
            caption = f"{label} {float(scores[i]):.3f}" if scores is not None else label
        else:
            caption = captions[i]
        if boxes is not None and caption:
            y1, x1 = boxes[i][:2]
            ax.text(x1, y1 + 8, caption, color="w", size=11, backgroundcolor="none")
        if masks is not None:
            mask = np.asarray(masks)[:, :, i]
            if show_mask:
                masked = apply_mask(masked, mask, color)
                for verts in mask_contours(mask):
                    ax.add_patch(Polygon(verts, facecolor="none", edgecolor=color))
    ax.imshow(np.clip(masked, 0, 255).astype(np.uint8))
    if auto_show:
        _maybe_show(ax.figure)
    return ax


def display_differences(image, gt_box, gt_class_id, gt_mask, pred_box, pred_class_id,
                        pred_score, pred_mask, class_names, title="", ax=None,
                        show_mask=True, show_box=True, iou_threshold=0.5,
                        score_threshold=0.5):
    """Ground truth (green) and predictions (red) on one picture; each prediction's
    caption is "score / IoU" (IoU with its match, else its best overlap). Returns the
    Axes (see :func:`display_instances`)."""
    from .utils import compute_matches

    gt_box = np.asarray(gt_box).reshape(-1, 4)
    pred_box = np.asarray(pred_box).reshape(-1, 4)
    pred_score = np.asarray(pred_score, dtype=np.float64).reshape(-1)
    pred_class_id = np.asarray(pred_class_id).reshape(-1)
    gt_class_id = np.asarray(gt_class_id).reshape(-1)
    # Sort predictions by score, as compute_matches does, so indices agree.
    order = np.argsort(pred_score)[::-1]
    pred_box, pred_class_id, pred_score = pred_box[order], pred_class_id[order], \
        pred_score[order]
    pred_mask = np.asarray(pred_mask)[..., order]
    gt_match, pred_match, overlaps = compute_matches(
        gt_box, gt_class_id, gt_mask, pred_box, pred_class_id, pred_score, pred_mask,
        iou_threshold=iou_threshold, score_threshold=score_threshold)
    colors = [(0, 1, 0, .8)] * len(gt_match) + [(1, 0, 0, 1)] * len(pred_match)
    class_ids = np.concatenate([gt_class_id, pred_class_id])
    scores = np.concatenate([np.zeros(len(gt_match)), pred_score])
    boxes = np.concatenate([gt_box, pred_box])
    masks = np.concatenate([np.asarray(gt_mask, bool), np.asarray(pred_mask, bool)], axis=-1)

    def iou(i):
        if pred_match[i] > -1:
            return overlaps[i, int(pred_match[i])]
        return overlaps[i].max() if overlaps.shape[1] else 0.0
    captions = [""] * len(gt_match) + [f"{pred_score[i]:.2f} / {iou(i):.2f}"
                                       for i in range(len(pred_match))]
    title = title or "Ground Truth and Detections\n GT=green, pred=red, captions: score/IoU"
    return display_instances(image, boxes, masks, class_ids, class_names, scores, ax=ax,
                             show_bbox=show_box, show_mask=show_mask, colors=colors,
                             captions=captions, title=title)


def display_images(images, titles=None, cols=4, cmap=None, norm=None, interpolation=None):
    """A row (or grid) of images with titles; returns the Figure."""
    plt = _plt()
    titles = titles if titles is not None else [""] * len(images)
    rows = len(images) // cols + 1
    fig = plt.figure(figsize=(14, 14 * rows // cols))
    for i, (image, title) in enumerate(zip(images, titles), start=1):
        ax = fig.add_subplot(rows, cols, i)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
        ax.imshow(np.asarray(image).astype(np.uint8) if np.asarray(image).ndim == 3
                  else image, cmap=cmap, norm=norm, interpolation=interpolation)
    _maybe_show(fig)
    return fig


def display_top_masks(image, mask, class_ids, class_names, limit=4):
    """The image and, for the ``limit`` classes with the largest mask area, the union of
    that class's masks (instances numbered); ``limit + 1`` panels. Returns the Figure."""
    to_display = [image]
    titles = ["H x W={}x{}".format(image.shape[0], image.shape[1])]
    class_ids = np.asarray(class_ids).reshape(-1)
    mask = np.asarray(mask)
    unique = np.unique(class_ids)
    area = [np.sum(mask[:, :, np.where(class_ids == i)[0]]) for i in unique]
    top_ids = [v[0] for v in sorted(zip(unique, area), key=lambda r: r[1], reverse=True)
               if v[1] > 0]
    for i in range(limit):
        class_id = top_ids[i] if i < len(top_ids) else -1
        m = mask[:, :, np.where(class_ids == class_id)[0]]
        m = np.sum(m * np.arange(1, m.shape[-1] + 1), -1)
        to_display.append(m)
        titles.append(class_names[class_id] if class_id != -1 else "-")
    return display_images(to_display, titles=titles, cols=limit + 1, cmap="Blues_r")


# ------------------------------------------------------------------ run plots
def _history_dict(csv_or_history):
    if hasattr(csv_or_history, "history"):          # keras History
        return {k: list(v) for k, v in csv_or_history.history.items()}
    if isinstance(csv_or_history, dict):
        return {k: list(v) for k, v in csv_or_history.items()}
    import csv
    with open(csv_or_history, newline="") as f:
        rows = list(csv.DictReader(f))
    out = {}
    for row in rows:
        for k, v in row.items():
            try:
                out.setdefault(k, []).append(float(v))
            except (TypeError, ValueError):
                out.setdefault(k, []).append(float("nan"))
    return out


def plot_history(csv_or_history, out_png=None):
    """Training curves: total loss and the five losses, train and validation.

    Accepts a run's ``log.csv`` (what ``MaskRCNN.train`` writes), a keras History or a
    dict of lists. One panel per loss present; returns the Figure (saved to ``out_png``).
    """
    from .config import LOSS_NAMES
    plt = _plt()
    hist = _history_dict(csv_or_history)
    names = [n for n in ("loss",) + tuple(LOSS_NAMES) if n in hist]
    if not names:
        raise ValueError(f"no loss columns found (have: {sorted(hist)})")
    epochs = hist.get("epoch")
    n_epochs = len(hist[names[0]])
    x = [int(e) + 1 for e in epochs] if epochs and len(epochs) == n_epochs \
        else list(range(1, n_epochs + 1))
    cols = 3
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.5 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        ax.plot(x, hist[name], label="train", marker=".")
        if f"val_{name}" in hist:
            ax.plot(x, hist[f"val_{name}"], label="val", marker=".")
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    for ax in list(axes.flat)[len(names):]:
        ax.remove()
    fig.tight_layout()
    _save(fig, out_png)
    return fig


def plot_per_class_ap(metrics, out_png=None, iou_types=("bbox", "segm")):
    """Bar chart of per-class AP (from ``evaluate.coco_metrics``): one bar per class and
    IoU type; a class with no ground truth (AP None) gets an empty bar marked "n/a".
    Returns the Figure (saved to ``out_png``)."""
    plt = _plt()
    per_class = metrics.get("per_class", metrics)
    names = list(per_class)
    types = [t for t in iou_types if any(t in v for v in per_class.values())] or \
        list(iou_types)
    width = 0.8 / max(1, len(types))
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(names) * len(types) + 2), 4.5))
    x = np.arange(len(names))
    for k, t in enumerate(types):
        values = [per_class[n].get(t) for n in names]
        heights = [0.0 if v is None else float(v) for v in values]
        pos = x + (k - (len(types) - 1) / 2) * width
        ax.bar(pos, heights, width, label=f"{t} AP")
        for p, v in zip(pos, values):
            ax.text(p, 0.01 if v is None else float(v) + 0.01,
                    "n/a" if v is None else f"{v:.2f}", ha="center", va="bottom",
                    fontsize=8)
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=30 if len(names) > 6 else 0, ha="right"
                       if len(names) > 6 else "center")
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("AP (IoU 0.50:0.95)")
    ax.set_title("AP per class")
    ax.legend()
    fig.tight_layout()
    _save(fig, out_png)
    return fig
