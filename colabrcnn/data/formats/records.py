"""One record format for every annotation reader.

Every reader (VIA, LabelMe, COCO, mask PNG folders) produces an :class:`AnnotatedDataset`
whose ``image_info`` records look alike::

    {"id": ..., "source": "via", "name": "a.jpg",        # name as the annotation file writes it
     "path": "/data/a.jpg",                               # or None when embedded
     "image_bytes": None,                                 # embedded image (LabelMe imageData)
     "embedded_in": "imageData",                          # only with image_bytes: its field
     "width": 640, "height": 480,                         # from the annotation, else read lazily
     "size_from": "annotation" | "file",
     "file": "/data/via_project.json",                    # annotation file it came from
     "instances": [instance, ...],                        # trained on
     "crowd": [instance, ...],                            # COCO iscrowd=1: not trained on
     "issues": [{"region", "kind", "severity", "message"}, ...]}   # shapes skipped or converted

and each instance is a small dict::

    {"class_id": 3,                     # internal id (after prepare), 0 is BG
     "label": "balloon",                # class name as written in the annotation
     "shape": "polygon",                # original shape type, for messages
     "region": "regions[2]",            # where it is in the annotation file, for messages
     "polygons": [array (K, 2) of (x, y)], # one or several parts (union), may be empty
     "draw": "coco" | "labelme" | "via",  # how the polygons are rasterised (geometry.py)
     "figures": [{"type": "rectangle" | "circle" | "line" | "linestrip" | "point",
                  "points": array} | {"type": "ellipse", "params": (cx, cy, rx, ry, theta)}
                 | {"type": "rect", "params": (x, y, width, height)}],
     "rle": None | {"size": [h, w], "counts": str},          # compressed COCO RLE
     "bitmap": None | {"path" or "bytes", "value", "offset"}} # mask image (PNG) read lazily

Masks are only rasterised in ``load_mask`` (see ``geometry.py``).
"""
from __future__ import annotations

import copy
import os
import warnings

import numpy as np

from ...errors import AnnotationError
from ..dataset import Dataset, read_image
from .geometry import instance_mask
from .io import image_size_from_header, short

# Issue kinds whose severity is "error" by default (they lose data); see validate.py.
ERROR = "error"
WARNING = "warning"
INFO = "info"


class ImageRecord(dict):
    """An image_info record whose ``width``/``height`` are read on first use.

    When the annotation does not give the size (VIA never does), the image header is
    read with PIL the first time ``info["width"]``, ``info["height"]`` or ``info.get``
    asks for them, so loading a dataset never opens its images.
    """

    _LAZY = ("width", "height")

    def _fill_size(self):
        src = self.get("image_bytes") or dict.get(self, "path")
        if src is None:
            raise AnnotationError("the image has no path and no embedded data, so its size "
                                  "is unknown", file=dict.get(self, "file"),
                                  image=dict.get(self, "name"))
        try:
            w, h = image_size_from_header(src, name=dict.get(self, "path"))
        except AnnotationError as e:
            raise AnnotationError(f"{e} (listed in this annotation file)",
                                  file=dict.get(self, "file"),
                                  image=dict.get(self, "name")) from None
        dict.__setitem__(self, "width", w)
        dict.__setitem__(self, "height", h)
        dict.__setitem__(self, "size_from", "file")

    def __missing__(self, key):
        if key in self._LAZY:
            self._fill_size()
            return dict.__getitem__(self, key)
        raise KeyError(key)

    def get(self, key, default=None):
        if key in self._LAZY and not dict.__contains__(self, key):
            return self[key]
        return dict.get(self, key, default)

    def __contains__(self, key):
        return key in self._LAZY or dict.__contains__(self, key)

    def known_size(self):
        """(height, width) if known without opening the image, else None."""
        if dict.__contains__(self, "width") and dict.__contains__(self, "height"):
            return dict.__getitem__(self, "height"), dict.__getitem__(self, "width")
        return None

    def __reduce__(self):  # pickle as an ImageRecord with its current items
        return (ImageRecord, (dict(self),))

    def __copy__(self):
        return ImageRecord(dict(self))

    def __deepcopy__(self, memo):
        return ImageRecord(copy.deepcopy(dict(self), memo))


def make_instance(label, shape, region, polygons=None, rle=None, bitmap=None, draw="coco",
                  figures=None):
    """An instance record (layout: module docstring)."""
    return {"class_id": 0, "label": label, "shape": shape, "region": region,
            "polygons": list(polygons or []), "rle": rle, "bitmap": bitmap, "draw": draw,
            "figures": list(figures or [])}


