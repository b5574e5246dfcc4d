"""COCO instance-segmentation JSON (``instances_*.json``, CVAT/Roboflow/VIA 3 exports).

``images`` (id, file_name, width, height), ``categories`` (id, name) and ``annotations``
(image_id, category_id, segmentation, iscrowd). A segmentation is a list of polygons
(each a flat ``[x1, y1, x2, y2, ...]`` list; several parts are one instance), an
uncompressed RLE (``counts`` as a list) or a compressed RLE (``counts`` as a string).

Category ids become contiguous class ids 1..n in category-id order (so COCO's own
80 classes keep their usual order); ``map_source_class_id("coco.<category id>")`` gives
the internal id. ``iscrowd=1`` regions are not instances to train on: they are kept on
the record as ``crowd`` (``load_crowd_mask``) and counted by ``validate``.
"""
from __future__ import annotations

import os

import numpy as np

from ...errors import AnnotationError
from .geometry import normalize_rle, polygon_part
from .io import number, number_list, read_json, resolve_image_path, short, type_name
from .records import ERROR, WARNING, DatasetBuilder, make_instance, warn_read_issues


def is_coco(data):
    return isinstance(data, dict) and isinstance(data.get("images"), list) and \
        ("annotations" in data or "categories" in data)


def _whole(value, what, **w):
    v = number(value, what, **w)
    if v != int(v):
        raise AnnotationError(f"{what} must be a whole number, got {short(value, 40)}", **w)
    return int(v)


