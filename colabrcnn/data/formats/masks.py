"""Folders of mask images.

Two layouts, next to a folder of images (``a.jpg``, ``b.png``, ...):

1. **One binary PNG per instance** (``mode="instance_files"``)::

       masks/a/balloon_1.png
       masks/a/balloon_2.png
       masks/b/dog_1.png

   A sub-folder per image, named after the image file without its extension; in it
   one PNG per instance named ``<class>_<n>.png``. The class is the file name without
   its final ``_<digits>`` (``traffic_light_3.png`` is a ``traffic_light``); a name
   without ``_<digits>`` is the class itself. Any non-zero pixel belongs to the
   instance (0/1, 0/255 and anti-aliased masks all work).

2. **One instance-id PNG per image** (``mode="instance_ids"``)::

       masks/a.png     0 = background, each other value one instance
       masks/a.json    optional: {"1": "balloon", "2": "balloon", "3": "dog"}

   8- or 16-bit gray or palette PNGs give values directly; RGB PNGs are read as a
   colour code per instance (sidecar keys then ``"#rrggbb"``). The class of a value
   comes from the sidecar ``<image stem>.json``, else from ``class_map={value: name}``,
   else every instance is ``default_class`` (with a warning).

``mode="auto"`` picks the layout from what it finds in ``mask_dir``.
"""
from __future__ import annotations

import os
import re
import warnings

import numpy as np

from ...errors import AnnotationError
from .io import list_image_files, read_json, read_label_image, short, type_name
from .records import ERROR, WARNING, DatasetBuilder, make_instance, warn_read_issues

MASK_EXTENSIONS = (".png", ".tif", ".tiff", ".bmp")
MODES = ("auto", "instance_files", "instance_ids")


def class_from_mask_name(filename):
    """'traffic_light_3.png' -> 'traffic_light'; 'dog.png' -> 'dog'."""
    stem = os.path.splitext(os.path.basename(filename))[0]
    m = re.fullmatch(r"(.+?)_\d+", stem)
    return (m.group(1) if m else stem).strip()


def _mask_files(folder):
    return sorted(n for n in os.listdir(folder) if n.lower().endswith(MASK_EXTENSIONS)
                  and os.path.isfile(os.path.join(folder, n)))


def _detect_mode(stems, mask_dir):
    entries = os.listdir(mask_dir)
    subdirs = {e for e in entries if os.path.isdir(os.path.join(mask_dir, e))}
    files = {os.path.splitext(e)[0] for e in entries
             if e.lower().endswith(MASK_EXTENSIONS)}
    if subdirs & stems:
        return "instance_files"
    if files & stems:
        return "instance_ids"
    raise AnnotationError(
        "found no masks matching the images. Expected either a sub-folder per image "
        "(masks/<image name without extension>/<class>_<n>.png) or one instance-id PNG per "
        "image (masks/<image name without extension>.png)", file=mask_dir)


def _value_key(key, w):
    """A sidecar/class_map key as the pixel value it names (int, or '#rrggbb')."""
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return int(key)
    if isinstance(key, str):
        k = key.strip()
        if re.fullmatch(r"#[0-9a-fA-F]{6}", k):
            return int(k[1:], 16)
        if k.isdigit():
            return int(k)
    raise AnnotationError(f"class map keys must be pixel values (1, \"2\" or \"#ff0000\"), "
                          f"got {short(key, 40)}", **w)


def _class_map(mapping, w):
    if not isinstance(mapping, dict):
        raise AnnotationError(f"the class map must be an object {{value: class name}}, got "
                              f"{type_name(mapping)}", **w)
    out = {}
    for k, v in mapping.items():
        if not isinstance(v, str) or not v.strip():
            raise AnnotationError(f"class name for value {short(k, 20)} must be text, got "
                                  f"{short(v, 40)}", **w)
        out[_value_key(k, w)] = v.strip()
    return out


