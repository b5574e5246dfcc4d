"""Reading annotation inputs: JSON files (with a per-``load`` parse cache), image headers,
embedded base64 images, image paths as annotation tools write them, mask (label) images,
and the number checks every reader applies to what it reads.

Every failure is an :class:`~colabrcnn.errors.AnnotationError` naming the file.
"""
from __future__ import annotations

import base64
import contextlib
import io
import json
import math
import os
import re

import numpy as np
import PIL.Image

from ...errors import AnnotationError
from ..dataset import image_read_error

MAX_COORD = 1e7

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")

_JSON_CACHE = None  # a dict while ``json_cache()`` is active


class json_cache:
    """Within this context ``read_json`` parses each file once (``load`` sniffs the
    format, then reads: a large COCO file is not parsed twice). Outside it nothing is
    kept, so a big parsed file does not stay in memory."""

    def __enter__(self):
        global _JSON_CACHE
        self._outer = _JSON_CACHE
        if _JSON_CACHE is None:
            _JSON_CACHE = {}
        return self

    def __exit__(self, *exc):
        global _JSON_CACHE
        _JSON_CACHE = self._outer
        return False


class JSONObject(dict):
    """A JSON object in which a key appears more than once (files merged by hand).

    Holds the last value of each key, as ``json`` does; ``duplicates`` maps each
    repeated key to all its values in file order, so a reader can keep them all.
    """

    duplicates: dict


def _object(pairs):
    """json's object_pairs_hook: a plain dict, or a JSONObject when keys repeat."""
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    out = JSONObject(obj)
    values = {}
    for k, v in pairs:
        values.setdefault(k, []).append(v)
    out.duplicates = {k: v for k, v in values.items() if len(v) > 1}
    return out


def read_json(path, with_duplicates=False):
    """Parse a JSON file; every failure is an AnnotationError naming the file.

    With ``with_duplicates`` returns (data, duplicates): every repeated key as
    (where, object, key, values), ``where`` a readable path like
    ``_via_img_metadata['a.jpg'].regions``. Callers must not modify the returned data
    (it may be shared, see ``json_cache``).
    """
    key = None
    entry = None
    if _JSON_CACHE is not None:
        try:
            st = os.stat(path)
            key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
        except OSError:
            key = None
        entry = _JSON_CACHE.get(key) if key is not None else None
    if entry is None:
        entry = _parse_json(path)
        if key is not None:
            _JSON_CACHE.clear()  # one file at a time: a folder of files never piles up
            _JSON_CACHE[key] = entry
    data, repeated = entry
    if not with_duplicates:
        return data
    return data, (list(_walk_duplicates(data, "")) if repeated[0] else [])


def _walk_duplicates(value, where):
    """(where, object, key, values) for each repeated key, depth first."""
    stack = [(value, where)]
    while stack:
        v, w = stack.pop()
        if isinstance(v, dict):
            for k, vals in getattr(v, "duplicates", {}).items():
                yield w or "the top level", v, k, vals
            stack.extend((x, f"{w}[{k!r}]") for k, x in v.items()
                         if isinstance(x, (dict, list)))
        elif isinstance(v, list):
            stack.extend((x, f"{w}[{i}]") for i, x in enumerate(v)
                         if isinstance(x, (dict, list)))


def _parse_json(path):
    """(data, [whether a key repeated]) of a JSON file."""
    repeated = [False]

    def hook(pairs):
        obj = _object(pairs)
        if isinstance(obj, JSONObject):
            repeated[0] = True
        return obj

    try:
        # utf-8-sig: files saved by Windows tools often start with a byte-order mark.
        with open(path, "r", encoding="utf-8-sig") as f:
            return json.load(f, object_pairs_hook=hook), repeated
    except FileNotFoundError:
        raise AnnotationError("annotation file not found", file=path) from None
    except IsADirectoryError:
        raise AnnotationError("expected a JSON file, got a folder", file=path) from None
    except json.JSONDecodeError as e:
        raise AnnotationError(f"not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}"
                              " (was the file cut short while downloading?)",
                              file=path) from None
    except UnicodeDecodeError as e:
        raise AnnotationError(f"not a UTF-8 text file ({e.reason}); is this really the "
                              "JSON annotation file?", file=path) from None
    except (OSError, ValueError, RecursionError) as e:
        raise AnnotationError(f"cannot read JSON ({e})", file=path) from None