class AnnotatedDataset(Dataset):
    """A Dataset built from annotation files; masks are rasterised on demand.

    Attributes beyond :class:`Dataset`: ``format`` (reader name), ``annotation_files``
    and ``read_issues`` (problems found while reading that belong to no kept image,
    e.g. a mask file with no matching image; ``validate`` reports them).
    """

    def __init__(self, format="", annotation_files=()):
        super().__init__()
        self.format = format
        self.annotation_files = list(annotation_files)
        self.read_issues = []

    # ------------------------------------------------------------- images
    def image_reference(self, image_id):
        info = self.image_info[image_id]
        if info.get("path"):
            return str(info["path"])
        return f"{info.get('file')}:{info.get('name')} (embedded image)"

    def image_size(self, image_id):
        """(height, width) of an image: from the annotation, else from the file header."""
        info = self.image_info[image_id]
        return int(info["height"]), int(info["width"])

    def load_image(self, image_id):
        """H x W x 3 uint8 RGB; a missing/unreadable file names the annotation file too."""
        info = self.image_info[image_id]
        if info.get("image_bytes") is not None:
            try:
                return read_image(info["image_bytes"], name="embedded image")
            except AnnotationError as e:
                field = info.get("embedded_in", "the embedded image")
                raise AnnotationError(f"the image embedded in the annotation file: {e}",
                                      file=info.get("file"), image=info.get("name"),
                                      field=field) from None
        try:
            if not info.get("path"):
                raise AnnotationError("no image path given")
            return read_image(info["path"])
        except AnnotationError as e:
            folder = os.path.dirname(str(info.get("path") or "")) or "."
            raise AnnotationError(f"{e} (looked in folder '{folder}')",
                                  file=info.get("file"), image=info.get("name")) from None

    # ------------------------------------------------------------- masks
    def load_mask(self, image_id):
        """(H x W x N bool, N int32) for the image's (non-crowd) instances.

        An instance whose mask covers no pixel (smaller than a pixel, or outside the
        image) is left out with a warning; ``validate`` lists these as errors.
        """
        info = self.image_info[image_id]
        h, w = self.image_size(image_id)
        masks, ids = [], []
        cache = {}
        for inst in info.get("instances", []):
            m = instance_mask(inst, h, w, cache=cache, file=info.get("file"),
                              image=info.get("name"), field=inst.get("region"))
            if not m.any():
                warnings.warn(f"file '{info.get('file')}', image '{info.get('name')}', "
                              f"{inst.get('region')}: the {inst.get('shape')} "
                              f"'{inst.get('label')}' covers no pixel and is left out; run "
                              "colabrcnn.data.validate(dataset) to list all such shapes",
                              stacklevel=2)
                continue
            masks.append(m)
            ids.append(inst["class_id"])
        if not masks:
            return np.zeros((h, w, 0), dtype=bool), np.zeros((0,), dtype=np.int32)
        return np.stack(masks, axis=-1), np.asarray(ids, dtype=np.int32)

    def load_crowd_mask(self, image_id):
        """(H x W x N bool, N int32) of COCO ``iscrowd=1`` regions (not trained on)."""
        info = self.image_info[image_id]
        h, w = self.image_size(image_id)
        crowd = info.get("crowd", [])
        if not crowd:
            return np.zeros((h, w, 0), dtype=bool), np.zeros((0,), dtype=np.int32)
        cache = {}
        masks = [instance_mask(c, h, w, cache=cache, file=info.get("file"),
                               image=info.get("name"), field=c.get("region")) for c in crowd]
        return np.stack(masks, axis=-1), np.asarray([c["class_id"] for c in crowd], np.int32)

    # ------------------------------------------------------------- helpers
    def class_id(self, name):
        """Internal id of a class name (raises AnnotationError listing the names)."""
        try:
            return self.class_names.index(name)
        except (ValueError, AttributeError):
            names = [c["name"] for c in self.class_info]
            raise AnnotationError(f"no class named {name!r}; the classes are {names}") from None

    def subset(self, image_ids):
        """A prepared dataset with only these images, same classes and class ids."""
        out = self.__class__.__new__(self.__class__)
        out.__dict__.update({k: v for k, v in self.__dict__.items()})
        out.class_info = copy.deepcopy(self.class_info)
        out.image_info = [ImageRecord(dict(self.image_info[int(i)]))
                          if isinstance(self.image_info[int(i)], ImageRecord)
                          else dict(self.image_info[int(i)]) for i in image_ids]
        out.annotation_files = list(self.annotation_files)
        out.read_issues = list(self.read_issues)
        out.prepare()
        return out


