"""VGG Image Annotator (VIA) 1.x and 2.x files.

Accepted layouts (all JSON):

* VIA 2.x project ("Save project"): ``{"_via_settings", "_via_img_metadata",
  "_via_attributes", ...}``; the images are in ``_via_img_metadata``.
* VIA 2.x export ("Annotation -> Export as json") and VIA 1.x files (matterport's
  balloon ``via_region_data.json``): a dict keyed by ``filename + size`` whose values
  hold ``filename``, ``regions`` and ``file_attributes``.

``regions`` is a dict keyed "0", "1", ... in VIA 1.x and a list in VIA 2.x; both work,
in the same file too. VIA 3 projects are a different format: export COCO from VIA 3
and use :func:`colabrcnn.data.formats.load_coco`.

Shapes (``shape_attributes.name``): ``polygon`` (all_points_x/y), ``polyline`` (closed
into a polygon, with a warning), ``rect`` (x, y, width, height), ``circle`` (cx, cy, r),
``ellipse`` (cx, cy, rx, ry and optional theta in radians, VIA 2). ``point`` regions
mark no area: they are skipped and counted as warnings. Polygons are drawn as
matterport's balloon sample draws them (``skimage.draw.polygon``, pixel centres on
integer coordinates), rectangles with ``skimage.draw.rectangle`` (x, y, width, height
covers width x height pixels), circles and ellipses with ``skimage.draw.ellipse``.

The class of a region comes from a region attribute: the one named by
``class_attribute=``, or, when not given, the single attribute whose values are class
names (text, dropdown/radio strings, or a checkbox dict ``{"cat": true}``). With no
region attributes at all every region gets ``default_class`` (a warning says so).
"""
from __future__ import annotations

import os
import warnings

import numpy as np

from ...errors import AnnotationError
from .geometry import polygon_part
from .io import (decode_embedded_image, number, number_list, read_json, resolve_image_path,
                 short, type_name)
from .records import ERROR, WARNING, DatasetBuilder, make_instance, warn_read_issues

SHAPES = ("polygon", "polyline", "rect", "circle", "ellipse", "point")
_CLASS_TYPES = ("dropdown", "radio", "checkbox")  # VIA 2 attribute types that are classes


def is_via(data):
    """Whether parsed JSON looks like a VIA 1.x/2.x file."""
    if not isinstance(data, dict):
        return False
    if "_via_img_metadata" in data:
        return True
    values = [v for v in list(data.values())[:20]]
    return bool(values) and all(isinstance(v, dict) and "filename" in v and "regions" in v
                                for v in values)


def is_via3(data):
    return isinstance(data, dict) and "project" in data and "metadata" in data \
        and "attribute" in data and "file" in data


def _iter_regions(regions, file, image):
    """(field name, region) pairs from a VIA 1.x dict or VIA 2.x list."""
    if isinstance(regions, list):
        return [(f"regions[{i}]", r) for i, r in enumerate(regions)]
    if isinstance(regions, dict):
        def order(k):  # "0", "1", ..., "10" in numeric order when they are numbers
            return (0, int(k), "") if str(k).isdigit() else (1, 0, str(k))
        # A key written twice (files merged by hand): every copy is a region.
        repeated = getattr(regions, "duplicates", {})
        return [(f"regions['{k}']" + (f" (copy {n + 1} of the key)" if n else ""), r)
                for k in sorted(regions, key=order)
                for n, r in enumerate(repeated.get(k, [regions[k]]))]
    raise AnnotationError(f"'regions' must be a list (VIA 2) or an object (VIA 1), got "
                          f"{type_name(regions)}", file=file, image=image, field="regions")


def _value_kind(v):
    if v is None or v == "" or v == {}:
        return "empty"
    if isinstance(v, str):
        return "empty" if not v.strip() else "text"
    if isinstance(v, dict) and all(isinstance(x, bool) for x in v.values()):
        return "checkbox" if any(v.values()) else "empty"
    return "other"


