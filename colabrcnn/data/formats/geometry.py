"""Geometry of annotations: polygons (rectangles and ellipses as polygons), clipping,
area, rasterising, COCO RLE checking/decoding, and bitmap masks.

Pixel convention: see the package docstring (``colabrcnn/data/formats/__init__.py``).
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from ...errors import AnnotationError
from .io import number, read_label_image, short, type_name

# pycocotools' compiled decode trips a NumPy 2 DeprecationWarning on every call (its
# __array__ lacks copy=); it is harmless and would flood training logs.
warnings.filterwarnings("ignore", message=r"__array__ implementation doesn't accept a copy",
                        category=DeprecationWarning)


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


def polygon_part(points, what="polygon"):
    """(points, problem): a polygon without its repeated closing vertex, and why it has
    no area (("degenerate", message)) or None. Shared by every reader."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(pts) > 1 and np.all(pts[0] == pts[-1]):
        pts = pts[:-1]  # some tools repeat the first point at the end
    if len(pts) < 3:
        return pts, ("degenerate", f"{what} has {len(pts)} point(s); an area needs at least "
                     "3: redraw it or delete it")
    if polygon_area(pts) == 0:
        return pts, ("degenerate", f"{what} has zero area (all its points lie on one line): "
                     "redraw it or delete it")
    return pts, None


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
