"""Pictures of instances: overlays of masks, boxes, class names and scores.

Two families:

* OpenCV, array in -> array out (fast, for files and videos): :func:`draw_instances`,
  :func:`save_image`.
* matplotlib, matterport's functions (for notebooks), with matterport's signatures:
  :func:`display_instances`, :func:`display_differences`, :func:`display_top_masks`,
  :func:`display_images`, :func:`draw_boxes`, :func:`draw_rois`,
  :func:`plot_precision_recall`, :func:`plot_overlaps`, :func:`display_table`,
  :func:`display_weight_stats` (and the helpers :func:`random_colors`,
  :func:`apply_mask`, :func:`draw_box`); plots of a run: :func:`plot_history` (loss
  curves) and :func:`plot_per_class_ap`. Each returns what it drew (Axes, Figure, or
  the table) where matterport returned nothing; with no ``ax`` given a picture is also
  shown when matplotlib has an interactive backend (Colab's inline one), as
  matterport did. All of them work headless (matplotlib's Agg backend).

Colours are stable per class (:func:`class_color`), so "balloon" is the same colour in
every picture and every run.

One module (~600 lines) on purpose: matterport's ``visualize`` is one module and the
migration rule is ``mrcnn.visualize`` -> ``colabrcnn.visualize``, name for name.
"""
from __future__ import annotations

import colorsys
import hashlib
import html
import itertools
import os
import random
import re

import cv2
import numpy as np

from .config import LOSS_NAMES
from .model.transform import unmold_mask


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


def random_colors(N, bright=True):
    """``N`` distinct 0..1 RGB colours (evenly spaced hues, shuffled with Python's
    ``random``, as matterport did): seed ``random`` for a repeatable order."""
    brightness = 1.0 if bright else 0.7
    colors = [colorsys.hsv_to_rgb(i / max(N, 1), 1, brightness) for i in range(N)]
    random.shuffle(colors)
    return colors


def _rgb(color):
    """A 0..1 RGB(A) tuple from a matplotlib colour name or 0..1 / 0..255 values."""
    if isinstance(color, str):
        from matplotlib.colors import to_rgb
        return to_rgb(color)
    return _unit_color(color)


def apply_mask(image, mask, color, alpha=0.5):
    """Blend ``color`` (0..1 RGB) into ``image`` where ``mask`` is set (in place);
    returns ``image``."""
    color = _rgb(color)
    for c in range(3):
        image[:, :, c] = np.where(mask == 1,
                                  image[:, :, c] * (1 - alpha) + alpha * color[c] * 255,
                                  image[:, :, c])
    return image


def draw_box(image, box, color):
    """Draw a box outline 2 pixels wide into ``image`` (in place, OpenCV); returns it.

    box (y1, x1, y2, x2) in pixels; color: 3 ints, in the image's channel order.
    """
    y1, x1, y2, x2 = [int(v) for v in box]
    return cv2.rectangle(image, (x1, y1), (x2, y2), color=tuple(int(c) for c in color),
                         thickness=2)


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
    # lazy: evaluate's report module imports visualize
    from .evaluate.ap import compute_matches

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


def draw_rois(image, rois, refined_rois, mask, class_ids, class_names, limit=10):
    """Training ROIs (dashed; grey for background) and, for positive ones, the refined
    box (solid), its class name and its mask target. Shows at most ``limit`` ROIs
    (drawn at random with ``np.random``) and prints the positive/negative counts.

    rois, refined_rois [N, (y1, x1, y2, x2)] pixels; mask [N, h, w] mask targets;
    class_ids [N] (0: background ROI). Returns the Axes.
    """
    plt = _plt()
    from matplotlib import lines, patches

    rois = np.asarray(rois)
    class_ids = np.asarray(class_ids)
    masked_image = np.array(image, copy=True)
    ids = np.arange(rois.shape[0], dtype=np.int32)
    ids = np.random.choice(ids, limit, replace=False) if ids.shape[0] > limit else ids
    fig, ax = plt.subplots(1, figsize=(12, 12))
    ax.set_title(f"Showing {len(ids)} random ROIs out of {rois.shape[0]}"
                 if rois.shape[0] > limit else f"{len(ids)} ROIs")
    ax.set_ylim(image.shape[0] + 20, -20)
    ax.set_xlim(-50, image.shape[1] + 20)
    ax.axis("off")
    for i in ids:
        color = np.random.rand(3)
        class_id = int(class_ids[i])
        y1, x1, y2, x2 = rois[i]
        ax.add_patch(patches.Rectangle((x1, y1), x2 - x1, y2 - y1, linewidth=2,
                                       edgecolor=color if class_id else "gray",
                                       facecolor="none", linestyle="dashed"))
        if class_id:
            ry1, rx1, ry2, rx2 = refined_rois[i]
            ax.add_patch(patches.Rectangle((rx1, ry1), rx2 - rx1, ry2 - ry1, linewidth=2,
                                           edgecolor=color, facecolor="none"))
            # Join the top-left corners of the ROI and its refinement.
            ax.add_line(lines.Line2D([x1, rx1], [y1, ry1], color=color))
            ax.text(rx1, ry1 + 8, str(class_names[class_id]), color="w", size=11,
                    backgroundcolor="none")
            m = unmold_mask(np.asarray(mask[i]), rois[i][:4].astype(np.int32), image.shape)
            masked_image = apply_mask(masked_image, m, color)
    ax.imshow(np.clip(masked_image, 0, 255).astype(np.uint8))
    positive = int(np.sum(class_ids > 0))
    print("Positive ROIs: ", positive)
    print("Negative ROIs: ", int(np.sum(class_ids == 0)))
    print("Positive Ratio: {:.2f}".format(positive / max(1, class_ids.shape[0])))
    return ax


