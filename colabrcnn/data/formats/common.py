"""One record format for every annotation reader, and the geometry the readers share.

Every reader (VIA, LabelMe, COCO, mask PNG folders) produces an :class:`AnnotatedDataset`
whose ``image_info`` records look alike::

    {"id": ..., "source": "via", "name": "a.jpg",        # name as the annotation file writes it
     "path": "/data/a.jpg",                               # or None when embedded
     "image_bytes": None,                                 # embedded image (LabelMe imageData)
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
     "rle": None | {"size": [h, w], "counts": str},          # compressed COCO RLE
     "bitmap": None | {"path" or "bytes", "value", "offset"}} # mask image (PNG) read lazily

Masks are only rasterised in ``load_mask``. Circles, ellipses and rectangles are stored
as polygons (see :func:`ellipse_polygon`), so every reader and :func:`to_coco` share one
geometry path.

Pixel convention
----------------
Coordinates are in pixels with the origin at the top-left *corner* of the image, as in
VIA, LabelMe and COCO: pixel (row r, column c) is the unit square [c, c+1) x [r, r+1)
with its centre at (c + 0.5, r + 0.5). Polygons are rasterised by pycocotools, the same
rasteriser COCO evaluation uses, which takes (very nearly) the pixels whose centres lie
inside the polygon. A rectangle x=2, y=3, width=4, height=5 therefore covers exactly
columns 2..5 and rows 3..7 (4 x 5 pixels), and a polygon written to COCO by
:func:`colabrcnn.data.convert.to_coco` gives the same mask when pycocotools reads it back.
(matterport's balloon sample used ``skimage.draw.polygon``, which puts pixel centres on
integer coordinates: masks differ from it by half a pixel.)
"""
from __future__ import annotations

import base64
import binascii
import copy
import io
import json
import math
import os
import warnings

import numpy as np

from ...errors import AnnotationError
from ..dataset import Dataset, read_image

# pycocotools' compiled decode trips a NumPy 2 DeprecationWarning on every call (its
# __array__ lacks copy=); it is harmless and would flood training logs.
warnings.filterwarnings("ignore", message=r"__array__ implementation doesn't accept a copy",
                        category=DeprecationWarning)

# No real image is this large; a coordinate beyond it is a corrupt value, and would make
# polygon clipping overflow.
MAX_COORD = 1e7

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")

# Issue kinds whose severity is "error" by default (they lose data); see validate.py.
ERROR = "error"
WARNING = "warning"
INFO = "info"


# ----------------------------------------------------------------------------- reading
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


# ----------------------------------------------------------------------------- geometry
def rect_polygon(x, y, width, height):
    """The 4 corners of an axis-aligned rectangle, clockwise from top-left."""
    return np.array([[x, y], [x + width, y], [x + width, y + height], [x, y + height]],
                    dtype=np.float64)


def ellipse_polygon(cx, cy, rx, ry, theta=0.0):
    """An ellipse (rotated by ``theta`` radians, clockwise on screen) as a polygon.

    The vertex count grows with the radius (about one vertex per 3 px of perimeter,
    24..720), and the vertices sit slightly outside the ellipse so that the polygon has
    exactly the ellipse's area: a circle of radius r rasterises to about pi * r**2
    pixels instead of the smaller inscribed polygon.
    """
    n = int(np.clip(math.ceil(math.pi * max(rx, ry)), 24, 720))
    t = np.linspace(0.0, 2.0 * math.pi, n, endpoint=False)
    k = math.sqrt(2.0 * math.pi / (n * math.sin(2.0 * math.pi / n)))  # equal-area factor
    ex, ey = rx * k * np.cos(t), ry * k * np.sin(t)
    c, s = math.cos(theta), math.sin(theta)
    return np.stack([cx + ex * c - ey * s, cy + ex * s + ey * c], axis=1)


def polygon_area(points):
    """Unsigned shoelace area of a (K, 2) polygon."""
    p = np.asarray(points, dtype=np.float64)
    if len(p) < 3:
        return 0.0
    x, y = p[:, 0], p[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)


def clip_polygon(points, x0, y0, x1, y1):
    """Sutherland-Hodgman clip of a polygon to the box [x0, x1] x [y0, y1].

    Exact inside the box, so rasterising the clipped polygon gives the same pixels as
    the original there; it keeps pycocotools from walking huge out-of-image edges.
    """
    pts = np.asarray(points, dtype=np.float64)
    for axis, bound, keep_greater in ((0, x0, True), (0, x1, False),
                                      (1, y0, True), (1, y1, False)):
        if len(pts) == 0:
            break
        v = pts[:, axis]
        inside = v >= bound if keep_greater else v <= bound
        if inside.all():
            continue
        out = []
        prev, prev_in = pts[-1], inside[-1]
        for cur, cur_in in zip(pts, inside):
            if cur_in != prev_in:
                t = (bound - prev[axis]) / (cur[axis] - prev[axis])
                out.append(prev + t * (cur - prev))
            if cur_in:
                out.append(cur)
            prev, prev_in = cur, cur_in
        pts = np.array(out, dtype=np.float64).reshape(-1, 2)
    return pts


