"""Synthetic "shapes" dataset: squares, circles and triangles on a plain background.

The same idea as matterport's ``samples/shapes`` demo, for smoke tests, notebooks and
overfitting checks: no download, any number of images, and the masks are exact.

    ds = shapes(count=8, size=128, seed=0)
    image = ds.load_image(0)              # 128 x 128 x 3 uint8
    masks, class_ids = ds.load_mask(0)    # 128 x 128 x N bool, N int32 in {1, 2, 3}

Each image is described by a small spec stored in ``image_info`` (background colour
and a list of ``(shape, color, (x, y, s))`` tuples, matterport's layout); pixels are
only produced on demand by ``load_image``/``load_mask``, which draw the same spec with
the same OpenCV calls, so the masks agree with the picture pixel for pixel.
Every image is generated from its own random generator seeded by ``(seed, index)``:
the dataset is reproducible, and image ``i`` does not depend on ``count``.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from ..errors import ConfigError
from .dataset import Dataset

SOURCE = "shapes"
CLASS_NAMES = ("square", "circle", "triangle")  # class ids 1, 2, 3; 0 is BG

# Candidate shapes are rejected when they overlap an accepted one more than this, so
# objects stay mostly visible (matterport ran NMS at IoU 0.3 over random boxes).
MAX_IOU = 0.3
# ... or when more than this fraction of the smaller box is covered: a small shape
# inside a big one can have a low IoU and still be hidden completely.
MAX_COVER = 0.5
# A shape colour must differ from the background (and from the other shapes) by at
# least this much in some channel, so every object is visible against its neighbours.
MIN_COLOR_DIFF = 48
# Random draws per wanted shape before settling for fewer shapes.
ATTEMPTS_PER_SHAPE = 30

_SIN60 = math.sin(math.radians(60))


def _triangle_points(x, y, s):
    """Vertices of the equilateral-ish triangle matterport drew: [3, (x, y)] int32."""
    half = s / _SIN60
    return np.array([[(x, y - s), (x - half, y + s), (x + half, y + s)]],
                    dtype=np.float64).round().astype(np.int32)


def _half_extent(shape, s):
    """Half width and half height of a shape's bounding box."""
    if shape == "triangle":
        return s / _SIN60, s
    return s, s


def _box(shape, x, y, s):
    """Bounding box [y1, x1, y2, x2] (float) of a shape."""
    hw, hh = _half_extent(shape, s)
    return np.array([y - hh, x - hw, y + hh, x + hw])


