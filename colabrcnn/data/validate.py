"""Check a dataset before training, and say what is wrong where.

    from colabrcnn.data import formats, validate
    ds = formats.load("balloon/train")
    report = validate(ds)
    print(report)              # table of classes, then every problem with file/image/region
    report.raise_if_errors()   # one AnnotationError listing every problem that loses data

Two severities:

* **error** - annotations would be lost or wrong: missing/unreadable image, image size
  different from the annotation's, a shape with too few points or no area, a shape
  entirely outside the image, a label that is not a class, a region with no class, the
  same image listed twice, a mask with no image.
* **warning** - fixable or harmless, counted: a shape partly outside the image (clipped),
  an image with no instances (used as a negative example), a skipped point/line shape, a
  polyline closed into a polygon, a class without instances, class names that differ
  only in case or spaces, a file name used by two different images.

``strict=True`` raises the first error as an AnnotationError instead of collecting.
Works on any :class:`colabrcnn.data.Dataset`; datasets from ``colabrcnn.data.formats``
get the detailed per-region checks, others are checked through ``load_mask``.
"""
from __future__ import annotations

import collections
import os
from dataclasses import dataclass, field

import numpy as np

from ..errors import AnnotationError
from .formats.geometry import (clip_polygon, figure_outline, instance_mask,
                               polygon_outside_fraction, rasterize_polygons)
from .formats.records import ERROR, INFO, WARNING, ImageRecord

KIND_TEXT = {
    "missing_image": "image file not found",
    "unreadable_image": "image file cannot be read",
    "size_mismatch": "image size differs from the annotation",
    "duplicate_image": "same image listed more than once",
    "duplicate_name": "same file name for different images",
    "degenerate": "shape with too few points or zero size",
    "degenerate_part": "polygon part without area dropped",
    "empty_mask": "shape covers no pixel",
    "outside_image": "shape entirely outside the image",
    "clipped": "shape partly outside the image (clipped)",
    "bad_mask": "mask cannot be rasterised",
    "unknown_label": "label is not one of the classes",
    "unknown_shape": "unknown shape type",
    "no_class": "region without a class",
    "no_mask": "annotation without a mask",
    "skipped_shape": "point shape skipped (no area)",
    "converted_shape": "shape converted (polyline closed; LabelMe line/point drawn wide)",
    "self_intersecting": "polygon crosses itself (bow-tie)",
    "duplicate_key": "key repeated in a JSON object",
    "other_format": "annotation file of another format in the folder, not read",
    "group_split": "group kept as two instances",
    "no_instances": "image without instances",
    "empty_class": "class without instances",
    "similar_class_names": "class names differ only in case/spaces",
    "default_class": "no class attribute: one class for all",
    "orphan_mask": "mask without an image",
    "not_labelme": "JSON file that is not LabelMe, ignored",
    "merged_category": "COCO categories with the same name merged",
    "bad_class_id": "class id out of range",
    "crowd": "crowd regions (iscrowd=1), not trained on",
}


@dataclass
class Issue:
    """One problem: what, how bad, and where (annotation file, image, region)."""
    severity: str
    kind: str
    message: str
    file: str | None = None
    image: str | None = None
    region: str | None = None

    def where(self):
        parts = []
        if self.file is not None:
            parts.append(f"file '{self.file}'")
        if self.image is not None:
            parts.append(f"image '{self.image}'")
        if self.region is not None:
            parts.append(f"region '{self.region}'")
        return ", ".join(parts)

    def __str__(self):
        w = self.where()
        return f"{w}: {self.message}" if w else self.message

    def to_error(self):
        return AnnotationError(self.message, file=self.file, image=self.image,
                               field=self.region)


