"""Reading annotation inputs: JSON files (with a per-``load`` parse cache), image headers,
embedded base64 images, image paths as annotation tools write them, mask (label) images,
and the number checks every reader applies to what it reads.

Every failure is an :class:`~colabrcnn.errors.AnnotationError` naming the file.
"""
from __future__ import annotations

import base64
import binascii
import io
import json
import math
import os

import numpy as np

from ...errors import AnnotationError

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


def read_json(path):
    """Parse a JSON file; every failure is an AnnotationError naming the file.

    Callers must not modify the returned data (it may be shared, see ``json_cache``).
    """
    key = None
    if _JSON_CACHE is not None:
        try:
            st = os.stat(path)
            key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
        except OSError:
            key = None
        if key is not None and key in _JSON_CACHE:
            return _JSON_CACHE[key]
    data = _parse_json(path)
    if key is not None:
        _JSON_CACHE.clear()  # one file at a time: a folder of files never piles up
        _JSON_CACHE[key] = data
    return data


def _parse_json(path):
    try:
        # utf-8-sig: files saved by Windows tools often start with a byte-order mark.
        with open(path, "r", encoding="utf-8-sig") as f:
            return json.load(f)
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


def image_size_from_header(path_or_bytes, name=None):
    """(width, height) as ``read_image`` will return it, without decoding the pixels.

    PIL reads only the header. EXIF orientations 5-8 (rotated phone photos) swap the two,
    because ``read_image`` applies the rotation and annotation tools show it applied.
    """
    from PIL import Image, UnidentifiedImageError

    label = name or (path_or_bytes if isinstance(path_or_bytes, (str, os.PathLike))
                     else "<embedded image>")
    try:
        src = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, (bytes, bytearray)) \
            else path_or_bytes
        with Image.open(src) as img:
            w, h = img.size
            try:
                orientation = img.getexif().get(0x0112, 1)
            except Exception:  # broken EXIF blocks are common and harmless here
                orientation = 1
    except FileNotFoundError:
        raise AnnotationError("image file not found; check the image folder and the file "
                              "name in the annotations", file=label) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise AnnotationError(f"cannot read image header ({e})", file=label) from None
    if orientation in (5, 6, 7, 8):
        w, h = h, w
    return int(w), int(h)


def decode_base64_image(data, what="image data", **where):
    """Bytes of a base64 image, with or without a ``data:image/...;base64,`` prefix."""
    if not isinstance(data, str):
        raise AnnotationError(f"{what} must be a base64 string, got {type_name(data)}",
                              **where)
    if data.startswith("data:"):
        data = data.split(",", 1)[-1]
    try:
        raw = base64.b64decode(data, validate=False)
    except (binascii.Error, ValueError) as e:
        raise AnnotationError(f"{what} is not valid base64 ({e})", **where) from None
    if not raw:
        raise AnnotationError(f"{what} is empty", **where)
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
    from PIL import Image, UnidentifiedImageError

    label = name or (path_or_bytes if isinstance(path_or_bytes, (str, os.PathLike))
                     else "<embedded mask>")
    try:
        src = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, (bytes, bytearray)) \
            else path_or_bytes
        with Image.open(src) as img:
            img.load()
            mode = img.mode
            if mode in ("1", "L", "P", "I", "I;16", "I;16B", "I;16L", "I;16N"):
                arr = np.array(img)
            elif mode in ("LA", "PA"):
                arr = np.array(img)[..., 0]
            else:
                rgb = np.array(img.convert("RGB")).astype(np.int64)
                arr = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    except FileNotFoundError:
        raise AnnotationError("mask file not found", file=label) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise AnnotationError(f"cannot read mask image ({e})", file=label) from None
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