def _overlaps(box, boxes):
    """(IoU, intersection / smaller area) of ``box`` with each of ``boxes`` [K, 4]."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    y1 = np.maximum(box[0], boxes[:, 0])
    x1 = np.maximum(box[1], boxes[:, 1])
    y2 = np.minimum(box[2], boxes[:, 2])
    x2 = np.minimum(box[3], boxes[:, 3])
    inter = np.maximum(y2 - y1, 0) * np.maximum(x2 - x1, 0)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    iou = inter / (area + areas - inter)
    cover = inter / np.minimum(area, areas)
    return iou, cover


def draw_shape(canvas, shape, color, dims):
    """Draw one filled shape into ``canvas`` (H x W x C or H x W) in place.

    ``dims`` is ``(x, y, s)``: centre and half size ("radius") in pixels. Drawing an
    image and a mask use this same function, so their pixels agree exactly.
    """
    x, y, s = (int(v) for v in dims)
    if shape == "square":
        cv2.rectangle(canvas, (x - s, y - s), (x + s, y + s), color, -1)
    elif shape == "circle":
        cv2.circle(canvas, (x, y), s, color, -1)
    elif shape == "triangle":
        cv2.fillPoly(canvas, _triangle_points(x, y, s), color)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {CLASS_NAMES}")
    return canvas


class ShapesDataset(Dataset):
    """Synthetic images of squares, circles and triangles (matterport's shapes demo).

    Use :func:`shapes` to get a prepared one, or, as in matterport's notebook::

        ds = ShapesDataset()
        ds.load_shapes(500, 128, 128)
        ds.prepare()
    """

    def load_shapes(self, count, height, width, seed=0, max_instances=4, min_instances=1):
        """Add ``count`` random image specs of ``height`` x ``width`` pixels."""
        _check_args(count, height, width, max_instances, min_instances)
        for i, name in enumerate(CLASS_NAMES, start=1):
            self.add_class(SOURCE, i, name)
        # Continue numbering if called twice, so every image keeps a distinct seed.
        start = sum(1 for info in self.image_info if info["source"] == SOURCE)
        for index in range(start, start + count):
            rng = np.random.default_rng([seed, index])
            bg_color, specs = random_image_spec(rng, height, width, min_instances,
                                                max_instances)
            self.add_image(SOURCE, image_id=index, path=None, width=width, height=height,
                           bg_color=bg_color, shapes=specs, seed=seed, index=index)
        return self

    def image_reference(self, image_id):
        info = self.image_info[image_id]
        if info["source"] != SOURCE:
            return super().image_reference(image_id)
        return f"{SOURCE}:seed={info['seed']}:index={info['index']}"

    def load_image(self, image_id):
        """Draw the image: H x W x 3 uint8, shapes painted in order (later on top)."""
        info = self.image_info[image_id]
        if info["source"] != SOURCE:
            return super().load_image(image_id)
        image = np.empty((info["height"], info["width"], 3), dtype=np.uint8)
        image[:] = info["bg_color"]
        for shape, color, dims in info["shapes"]:
            draw_shape(image, shape, color, dims)
        return image

    def load_mask(self, image_id):
        """Visible part of each shape: (H x W x N bool, N int32 class ids).

        Shapes drawn later cover earlier ones, so covered pixels are removed from the
        earlier masks; a shape left with no visible pixel is dropped (the last shape is
        never covered, so at least one instance remains).
        """
        info = self.image_info[image_id]
        if info["source"] != SOURCE:
            return super().load_mask(image_id)
        h, w = info["height"], info["width"]
        specs = info["shapes"]
        masks = np.zeros((h, w, len(specs)), dtype=bool)
        for i, (shape, _, dims) in enumerate(specs):
            layer = np.zeros((h, w), dtype=np.uint8)
            masks[:, :, i] = draw_shape(layer, shape, 1, dims).astype(bool)
        # Walk from the top shape down; `covered` holds the pixels of shapes above.
        covered = np.zeros((h, w), dtype=bool)
        for i in range(len(specs) - 1, -1, -1):
            masks[:, :, i] &= ~covered
            covered |= masks[:, :, i]
        keep = masks.reshape(h * w, -1).any(axis=0)
        keep[-1] = True  # the top shape is fully visible; never return zero instances
        class_ids = np.array([CLASS_NAMES.index(shape) + 1 for shape, _, _ in specs],
                             dtype=np.int32)
        # Map the shapes source's ids to this dataset's internal ids (identical unless
        # other sources were added before prepare()).
        if hasattr(self, "class_from_source_map"):
            class_ids = np.array([self.map_source_class_id(f"{SOURCE}.{c}")
                                  for c in class_ids], dtype=np.int32)
        return np.ascontiguousarray(masks[:, :, keep]), class_ids[keep]


def _random_color(rng, avoid):
    """An RGB tuple of Python ints that differs from every colour in ``avoid``."""
    color = None
    for _ in range(100):
        color = tuple(int(c) for c in rng.integers(0, 256, size=3))
        if all(max(abs(a - b) for a, b in zip(color, other)) >= MIN_COLOR_DIFF
               for other in avoid):
            break
    return color


def random_image_spec(rng, height, width, min_instances=1, max_instances=4):
    """Background colour and shape specs for one image, drawn from ``rng``.

    Returns ``(bg_color, [(shape, color, (x, y, s)), ...])`` with ``s`` (the half size)
    between about min(height, width)/8 and /4, every shape inside the image, and
    overlaps limited by MAX_IOU and MAX_COVER.
    """
    bg_color = tuple(int(c) for c in rng.integers(0, 256, size=3))
    wanted = int(rng.integers(min_instances, max_instances + 1))
    side = min(height, width)
    s_min, s_max = max(2, side // 8), max(3, side // 4)
    specs, boxes = [], []
    for _ in range(wanted * ATTEMPTS_PER_SHAPE):
        if len(specs) == wanted:
            break
        shape = CLASS_NAMES[int(rng.integers(len(CLASS_NAMES)))]
        s = int(rng.integers(s_min, s_max + 1))
        # Keep the whole shape inside the image (the triangle is wider than 2*s).
        hw, hh = (math.ceil(v) for v in _half_extent(shape, s))
        x = int(rng.integers(hw, max(hw, width - 1 - hw) + 1))
        y = int(rng.integers(hh, max(hh, height - 1 - hh) + 1))
        box = _box(shape, x, y, s)
        if boxes:
            iou, cover = _overlaps(box, boxes)
            if iou.max() > MAX_IOU or cover.max() > MAX_COVER:
                continue
        color = _random_color(rng, [bg_color] + [c for _, c, _ in specs])
        specs.append((shape, color, (x, y, s)))
        boxes.append(box)
    return bg_color, specs


def _check_args(count, height, width, max_instances, min_instances):
    def is_int(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    if not is_int(count) or count < 0:
        raise ConfigError(f"shapes: count must be a non-negative integer, got {count!r}.")
    if not (is_int(height) and is_int(width)) or min(height, width) < 16:
        raise ConfigError(f"shapes: the image size must be whole pixels, at least 16, got "
                          f"{height!r} x {width!r}.")
    if not is_int(min_instances) or min_instances < 1:
        raise ConfigError(f"shapes: min_instances must be >= 1, got {min_instances!r}.")
    if not is_int(max_instances) or max_instances < min_instances:
        raise ConfigError(f"shapes: max_instances ({max_instances!r}) must be an integer "
                          f">= min_instances ({min_instances}).")


def shapes(count=8, size=128, seed=0, max_instances=4, min_instances=1):
    """A prepared :class:`ShapesDataset` of ``count`` synthetic images.

    ``size`` is the side of the square images, or ``(height, width)``. Each image has
    ``min_instances`` to ``max_instances`` shapes (fewer only in the rare case where no
    free spot is found, or when one ends up completely hidden). Class ids: square 1,
    circle 2, triangle 3. The same arguments always give the same images.
    """
    if isinstance(size, (tuple, list)):
        if len(size) != 2:
            raise ConfigError(f"shapes: size must be an int or (height, width), got {size!r}.")
        height, width = size
    else:
        height = width = size
    return ShapesDataset().load_shapes(count, height, width, seed=seed,
                                       max_instances=max_instances,
                                       min_instances=min_instances).prepare()


__all__ = ["ShapesDataset", "shapes", "draw_shape", "random_image_spec", "CLASS_NAMES"]
