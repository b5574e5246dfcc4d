"""Write a dataset as COCO JSON, for tools that expect COCO (and COCO-style evaluation).

    from colabrcnn.data.formats import load
    from colabrcnn.data.convert import to_coco
    to_coco(load("balloon/train"), "balloon/train/instances.json")

The masks read back are the masks written: COCO polygons stay polygons, RLE stays RLE,
mask images become compressed RLE. LabelMe and VIA polygons are drawn with pixel
centres on integer coordinates (see ``colabrcnn/data/formats/__init__.py``), pycocotools
with centres at +0.5: such a polygon is written shifted by half a pixel when pycocotools
then gives exactly the same pixels, else (pixel centres on its edges, LabelMe's outline,
circles, lines) the instance is written as compressed RLE. ``file_name`` is written
relative to the JSON's folder, so ``load_coco(out_json)`` and ``pycocotools.COCO`` find
the images without further arguments; images embedded in LabelMe files are written to
``<json folder>/images/`` first.
"""
from __future__ import annotations

import io
import json
import os
import tempfile

import numpy as np

from ..errors import AnnotationError
from .formats.geometry import instance_mask, rasterize_polygons


def _image_file(dataset, image_id, info, out_dir):
    """Path of the image on disk, writing embedded image bytes out when needed."""
    if info.get("image_bytes") is None:
        return info.get("path")
    from PIL import Image
    try:
        with Image.open(io.BytesIO(info["image_bytes"])) as im:
            ext = {"JPEG": ".jpg", "PNG": ".png", "BMP": ".bmp", "TIFF": ".tif",
                   "GIF": ".gif", "WEBP": ".webp"}.get(im.format, ".png")
    except Exception:
        raise AnnotationError("embedded image data cannot be read", file=info.get("file"),
                              image=info.get("name")) from None
    folder = os.path.join(out_dir, "images")
    os.makedirs(folder, exist_ok=True)
    stem = os.path.splitext(os.path.basename(str(info.get("name") or image_id)))[0] or \
        f"image_{image_id}"
    path = os.path.join(folder, stem + ext)
    k = 1
    while os.path.exists(path) and open(path, "rb").read() != info["image_bytes"]:
        path = os.path.join(folder, f"{stem}_{k}{ext}")
        k += 1
    with open(path, "wb") as f:
        f.write(info["image_bytes"])
    return path


def _bbox(mask):
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return [0.0, 0.0, 0.0, 0.0]
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
            float(ys.max() - ys.min() + 1)]


def _mask_rle(mask):
    from pycocotools import mask as mask_utils
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _segmentation(inst, mask):
    """COCO segmentation for one instance record that pycocotools reads back as ``mask``:
    polygons where they give exactly its pixels, else RLE."""
    only_polygons = bool(inst.get("polygons")) and not inst.get("figures") and \
        inst.get("rle") is None and inst.get("bitmap") is None
    if only_polygons:
        parts = [np.asarray(p, np.float64) for p in inst["polygons"] if len(p) >= 3]
        if inst.get("draw", "coco") != "coco":
            # Integer pixel centres -> pycocotools' centres at +0.5; kept only if exact.
            parts = [p + 0.5 for p in parts]
            if not np.array_equal(rasterize_polygons(parts, *mask.shape, "coco"), mask):
                return _mask_rle(mask)
        # Full float precision: the same numbers give the same pixels when read back.
        return [[float(v) for v in p.ravel()] for p in parts]
    if inst.get("rle") is not None and not inst.get("polygons") and inst.get("bitmap") is None:
        return {"size": list(inst["rle"]["size"]), "counts": inst["rle"]["counts"]}
    return _mask_rle(mask)


def dataset_to_coco(dataset, out_dir=".", include_crowd=True):
    """The COCO dict for a prepared dataset (``to_coco`` writes it)."""
    out_dir = os.path.abspath(out_dir)
    names = list(getattr(dataset, "class_names", None) or [c["name"] for c in dataset.class_info])
    coco = {"info": {"description": "written by colabrcnn.data.convert.to_coco"},
            "licenses": [], "images": [], "annotations": [],
            "categories": [{"id": i, "name": n, "supercategory": ""}
                           for i, n in enumerate(names) if i > 0]}
    ann_id = 1
    for image_id in range(len(dataset.image_info)):
        info = dataset.image_info[image_id]
        path = _image_file(dataset, image_id, info, out_dir)
        if hasattr(dataset, "image_size"):
            h, w = dataset.image_size(image_id)
        else:
            h, w = int(info["height"]), int(info["width"])
        file_name = os.path.relpath(os.path.abspath(path), out_dir).replace(os.sep, "/") \
            if path else str(info.get("name"))
        coco["images"].append({"id": image_id + 1, "file_name": file_name,
                               "width": int(w), "height": int(h)})
        if "instances" in info:
            items = [(inst, 0) for inst in info["instances"]]
            if include_crowd:
                items += [(inst, 1) for inst in info.get("crowd", [])]
            for inst, crowd in items:
                mask = instance_mask(inst, h, w, file=info.get("file"), image=info.get("name"),
                                     field=inst.get("region"))
                if not mask.any():
                    continue  # covers no pixel: validate() reports it; COCO needs area > 0
                seg = _segmentation(inst, mask)
                if crowd and isinstance(seg, list):  # COCO crowd regions are RLE
                    seg = _mask_rle(mask)
                coco["annotations"].append({
                    "id": ann_id, "image_id": image_id + 1,
                    "category_id": int(inst["class_id"]), "segmentation": seg,
                    "area": float(mask.sum()), "bbox": _bbox(mask), "iscrowd": crowd})
                ann_id += 1
        else:  # a Dataset subclass: masks from load_mask, as RLE
            masks, ids = dataset.load_mask(image_id)
            for k, cid in enumerate(np.asarray(ids).reshape(-1)):
                m = masks[..., k]
                if not m.any():
                    continue
                coco["annotations"].append({
                    "id": ann_id, "image_id": image_id + 1, "category_id": int(cid),
                    "segmentation": _mask_rle(m),
                    "area": float(m.sum()), "bbox": _bbox(m), "iscrowd": 0})
                ann_id += 1
    return coco


def to_coco(dataset, out_json, include_crowd=True):
    """Write ``dataset`` as a COCO instances JSON at ``out_json``; return the path.

    Category ids are the dataset's class ids (1..n) with their names. Shapes that cover
    no pixel are not written (``validate`` lists them). The file is written atomically.
    """
    out_json = os.fspath(out_json)
    out_dir = os.path.dirname(os.path.abspath(out_json))
    os.makedirs(out_dir, exist_ok=True)
    coco = dataset_to_coco(dataset, out_dir, include_crowd=include_crowd)
    fd, tmp = tempfile.mkstemp(dir=out_dir, suffix=".json.tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(coco, f)
        os.replace(tmp, out_json)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return out_json