def polygon_outside_fraction(polygons, height, width):
    """Whether any vertex lies outside [0, width] x [0, height] (clipping needed)."""
    for p in polygons:
        if len(p) and (p[:, 0].min() < 0 or p[:, 1].min() < 0 or p[:, 0].max() > width
                       or p[:, 1].max() > height):
            return True
    return False


def rasterize_polygons(polygons, height, width):
    """Union of polygon parts as an H x W bool mask (pixel convention: module docstring)."""
    from pycocotools import mask as mask_utils

    parts = []
    for p in polygons:
        p = np.asarray(p, dtype=np.float64)
        if len(p) and (p[:, 0].min() < -1 or p[:, 1].min() < -1
                       or p[:, 0].max() > width + 1 or p[:, 1].max() > height + 1):
            p = clip_polygon(p, -1.0, -1.0, width + 1.0, height + 1.0)
        # pycocotools reads a 4-number list as a box, so a part needs >= 3 points.
        if len(p) >= 3:
            parts.append(p.ravel().tolist())
    if not parts or height <= 0 or width <= 0:
        return np.zeros((height, width), dtype=bool)
    rles = mask_utils.frPyObjects(parts, int(height), int(width))
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)


def rle_string_counts(counts):
    """Run lengths of a compressed COCO RLE string (pycocotools' rleFrString, in Python).

    pycocotools decodes without bounds checks, so a corrupt string could write past its
    buffer; decoding here first lets us check the runs before handing them over.
    """
    if isinstance(counts, bytes):
        counts = counts.decode("ascii", errors="replace")
    out = []
    p, n = 0, len(counts)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                raise ValueError("string ends in the middle of a run length")
            c = ord(counts[p]) - 48
            if not 0 <= c < 64:
                raise ValueError(f"character {counts[p]!r} cannot occur in COCO RLE")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if k > 13:
                raise ValueError("run length too long")
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        out.append(x)
    return out


def normalize_rle(seg, what="segmentation", *, expect_size=None, **where):
    """Check a COCO RLE dict and return it compressed: {"size": [h, w], "counts": str}."""
    from pycocotools import mask as mask_utils

    if not isinstance(seg, dict):
        raise AnnotationError(f"{what} must be an RLE object, got {type_name(seg)}", **where)
    if "size" not in seg or "counts" not in seg:
        raise AnnotationError(f"{what} is an object but not an RLE: it needs 'size' and "
                              f"'counts', has {sorted(map(str, seg))[:8]}", **where)
    size = seg["size"]
    if not (isinstance(size, (list, tuple)) and len(size) == 2):
        raise AnnotationError(f"{what}.size must be [height, width], got {short(size)}",
                              **where)
    h = number(size[0], f"{what}.size[0]", positive=True, **where)
    w = number(size[1], f"{what}.size[1]", positive=True, **where)
    if h != int(h) or w != int(w) or h < 1 or w < 1 or h * w > 2 ** 31:
        raise AnnotationError(f"{what}.size {short(size)} is not a usable image size",
                              **where)
    h, w = int(h), int(w)
    counts = seg["counts"]
    if isinstance(counts, (list, tuple)):  # uncompressed RLE
        runs = []
        for i, c in enumerate(counts):
            v = number(c, f"{what}.counts[{i}]", positive=True, **where)
            if v != int(v):
                raise AnnotationError(f"{what}.counts[{i}] must be a whole number",
                                      **where)
            runs.append(int(v))
        if sum(runs) != h * w:
            raise AnnotationError(f"{what}: the runs add up to {sum(runs)} pixels but size "
                                  f"{h} x {w} has {h * w}", **where)
        rle = mask_utils.frPyObjects({"size": [h, w], "counts": runs}, h, w)
        out = {"size": [h, w], "counts": rle["counts"].decode("ascii")}
    elif isinstance(counts, (str, bytes)):
        try:
            runs = rle_string_counts(counts)
        except ValueError as e:
            raise AnnotationError(f"{what}.counts is not a valid compressed RLE ({e})",
                                  **where) from None
        if any(r < 0 for r in runs) or sum(runs) != h * w:
            raise AnnotationError(f"{what}.counts decodes to runs that do not fill an image "
                                  f"of size {h} x {w}; was it encoded for another image?",
                                  **where)
        out = {"size": [h, w], "counts": counts.decode("ascii") if isinstance(counts, bytes)
               else counts}
    else:
        raise AnnotationError(f"{what}.counts must be a list of run lengths or a compressed "
                              f"string, got {type_name(counts)}", **where)
    if expect_size is not None and tuple(expect_size) != (h, w):
        raise AnnotationError(f"{what}.size is {h} x {w} but the image is "
                              f"{expect_size[0]} x {expect_size[1]}", **where)
    return out


