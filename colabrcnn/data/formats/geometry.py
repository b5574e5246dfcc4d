"""Geometry of annotations: polygons, figures (LabelMe rectangles, circles, lines and
points; VIA circles and ellipses), clipping, area, rasterising, COCO RLE
checking/decoding, and bitmap masks.

Each instance is rasterised as the tool that wrote it draws it (``DRAW``; the package
docstring, ``colabrcnn/data/formats/__init__.py``, explains the conventions):

* ``"coco"``: pycocotools (``frPyObjects`` + ``decode``), COCO's own rasteriser;
* ``"labelme"``: PIL ``ImageDraw`` called as labelme's ``utils.shape_to_mask`` calls it
  (polygons filled *and outlined*, pixel centres on integer coordinates);
* ``"via"``: ``skimage.draw.polygon`` as matterport's balloon sample calls it (pixel
  centres on integer coordinates), ``skimage.draw.ellipse`` for circles and ellipses.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import PIL.Image
import PIL.ImageDraw
import skimage.draw

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
    """(points or None, problem or None), shared by every reader: the polygon without
    its repeated closing vertex, None when it has no area (("degenerate", message)).

    A polygon whose edges cross (a bow-tie) can have a signed area of zero while it
    covers pixels: it is kept, with a ("self_intersecting", message) warning; only
    points on one line count as no area.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(pts) > 1 and np.all(pts[0] == pts[-1]):
        pts = pts[:-1]  # some tools repeat the first point at the end
    if len(pts) < 3:
        return None, ("degenerate", f"{what} has {len(pts)} point(s); an area needs at "
                      "least 3: redraw it or delete it")
    if collinear(pts):
        return None, ("degenerate", f"{what} has zero area (all its points lie on one "
                      "line): redraw it or delete it")
    if self_intersecting(pts):
        return pts, ("self_intersecting", f"{what} crosses itself (its edges cross, like a "
                     "bow-tie); it is drawn as the annotation tool draws it, both loops "
                     "included: redraw it without crossing edges if that is not the object")
    return pts, None


def collinear(points):
    """Whether all points of a (K, 2) array lie on one line (or one point)."""
    d = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    d = d - d.mean(axis=0)
    s = np.linalg.svd(d, compute_uv=False)  # a line: one direction of spread only
    return bool(s[0] == 0 or s[1] <= 1e-9 * s[0])


def self_intersecting(points):
    """Whether two non-adjacent edges of a closed polygon cross (a bow-tie, a figure 8).

    Exact segment tests (proper crossings), vectorised over blocks of edge pairs. Only
    polygons of up to 500 points are checked (hand-drawn ones: under a millisecond at 50
    points, a few tens at 500): the cost grows with the square of the points, and traced
    outlines of thousands of points would take a second each.
    """
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    n = len(p)
    if n < 4 or n > 500:
        return False
    a, b = p, np.roll(p, -1, axis=0)  # edge i: a[i] -> b[i]

    def orient(p0, p1, q):  # sign of the turn p0 -> p1 -> q, broadcast
        return np.sign((p1[..., 0] - p0[..., 0]) * (q[..., 1] - p0[..., 1])
                       - (p1[..., 1] - p0[..., 1]) * (q[..., 0] - p0[..., 0]))

    C, D = a[None, :], b[None, :]
    j = np.arange(n)[None, :]
    for start in range(0, n, 256):  # [block, n] pairs at a time: bounded memory
        i = np.arange(start, min(start + 256, n))[:, None]
        A, B = a[i[:, 0]][:, None], b[i[:, 0]][:, None]
        cross = (orient(A, B, C) * orient(A, B, D) < 0) & \
            (orient(C, D, A) * orient(C, D, B) < 0)
        # Only pairs of edges that share no vertex (i < j - 1, and not first with last).
        cross &= (j > i + 1) & ~((i == 0) & (j == n - 1))
        if cross.any():
            return True
    return False


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


DRAW = ("coco", "labelme", "via")

# labelme's shape_to_mask defaults for shapes that mark no area.
LABELME_LINE_WIDTH = 10
LABELME_POINT_RADIUS = 5


def _clipped_parts(polygons, height, width):
    """Polygon parts with >= 3 points, clipped to two pixels around the image.

    Clipping is exact inside the box, so the pixels in the image do not change; it keeps
    the rasterisers from walking huge out-of-image edges.
    """
    parts = []
    for p in polygons:
        p = np.asarray(p, dtype=np.float64).reshape(-1, 2)
        if len(p) and (p[:, 0].min() < -2 or p[:, 1].min() < -2
                       or p[:, 0].max() > width + 2 or p[:, 1].max() > height + 2):
            p = clip_polygon(p, -2.0, -2.0, width + 2.0, height + 2.0)
        if len(p) >= 3:
            parts.append(p)
    return parts