def plot_precision_recall(AP, precisions, recalls):
    """The precision-recall curve of one image (from ``utils.compute_ap``), titled with
    its AP@50. Returns the Axes."""
    plt = _plt()
    _, ax = plt.subplots(1)
    ax.set_title("Precision-Recall Curve. AP@50 = {:.3f}".format(AP))
    ax.set_ylim(0, 1.1)
    ax.set_xlim(0, 1.1)
    ax.plot(recalls, precisions)
    return ax


def plot_overlaps(gt_class_ids, pred_class_ids, pred_scores, overlaps, class_names,
                  threshold=0.5):
    """A grid of IoUs, predictions (rows, "class (score)") against ground truth
    (columns); a cell above ``threshold`` says "match" (same class) or "wrong".

    overlaps [n_pred, n_gt] (``compute_ap``'s fourth result). Class id 0 entries
    (padding) are dropped. Returns the Figure.
    """
    plt = _plt()
    gt_class_ids = np.asarray(gt_class_ids).reshape(-1)
    pred_class_ids = np.asarray(pred_class_ids).reshape(-1)
    pred_scores = np.asarray(pred_scores).reshape(-1)
    keep = pred_class_ids != 0
    gt_class_ids = gt_class_ids[gt_class_ids != 0]
    pred_class_ids, pred_scores = pred_class_ids[keep], pred_scores[keep]
    overlaps = np.asarray(overlaps)
    fig, ax = plt.subplots(figsize=(12, 10))
    ax.imshow(overlaps, interpolation="nearest", cmap=plt.cm.Blues)
    ax.set_yticks(np.arange(len(pred_class_ids)))
    ax.set_yticklabels(["{} ({:.2f})".format(class_names[int(c)], pred_scores[i])
                        for i, c in enumerate(pred_class_ids)])
    ax.set_xticks(np.arange(len(gt_class_ids)))
    ax.set_xticklabels([class_names[int(c)] for c in gt_class_ids], rotation=90)
    half = overlaps.max() / 2.0 if overlaps.size else 0.0
    for i, j in itertools.product(range(overlaps.shape[0]), range(overlaps.shape[1])):
        text = ""
        if overlaps[i, j] > threshold:
            text = "match" if gt_class_ids[j] == pred_class_ids[i] else "wrong"
        color = ("white" if overlaps[i, j] > half
                 else "black" if overlaps[i, j] > 0 else "grey")
        ax.text(j, i, "{:.3f}\n{}".format(overlaps[i, j], text),
                horizontalalignment="center", verticalalignment="center", fontsize=9,
                color=color)
    ax.set_xlabel("Ground Truth")
    ax.set_ylabel("Predictions")
    fig.tight_layout()
    return fig