def short(value, limit=60):
    """repr() of a value cut to ``limit`` characters, for error messages."""
    try:
        text = repr(value)
    except Exception:  # pragma: no cover - exotic objects
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def type_name(value):
    return {dict: "an object", list: "a list", str: "a string", bool: "true/false",
            type(None): "null", int: "a number", float: "a number"}.get(type(value),
                                                                          type(value).__name__)


def number(value, what, *, file=None, image=None, field=None, positive=False):
    """A finite, plausible pixel value as float; anything else is an AnnotationError.

    Numeric strings ("12.5") are accepted: some exporters write them.
    """
    v = None
    if isinstance(value, bool) or value is None:
        v = None
    elif isinstance(value, (int, float, np.integer, np.floating)):
        v = float(value)
    elif isinstance(value, str):
        try:
            v = float(value.strip())
        except ValueError:
            v = None
    if v is None:
        raise AnnotationError(f"{what} must be a number, got {type_name(value)} "
                              f"{short(value, 40)}", file=file, image=image, field=field)
    if not math.isfinite(v) or abs(v) > MAX_COORD:
        raise AnnotationError(f"{what} is {short(value, 40)}, not a usable pixel value",
                              file=file, image=image, field=field)
    if positive and v < 0:
        raise AnnotationError(f"{what} must not be negative, got {short(value, 40)}",
                              file=file, image=image, field=field)
    return v


def number_list(values, what, **where):
    if not isinstance(values, (list, tuple)):
        raise AnnotationError(f"{what} must be a list of numbers, got {type_name(values)} "
                              f"{short(values, 40)}", **where)
    return [number(v, f"{what}[{i}]", **where) for i, v in enumerate(values)]


def _label(path_or_bytes, name, embedded):
    """What error messages call an image given as a path or as bytes."""
    return name or (path_or_bytes if isinstance(path_or_bytes, (str, os.PathLike))
                    else f"<embedded {embedded}>")


@contextlib.contextmanager
def _pil_image(path_or_bytes, label, what):
    """PIL's image of a path or bytes; any PIL failure inside the block (a decompression
    bomb included) is raised as an AnnotationError naming ``label``."""
    try:
        src = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, (bytes, bytearray)) \
            else path_or_bytes
        with PIL.Image.open(src) as img:
            yield img
    except Exception as e:
        raise image_read_error(e, label, what) from None


def image_size_from_header(path_or_bytes, name=None):
    """(width, height) as ``read_image`` will return it, without decoding the pixels.

    PIL reads only the header. EXIF orientations 5-8 (rotated phone photos) swap the two,
    because ``read_image`` applies the rotation and annotation tools show it applied.
    """
    with _pil_image(path_or_bytes, _label(path_or_bytes, name, "image"),
                    "image header") as img:
        w, h = img.size
        try:
            orientation = img.getexif().get(0x0112, 1)
        except Exception:  # broken EXIF blocks are common and harmless here
            orientation = 1
    if orientation in (5, 6, 7, 8):
        w, h = h, w
    return int(w), int(h)


_B64_STANDARD = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_B64_URLSAFE = re.compile(r"[A-Za-z0-9_-]*={0,2}")


