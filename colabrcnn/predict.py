"""Batch prediction: a folder of images or a video in, overlays, masks and COCO JSON out.

    from colabrcnn.predict import predict_folder, predict_video
    summary = predict_folder(model, "photos/", "runs/predict", class_names)
    predict_video(model, "clip.mp4", "runs/predict/clip.avi", class_names)

``model`` is anything with matterport's ``detect(images)``: a :class:`MaskRCNN` or a
loaded export (:func:`colabrcnn.export.load_exported`).

What ``predict_folder`` writes in ``out_dir`` (``<stem>`` is the image file name without
its extension, with sub-folders kept when ``recursive``):

* ``overlays/<stem>.png`` — the image with masks, boxes, class names and scores;
* masks, by ``mask_format``:
  ``"instance_png"``: ``masks/<stem>.png``, one uint16 PNG per image, 0 = background,
  k = the k-th instance (k-th highest score; where instances overlap the higher score
  wins), so instance k is ``class_ids[k - 1]`` in ``coco_predictions.json``;
  ``"per_instance"``: ``masks/<stem>/<k>_<class>.png``, one 0/255 uint8 PNG per instance;
  ``None``: no mask files;
* ``coco_predictions.json`` — a COCO file (images with ``file_name``, categories, and one
  annotation per instance with ``bbox``, RLE ``segmentation``, ``area`` and ``score``):
  loadable with ``pycocotools.coco.COCO`` and, for its ``annotations``, ``COCO.loadRes``.
"""
from __future__ import annotations

import json
import logging
import os
import re
import warnings

import numpy as np

from . import visualize
from .data.dataset import read_image
from .errors import ColabRCNNError
from .evaluate import encode_mask, to_xywh

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MASK_FORMATS = ("instance_png", "per_instance", None)


def list_images(in_dir, recursive=False):
    """Image files in a folder (sorted), by extension."""
    in_dir = os.fspath(in_dir)
    if not os.path.isdir(in_dir):
        raise ColabRCNNError(f"image folder not found: {in_dir}")
    out = []
    if recursive:
        for root, dirs, files in os.walk(in_dir):
            dirs.sort()
            out.extend(os.path.join(root, f) for f in sorted(files)
                       if f.lower().endswith(IMAGE_EXTENSIONS))
    else:
        out = [os.path.join(in_dir, f) for f in sorted(os.listdir(in_dir))
               if f.lower().endswith(IMAGE_EXTENSIONS)
               and os.path.isfile(os.path.join(in_dir, f))]
    return out


def _class_names(class_names, class_ids=()):
    if class_names is not None:
        return list(class_names)
    top = max([int(c) for c in class_ids] + [0])
    return ["BG"] + [f"class_{i}" for i in range(1, top + 1)]


def _name(class_names, cid):
    cid = int(cid)
    return str(class_names[cid]) if class_names is not None and 0 <= cid < len(class_names) \
        else f"class_{cid}"


def _safe(text):
    return re.sub(r"[^\w.-]+", "_", str(text)).strip("_") or "x"


def instance_id_image(masks, scores=None):
    """H x W x N bool masks -> H x W uint16, k = instance k (1-based) by descending score.

    Returns (image, order): ``order[k - 1]`` is the index of instance k in the inputs.
    """
    masks = np.asarray(masks, dtype=bool)
    n = masks.shape[-1]
    if n > 65535:
        raise ValueError("more than 65535 instances do not fit a uint16 PNG")
    order = np.arange(n) if scores is None else \
        np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    out = np.zeros(masks.shape[:2], dtype=np.uint16)
    for k in range(n - 1, -1, -1):   # lowest score first: higher scores paint over it
        out[masks[..., order[k]]] = k + 1
    return out, order


def _write_png(path, array):
    import cv2
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if not cv2.imwrite(path, array):
        raise OSError(f"could not write {path}")
    return path