def find_class_attribute(metadata, attributes, file):
    """The region attribute holding class names, or None when there are no attributes.

    Raises AnnotationError when several attributes could be the class, naming them.
    """
    kinds = {}      # attribute -> set of value kinds
    examples = {}   # attribute -> a few example values
    for entry in metadata.values():
        if not isinstance(entry, dict):
            continue
        regions = entry.get("regions")
        try:
            pairs = _iter_regions(regions, file, entry.get("filename"))
        except AnnotationError:
            continue  # reported properly while reading the regions
        for _, region in pairs:
            ra = region.get("region_attributes") if isinstance(region, dict) else None
            if not isinstance(ra, dict):
                continue
            for key, value in ra.items():
                kinds.setdefault(key, set()).add(_value_kind(value))
                if _value_kind(value) in ("text", "checkbox"):
                    ex = examples.setdefault(key, [])
                    label = value.strip() if isinstance(value, str) else \
                        ",".join(k for k, t in value.items() if t)
                    if label not in ex and len(ex) < 3:
                        ex.append(label)
    if not kinds:
        return None
    candidates = [k for k, ks in kinds.items() if ks & {"text", "checkbox"} and "other" not in ks]
    if len(candidates) > 1 and isinstance(attributes, dict) and \
            isinstance(attributes.get("region"), dict):
        # A VIA 2 project says which attributes are choice lists: prefer those over
        # free-text ones (a "notes" field is not a class).
        typed = [k for k in candidates if isinstance(attributes["region"].get(k), dict)
                 and attributes["region"][k].get("type") in _CLASS_TYPES]
        if len(typed) == 1:
            return typed[0]
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        if all(ks <= {"empty"} for ks in kinds.values()):
            return None  # attributes defined but never filled in
        raise AnnotationError(
            "no region attribute holds class names (text or checkbox values); attributes "
            f"found: {sorted(kinds)}. Pass class_attribute='...' naming the attribute with "
            "the class, or default_class='...' for a single class", file=file,
            field="region_attributes")
    listing = "; ".join(f"'{k}' (e.g. {', '.join(repr(e) for e in examples.get(k, []))})"
                        for k in sorted(candidates))
    raise AnnotationError(
        f"several region attributes could hold the class: {listing}. Pass "
        f"class_attribute='{sorted(candidates)[0]}' (or another) to load_via/load",
        file=file, field="region_attributes")


def _region_label(region, class_attribute, default_class, w):
    """(label, problem): the class name of a region, or why it has none."""
    if class_attribute is None:
        return default_class, None
    ra = region.get("region_attributes", {})
    if ra is None:
        ra = {}
    if not isinstance(ra, dict):
        raise AnnotationError(f"region_attributes must be an object, got {type_name(ra)}",
                              **w)
    if class_attribute not in ra:
        return None, f"has no '{class_attribute}' attribute, so it has no class"
    value = ra[class_attribute]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, str):
        value = value.strip()
        if not value:
            return None, f"its '{class_attribute}' attribute is empty, so it has no class"
        return value, None
    if isinstance(value, dict):
        if not all(isinstance(x, bool) for x in value.values()):
            raise AnnotationError(f"checkbox attribute '{class_attribute}' must map names to "
                                  f"true/false, got {short(value)}", **w)
        ticked = [str(k).strip() for k, t in value.items() if t]
        if not ticked:
            return None, f"no box of '{class_attribute}' is ticked, so it has no class"
        if len(ticked) > 1:
            return None, (f"several classes are ticked in '{class_attribute}' ({ticked}); "
                          "an instance has one class")
        return ticked[0], None
    if value is None:
        return None, f"its '{class_attribute}' attribute is empty, so it has no class"
    raise AnnotationError(f"class attribute '{class_attribute}' must be text or a checkbox "
                          f"object, got {type_name(value)} {short(value, 40)}", **w)


def _region_geometry(sa, w):
    """(shape name, polygon parts, figures, problem kind/message or None)."""
    if not isinstance(sa, dict):
        raise AnnotationError(f"shape_attributes must be an object, got {type_name(sa)}", **w)
    name = sa.get("name")
    if not isinstance(name, str):
        raise AnnotationError(f"shape_attributes.name must be the shape type ({', '.join(SHAPES)}),"
                              f" got {short(name, 40)}", **w)

    def need(key):
        if key not in sa:
            raise AnnotationError(f"{name} shape has no '{key}'", **w)
        return sa[key]

    if name in ("polygon", "polyline"):
        xs = number_list(need("all_points_x"), "all_points_x", **w)
        ys = number_list(need("all_points_y"), "all_points_y", **w)
        if len(xs) != len(ys):
            raise AnnotationError(f"all_points_x has {len(xs)} values but all_points_y has "
                                  f"{len(ys)}", **w)
        pts, problem = polygon_part(np.array([xs, ys], dtype=np.float64).T, name)
        return name, ([] if pts is None else [pts]), [], problem
    if name == "rect":
        x, y = number(need("x"), "x", **w), number(need("y"), "y", **w)
        wd, ht = number(need("width"), "width", **w), number(need("height"), "height", **w)
        if wd <= 0 or ht <= 0:
            return name, [], [], ("degenerate", f"rect is {wd:g} x {ht:g} pixels; redraw it "
                                  "or delete it")
        return name, [], [{"type": "rect", "params": (x, y, wd, ht)}], None
    if name == "circle":
        cx, cy = number(need("cx"), "cx", **w), number(need("cy"), "cy", **w)
        r = number(need("r"), "r", **w)
        if r <= 0:
            return name, [], [], ("degenerate", f"circle has radius {r:g}; redraw it or "
                                  "delete it")
        return name, [], [{"type": "ellipse", "params": (cx, cy, r, r, 0.0)}], None
    if name == "ellipse":
        cx, cy = number(need("cx"), "cx", **w), number(need("cy"), "cy", **w)
        rx, ry = number(need("rx"), "rx", **w), number(need("ry"), "ry", **w)
        theta = number(sa["theta"], "theta", **w) if sa.get("theta") is not None else 0.0
        if rx <= 0 or ry <= 0:
            return name, [], [], ("degenerate", f"ellipse has radii {rx:g} x {ry:g}; redraw "
                                  "it or delete it")
        return name, [], [{"type": "ellipse", "params": (cx, cy, rx, ry, theta)}], None
    if name == "point":
        return name, [], [], ("skipped_shape", "point marks no area, so it cannot be a mask; "
                          "skipped")
    return name, [], [], ("unknown_shape", f"unknown shape '{short(name, 30)}' (VIA shapes: "
                      f"{', '.join(SHAPES)}); skipped")