def _key(value, what, **w):
    """An id: COCO uses integers; strings are accepted (some exporters write them)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise AnnotationError(f"{what} must be a number or a string, got {type_name(value)} "
                              f"{short(value, 40)}", **w)
    if isinstance(value, float):
        return _whole(value, what, **w)
    return value


def _polygons(seg, w):
    """Parts of a polygon segmentation; (parts, problem) where problem may be None."""
    if seg and all(isinstance(v, (int, float, str)) and not isinstance(v, bool) for v in seg):
        seg = [seg]  # one polygon written flat, without the outer list
    parts, dropped, crossing = [], 0, None
    for j, part in enumerate(seg):
        coords = number_list(part, f"segmentation[{j}]", **w)
        if len(coords) % 2:
            raise AnnotationError(f"segmentation[{j}] has {len(coords)} numbers; a polygon is "
                                  "x, y pairs", **w)
        pts, problem = polygon_part(np.array(coords, dtype=np.float64), f"segmentation[{j}]")
        if pts is None:
            dropped += 1
            continue
        if problem is not None:  # crosses itself: kept, reported
            crossing = crossing or problem
        parts.append(pts)
    if not parts:
        return [], ("degenerate", "polygon segmentation has no part with an area (fewer than "
                    "3 points or all on one line)")
    if dropped:
        return parts, ("degenerate_part", f"{dropped} polygon part(s) without area dropped; "
                       "the other parts are kept")
    return parts, crossing


def load_coco(json_path, image_dir=None, classes=None):
    """Read a COCO instances JSON into a prepared :class:`AnnotatedDataset`.

    Args:
        json_path: the COCO JSON.
        image_dir: folder that ``file_name`` is relative to; default: the JSON's folder.
        classes: optional list of category names to keep, in this order (ids 1..n);
            annotations of other categories are ``unknown_label`` errors in ``validate``.
    """
    json_path = os.fspath(json_path)
    data, duplicates = read_json(json_path, with_duplicates=True)
    if not is_coco(data):
        raise AnnotationError("not a COCO file: expected an object with 'images', "
                              "'annotations' and 'categories' lists", file=json_path)
    search = [image_dir if image_dir is not None else
              os.path.dirname(os.path.abspath(json_path))]
    b = DatasetBuilder("coco", "COCO", [json_path], classes)
    jw = {"file": json_path}
    lists = ("images", "annotations", "categories")
    b.reject_repeated_keys([d for d in duplicates if not (d[1] is data and d[2] in lists)],
                           json_path)
    data = b.merge_repeated_lists(data, lists, json_path)

    # categories ------------------------------------------------------------------
    cats = data.get("categories", [])
    if not isinstance(cats, list):
        raise AnnotationError(f"'categories' must be a list, got {type_name(cats)}",
                              field="categories", **jw)
    cat_name = {}
    for i, c in enumerate(cats):
        fw = dict(jw, field=f"categories[{i}]")
        try:
            if not isinstance(c, dict) or "id" not in c or "name" not in c:
                raise AnnotationError(f"a category needs 'id' and 'name', got {short(c)}", **fw)
            cid = _key(c["id"], "id", **fw)
            name = c["name"]
            if isinstance(name, (int, float)) and not isinstance(name, bool):
                name = str(name)
            if not isinstance(name, str) or not name.strip():
                raise AnnotationError(f"category name must be text, got {short(name, 40)}", **fw)
            if cid in cat_name:
                raise AnnotationError(f"category id {cid!r} appears twice", **fw)
        except AnnotationError as e:
            b.error(e)
            continue
        name = name.strip()
        if name in cat_name.values():
            b.issue("merged_category", f"category name '{name}' is used by several ids; "
                    "they are one class", WARNING, file=json_path, region=f"categories[{i}]")
        cat_name[cid] = name
    ordered = sorted(cat_name, key=lambda k: (isinstance(k, str), k))
    class_list, source_ids = [], {}
    for cid in ordered:
        if cat_name[cid] not in source_ids:
            class_list.append(cat_name[cid])
            source_ids[cat_name[cid]] = cid

    # images ----------------------------------------------------------------------
    recs = {}
    for i, im in enumerate(data["images"]):
        fw = dict(jw, field=f"images[{i}]")
        try:
            if not isinstance(im, dict) or "id" not in im or "file_name" not in im:
                raise AnnotationError(f"an image needs 'id' and 'file_name', got {short(im)}",
                                      **fw)
            iid = _key(im["id"], "id", **fw)
            fname = im["file_name"]
            if not isinstance(fname, str) or not fname.strip():
                raise AnnotationError(f"file_name must be text, got {short(fname, 40)}", **fw)
            fw["image"] = fname
            width = height = None
            if im.get("width") is not None and im.get("height") is not None:
                width = _whole(im["width"], "width", **fw)
                height = _whole(im["height"], "height", **fw)
                if width < 1 or height < 1:
                    raise AnnotationError(f"image size {width} x {height} is not usable", **fw)
            if iid in recs:
                raise AnnotationError(f"image id {iid!r} appears twice", **fw)
        except AnnotationError as e:
            b.error(e)
            continue
        recs[iid] = b.add_image(iid, fname, resolve_image_path(fname, search), json_path,
                                width=width, height=height)

    # annotations -----------------------------------------------------------------
    anns = data.get("annotations", [])
    if not isinstance(anns, list):
        raise AnnotationError(f"'annotations' must be a list, got {type_name(anns)}",
                              field="annotations", **jw)
    for i, a in enumerate(anns):
        fw = dict(jw, field=f"annotations[{i}]")
        with b.reading("annotation", fw) as r:
            if not isinstance(a, dict):
                raise AnnotationError(f"an annotation must be an object, got {type_name(a)}",
                                      **fw)
            for k in ("image_id", "category_id"):
                if k not in a:
                    raise AnnotationError(f"annotation has no '{k}'", **fw)
            iid = _key(a["image_id"], "image_id", **fw)
            if iid not in recs:
                raise AnnotationError(f"image_id {iid!r} is not in 'images'", **fw)
            rec = recs[iid]
            fw["image"] = rec["name"]
            if "id" in a:
                fw["field"] = f"annotations[{i}] (id {short(a['id'], 20)})"
            cid = _key(a["category_id"], "category_id", **fw)
            crowd = a.get("iscrowd", 0)
            if crowd not in (0, 1, True, False, None):
                raise AnnotationError(f"iscrowd must be 0 or 1, got {short(crowd, 20)}", **fw)
            crowd = bool(crowd)
            seg = a.get("segmentation")
            region = fw["field"]
            problem, parts, rle = None, [], None
            if seg is None or (isinstance(seg, list) and not seg):
                problem = ("no_mask", "annotation has no segmentation (a box alone cannot "
                           "train a mask)")
            elif isinstance(seg, list):
                parts, problem = _polygons(seg, fw)
            elif isinstance(seg, dict):
                known = rec.known_size()
                rle = normalize_rle(seg, "segmentation", expect_size=known, **fw)
            else:
                raise AnnotationError(f"segmentation must be polygons (a list) or an RLE "
                                      f"object, got {type_name(seg)}", **fw)
        if not r.ok:
            continue
        if cid not in cat_name:
            b.note(rec, region, "unknown_label", f"category_id {cid!r} is not in "
                   "'categories'; the annotation is left out", ERROR)
            continue
        if problem is not None:
            b.note_problem(rec, region, problem)
            if not parts:
                continue
        shape = "rle" if rle is not None else "polygon"
        b.add_instance(rec, make_instance(cat_name[cid], shape, region, parts, rle=rle),
                       crowd=crowd)
    if not recs and not b.errors:
        raise AnnotationError("the file lists no images", file=json_path)
    ds = b.build(class_list=class_list, source_ids=source_ids)
    warn_read_issues(ds, f"COCO file '{json_path}'")
    return ds
