"""LabelMe JSON files (one per image).

A LabelMe file holds ``shapes`` (each with ``label``, ``points``, ``shape_type``,
``group_id``), ``imagePath`` (relative to the JSON file) and optionally ``imageData``
(the image itself, base64) plus ``imageHeight``/``imageWidth``.

Shapes: ``polygon``; ``rectangle`` (two opposite corners); ``circle`` (centre, then a
point on the circle); ``mask`` (LabelMe >= 5.3: a base64 PNG placed at the first point).
``line``, ``linestrip``, ``point`` and ``points`` mark no area: they are skipped and
counted as warnings. Shapes that share a label and a ``group_id`` are one instance
(their union), as in LabelMe's own ``labelme2coco``.

The image is read from ``imagePath`` when that file exists (Windows back-slashes are
handled, and a file with the same name next to the JSON is found too); otherwise from
the embedded ``imageData``. Keeping only the path keeps a large dataset small in memory.
"""
from __future__ import annotations

import glob
import os

import numpy as np

from ...errors import AnnotationError
from .geometry import ellipse_polygon, polygon_part, rect_polygon
from .io import decode_base64_image, number, read_json, resolve_image_path, short, type_name
from .records import ERROR, WARNING, DatasetBuilder, make_instance, warn_read_issues

AREA_SHAPES = ("polygon", "rectangle", "circle", "mask")
NO_AREA_SHAPES = ("line", "linestrip", "point", "points")


def is_labelme(data):
    return isinstance(data, dict) and "shapes" in data and \
        ("imagePath" in data or "imageData" in data or "version" in data)


def _points(value, w):
    if not isinstance(value, (list, tuple)):
        raise AnnotationError(f"points must be a list of [x, y] pairs, got {type_name(value)} "
                              f"{short(value, 40)}", **w)
    pts = []
    for i, p in enumerate(value):
        if not (isinstance(p, (list, tuple)) and len(p) == 2):
            raise AnnotationError(f"points[{i}] must be an [x, y] pair, got {short(p, 40)}",
                                  **w)
        pts.append((number(p[0], f"points[{i}][0]", **w), number(p[1], f"points[{i}][1]", **w)))
    return np.array(pts, dtype=np.float64).reshape(-1, 2)


def _shape_geometry(shape, w):
    """(shape type, polygon parts, bitmap, problem or None) for one LabelMe shape."""
    st = shape.get("shape_type") or "polygon"  # old LabelMe files have no shape_type
    if not isinstance(st, str):
        raise AnnotationError(f"shape_type must be a string, got {type_name(st)}", **w)
    if "points" not in shape:
        raise AnnotationError("shape has no 'points'", **w)
    pts = _points(shape["points"], w)
    if st == "polygon":
        pts, problem = polygon_part(pts, st)
        return st, ([] if problem else [pts]), None, problem
    if st == "rectangle":
        if len(pts) not in (2, 4):
            raise AnnotationError(f"rectangle needs 2 corner points, has {len(pts)}", **w)
        x0, y0 = pts.min(axis=0)
        x1, y1 = pts.max(axis=0)
        if x1 - x0 <= 0 or y1 - y0 <= 0:
            return st, [], None, ("degenerate", f"rectangle is {x1 - x0:g} x {y1 - y0:g} "
                                  "pixels; redraw it or delete it")
        return st, [rect_polygon(x0, y0, x1 - x0, y1 - y0)], None, None
    if st == "circle":
        if len(pts) != 2:
            raise AnnotationError(f"circle needs 2 points (centre, point on circle), has "
                                  f"{len(pts)}", **w)
        (cx, cy), (px, py) = pts
        r = float(np.hypot(px - cx, py - cy))
        if r <= 0:
            return st, [], None, ("degenerate", "circle has radius 0; redraw it or delete it")
        return st, [ellipse_polygon(cx, cy, r, r)], None, None
    if st == "mask":
        if len(pts) < 1:
            raise AnnotationError("mask shape needs its top-left point", **w)
        raw = decode_base64_image(shape.get("mask"), "mask", **w)
        x0, y0 = np.floor(pts.min(axis=0)).astype(int)
        return st, [], {"bytes": raw, "value": None, "offset": (int(x0), int(y0))}, None
    if st in NO_AREA_SHAPES:
        return st, [], None, ("skipped_shape", f"{st} marks no area, so it cannot be a mask; "
                              "skipped")
    return st, [], None, ("unknown_shape", f"unknown shape_type '{short(st, 30)}' (LabelMe "
                          f"area shapes: {', '.join(AREA_SHAPES)}); skipped")


def _label(shape, w):
    label = shape.get("label")
    if isinstance(label, (int, float)) and not isinstance(label, bool):
        label = str(label)
    if label is None:
        return None
    if not isinstance(label, str):
        raise AnnotationError(f"label must be a string, got {type_name(label)} "
                              f"{short(label, 40)}", **w)
    return label.strip() or None


def _collect_files(dir_or_files):
    """(list of JSON paths, whether they came from a folder scan)."""
    if isinstance(dir_or_files, (str, os.PathLike)):
        p = os.fspath(dir_or_files)
        if os.path.isdir(p):
            files = sorted(glob.glob(os.path.join(p, "**", "*.json"), recursive=True))
            if not files:
                raise AnnotationError("no .json files in this folder; LabelMe saves one JSON "
                                      "per image next to it", file=p)
            return files, True
        return [p], False
    try:
        files = [os.fspath(f) for f in dir_or_files]
    except TypeError:
        raise AnnotationError(f"expected a folder, a JSON file or a list of JSON files, got "
                              f"{short(dir_or_files)}") from None
    if not files:
        raise AnnotationError("the list of LabelMe files is empty")
    return files, False


