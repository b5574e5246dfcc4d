"""Pictures of instances: overlays of masks, boxes, class names and scores."""
from __future__ import annotations

import colorsys
import hashlib

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