def draw_boxes(image, boxes=None, refined_boxes=None, masks=None, captions=None,
               visibilities=None, title="", ax=None):
    """Boxes (dotted), refined boxes (solid, joined to their box), captions and masks,
    as in matterport's inspection notebooks.

    boxes, refined_boxes [N, (y1, x1, y2, x2)] pixels (at least one given); masks
    [H, W, N]; captions: N strings; visibilities: N values of 0 (grey, dotted, no
    refined box), 1 (dotted) or 2 (solid). Returns the Axes.
    """
    plt = _plt()
    from matplotlib import lines, patches
    from matplotlib.patches import Polygon

    if boxes is None and refined_boxes is None:
        raise ValueError("draw_boxes needs boxes or refined_boxes")
    n = np.asarray(boxes).shape[0] if boxes is not None else np.asarray(refined_boxes).shape[0]
    if not ax:
        _, ax = plt.subplots(1, figsize=(12, 12))
    colors = random_colors(n)
    margin = image.shape[0] // 10
    ax.set_ylim(image.shape[0] + margin, -margin)
    ax.set_xlim(-margin, image.shape[1] + margin)
    ax.axis("off")
    ax.set_title(title)
    masked_image = np.array(image, dtype=np.float64, copy=True)
    for i in range(n):
        visibility = visibilities[i] if visibilities is not None else 1
        if visibility == 0:
            color, style, alpha = "gray", "dotted", 0.5
        elif visibility == 1:
            color, style, alpha = colors[i], "dotted", 1
        else:
            color, style, alpha = colors[i], "solid", 1
        if boxes is not None:
            if not np.any(boxes[i]):
                continue  # no box (lost in cropping)
            y1, x1, y2, x2 = boxes[i]
            ax.add_patch(patches.Rectangle((x1, y1), x2 - x1, y2 - y1, linewidth=2,
                                           alpha=alpha, linestyle=style, edgecolor=color,
                                           facecolor="none"))
        if refined_boxes is not None and visibility > 0:
            ry1, rx1, ry2, rx2 = np.asarray(refined_boxes[i]).astype(np.int32)
            ax.add_patch(patches.Rectangle((rx1, ry1), rx2 - rx1, ry2 - ry1, linewidth=2,
                                           edgecolor=color, facecolor="none"))
            if boxes is not None:
                ax.add_line(lines.Line2D([x1, rx1], [y1, ry1], color=color))
        if captions is not None:
            # Captions sit on the refined box when there is one.
            cy, cx = (ry1, rx1) if refined_boxes is not None and visibility > 0 \
                else (boxes[i][0], boxes[i][1])
            ax.text(cx, cy, captions[i], size=11, verticalalignment="top", color="w",
                    backgroundcolor="none",
                    bbox={"facecolor": color, "alpha": 0.5, "pad": 2, "edgecolor": "none"})
        if masks is not None:
            mask = np.asarray(masks)[:, :, i]
            masked_image = apply_mask(masked_image, mask, color)
            for verts in mask_contours(mask):
                ax.add_patch(Polygon(verts, facecolor="none", edgecolor=color))
    ax.imshow(np.clip(masked_image, 0, 255).astype(np.uint8))
    return ax


def display_table(table):
    """Show rows of values as an HTML table in a notebook (printed as text elsewhere).

    table: an iterable of rows, each an iterable of values. Returns the HTML.
    """
    rows = [[str(col) for col in row] for row in table]
    markup = "<table>" + "".join(
        "<tr>" + "".join("<td>{:40}</td>".format(c) for c in row) + "</tr>"
        for row in rows) + "</table>"
    try:
        from IPython import get_ipython
        shell = get_ipython()
    except ImportError:
        shell = None
    if shell is not None and getattr(shell, "kernel", None) is not None:
        from IPython.display import HTML, display
        display(HTML(markup))
    else:
        for row in rows:
            print("  ".join(html.unescape(_strip_tags(c)).ljust(24) for c in row))
    return markup


def _strip_tags(text):
    return re.sub(r"<[^>]+>", "", text)


def display_weight_stats(model):
    """A table of every weight of the model's layers that have weights: name, shape,
    min, max and standard deviation, flagging constant ("dead?") and huge
    ("Overflow?") weights. ``model`` is a MaskRCNN. Shown with :func:`display_table`;
    returns the rows (header first)."""
    table = [["WEIGHT NAME", "SHAPE", "MIN", "MAX", "STD"]]
    for layer in model.get_trainable_layers():
        for i, (variable, w) in enumerate(zip(layer.weights, layer.get_weights())):
            name = getattr(variable, "path", None) or variable.name
            alert = ""
            # Conv biases start at zero: constant is expected there.
            if w.min() == w.max() and not (type(layer).__name__ == "Conv2D" and i == 1):
                alert += "<span style='color:red'>*** dead?</span>"
            if np.abs(w.min()) > 1000 or np.abs(w.max()) > 1000:
                alert += "<span style='color:red'>*** Overflow?</span>"
            table.append([name + alert, str(w.shape), "{:+9.4f}".format(w.min()),
                          "{:+10.4f}".format(w.max()), "{:+9.4f}".format(w.std())])
    display_table(table)
    return table


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