# Problem kinds a reader reports as warnings (the data that matters is kept).
WARNING_KINDS = ("skipped_shape", "degenerate_part", "converted_shape", "group_split",
                 "self_intersecting")


class _Reading:
    """See :meth:`DatasetBuilder.reading`."""

    def __init__(self, builder, what, where):
        self.builder, self.what, self.where, self.ok = builder, what, where, False

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.ok = True
            return False
        if issubclass(exc_type, AnnotationError):
            self.builder.error(exc)
            return True
        if issubclass(exc_type, (KeyError, TypeError, IndexError, ValueError, AttributeError)):
            # A structure none of the readers' checks foresaw; still name the place.
            self.builder.error(AnnotationError(
                f"cannot read this {self.what} ({exc_type.__name__}: {exc})", **self.where))
            return True
        return False


class DatasetBuilder:
    """Collects records while a reader walks a file, then makes the prepared dataset.

    Malformed structure (missing keys, wrong types, non-numeric points) is collected with
    ``error`` and raised together at the end, so a person sees every broken region at
    once instead of fixing them one run at a time.
    """

    MAX_LISTED = 20

    def __init__(self, source, format_name, annotation_files=(), classes=None):
        self.source = source
        self.dataset = AnnotatedDataset(format_name, annotation_files)
        self.records = []
        self.errors = []
        self.labels = []          # in order of first appearance
        self._label_set = set()
        self.classes = None
        if classes is not None:
            if isinstance(classes, str) or not all(isinstance(c, str) for c in classes):
                raise AnnotationError("classes must be a list of class names (strings), got "
                                      f"{short(classes)}", field="classes")
            if len(set(classes)) != len(classes) or "BG" in classes:
                raise AnnotationError("classes must be distinct names and must not include "
                                      f"'BG' (class 0 is implicit), got {list(classes)}",
                                      field="classes")
            self.classes = list(classes)

    # records -------------------------------------------------------------
    def add_image(self, image_id, name, path, file, width=None, height=None,
                  image_bytes=None, **extra):
        rec = ImageRecord(id=image_id, source=self.source, name=str(name), path=path,
                          image_bytes=image_bytes, file=None if file is None else str(file),
                          instances=[], crowd=[], issues=[])
        if width is not None and height is not None:
            rec["width"], rec["height"] = int(width), int(height)
            rec["size_from"] = "annotation"
        rec.update(extra)
        self.records.append(rec)
        return rec

    def add_instance(self, rec, inst, crowd=False):
        label = inst["label"]
        if label not in self._label_set:
            self._label_set.add(label)
            self.labels.append(label)
        rec["crowd" if crowd else "instances"].append(inst)

    @staticmethod
    def note(rec, region, kind, message, severity=ERROR):
        rec["issues"].append({"region": region, "kind": kind, "severity": severity,
                               "message": message})

    def issue(self, kind, message, severity=WARNING, file=None, image=None, region=None):
        self.dataset.read_issues.append({"kind": kind, "message": message,
                                         "severity": severity, "file": file,
                                         "image": image, "region": region})

    def error(self, err):
        self.errors.append(err)

    def note_problem(self, rec, region, problem):
        """Record a reader's (kind, message) problem with its kind's severity."""
        kind, message = problem
        self.note(rec, region, kind, message,
                  WARNING if kind in WARNING_KINDS else ERROR)

    def merge_repeated_lists(self, data, keys, file):
        """``data`` (a parsed JSON object) with each of ``keys`` that appears several times
        holding the items of every copy (``shapes`` of a LabelMe file, ``images`` /
        ``annotations`` of a COCO file merged by hand), each merge reported."""
        repeated = getattr(data, "duplicates", {})
        todo = [k for k in keys if k in repeated and
                all(isinstance(v, list) for v in repeated[k])]
        if not todo:
            return data
        data = dict(data)
        for k in todo:
            data[k] = [x for copy in repeated[k] for x in copy]
            self.issue("duplicate_key", f"'{k}' appears {len(repeated[k])} times (files "
                       f"merged by hand?); the items of every copy are kept "
                       f"({len(data[k])} in all)", WARNING, file=file)
        return data

    def reject_repeated_keys(self, duplicates, file):
        """A key repeated with different values loses data (JSON keeps the last): an
        error naming the key and where it is (``duplicates``: see ``io.read_json``)."""
        for where, obj, key, values in duplicates:
            if all(v == values[0] for v in values[1:]):
                continue
            self.error(AnnotationError(
                f"key {short(key, 40)} appears {len(values)} times with different values in "
                f"{where}; JSON keeps only the last: keep the right one", file=file))

    def reading(self, what, where):
        """Context in which an AnnotationError (or an unforeseen KeyError/TypeError/...
        from a malformed structure) is collected with ``error`` instead of raised; the
        context's ``ok`` says whether the block finished. ``where`` (file/image/field)
        may be updated inside the block."""
        return _Reading(self, what, where)

    # finish --------------------------------------------------------------
    def raise_errors(self, file=None):
        if not self.errors:
            return
        n = len(self.errors)
        lines = "\n".join(f"  - {e}" for e in self.errors[:self.MAX_LISTED])
        more = f"\n  ... and {n - self.MAX_LISTED} more" if n > self.MAX_LISTED else ""
        first = self.errors[0]
        if n == 1:
            raise first
        raise AnnotationError(f"{n} malformed annotations; fix them and read again:\n"
                              f"{lines}{more}", file=file if file is not None else first.file,
                              image=None, field=None)

    def build(self, class_list=None, source_ids=None):
        """Prepared dataset. Class names: ``classes`` if given, else ``class_list`` if
        given (COCO: category order), else the labels sorted by name."""
        self.raise_errors(file=self.dataset.annotation_files[0]
                          if len(self.dataset.annotation_files) == 1 else None)
        if self.classes is not None:
            names = self.classes
        elif class_list is not None:
            names = list(class_list)
        else:
            names = sorted(self.labels)
        ds = self.dataset
        source_ids = dict(source_ids or {})
        used = set(source_ids.values())
        for i, name in enumerate(names, start=1):
            if name not in source_ids:
                # A name without an id in the file (classes= added it): a fresh id, so
                # add_class never mistakes it for another class.
                sid = i
                while sid in used:
                    sid += len(names)
                source_ids[name] = sid
                used.add(sid)
            ds.add_class(self.source, source_ids[name], name)
        index = {name: i for i, name in enumerate(names, start=1)}
        for rec in self.records:
            for key in ("instances", "crowd"):
                kept = []
                for inst in rec[key]:
                    cid = index.get(inst["label"])
                    if cid is None:
                        self.note(rec, inst["region"], "unknown_label",
                                  f"label '{inst['label']}' is not one of the classes "
                                  f"{names}; fix the label or add it to classes=",
                                  ERROR)
                        continue
                    inst["class_id"] = cid
                    kept.append(inst)
                rec[key] = kept
            ds.image_info.append(rec)
        ds.prepare()
        return ds