def predict_folder(model, in_dir, out_dir, class_names=None, batch_size=None,
                   save_overlays=True, mask_format="instance_png", coco_json=True,
                   recursive=False, min_score=None, verbose=1):
    """Detect instances in every image of ``in_dir``; write overlays, masks and COCO JSON.

    class_names: list indexed by class id ("BG" first), for labels and the JSON; None
    gives "class_1", ... batch_size: images read and detected at once (default the
    model's BATCH_SIZE). min_score: drop detections below it. Unreadable images are
    skipped with a warning and listed under "errors".

    Returns {"out_dir", "coco_json" (path or None), "errors": [(file, message)],
    "images": [{"file", "height", "width", "class_ids", "scores", "rois", "overlay",
    "mask" (path, list of paths or None)}]} — numbers as plain lists.
    """
    from tqdm.auto import tqdm

    if mask_format not in MASK_FORMATS:
        raise ColabRCNNError(f"mask_format must be one of {MASK_FORMATS}, got {mask_format!r}")
    in_dir, out_dir = os.fspath(in_dir), os.fspath(out_dir)
    files = list_images(in_dir, recursive=recursive)
    if not files:
        raise ColabRCNNError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {in_dir}")
    os.makedirs(out_dir, exist_ok=True)
    bs = int(batch_size or getattr(getattr(model, "config", None), "BATCH_SIZE", 1) or 1)
    records, errors, coco_images, coco_anns = [], [], [], []
    names = list(class_names) if class_names is not None else None
    bar = tqdm(total=len(files), desc="predict", disable=not verbose)
    for start in range(0, len(files), bs):
        chunk, images = [], []
        for path in files[start:start + bs]:
            try:
                images.append(read_image(path))
                chunk.append(path)
            except ColabRCNNError as e:
                warnings.warn(f"skipping {path}: {e}", stacklevel=2)
                errors.append((path, str(e)))
        results = model.detect(images) if images else []
        for path, image, r in zip(chunk, images, results):
            rois = np.asarray(r["rois"]).reshape(-1, 4)
            class_ids = np.asarray(r["class_ids"]).reshape(-1)
            scores = np.asarray(r["scores"], dtype=np.float64).reshape(-1)
            masks = np.asarray(r["masks"], dtype=bool)
            keep = np.arange(len(class_ids)) if min_score is None else \
                np.where(scores >= min_score)[0]
            # Highest score first everywhere (files, JSON, instance ids).
            keep = keep[np.argsort(-scores[keep], kind="stable")]
            rois, class_ids, scores, masks = rois[keep], class_ids[keep], scores[keep], \
                masks[..., keep]
            rel = os.path.relpath(path, in_dir)
            stem = os.path.splitext(rel)[0]
            label_names = _class_names(names, class_ids)
            rec = {"file": path, "height": int(image.shape[0]), "width": int(image.shape[1]),
                   "class_ids": class_ids.astype(int).tolist(),
                   "scores": [float(s) for s in scores], "rois": rois.astype(int).tolist(),
                   "overlay": None, "mask": None}
            if save_overlays:
                over = visualize.draw_instances(image, rois, masks, class_ids, label_names,
                                                scores)
                rec["overlay"] = os.path.join(out_dir, "overlays", stem + ".png")
                os.makedirs(os.path.dirname(rec["overlay"]), exist_ok=True)
                visualize.save_image(rec["overlay"], over)
            if mask_format == "instance_png":
                ids, _ = instance_id_image(masks)   # already in score order
                rec["mask"] = _write_png(os.path.join(out_dir, "masks", stem + ".png"), ids)
            elif mask_format == "per_instance":
                rec["mask"] = []
                for k in range(len(class_ids)):
                    name = f"{k + 1:03d}_{_safe(_name(label_names, class_ids[k]))}.png"
                    rec["mask"].append(_write_png(
                        os.path.join(out_dir, "masks", stem, name),
                        masks[..., k].astype(np.uint8) * 255))
            image_id = len(coco_images) + 1
            coco_images.append({"id": image_id, "file_name": rel.replace(os.sep, "/"),
                                "height": rec["height"], "width": rec["width"],
                                "path": os.path.abspath(path)})
            for k in range(len(class_ids)):
                coco_anns.append({"id": len(coco_anns) + 1, "image_id": image_id,
                                  "category_id": int(class_ids[k]), "bbox": to_xywh(rois[k]),
                                  "segmentation": encode_mask(masks[..., k]),
                                  "area": float(masks[..., k].sum()), "score": float(scores[k]),
                                  "iscrowd": 0})
            records.append(rec)
        bar.update(len(files[start:start + bs]))
    bar.close()
    json_path = None
    if coco_json:
        all_ids = [a["category_id"] for a in coco_anns]
        cat_names = _class_names(names, all_ids)
        json_path = os.path.join(out_dir, "coco_predictions.json")
        with open(json_path, "w") as f:
            json.dump({"info": {"description": "colabrcnn predictions"},
                       "images": coco_images,
                       "categories": [{"id": i, "name": str(n)}
                                      for i, n in enumerate(cat_names) if i > 0],
                       "annotations": coco_anns}, f)
    if verbose:
        n = sum(len(r["class_ids"]) for r in records)
        logger.info("%d images, %d instances -> %s%s", len(records), n, out_dir,
                    f" ({len(errors)} unreadable, skipped)" if errors else "")
    return {"out_dir": out_dir, "coco_json": json_path, "errors": errors, "images": records}


