"""Annotation readers: every format becomes the same prepared :class:`AnnotatedDataset`.

    from colabrcnn.data.formats import load
    ds = load("balloon/train")             # finds via_region_data.json in the folder
    ds = load("export/instances.json")     # COCO
    ds = load("labelme_folder")            # LabelMe JSONs
    ds = load("images", mask_dir="masks")  # mask PNGs

or call a reader directly: :func:`load_via`, :func:`load_labelme`, :func:`load_coco`,
:func:`load_mask_folder`.

Modules: ``io.py`` (JSON, image headers, base64, image paths, label images),
``geometry.py`` (polygons, clipping, rasterising, RLE, bitmaps), ``records.py`` (the
record layout every reader produces: :class:`AnnotatedDataset`, :class:`ImageRecord`,
the builder the readers share), one module per format.

Pixel conventions: each format is drawn as its own tool draws it
---------------------------------------------------------------
* **LabelMe**: as labelme's ``labelme.utils.shape_to_mask`` draws (PIL ``ImageDraw``):
  pixel centres on integer coordinates, polygons filled *and* outlined, so a polygon
  traced through an object's boundary pixels (``cv2.findContours``, mask-to-polygon
  exports) gives back exactly those pixels. ``rectangle`` includes both corners' rows
  and columns ((2, 3)-(6, 8): columns 2..6, rows 3..8); ``circle`` is PIL's ellipse;
  ``line``/``linestrip`` a 10 px wide line and ``point`` a disc of radius 5, as labelme
  draws them (with a warning: they mark no area).
* **VIA**: as matterport's balloon sample draws VIA polygons
  (``skimage.draw.polygon(all_points_y, all_points_x)``): pixel centres on integer
  coordinates. ``rect`` x, y, width, height covers width x height pixels
  (``skimage.draw.rectangle``); circles and ellipses are ``skimage.draw.ellipse``.
* **COCO**: pycocotools, as COCO evaluation draws them: pixel corners on integer
  coordinates, pixel (r, c) centred at (c + 0.5, r + 0.5).
* Mask images: the pixels themselves.

:func:`colabrcnn.data.convert.to_coco` keeps the pixels: a LabelMe/VIA polygon is
written shifted by half a pixel when pycocotools then draws exactly the same mask, and
as RLE otherwise. The instance records (``records.py``) carry the convention as
``draw``; ``geometry.py`` holds the rasterisers.
"""
from __future__ import annotations

import inspect
import os

from ...errors import AnnotationError
from .coco import is_coco, load_coco
from .io import json_cache, read_json
from .records import AnnotatedDataset, ImageRecord
from .labelme import is_labelme, load_labelme
from .masks import load_mask_folder
from .via import is_via, is_via3, load_via

ACCEPTED = ("VIA 1.x/2.x JSON (project file or exported annotations), a COCO instances "
            "JSON, a LabelMe JSON file or a folder of them, or a folder holding images/ and "
            "masks/ sub-folders (or an image folder with mask_dir=...)")

READERS = {"via": load_via, "labelme": load_labelme, "coco": load_coco,
           "masks": load_mask_folder}


def _sniff_json(path):
    """'via', 'coco', 'labelme', 'via3' or None for one JSON file."""
    try:
        data = read_json(path)
    except AnnotationError:
        return None
    if is_via3(data):
        return "via3"
    if is_coco(data):
        return "coco"
    if is_labelme(data):
        return "labelme"
    if is_via(data):
        return "via"
    return None


def detect_format(path, mask_dir=None):
    """(format, arguments for its reader) for what is at ``path``.

    Raises AnnotationError listing the accepted formats when nothing fits.
    """
    path = os.fspath(path)
    if mask_dir is not None:
        return "masks", {"image_dir": path, "mask_dir": mask_dir}
    if os.path.isdir(path):
        if os.path.isdir(os.path.join(path, "images")) and \
                os.path.isdir(os.path.join(path, "masks")):
            return "masks", {"image_dir": os.path.join(path, "images"),
                             "mask_dir": os.path.join(path, "masks")}
        jsons = sorted(os.path.join(path, n) for n in os.listdir(path)
                       if n.lower().endswith(".json") and os.path.isfile(os.path.join(path, n)))
        kinds = {}
        for j in jsons:
            kinds[j] = _sniff_json(j)
            if kinds[j] == "labelme":  # LabelMe folders hold many files: stop at one
                return "labelme", {"dir_or_files": path}
        found = [j for j, k in kinds.items() if k in ("via", "coco", "via3")]
        if len(found) == 1:
            return detect_format(found[0])
        if len(found) > 1:
            raise AnnotationError(
                "several annotation files in this folder: "
                + ", ".join(os.path.basename(f) for f in found)
                + "; pass the one to read", file=path)
        # LabelMe folders can keep their JSONs in sub-folders.
        for root, _, names in os.walk(path):
            for n in sorted(names):
                if n.lower().endswith(".json") and \
                        _sniff_json(os.path.join(root, n)) == "labelme":
                    return "labelme", {"dir_or_files": path}
        raise AnnotationError(f"found no annotations in this folder; accepted: {ACCEPTED}",
                              file=path)
    if not os.path.exists(path):
        raise AnnotationError("no such file or folder", file=path)
    if not path.lower().endswith(".json"):
        raise AnnotationError(f"not an annotation file; accepted: {ACCEPTED}", file=path)
    kind = _sniff_json(path)
    if kind is None:
        read_json(path)  # raises a precise error when the JSON itself is broken
        raise AnnotationError(f"unrecognised annotation format; accepted: {ACCEPTED}",
                              file=path)
    if kind == "via3":
        kind = "via"  # load_via explains what to do with VIA 3 projects
    return kind, {{"via": "path", "coco": "json_path", "labelme": "dir_or_files"}[kind]: path}


def load(path, **kw):
    """Read annotations, detecting the format (see :data:`ACCEPTED`) from ``path``.

    Keyword arguments go to the reader (e.g. ``class_attribute`` for VIA,
    ``image_dir``, ``classes``); one the reader does not take is an AnnotationError.
    """
    with json_cache():
        fmt, args = detect_format(path, mask_dir=kw.pop("mask_dir", None))
        reader = READERS[fmt]
        params = inspect.signature(reader).parameters
        unknown = [k for k in kw if k not in params]
        if unknown:
            raise AnnotationError(f"{os.fspath(path)} is read as {fmt}, whose reader takes "
                                  f"no {', '.join(unknown)} (it takes: "
                                  f"{', '.join(p for p in params if p not in args)})")
        args.update(kw)
        return reader(**args)



__all__ = ["AnnotatedDataset", "ImageRecord", "load", "detect_format", "load_via",
           "load_labelme", "load_coco", "load_mask_folder", "ACCEPTED"]