def decode_rle(rle):
    from pycocotools import mask as mask_utils
    r = {"size": list(rle["size"]), "counts": rle["counts"].encode("ascii")
         if isinstance(rle["counts"], str) else rle["counts"]}
    return mask_utils.decode(r).astype(bool)


def bitmap_mask(bitmap, height, width, cache=None, **where):
    """The H x W bool mask of a bitmap instance (see the module docstring)."""
    key = bitmap.get("path") or id(bitmap.get("bytes"))
    arr = cache.get(key) if cache is not None else None
    if arr is None:
        src = bitmap.get("path") or bitmap.get("bytes")
        arr = read_label_image(src, name=bitmap.get("path") or where.get("file"))
        if cache is not None:
            cache[key] = arr
    value = bitmap.get("value")
    m = (arr == value) if value is not None else (arr != 0)
    ox, oy = bitmap.get("offset") or (0, 0)
    if ox == 0 and oy == 0 and m.shape == (height, width):
        return m
    if bitmap.get("offset") is None:
        raise AnnotationError(f"mask image is {m.shape[0]} x {m.shape[1]} (height x width) "
                              f"but the image is {height} x {width}", **where)
    # A bitmap placed at an offset (LabelMe "mask" shapes): paste it, clipped.
    out = np.zeros((height, width), dtype=bool)
    y0, x0 = max(oy, 0), max(ox, 0)
    y1, x1 = min(oy + m.shape[0], height), min(ox + m.shape[1], width)
    if y1 > y0 and x1 > x0:
        out[y0:y1, x0:x1] = m[y0 - oy:y1 - oy, x0 - ox:x1 - ox]
    return out


def instance_mask(inst, height, width, cache=None, **where):
    """Rasterise one instance record: union of its polygons, RLE and bitmap."""
    mask = None
    if inst.get("polygons"):
        mask = rasterize_polygons(inst["polygons"], height, width)
    if inst.get("rle") is not None:
        rle = inst["rle"]
        if tuple(rle["size"]) != (height, width):
            raise AnnotationError(f"RLE mask is {rle['size'][0]} x {rle['size'][1]} but the "
                                  f"image is {height} x {width}", **where)
        m = decode_rle(rle)
        mask = m if mask is None else (mask | m)
    if inst.get("bitmap") is not None:
        m = bitmap_mask(inst["bitmap"], height, width, cache=cache, **where)
        mask = m if mask is None else (mask | m)
    if mask is None:
        mask = np.zeros((height, width), dtype=bool)
    return mask


# ----------------------------------------------------------------------------- records
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


def make_instance(label, shape, region, polygons=None, rle=None, bitmap=None):
    return {"class_id": 0, "label": label, "shape": shape, "region": region,
            "polygons": list(polygons or []), "rle": rle, "bitmap": bitmap}


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
        try:
            if info.get("image_bytes") is not None:
                return read_image(info["image_bytes"], name=self.image_reference(image_id))
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


# ----------------------------------------------------------------------------- building
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


def where(file=None, image=None, field=None):
    return {"file": file, "image": image, "field": field}


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


def warn_read_issues(dataset, what):
    """One warnings.warn summarising the warnings a reader recorded, if any."""
    skipped = [s for rec in dataset.image_info for s in rec.get("issues", [])]
    # default_class has had its own, more specific warning already.
    issues = [s for s in dataset.read_issues if s["kind"] != "default_class"]
    n_warn = sum(1 for s in skipped if s["severity"] == WARNING) + \
        sum(1 for s in issues if s["severity"] == WARNING)
    n_err = sum(1 for s in skipped if s["severity"] == ERROR) + \
        sum(1 for s in issues if s["severity"] == ERROR)
    if n_warn or n_err:
        kinds = sorted({s["kind"] for s in skipped + issues})
        warnings.warn(f"{what}: {n_err} problem(s) that lose annotations and {n_warn} "
                      f"warning(s) ({', '.join(kinds)}); run colabrcnn.data.validate(dataset)"
                      " to see each one with its file, image and region", stacklevel=3)