# Up to this many problems are each named in the load warning.
WARN_LISTED = 3


def warn_read_issues(dataset, what):
    """One warnings.warn summarising the problems a reader recorded, if any; with few
    problems it names each one's file, image and region."""
    # (record, issue) pairs; default_class has had its own, more specific warning.
    found = [(rec, s) for rec in dataset.image_info for s in rec.get("issues", [])]
    found += [(s, s) for s in dataset.read_issues if s["kind"] != "default_class"]
    n_warn = sum(1 for _, s in found if s["severity"] == WARNING)
    n_err = sum(1 for _, s in found if s["severity"] == ERROR)
    if not (n_warn or n_err):
        return
    head = (f"{what}: {n_err} problem(s) that lose annotations and {n_warn} warning(s)")
    if len(found) <= WARN_LISTED:
        lines = []
        for where, s in found:
            place = ", ".join(f"{k} '{v}'" for k, v in (
                ("file", where.get("file")), ("image", where.get("name") or where.get("image")),
                ("region", s.get("region"))) if v is not None)
            lines.append(f"  - {s['severity']} {s['kind']}: {place}: {s['message']}")
        warnings.warn(head + ":\n" + "\n".join(lines), stacklevel=3)
        return
    kinds = sorted({s["kind"] for _, s in found})
    warnings.warn(f"{head} ({', '.join(kinds)}); run colabrcnn.data.validate(dataset) to see "
                  "each one with its file, image and region", stacklevel=3)