@dataclass
class ValidationReport:
    """Result of :func:`validate`: class counts and every problem found."""
    num_images: int = 0
    class_names: list = field(default_factory=list)
    class_counts: dict = field(default_factory=dict)        # name -> instances
    class_image_counts: dict = field(default_factory=dict)  # name -> images
    images_without_instances: list = field(default_factory=list)
    num_crowd: int = 0
    issues: list = field(default_factory=list)

    @property
    def num_instances(self):
        return int(sum(self.class_counts.values()))

    @property
    def errors(self):
        return [i for i in self.issues if i.severity == ERROR]

    @property
    def warnings(self):
        return [i for i in self.issues if i.severity == WARNING]

    @property
    def ok(self):
        """True when nothing would lose data (warnings allowed)."""
        return not self.errors

    @property
    def counts(self):
        """{kind: number of issues} over all severities."""
        return dict(collections.Counter(i.kind for i in self.issues))

    def raise_if_errors(self, max_listed=30):
        """Raise one AnnotationError listing every error (none: return self)."""
        errs = self.errors
        if not errs:
            return self
        files = {e.file for e in errs}
        lines = "\n".join(f"  - {e}" for e in errs[:max_listed])
        more = f"\n  ... and {len(errs) - max_listed} more" if len(errs) > max_listed else ""
        raise AnnotationError(
            f"{len(errs)} annotation problem(s) would lose data; fix them, or remove the "
            f"shapes, and read again:\n{lines}{more}",
            file=files.pop() if len(files) == 1 else None)

    def format(self, max_issues=50):
        """A readable report: class table, problem summary, then each problem."""
        out = [f"{self.num_images} images, {self.num_instances} instances in "
               f"{max(0, len(self.class_names) - 1)} classes"
               + (f", {self.num_crowd} crowd regions (not trained on)" if self.num_crowd else "")]
        width = max([len(n) for n in self.class_names] + [5])
        out.append(f"  {'class'.ljust(width)}  {'instances':>9}  {'images':>6}")
        for name in self.class_names[1:]:
            n = self.class_counts.get(name, 0)
            mark = "   <- no instances" if n == 0 else ""
            out.append(f"  {name.ljust(width)}  {n:>9}  "
                       f"{self.class_image_counts.get(name, 0):>6}{mark}")
        if self.images_without_instances:
            out.append(f"  images without instances: {len(self.images_without_instances)}")
        if not self.issues:
            out.append("No problems found.")
            return "\n".join(out)
        errs, warns = self.errors, self.warnings
        out.append(f"{len(errs)} error(s) (data would be lost), {len(warns)} warning(s):")
        by_kind = collections.Counter((i.severity, i.kind) for i in self.issues)
        for (sev, kind), n in sorted(by_kind.items(), key=lambda kv: (kv[0][0] != ERROR,
                                                                       -kv[1], kv[0][1])):
            out.append(f"  {n:>6}  {sev:<7}  {kind:<20} {KIND_TEXT.get(kind, '')}")
        for title, items in (("Errors", errs), ("Warnings", warns)):
            if not items:
                continue
            out.append(f"{title}:")
            for i in items[:max_issues]:
                out.append(f"  - [{i.kind}] {i}")
            if len(items) > max_issues:
                out.append(f"  ... and {len(items) - max_issues} more (all are in "
                           f"report.{title.lower()}; on the command line use --max-issues)")
        return "\n".join(out)

    def __str__(self):
        return self.format()

    def to_dict(self):
        return {"num_images": self.num_images, "num_instances": self.num_instances,
                "class_names": list(self.class_names), "class_counts": dict(self.class_counts),
                "class_image_counts": dict(self.class_image_counts),
                "images_without_instances": list(self.images_without_instances),
                "num_crowd": self.num_crowd,
                "issues": [vars(i).copy() for i in self.issues]}


class _Collector:
    def __init__(self, report, strict):
        self.report, self.strict = report, strict

    def add(self, severity, kind, message, file=None, image=None, region=None):
        issue = Issue(severity, kind, message, None if file is None else str(file),
                      None if image is None else str(image),
                      None if region is None else str(region))
        if self.strict and severity == ERROR:
            raise issue.to_error()
        self.report.issues.append(issue)


def _norm_name(name):
    return " ".join(str(name).lower().replace("_", " ").replace("-", " ").split())


