"""LabelMe JSON files (one per image).

A LabelMe file holds ``shapes`` (each with ``label``, ``points``, ``shape_type``,
``group_id``), ``imagePath`` (relative to the JSON file) and optionally ``imageData``
(the image itself, base64) plus ``imageHeight``/``imageWidth``.

Shapes: ``polygon`` (and ``oriented_rectangle``); ``rectangle`` (two opposite corners);
``circle`` (centre, then a point on the circle); ``mask`` (LabelMe >= 5.3: a base64 PNG
placed at the first point). Every shape is drawn as labelme's own
``labelme.utils.shape_to_mask`` draws it (PIL, polygons filled and outlined, pixel
centres on integer coordinates), so the masks are the ones labelme's converters give.
``line`` and ``linestrip`` (a 10 px wide line) and ``point`` (a disc of radius 5 px)
mark no area, but labelme draws them so: they are kept that way with a warning.
``points`` is skipped with a warning. Shapes that share a label and a ``group_id`` are
one instance (their union), as in LabelMe's own ``labelme2coco``.

The image is read from ``imagePath`` when that file exists (Windows back-slashes are
handled, and a file with the same name next to the JSON is found too); otherwise from
the embedded ``imageData``. Keeping only the path keeps a large dataset small in memory.
"""
from __future__ import annotations

import glob
import os

import numpy as np

from ...errors import AnnotationError
from .coco import is_coco
from .geometry import LABELME_LINE_WIDTH, LABELME_POINT_RADIUS, polygon_part
from .io import (decode_base64_image, decode_embedded_image, number, read_json,
                 resolve_image_path, short, type_name)
from .records import ERROR, WARNING, DatasetBuilder, make_instance, warn_read_issues
from .via import is_via