def _fourcc_for(path):
    ext = os.path.splitext(path)[1].lower()
    return {".avi": "MJPG", ".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v",
            ".mkv": "XVID"}.get(ext, "MJPG")


def predict_video(model, in_path, out_path, class_names=None, batch_size=None,
                  min_score=None, fourcc=None, max_frames=None, show_labels=True,
                  verbose=1):
    """Detect instances in every frame of a video; write the overlaid frames.

    Reading and writing use OpenCV. The codec follows ``out_path``'s extension (.avi:
    MJPG, .mp4/.mov: mp4v) unless ``fourcc`` (four characters) is given; frame rate and
    size are the input's. Returns {"out_path", "frames", "fps", "width", "height",
    "instances" (total)}.
    """
    import cv2
    from tqdm.auto import tqdm

    in_path, out_path = os.fspath(in_path), os.fspath(out_path)
    cap = cv2.VideoCapture(in_path)
    if not cap.isOpened():
        raise ColabRCNNError(f"cannot open video {in_path}")
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    if not np.isfinite(fps) or fps <= 0:
        fps = 25.0
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) or None
    if max_frames:
        total = min(total or max_frames, max_frames)
    bs = int(batch_size or getattr(getattr(model, "config", None), "BATCH_SIZE", 1) or 1)
    writer, frames, instances = None, 0, 0
    width = height = None
    bar = tqdm(total=total, desc="video", disable=not verbose)
    try:
        done = False
        while not done:
            batch = []
            while len(batch) < bs:
                if max_frames and frames + len(batch) >= max_frames:
                    done = True
                    break
                ok, frame = cap.read()
                if not ok:
                    done = True
                    break
                batch.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
            if not batch:
                break
            if writer is None:
                height, width = batch[0].shape[:2]
                os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
                code = cv2.VideoWriter_fourcc(*(fourcc or _fourcc_for(out_path)))
                writer = cv2.VideoWriter(out_path, code, float(fps), (width, height))
                if not writer.isOpened():
                    raise ColabRCNNError(f"cannot write video {out_path} with codec "
                                         f"{fourcc or _fourcc_for(out_path)}; try an .avi "
                                         f"path (MJPG)")
            for frame, r in zip(batch, model.detect(batch)):
                scores = np.asarray(r["scores"]).reshape(-1)
                keep = np.arange(len(scores)) if min_score is None else \
                    np.where(scores >= min_score)[0]
                ids = np.asarray(r["class_ids"]).reshape(-1)[keep]
                over = visualize.draw_instances(
                    frame, np.asarray(r["rois"]).reshape(-1, 4)[keep],
                    np.asarray(r["masks"])[..., keep], ids, _class_names(class_names, ids),
                    scores[keep], show_labels=show_labels)
                writer.write(cv2.cvtColor(over, cv2.COLOR_RGB2BGR))
                instances += len(keep)
            frames += len(batch)
            bar.update(len(batch))
    finally:
        bar.close()
        cap.release()
        if writer is not None:
            writer.release()
    if frames == 0:
        raise ColabRCNNError(f"no frames could be read from {in_path}")
    return {"out_path": out_path, "frames": frames, "fps": float(fps), "width": width,
            "height": height, "instances": instances}