def rasterize_polygons(polygons, height, width, draw="coco"):
    """Union of polygon parts as an H x W bool mask, drawn by the ``draw`` convention."""
    height, width = int(height), int(width)
    parts = _clipped_parts(polygons, height, width)
    if not parts or height <= 0 or width <= 0:
        return np.zeros((max(height, 0), max(width, 0)), dtype=bool)
    if draw == "labelme":
        canvas = PIL.Image.new("L", (width, height), 0)
        pen = PIL.ImageDraw.Draw(canvas)
        for p in parts:  # as shape_to_mask: draw.polygon(xy, outline=1, fill=1)
            pen.polygon([tuple(v) for v in p.tolist()], outline=1, fill=1)
        return np.array(canvas, dtype=bool)
    if draw == "via":
        mask = np.zeros((height, width), dtype=bool)
        for p in parts:  # as the balloon sample: polygon(all_points_y, all_points_x)
            rr, cc = skimage.draw.polygon(p[:, 1], p[:, 0], shape=(height, width))
            mask[rr, cc] = True
        return mask
    if draw != "coco":
        raise ValueError(f"draw must be one of {DRAW}, got {draw!r}")
    from pycocotools import mask as mask_utils  # C extension, loaded on first mask

    # pycocotools reads a 4-number list as a box; parts have >= 3 points.
    rles = mask_utils.frPyObjects([p.ravel().tolist() for p in parts], height, width)
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)


def figure_mask(figure, height, width):
    """H x W bool mask of a figure: a LabelMe rectangle/circle/line/linestrip/point (PIL,
    as labelme's ``shape_to_mask``), a VIA rect (``skimage.draw.rectangle``) or a VIA
    circle/ellipse (``skimage.draw.ellipse``)."""
    kind = figure["type"]
    height, width = int(height), int(width)
    if kind == "rect":  # VIA rect: (x, y, width, height) -> width x height pixels
        x, y, w, h = figure["params"]
        mask = np.zeros((height, width), dtype=bool)
        rr, cc = skimage.draw.rectangle((y, x), extent=(h, w), shape=(height, width))
        mask[rr, cc] = True
        return mask
    if kind == "ellipse":  # VIA circle/ellipse: (cx, cy, rx, ry, theta clockwise on screen)
        cx, cy, rx, ry, theta = figure["params"]
        mask = np.zeros((height, width), dtype=bool)
        # skimage's rotation turns the other way on screen (rows point down).
        rr, cc = skimage.draw.ellipse(cy, cx, ry, rx, shape=(height, width),
                                      rotation=-theta)
        mask[rr, cc] = True
        return mask
    xy = [tuple(v) for v in np.asarray(figure["points"], np.float64).tolist()]
    canvas = PIL.Image.new("L", (width, height), 0)
    pen = PIL.ImageDraw.Draw(canvas)
    if kind == "rectangle":
        (x0, y0), (x1, y1) = xy
        pen.rectangle(((min(x0, x1), min(y0, y1)), (max(x0, x1), max(y0, y1))),
                      outline=1, fill=1)
    elif kind == "circle":
        (cx, cy), (px, py) = xy
        d = math.hypot(cx - px, cy - py)
        pen.ellipse(((cx - d, cy - d), (cx + d, cy + d)), outline=1, fill=1)
    elif kind in ("line", "linestrip"):
        pen.line(xy=xy, fill=1, width=LABELME_LINE_WIDTH)
    elif kind == "point":
        (cx, cy), r = xy[0], LABELME_POINT_RADIUS
        pen.ellipse(((cx - r, cy - r), (cx + r, cy + r)), outline=1, fill=1)
    else:
        raise ValueError(f"unknown figure type {kind!r}")
    return np.array(canvas, dtype=bool)


def figure_outline(figure):
    """A polygon covering a figure's extent (for inside/outside-the-image checks)."""
    if figure["type"] == "ellipse":
        cx, cy, rx, ry, theta = figure["params"]
        return ellipse_polygon(cx, cy, rx, ry, theta)
    if figure["type"] == "rect":
        return rect_polygon(*figure["params"])
    pts = np.asarray(figure["points"], np.float64).reshape(-1, 2)
    pad = {"circle": 0.0, "rectangle": 0.0, "point": LABELME_POINT_RADIUS}.get(
        figure["type"], LABELME_LINE_WIDTH / 2)
    if figure["type"] == "circle":
        pad = float(np.hypot(*(pts[1] - pts[0])))
        pts = pts[:1]
    x0, y0 = pts.min(axis=0) - pad
    x1, y1 = pts.max(axis=0) + pad
    return rect_polygon(x0, y0, max(x1 - x0, 1e-3), max(y1 - y0, 1e-3))


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
    """Rasterise one instance record: union of its polygons (drawn by its ``draw``
    convention), figures, RLE and bitmap."""
    mask = None
    if inst.get("polygons"):
        mask = rasterize_polygons(inst["polygons"], height, width, inst.get("draw", "coco"))
    for fig in inst.get("figures") or ():
        m = figure_mask(fig, height, width)
        mask = m if mask is None else (mask | m)
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