def _as_list(regions):
    if isinstance(regions, dict):
        return [r for _, r in _iter_regions(regions, None, None)]
    return list(regions) if isinstance(regions, list) else []


def _entry_regions(entry):
    """An image entry's regions; ``regions`` written twice in one entry: all of them."""
    copies = getattr(entry, "duplicates", {}).get("regions")
    if not copies:
        return entry.get("regions", [])
    return [r for c in copies for r in _as_list(c)]


def _merge_repeated_images(b, metadata, path):
    """Image entries whose key appears more than once (exports merged by hand): one entry
    with the regions of every copy, and a warning; JSON alone would keep the last."""
    repeated = getattr(metadata, "duplicates", None)
    if not repeated:
        return metadata
    merged = dict(metadata)
    for key, copies in repeated.items():
        entries = [e for e in copies if isinstance(e, dict)]
        if not entries:
            continue
        regions = []
        for e in entries:
            regions.extend(_as_list(_entry_regions(e)))
        merged[key] = dict(entries[0], regions=regions)
        b.issue("duplicate_key", f"the image entry {short(key, 60)} appears {len(copies)} "
                f"times (files merged by hand?); the regions of every copy are kept "
                f"({len(regions)} in all)", WARNING, file=path,
                image=str(entries[0].get("filename", key)))
    return merged


def _check_other_duplicates(b, duplicates, data, path):
    """A key repeated with different values anywhere else loses data: an error."""
    metadata = data.get("_via_img_metadata", data) if isinstance(data, dict) else None
    for where, obj, key, values in duplicates:
        if obj is metadata:
            continue  # image entries: merged and reported by _merge_repeated_images
        if key == "regions" or where.endswith("['regions']"):
            # every copy is read (_entry_regions, _iter_regions): say so
            b.issue("duplicate_key", f"key {short(key, 40)} appears {len(values)} times in "
                    f"{where}; the regions of every copy are kept", WARNING, file=path)
            continue
        b.reject_repeated_keys([(where, obj, key, values)], path)