def load_labelme(dir_or_files, image_dir=None, classes=None):
    """Read LabelMe JSON files into a prepared :class:`AnnotatedDataset`.

    Args:
        dir_or_files: a folder (searched recursively for ``*.json``), one JSON file,
            or a list of them.
        image_dir: where the images are, when not where ``imagePath`` says.
        classes: optional list of class names fixing the class order (ids 1..n).

    Returns:
        prepared AnnotatedDataset, class names sorted by name unless ``classes`` given.
    """
    files, scanned = _collect_files(dir_or_files)
    b = DatasetBuilder("labelme", "LabelMe", files, classes)
    n_labelme = 0
    for jf in files:
        try:
            data = read_json(jf)
        except AnnotationError as e:
            b.error(e)
            continue
        if not is_labelme(data):
            if scanned:  # other JSON files may live in the folder: say so, do not fail
                b.issue("not_labelme", "not a LabelMe file (no 'shapes'); ignored", WARNING,
                        file=jf)
                continue
            b.error(AnnotationError("not a LabelMe file: expected an object with 'shapes' and "
                                    "'imagePath'", file=jf))
            continue
        n_labelme += 1
        _read_file(b, jf, data, image_dir)
    if n_labelme == 0 and not b.errors:
        raise AnnotationError("no LabelMe files found (JSON files with 'shapes' and "
                              "'imagePath')", file=os.fspath(dir_or_files)
                              if isinstance(dir_or_files, (str, os.PathLike)) else None)
    ds = b.build()
    warn_read_issues(ds, "LabelMe files")
    return ds


def _read_file(b, jf, data, image_dir):
    json_dir = os.path.dirname(os.path.abspath(jf))
    image_path = data.get("imagePath")
    name = image_path if isinstance(image_path, str) and image_path.strip() else \
        os.path.splitext(os.path.basename(jf))[0]
    w = {"file": jf, "image": name}
    path = None
    if isinstance(image_path, str) and image_path.strip():
        dirs = [image_dir, json_dir] if image_dir is not None else [json_dir]
        path = resolve_image_path(image_path, dirs)
    elif image_path is not None:
        b.error(AnnotationError(f"imagePath must be a string, got {type_name(image_path)}",
                                field="imagePath", **w))
        return
    image_bytes = None
    if data.get("imageData") is not None and not (path and os.path.isfile(path)):
        try:
            image_bytes = decode_base64_image(data["imageData"], "imageData",
                                              field="imageData", **w)
        except AnnotationError as e:
            b.error(e)
            return
    width = height = None
    if data.get("imageWidth") is not None or data.get("imageHeight") is not None:
        try:
            width = number(data.get("imageWidth"), "imageWidth", field="imageWidth", **w)
            height = number(data.get("imageHeight"), "imageHeight", field="imageHeight", **w)
            if width < 1 or height < 1 or width != int(width) or height != int(height):
                raise AnnotationError(f"image size {width:g} x {height:g} is not a usable "
                                      "size", field="imageWidth", **w)
        except AnnotationError as e:
            b.error(e)
            return
    rec = b.add_image(jf, name, path, jf,
                      width=width, height=height, image_bytes=image_bytes)
    shapes = data.get("shapes")
    if not isinstance(shapes, list):
        b.error(AnnotationError(f"'shapes' must be a list, got {type_name(shapes)}",
                                field="shapes", **w))
        return
    groups = {}  # (label, group_id) -> instance, in order of first appearance
    for i, shape in enumerate(shapes):
        fw = dict(w, field=f"shapes[{i}]")
        with b.reading("shape", fw) as r:
            if not isinstance(shape, dict):
                raise AnnotationError(f"a shape must be an object, got {type_name(shape)}", **fw)
            label = _label(shape, fw)
            st, parts, bitmap, problem = _shape_geometry(shape, fw)
            gid = shape.get("group_id")
            if gid is not None and (isinstance(gid, bool) or not isinstance(gid, (int, str))):
                raise AnnotationError(f"group_id must be a whole number or null, got "
                                      f"{short(gid, 40)}", **fw)
        if not r.ok:
            continue
        region = f"shapes[{i}] ({st}{', ' + repr(label) if label else ''})"
        if problem is not None:
            b.note_problem(rec, region, problem)
            continue
        if label is None:
            b.note(rec, region, "no_class", f"{st} has an empty label, so it has no class",
                   ERROR)
            continue
        if gid is not None and (label, gid) in groups:
            inst, members = groups[(label, gid)]
            members.append(i)
            inst["region"] = (" + ".join(f"shapes[{j}]" for j in members) +
                              f" (group_id {gid}, {label!r})")
            if st not in inst["shape"].split("+"):
                inst["shape"] += "+" + st
            inst["polygons"].extend(parts)
            if bitmap is not None:
                if inst["bitmap"] is not None:
                    # One bitmap per instance is stored: keep a second mask shape of the
                    # group as its own instance rather than lose it, and say so.
                    b.note(rec, region, "group_split", f"a second mask shape in group_id {gid}"
                           " is kept as its own instance", WARNING)
                    b.add_instance(rec, make_instance(label, st, region, [], bitmap=bitmap))
                else:
                    inst["bitmap"] = bitmap
            continue
        if gid is not None:
            region = f"shapes[{i}] (group_id {gid}, {label!r})"
        inst = make_instance(label, st, region, parts, bitmap=bitmap)
        if gid is not None:
            groups[(label, gid)] = (inst, [i])
        b.add_instance(rec, inst)