def decode_base64_image(data, what="image data", **where):
    """Bytes of a base64 image, with or without a ``data:image/...;base64,`` prefix.

    Decoding is strict: line breaks and spaces (some tools wrap lines) and missing
    padding are tolerated, any other character is an error naming the annotation file
    (lenient decoding would silently drop characters and make a broken image). The
    URL-safe alphabet (``-``, ``_``) is read as such: it cannot be mistaken.
    """
    if not isinstance(data, str):
        raise AnnotationError(f"{what} must be a base64 string, got {type_name(data)}",
                              **where)
    if data.startswith("data:"):
        data = data.split(",", 1)[-1]
    text = "".join(data.split())
    if not text:
        raise AnnotationError(f"{what} is empty", **where)
    if len(text.rstrip("=")) % 4 == 1:
        raise AnnotationError(f"{what} is not valid base64: {len(text.rstrip('='))} "
                              "characters cannot encode whole bytes (cut short?)", **where)
    padded = text.rstrip("=") + "=" * (-len(text.rstrip("=")) % 4)
    if _B64_STANDARD.fullmatch(text):
        raw = base64.b64decode(padded, validate=True)
    elif _B64_URLSAFE.fullmatch(text):
        raw = base64.urlsafe_b64decode(padded)
    else:
        bad = [(i, c) for i, c in enumerate(text)
               if not (c.isascii() and (c.isalnum() or c in "+/-_="))]
        why = (f"character {bad[0][1]!r} at position {bad[0][0]}" if bad else
               "it mixes the standard (+/) and URL-safe (-_) alphabets or has '=' inside")
        raise AnnotationError(f"{what} is not valid base64: {why} (damaged or pasted "
                              "together?)", **where)
    if not raw:
        raise AnnotationError(f"{what} is empty", **where)
    return raw


def decode_embedded_image(data, what, **where):
    """Bytes of an image embedded as base64 (LabelMe ``imageData``, VIA 1.0
    ``base64_img_data``), checked to be an image: any problem is an AnnotationError
    naming the annotation file and the field, not an image file that does not exist."""
    raw = decode_base64_image(data, what, **where)
    try:
        image_size_from_header(raw, name=what)
    except AnnotationError as e:
        raise AnnotationError(f"{what} decodes to bytes that are not a readable image "
                              f"({str(e).split(': ', 1)[-1]})", **where) from None
    return raw


def resolve_image_path(name, search_dirs):
    """Find an image file the annotation names; return the best path (may not exist).

    Tries each folder with the name as written (Windows back-slashes turned into
    slashes), then with its base name only, so a file annotated in another folder or on
    another machine is still found when it sits next to the annotations.
    """
    name = str(name).strip()
    norm = name.replace("\\", "/")
    if "://" in norm:  # VIA lets you add images by URL; look for the downloaded file
        norm = norm.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    candidates = []
    if os.path.isabs(norm):
        candidates.append(norm)
    base = os.path.basename(norm)
    for d in search_dirs:
        if d is None:
            continue
        candidates.append(os.path.join(d, norm))
        if base != norm:
            candidates.append(os.path.join(d, base))
    for c in candidates:
        if os.path.isfile(c):
            return os.path.normpath(c)
    return os.path.normpath(candidates[0]) if candidates else name


def read_label_image(path_or_bytes, name=None):
    """A mask PNG as a 2-D integer array of values (0 = background).

    Palette PNGs give their indices, 8/16-bit gray their values, RGB(A) a 24-bit colour
    code r<<16 | g<<8 | b per pixel (alpha ignored), so colour-coded instance maps work.
    """
    label = _label(path_or_bytes, name, "mask")
    with _pil_image(path_or_bytes, label, "mask image") as img:
        img.load()
        mode = img.mode
        if mode in ("1", "L", "P", "I", "I;16", "I;16B", "I;16L", "I;16N"):
            arr = np.array(img)
        elif mode in ("LA", "PA"):
            arr = np.array(img)[..., 0]
        else:
            rgb = np.array(img.convert("RGB")).astype(np.int64)
            arr = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.ndim != 2:
        raise AnnotationError(f"mask image has shape {arr.shape}; expected a single-channel "
                              "image", file=label)
    return arr.astype(np.int64)



def list_image_files(folder):
    """Image files directly in ``folder``, sorted by name."""
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        raise AnnotationError("image folder not found", file=folder) from None
    except NotADirectoryError:
        raise AnnotationError("expected a folder of images", file=folder) from None
    return [os.path.join(folder, n) for n in names
            if n.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(folder, n))]