def load_mask_folder(image_dir, mask_dir, mode="auto", class_map=None, classes=None,
                     default_class="object"):
    """Read images plus mask images into a prepared :class:`AnnotatedDataset`.

    Args:
        image_dir: folder of the images.
        mask_dir: folder of the masks, laid out as in this module's docstring.
        mode: "auto", "instance_files" (one binary PNG per instance) or "instance_ids"
            (one PNG per image, a value per instance).
        class_map: instance_ids mode: {pixel value: class name} for every image
            (a sidecar ``<image stem>.json`` overrides it for its image).
        classes: optional list of class names fixing the class order (ids 1..n).
        default_class: instance_ids mode without sidecar or class_map: the one class.

    An image without masks has no instances (``validate`` counts it); a mask with no
    image is an ``orphan_mask`` error in ``validate``.
    """
    image_dir, mask_dir = os.fspath(image_dir), os.fspath(mask_dir)
    if mode not in MODES:
        raise AnnotationError(f"mode must be one of {MODES}, got {short(mode)}", field="mode")
    if not os.path.isdir(mask_dir):
        raise AnnotationError("mask folder not found", file=mask_dir)
    images = list_image_files(image_dir)
    if not images:
        raise AnnotationError("no image files (jpg, png, tif, bmp, webp) in this folder",
                              file=image_dir)
    by_stem = {}
    b = DatasetBuilder("masks", "mask folder", [mask_dir], classes)
    for p in images:
        stem = os.path.splitext(os.path.basename(p))[0]
        if stem in by_stem:
            # a.jpg and a.png would both claim masks/a: refuse to guess.
            b.error(AnnotationError(f"two images share the name '{stem}' "
                                    f"({os.path.basename(by_stem[stem])}, {os.path.basename(p)});"
                                    " their masks cannot be told apart: rename one",
                                    file=image_dir, image=os.path.basename(p)))
            continue
        by_stem[stem] = p
    if mode == "auto":
        mode = _detect_mode(set(by_stem), mask_dir)
    if class_map is not None:
        class_map = _class_map(class_map, {"field": "class_map"})
    if mode == "instance_ids" and class_map is None and not any(
            n.endswith(".json") for n in os.listdir(mask_dir)):
        msg = (f"no class map and no sidecar JSON: every instance is class "
               f"'{default_class}'; pass class_map={{value: name}} for several classes")
        b.issue("default_class", msg, WARNING, file=mask_dir)
        warnings.warn(f"{mask_dir}: {msg}", stacklevel=2)

    for stem, img_path in by_stem.items():
        name = os.path.basename(img_path)
        if mode == "instance_files":
            _read_instance_files(b, stem, name, img_path, mask_dir)
        else:
            _read_instance_ids(b, stem, name, img_path, mask_dir, class_map, default_class)

    # Masks that match no image would be lost: report them.
    for entry in sorted(os.listdir(mask_dir)):
        full = os.path.join(mask_dir, entry)
        stem = os.path.splitext(entry)[0] if os.path.isfile(full) else entry
        if entry.endswith(".json") and os.path.isfile(full):
            continue
        if mode == "instance_files" and os.path.isdir(full) and stem not in by_stem:
            b.issue("orphan_mask", "mask folder matches no image in the image folder; its "
                    "instances are not used", ERROR, file=full, image=entry)
        elif mode == "instance_ids" and os.path.isfile(full) and \
                entry.lower().endswith(MASK_EXTENSIONS) and stem not in by_stem:
            b.issue("orphan_mask", "mask file matches no image in the image folder; its "
                    "instances are not used", ERROR, file=full, image=entry)
    ds = b.build()
    warn_read_issues(ds, f"mask folder '{mask_dir}'")
    return ds


def _read_instance_files(b, stem, name, img_path, mask_dir):
    folder = os.path.join(mask_dir, stem)
    rec = b.add_image(stem, name, img_path, folder)
    if not os.path.isdir(folder):
        return
    for fn in _mask_files(folder):
        label = class_from_mask_name(fn)
        region = f"{stem}/{fn}"
        if not label:
            b.note(rec, region, "no_class", "mask file name gives no class name; name it "
                   "<class>_<n>.png", ERROR)
            continue
        b.add_instance(rec, make_instance(label, "bitmap", region, [], bitmap={
            "path": os.path.join(folder, fn), "value": None, "offset": None}))


def _read_instance_ids(b, stem, name, img_path, mask_dir, class_map, default_class):
    mask_path = None
    for ext in MASK_EXTENSIONS:
        for e in (ext, ext.upper()):
            cand = os.path.join(mask_dir, stem + e)
            if os.path.isfile(cand):
                mask_path = cand
                break
        if mask_path:
            break
    if mask_path is None:
        b.add_image(stem, name, img_path, mask_dir)
        return
    try:
        arr = read_label_image(mask_path)
    except AnnotationError as e:
        b.error(AnnotationError(str(e), image=name))
        return
    rec = b.add_image(stem, name, img_path, mask_path, width=arr.shape[1], height=arr.shape[0])
    sidecar = os.path.join(mask_dir, stem + ".json")
    mapping = class_map
    if os.path.isfile(sidecar):
        try:
            mapping = _class_map(read_json(sidecar), {"file": sidecar, "image": name})
        except AnnotationError as e:
            b.error(e)
            return
    values = [int(v) for v in np.unique(arr) if v != 0]
    for v in values:
        region = f"{os.path.basename(mask_path)} value {v}"
        if mapping is None:
            label = default_class
        else:
            label = mapping.get(v)
            if label is None:
                src = "the sidecar " + os.path.basename(sidecar) if os.path.isfile(sidecar) \
                    else "class_map"
                b.note(rec, region, "no_class", f"pixel value {v} has no class in {src}; add "
                       "it there", ERROR)
                continue
        b.add_instance(rec, make_instance(label, "bitmap", region, [], bitmap={
            "path": mask_path, "value": v, "offset": None}))