def load_via(path, image_dir=None, class_attribute=None, classes=None,
             default_class="object"):
    """Read a VIA 1.x or 2.x JSON file into a prepared :class:`AnnotatedDataset`.

    Args:
        path: the VIA project or exported annotation JSON.
        image_dir: folder of the images; default: the JSON's folder (VIA 2 projects
            also try their ``default_filepath``).
        class_attribute: region attribute holding the class name; found automatically
            when there is exactly one candidate.
        classes: optional list of class names fixing the class order (ids 1..n); a
            region labelled otherwise is an ``unknown_label`` error in ``validate``.
        default_class: class of every region when the file has no region attributes.

    Returns:
        prepared AnnotatedDataset; class names sorted by name unless ``classes`` given.
    """
    path = os.fspath(path)
    data, duplicates = read_json(path, with_duplicates=True)
    if is_via3(data):
        raise AnnotationError("this is a VIA 3 project, which load_via does not read; in VIA 3"
                              " use Export -> COCO and load that with load_coco", file=path)
    if not isinstance(data, dict):
        raise AnnotationError(f"a VIA file holds a JSON object, this holds {type_name(data)}",
                              file=path)
    attributes, search_dirs = None, [image_dir if image_dir is not None
                                     else os.path.dirname(os.path.abspath(path))]
    if "_via_img_metadata" in data:
        metadata = data["_via_img_metadata"]
        attributes = data.get("_via_attributes")
        settings = data.get("_via_settings")
        core = settings.get("core") if isinstance(settings, dict) else None
        fp = core.get("default_filepath") if isinstance(core, dict) else None
        if isinstance(fp, str) and fp and "://" not in fp:
            search_dirs.append(fp if os.path.isabs(fp) else
                               os.path.join(os.path.dirname(os.path.abspath(path)), fp))
        version = "VIA 2.x project"
    else:
        metadata = data
        version = "VIA export"
    if not isinstance(metadata, dict):
        raise AnnotationError(f"_via_img_metadata must be an object keyed by image, got "
                              f"{type_name(metadata)}", file=path, field="_via_img_metadata")
    if not metadata:
        raise AnnotationError("the file lists no images", file=path)
    for key, entry in list(metadata.items())[:50]:
        if not (isinstance(entry, dict) and ("filename" in entry or "regions" in entry)):
            raise AnnotationError(
                f"does not look like a VIA file: entry {short(key, 40)} is "
                f"{type_name(entry)} without 'filename'/'regions'. Accepted VIA files are "
                "a VIA 1.x/2.x project or exported annotations (JSON)", file=path)

    if class_attribute is None:
        class_attribute = find_class_attribute(metadata, attributes, path)
        if class_attribute is None and default_class is None:
            raise AnnotationError("the regions have no attributes to take class names from; "
                                  "pass default_class='name'", file=path)
    elif not isinstance(class_attribute, str):
        raise AnnotationError("class_attribute must be a string", field="class_attribute")

    b = DatasetBuilder("via", version, [path], classes)
    metadata = _merge_repeated_images(b, metadata, path)
    _check_other_duplicates(b, duplicates, data, path)
    if class_attribute is None:
        msg = (f"the regions have no class attribute, so every region is class "
               f"'{default_class}'; add a region attribute in VIA (or pass class_attribute=)"
               " for several classes")
        b.issue("default_class", msg, WARNING, file=path)
        warnings.warn(f"{path}: {msg}", stacklevel=2)

    for key, entry in metadata.items():
        if not isinstance(entry, dict):
            b.error(AnnotationError(f"an image entry must be an object, got {type_name(entry)}",
                                    file=path, image=str(key)[:80]))
            continue
        filename = entry.get("filename")
        if not isinstance(filename, str) or not filename.strip():
            b.error(AnnotationError(f"entry has no usable 'filename' (got {short(filename, 40)})",
                                    file=path, image=str(key)[:80], field="filename"))
            continue
        w = {"file": path, "image": filename}
        image_bytes = None
        b64 = entry.get("base64_img_data")  # VIA 1.0 could embed the image
        if isinstance(b64, str) and b64.startswith("data:"):
            try:
                image_bytes = decode_embedded_image(b64, "base64_img_data",
                                                    field="base64_img_data", **w)
            except AnnotationError as e:
                b.error(e)
                continue
        img_path = resolve_image_path(filename, search_dirs)
        rec = b.add_image(str(key), filename, img_path, path, image_bytes=image_bytes,
                          **({"embedded_in": "base64_img_data"}
                             if image_bytes is not None else {}))
        try:
            pairs = _iter_regions(_entry_regions(entry), path, filename)
        except AnnotationError as e:
            b.error(e)
            continue
        for field, region in pairs:
            fw = dict(w, field=field)
            with b.reading("region", fw) as r:
                if not isinstance(region, dict):
                    raise AnnotationError(f"a region must be an object, got "
                                          f"{type_name(region)}", **fw)
                if "shape_attributes" not in region:
                    raise AnnotationError("region has no shape_attributes", **fw)
                shape, parts, figures, problem = _region_geometry(region["shape_attributes"], fw)
                label, no_class = _region_label(region, class_attribute, default_class, fw)
            if not r.ok:
                continue
            region_name = f"{field} ({shape})"
            if problem is not None:
                b.note_problem(rec, region_name, problem)
                if not parts and not figures:
                    continue
            if no_class is not None:
                b.note(rec, region_name, "no_class", f"{shape} {no_class}", ERROR)
                continue
            if shape == "polyline":
                b.note(rec, region_name, "converted_shape",
                       "polyline closed into a polygon (draw a polygon for an area)", WARNING)
            b.add_instance(rec, make_instance(label, shape, region_name, parts, draw="via",
                                              figures=figures))
    ds = b.build()
    warn_read_issues(ds, f"VIA file '{path}'")
    return ds