AREA_SHAPES = ("polygon", "rectangle", "circle", "mask", "oriented_rectangle")
# Drawn as labelme draws them (a 10 px wide line, a 5 px radius disc), with a warning.
NO_AREA_SHAPES = ("line", "linestrip", "point")


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
    """(shape type, polygon parts, figures, bitmap, problem or None) for one LabelMe shape.

    Drawn later as labelme's ``utils.shape_to_mask`` draws it (``geometry.py``).
    """
    st = shape.get("shape_type") or "polygon"  # old LabelMe files have no shape_type
    if not isinstance(st, str):
        raise AnnotationError(f"shape_type must be a string, got {type_name(st)}", **w)
    if "points" not in shape:
        raise AnnotationError("shape has no 'points'", **w)
    pts = _points(shape["points"], w)
    if st in ("polygon", "oriented_rectangle"):
        pts, problem = polygon_part(pts, st)
        return st, ([] if pts is None else [pts]), [], None, problem
    if st == "rectangle":
        if len(pts) not in (2, 4):
            raise AnnotationError(f"rectangle needs 2 corner points, has {len(pts)}", **w)
        (x0, y0), (x1, y1) = pts.min(axis=0), pts.max(axis=0)
        if x1 - x0 <= 0 or y1 - y0 <= 0:
            return st, [], [], None, ("degenerate", f"rectangle is {x1 - x0:g} x {y1 - y0:g} "
                                      "pixels; redraw it or delete it")
        return st, [], [{"type": st, "points": np.array([[x0, y0], [x1, y1]])}], None, None
    if st == "circle":
        if len(pts) != 2:
            raise AnnotationError(f"circle needs 2 points (centre, point on circle), has "
                                  f"{len(pts)}", **w)
        if float(np.hypot(*(pts[1] - pts[0]))) <= 0:
            return st, [], [], None, ("degenerate", "circle has radius 0; redraw it or "
                                      "delete it")
        return st, [], [{"type": st, "points": pts}], None, None
    if st in ("line", "linestrip", "point"):
        need = {"line": (2, 2), "linestrip": (2, None), "point": (1, 1)}[st]
        if len(pts) < need[0] or (need[1] is not None and len(pts) > need[1]):
            raise AnnotationError(f"{st} needs {need[0]}{'' if need[1] == need[0] else '+'} "
                                  f"point(s), has {len(pts)}", **w)
        return st, [], [{"type": st, "points": pts}], None, None
    if st == "mask":
        if len(pts) < 1:
            raise AnnotationError("mask shape needs its top-left point", **w)
        raw = decode_base64_image(shape.get("mask"), "mask", **w)
        x0, y0 = np.floor(pts.min(axis=0)).astype(int)
        return st, [], [], {"bytes": raw, "value": None, "offset": (int(x0), int(y0))}, None
    if st == "points":
        return st, [], [], None, ("skipped_shape", "points marks no area, so it cannot be a "
                                  "mask; skipped")
    return st, [], [], None, ("unknown_shape", f"unknown shape_type '{short(st, 30)}' "
                              f"(LabelMe area shapes: {', '.join(AREA_SHAPES)}); skipped")


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
            data, duplicates = read_json(jf, with_duplicates=True)
        except AnnotationError as e:
            b.error(e)
            continue
        if not is_labelme(data):
            other = "VIA" if is_via(data) else "COCO" if is_coco(data) else None
            if scanned and other is not None:
                # Annotations of another format in the folder: never dropped silently.
                n = len(data.get("images", [])) if other == "COCO" else \
                    len(data.get("_via_img_metadata", data))
                b.issue("other_format", f"a {other} annotation file ({n} image entries) in "
                        "the LabelMe folder is not read with the LabelMe files: load it on its "
                        f"own (colabrcnn.data.load('{jf}')), or move it out of the folder",
                        ERROR, file=jf)
                continue
            if scanned:  # other JSON files may live in the folder: say so, do not fail
                b.issue("not_labelme", "not a LabelMe file (no 'shapes'); ignored", WARNING,
                        file=jf)
                continue
            b.error(AnnotationError("not a LabelMe file: expected an object with 'shapes' and "
                                    "'imagePath'", file=jf))
            continue
        n_labelme += 1
        b.reject_repeated_keys([d for d in duplicates
                                if not (d[1] is data and d[2] == "shapes")], jf)
        _read_file(b, jf, b.merge_repeated_lists(data, ("shapes",), jf), image_dir)
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
            image_bytes = decode_embedded_image(data["imageData"], "imageData",
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
    rec = b.add_image(jf, name, path, jf, width=width, height=height,
                      image_bytes=image_bytes, **({"embedded_in": "imageData"}
                                                  if image_bytes is not None else {}))
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
            st, parts, figures, bitmap, problem = _shape_geometry(shape, fw)
            gid = shape.get("group_id")
            if gid is not None and (isinstance(gid, bool) or not isinstance(gid, (int, str))):
                raise AnnotationError(f"group_id must be a whole number or null, got "
                                      f"{short(gid, 40)}", **fw)
        if not r.ok:
            continue
        region = f"shapes[{i}] ({st}{', ' + repr(label) if label else ''})"
        if problem is not None:
            b.note_problem(rec, region, problem)
            if not parts:
                continue
        if st in NO_AREA_SHAPES:
            b.note_problem(rec, region, ("converted_shape", (
                f"a {st} marks no area; drawn as labelme draws it, "
                + (f"a disc of radius {LABELME_POINT_RADIUS} px" if st == "point" else
                   f"a {LABELME_LINE_WIDTH} px wide line")
                + " (draw a polygon around the object instead)")))
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
            inst["figures"].extend(figures)
            if bitmap is not None:
                if inst["bitmap"] is not None:
                    # One bitmap per instance is stored: keep a second mask shape of the
                    # group as its own instance rather than lose it, and say so.
                    b.note(rec, region, "group_split", f"a second mask shape in group_id {gid}"
                           " is kept as its own instance", WARNING)
                    b.add_instance(rec, make_instance(label, st, region, [], bitmap=bitmap,
                                                      draw="labelme"))
                else:
                    inst["bitmap"] = bitmap
            continue
        if gid is not None:
            region = f"shapes[{i}] (group_id {gid}, {label!r})"
        inst = make_instance(label, st, region, parts, bitmap=bitmap, draw="labelme",
                             figures=figures)
        if gid is not None:
            groups[(label, gid)] = (inst, [i])
        b.add_instance(rec, inst)