def validate(dataset, check_images=True, classes=None, strict=False):
    """Check every image and annotation of a prepared dataset; return a ValidationReport.

    Args:
        dataset: a prepared Dataset (any reader's output, or your own subclass).
        check_images: open and decode every image (catches missing, truncated and
            wrongly sized files). False: use the annotation's sizes, reading only image
            headers where the annotation has none.
        classes: optional list of expected class names; labels outside it are errors.
        strict: raise the first error (AnnotationError) instead of collecting.
    """
    report = ValidationReport(num_images=len(dataset.image_info))
    c = _Collector(report, strict)
    names = list(getattr(dataset, "class_names", None) or
                 [ci["name"] for ci in dataset.class_info])
    report.class_names = names
    counts = collections.Counter()
    image_counts = collections.Counter()
    expected = None if classes is None else set(classes)
    if expected is not None:
        for n in names[1:]:
            if n not in expected:
                c.add(ERROR, "unknown_label", f"class '{n}' is not one of the expected classes "
                      f"{sorted(expected)}", file=(getattr(dataset, "annotation_files", None)
                                                   or [None])[0])

    for issue in getattr(dataset, "read_issues", []):
        c.add(issue["severity"], issue["kind"], issue["message"], issue.get("file"),
              issue.get("image"), issue.get("region"))

    paths = collections.defaultdict(list)   # real path -> image names (duplicates)
    basenames = collections.defaultdict(set)
    for image_id in range(len(dataset.image_info)):
        info = dataset.image_info[image_id]
        file = info.get("file")
        name = info.get("name") or (os.path.basename(str(info.get("path")))
                                    if info.get("path") else str(info.get("id")))
        if info.get("path") and info.get("image_bytes") is None:
            real = os.path.normcase(os.path.realpath(str(info["path"])))
            paths[real].append((file, name))
            basenames[os.path.basename(real)].add(real)
        for s in info.get("issues", []):
            c.add(s["severity"], s["kind"], s["message"], file, name, s.get("region"))

        size = _image_size(dataset, image_id, info, check_images, c, file, name)
        if "instances" in info:
            present = _check_instances(info, size, c, file, name, names, expected)
        else:
            present = _check_via_load_mask(dataset, image_id, size, c, file, name, names)
        for cid in present:
            counts[names[cid]] += 1
        for cid in set(present):
            image_counts[names[cid]] += 1
        if not present:
            report.images_without_instances.append(name)
            c.add(WARNING, "no_instances", "image has no instances; it trains as background "
                  "only (annotate it if that is a mistake)", file, name)
        report.num_crowd += len(info.get("crowd", []))

    for real, where in paths.items():
        if len(where) > 1:
            listed = ", ".join(f"'{n}' in {f}" for f, n in where)
            c.add(ERROR, "duplicate_image", f"the same image file is listed {len(where)} "
                  f"times ({listed}); merge its annotations into one entry, or it is counted "
                  "twice and may land in both train and val", where[0][0], where[0][1])
    for base, reals in basenames.items():
        if len(reals) > 1:
            c.add(WARNING, "duplicate_name", f"{len(reals)} different images are named "
                  f"'{base}' ({', '.join(sorted(reals))}); fine if intended, but easy to mix "
                  "up", image=base)

    report.class_counts = {n: counts.get(n, 0) for n in names[1:]}
    report.class_image_counts = {n: image_counts.get(n, 0) for n in names[1:]}
    if report.num_crowd:
        c.add(INFO, "crowd", f"{report.num_crowd} crowd region(s) (iscrowd=1) kept apart: not "
              "trained on")
    for n in names[1:]:
        if counts.get(n, 0) == 0:
            c.add(WARNING, "empty_class", f"class '{n}' has no instances; annotate some or "
                  "remove it from the classes, or the model learns nothing for it",
                  region=f"class '{n}'")
    for n in classes or []:
        if n not in names:
            c.add(WARNING, "empty_class", f"expected class '{n}' does not occur in the "
                  "annotations", region=f"class '{n}'")
    groups = collections.defaultdict(list)
    for n in names[1:]:
        groups[_norm_name(n)].append(n)
    for similar in groups.values():
        if len(similar) > 1:
            c.add(WARNING, "similar_class_names", f"classes {similar} differ only in case, "
                  "spaces or underscores; a typo in the labels? They are separate classes",
                  region="classes")
    return report


def _image_size(dataset, image_id, info, check_images, c, file, name):
    """(height, width) to check masks against, or None; reports image problems."""
    ann = info.known_size() if isinstance(info, ImageRecord) else (
        (info["height"], info["width"]) if info.get("height") and info.get("width") else None)
    real = None
    if check_images:
        try:
            real = tuple(dataset.load_image(image_id).shape[:2])
        except AnnotationError as e:
            kind = "missing_image" if "not found" in str(e) or "no image path" in str(e) \
                else "unreadable_image"
            c.add(ERROR, kind, _strip_where(e, file, name), file, name)
            return ann
        except Exception as e:  # a user's own load_image: still name the image
            c.add(ERROR, "unreadable_image", f"load_image failed: {type(e).__name__}: {e}",
                  file, name)
            return ann
    if real is not None and ann is not None and tuple(ann) != real:
        c.add(ERROR, "size_mismatch", f"the annotation says {ann[1]} x {ann[0]} (width x "
              f"height) but the image file is {real[1]} x {real[0]}; were the images resized "
              "after annotating? Masks would not line up", file, name)
        return real
    if real is not None:
        return real
    if ann is not None:
        return tuple(ann)
    try:
        return (int(info["height"]), int(info["width"]))  # reads only the header
    except AnnotationError as e:
        kind = "missing_image" if "not found" in str(e) else "unreadable_image"
        c.add(ERROR, kind, _strip_where(e, file, name), file, name)
        return None


def _strip_where(err, file, name):
    """An AnnotationError's message without the 'file ..., image ...:' it shares with ours."""
    text = str(err)
    prefix = ", ".join(p for p in (f"file '{file}'" if file is not None else None,
                                   f"image '{name}'" if name is not None else None) if p)
    if prefix and text.startswith(prefix + ": "):
        return text[len(prefix) + 2:]
    return text


def _check_instances(info, size, c, file, name, names, expected):
    """Check the records of a formats reader; return the class ids that produce a mask."""
    present = []
    cache = {}  # one read of an instance-id mask image serves all its instances
    for inst in info.get("instances", []):
        region = inst.get("region")
        label = inst.get("label")
        cid = int(inst.get("class_id", 0))
        if not 0 < cid < len(names):
            c.add(ERROR, "bad_class_id", f"class id {cid} is not a class (0 < id < "
                  f"{len(names)})", file, name, region)
            continue
        if expected is not None and label not in expected:
            c.add(ERROR, "unknown_label", f"label '{label}' is not one of the expected classes "
                  f"{sorted(expected)}", file, name, region)
        if size is None:  # image missing: cannot rasterise, but the class still counts
            present.append(cid)
            continue
        h, w = size
        polys = (inst.get("polygons") or []) + [figure_outline(f) for f in
                                                inst.get("figures") or ()]
        if polys and polygon_outside_fraction(polys, h, w):
            inside = [clip_polygon(p, 0, 0, w, h) for p in polys]
            if not any(len(p) >= 3 for p in inside):
                c.add(ERROR, "outside_image", f"{inst.get('shape')} '{label}' lies entirely "
                      f"outside the {w} x {h} image (wrong image, or coordinates of a "
                      "resized copy?)", file, name, region)
                continue
            c.add(WARNING, "clipped", f"{inst.get('shape')} '{label}' reaches outside the "
                  f"{w} x {h} image; the part outside is cut off", file, name, region)
        try:
            if polys and not inst.get("figures") and inst.get("rle") is None and \
                    inst.get("bitmap") is None:
                area = _polygon_pixels(polys, h, w, inst.get("draw", "coco"))
            else:
                area = int(instance_mask(inst, h, w, cache=cache, file=file, image=name,
                                         field=region).sum())
        except AnnotationError as e:
            c.add(ERROR, "bad_mask", _strip_where(e, file, name).split(f"field '{region}': ")[-1],
                  file, name, region)
            continue
        if area == 0:
            c.add(ERROR, "empty_mask", f"{inst.get('shape')} '{label}' covers no pixel (smaller"
                  " than a pixel?); it is left out of training: redraw it or delete it",
                  file, name, region)
            continue
        present.append(cid)
    return present


def _polygon_pixels(polys, h, w, draw="coco"):
    """Pixel count of a polygon instance, rasterised only over its bounding box.

    Shifting by whole pixels does not change which pixels a polygon covers, so a small
    canvas gives the same count as the full image, far faster on large images.
    """
    # Clipped a pixel beyond the image (exact inside it); the canvas covers only pixels
    # of the image, whatever the convention's pixel centres.
    parts = [clip_polygon(p, -1, -1, w + 1, h + 1) for p in polys]
    parts = [p for p in parts if len(p) >= 3]
    if not parts:
        return 0
    allp = np.concatenate(parts)
    x0, y0 = np.maximum(np.floor(allp.min(axis=0)).astype(int) - 1, 0)
    x1, y1 = np.minimum(np.ceil(allp.max(axis=0)).astype(int) + 1, [w - 1, h - 1])
    if x1 < x0 or y1 < y0:
        return 0
    local = [p - [x0, y0] for p in parts]
    return int(rasterize_polygons(local, int(y1 - y0) + 1, int(x1 - x0) + 1, draw).sum())


def _check_via_load_mask(dataset, image_id, size, c, file, name, names):
    """For Datasets without instance records: check what load_mask returns."""
    try:
        masks, ids = dataset.load_mask(image_id)
    except AnnotationError as e:
        c.add(ERROR, "bad_mask", _strip_where(e, file, name), file, name)
        return []
    except Exception as e:
        c.add(ERROR, "bad_mask", f"load_mask failed: {type(e).__name__}: {e}", file, name)
        return []
    masks, ids = np.asarray(masks), np.asarray(ids).reshape(-1)
    if masks.ndim != 3 or masks.shape[-1] != len(ids):
        c.add(ERROR, "bad_mask", f"load_mask returned masks of shape {masks.shape} and "
              f"{len(ids)} class ids; expected H x W x N and N ids", file, name)
        return []
    if size is not None and masks.shape[:2] != tuple(size):
        c.add(ERROR, "size_mismatch", f"load_mask returned {masks.shape[1]} x {masks.shape[0]} "
              f"masks for a {size[1]} x {size[0]} image", file, name)
    present = []
    for k, cid in enumerate(ids):
        region = f"mask {k}"
        if not 0 < int(cid) < len(names):
            c.add(ERROR, "bad_class_id", f"class id {int(cid)} is not a class (0 < id < "
                  f"{len(names)})", file, name, region)
            continue
        if not masks[..., k].any():
            c.add(ERROR, "empty_mask", "mask covers no pixel", file, name, region)
            continue
        present.append(int(cid))
    return present
