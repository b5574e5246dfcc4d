"""Malformed annotation files and images: the readers answer with our own errors only,
and validate() reports whatever does not reach training.

Valid VIA / LabelMe / COCO documents are mutated (a random part replaced by random JSON
values, or deleted), and valid images are mutated (truncated, bytes flipped, a header
claiming another size, noise) as files, as embedded base64 and as mask images; reading,
decoding, rasterising, validating and converting must either work or raise a
ColabRCNNError subclass - never KeyError, TypeError, IndexError, a NumPy or PIL error
or a crash. Every instance that load_mask/load_image do not deliver (an image that
cannot be read, a mask that covers no pixel) has an error in validate()'s report naming
its image.
"""
import base64
import copy
import io
import json
import os
import shutil
import struct
import tempfile
import warnings
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from colabrcnn.data.convert import dataset_to_coco
from colabrcnn.data.formats import load, load_coco, load_labelme, load_mask_folder, load_via
from colabrcnn.data.formats.geometry import instance_mask
from colabrcnn.data.validate import validate
from colabrcnn.errors import ColabRCNNError

H, W = 16, 20

leaf = st.one_of(st.none(), st.booleans(), st.integers(-10 ** 12, 10 ** 12),
                 st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6),
                 st.sampled_from(["polygon", "rect", "circle", "ellipse", "point", "polyline",
                                  "rectangle", "mask", "line", "a.png", "0", "", "#ff0000"]))
junk = st.recursive(leaf, lambda c: st.one_of(st.lists(c, max_size=4),
                                               st.dictionaries(st.text(max_size=5), c,
                                                               max_size=4)),
                    max_leaves=10)

# Plausible-looking numbers reach the geometry code (zero sizes, negative radii, points
# far outside the image) more often than arbitrary JSON does.
replacement = st.one_of(junk, st.integers(-50, 50), st.floats(-1e8, 1e8), st.just(0),
                        st.lists(st.integers(-5, 40), max_size=7))

SETTINGS = settings(max_examples=150, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.data_too_large])


def _rle(mask):
    from pycocotools import mask as mask_utils
    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [H, W], "counts": r["counts"].decode()}


# a 2 x 2 grayscale PNG, base64: a LabelMe "mask" shape
_PNG_2X2 = ("iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAAAAABX3VL4AAAADklEQVR4nGP4z8DAwMAAB/wB/8xY"
            "qkwAAAAASUVORK5CYII=")

_M = np.zeros((H, W), bool)
_M[2:6, 3:9] = True

VIA_DOC = {
    "_via_settings": {"core": {"default_filepath": ""}},
    "_via_attributes": {"region": {"class": {"type": "dropdown"}}},
    "_via_img_metadata": {
        "a.png1": {"filename": "a.png", "size": 1, "file_attributes": {}, "regions": [
            {"shape_attributes": {"name": "polygon", "all_points_x": [1, 9, 5],
                                  "all_points_y": [1, 2, 9]},
             "region_attributes": {"class": "a"}},
            {"shape_attributes": {"name": "rect", "x": 1, "y": 2, "width": 5, "height": 4},
             "region_attributes": {"class": "b"}},
            {"shape_attributes": {"name": "circle", "cx": 10, "cy": 8, "r": 3},
             "region_attributes": {"class": {"a": True}}},
            {"shape_attributes": {"name": "ellipse", "cx": 10, "cy": 8, "rx": 3, "ry": 2,
                                  "theta": 0.3}, "region_attributes": {"class": "a"}},
            {"shape_attributes": {"name": "polyline", "all_points_x": [1, 9, 5],
                                  "all_points_y": [1, 2, 9]},
             "region_attributes": {"class": "a"}},
            {"shape_attributes": {"name": "point", "cx": 3, "cy": 3},
             "region_attributes": {"class": "a"}}]},
        "a.png2": {"filename": "a.png", "size": 2, "file_attributes": {}, "regions": {
            "0": {"shape_attributes": {"name": "rect", "x": 0, "y": 0, "width": 3,
                                       "height": 3}, "region_attributes": {"class": "c"}}}},
    },
}

LABELME_DOC = {
    "version": "5.4.1", "flags": {}, "imagePath": "a.png", "imageData": None,
    "imageHeight": H, "imageWidth": W,
    "shapes": [
        {"label": "a", "points": [[1, 1], [9, 2], [5, 9]], "shape_type": "polygon",
         "group_id": None, "flags": {}},
        {"label": "a", "points": [[1, 1], [5, 5]], "shape_type": "rectangle", "group_id": 1},
        {"label": "a", "points": [[8, 8], [12, 12]], "shape_type": "rectangle", "group_id": 1},
        {"label": "b", "points": [[10, 8], [13, 8]], "shape_type": "circle", "group_id": None},
        {"label": "b", "points": [[1, 1], [4, 4]], "shape_type": "line", "group_id": None},
        {"label": "c", "points": [[2, 3], [5, 6]], "shape_type": "mask", "group_id": None,
         "mask": _PNG_2X2},
    ],
}

COCO_DOC = {
    "images": [{"id": 1, "file_name": "a.png", "width": W, "height": H},
               {"id": 2, "file_name": "a.png"}],
    "categories": [{"id": 3, "name": "a"}, {"id": 7, "name": "b"}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 3, "iscrowd": 0,
         "segmentation": [[1, 1, 9, 2, 5, 9], [10, 10, 14, 10, 12, 14]]},
        {"id": 2, "image_id": 1, "category_id": 7, "iscrowd": 0, "segmentation": _rle(_M)},
        {"id": 3, "image_id": 2, "category_id": 7, "iscrowd": 1,
         "segmentation": {"size": [H, W], "counts": [5, 10, H * W - 15]}},
    ],
}


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


def _mutate(doc, data, n):
    doc = copy.deepcopy(doc)
    for _ in range(n):
        paths = list(_paths(doc))
        path = data.draw(st.sampled_from(paths))
        if not path:
            doc = data.draw(junk)
            continue

        parent = doc
        for p in path[:-1]:
            parent = parent[p]
        if data.draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = data.draw(replacement)
    return doc


@pytest.fixture(scope="module")
def workdir():
    d = tempfile.mkdtemp()
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(os.path.join(d, "a.png"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _lost(ds, i):
    """Regions of image i that do not reach training ("*": the whole image)."""
    info = ds.image_info[i]
    try:
        image = ds.load_image(i)
        masks, ids = ds.load_mask(i)
    except ColabRCNNError:
        return {"*"}
    assert image.dtype == np.uint8 and image.shape[2] == 3
    assert masks.dtype == bool and masks.ndim == 3
    assert masks.shape[-1] == len(ids) and ids.dtype == np.int32
    if masks.shape[:2] != image.shape[:2]:
        return {"*"}  # the annotation's size is not the image's: the loader refuses it
    h, w = masks.shape[:2]
    return {inst["region"] for inst in info["instances"]
            if not instance_mask(inst, h, w).any()}


def _exercise(reader, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = reader(path)
        except ColabRCNNError:
            return
        lost = {i: _lost(ds, i) for i in range(len(ds.image_info))}
        report = validate(ds)               # collects, never raises
        str(report)
        for i, regions in lost.items():
            name = ds.image_info[i].get("name")
            errors = [e for e in report.errors if e.image == name]
            if "*" in regions:
                assert errors, (name, str(report))
                continue
            for region in regions:
                assert any(e.region == region for e in errors), (name, region, str(report))
        try:
            dataset_to_coco(ds, os.path.dirname(path))
        except ColabRCNNError:
            pass


def _write(workdir, name, doc):
    path = os.path.join(workdir, name)
    with open(path, "w") as f:
        json.dump(doc, f)
    return path


@SETTINGS
@given(data=st.data(), n=st.integers(1, 3))
def test_via_mutations(workdir, data, n):
    doc = _mutate(VIA_DOC, data, n)
    _exercise(load_via, _write(workdir, "via.json", doc))


@SETTINGS
@given(data=st.data(), n=st.integers(1, 3))
def test_labelme_mutations(workdir, data, n):
    doc = _mutate(LABELME_DOC, data, n)
    _exercise(load_labelme, _write(workdir, "lm.json", doc))


@SETTINGS
@given(data=st.data(), n=st.integers(1, 3))
def test_coco_mutations(workdir, data, n):
    doc = _mutate(COCO_DOC, data, n)
    _exercise(load_coco, _write(workdir, "coco.json", doc))


@settings(max_examples=40, deadline=None, database=None, derandomize=True)
@given(doc=junk)
def test_random_documents_through_load(workdir, doc):
    _exercise(load, _write(workdir, "any.json", doc))


def test_templates_are_valid(workdir):
    """The documents mutated above read cleanly, so the mutations test the checks."""
    for reader, name, doc in ((load_via, "v.json", VIA_DOC), (load_labelme, "l.json", LABELME_DOC),
                              (load_coco, "c.json", COCO_DOC)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = reader(_write(workdir, name, doc))
        assert sum(len(i["instances"]) + len(i["crowd"]) for i in ds.image_info) >= 3
        for i in range(len(ds.image_info)):
            ds.load_mask(i)


# ----------------------------------------------------------------------- images
def _image_bytes(fmt, seed):
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    mode = {"PNG": "RGB", "JPEG": "RGB", "GIF": "P", "BMP": "RGB", "TIFF": "RGB"}[fmt]
    Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).convert(mode).save(
        buf, format=fmt)
    return buf.getvalue()


def _png_with_size(data, width, height):
    """The PNG's header (IHDR) rewritten to claim width x height, with a valid CRC."""
    ihdr = bytearray(data[16:29])
    ihdr[0:8] = struct.pack(">II", width, height)
    return data[:16] + bytes(ihdr) + struct.pack(
        ">I", zlib.crc32(b"IHDR" + bytes(ihdr)) & 0xFFFFFFFF) + data[33:]


# Sizes a damaged header claims: none, tiny, or past PIL's decompression-bomb limit
# (mid-size claims would make PIL allocate hundreds of MB per example).
_CLAIMED = st.sampled_from([0, 1, 3, 2 ** 31 - 1, 70_000])


@st.composite
def broken_images(draw):
    fmt = draw(st.sampled_from(["PNG", "JPEG", "GIF", "BMP", "TIFF"]))
    data = bytearray(_image_bytes(fmt, draw(st.integers(0, 3))))
    how = draw(st.sampled_from(["truncate", "flip", "header", "noise", "prefix", "none"]))
    if how == "truncate":
        data = data[:draw(st.integers(0, len(data) - 1))]
    elif how == "flip":
        for _ in range(draw(st.integers(1, 8))):
            k = draw(st.integers(0, len(data) - 1))
            data[k] = draw(st.integers(0, 255))
    elif how == "header" and fmt == "PNG":
        data = bytearray(_png_with_size(bytes(data), draw(_CLAIMED), draw(_CLAIMED)))
    elif how == "noise":
        data = bytearray(draw(st.binary(max_size=200)))
    elif how == "prefix":
        data = bytearray(draw(st.binary(min_size=1, max_size=16))) + data
    return bytes(data)


def _via_for(workdir, image_name):
    doc = {"a1": {"filename": image_name, "size": 1, "file_attributes": {}, "regions": [
        {"shape_attributes": {"name": "polygon", "all_points_x": [1, 9, 5],
                              "all_points_y": [1, 2, 9]}, "region_attributes": {"c": "a"}},
        {"shape_attributes": {"name": "rect", "x": 2, "y": 3, "width": 4, "height": 5},
         "region_attributes": {"c": "b"}}]}}
    return _write(workdir, "img_via.json", doc)


@SETTINGS
@given(raw=broken_images())
def test_image_file_mutations(workdir, raw):
    with open(os.path.join(workdir, "x.png"), "wb") as f:
        f.write(raw)
    _exercise(load_via, _via_for(workdir, "x.png"))


@SETTINGS
@given(raw=broken_images(), text=st.one_of(st.none(), st.text(max_size=40)),
       urlsafe=st.booleans())
def test_embedded_image_mutations(workdir, raw, text, urlsafe):
    encoded = text if text is not None else (
        base64.urlsafe_b64encode(raw) if urlsafe else base64.b64encode(raw)).decode()
    doc = dict(LABELME_DOC, imagePath="not_here.png", imageData=encoded)
    doc.pop("imageHeight")
    doc.pop("imageWidth")
    _exercise(load_labelme, _write(workdir, "embedded.json", doc))


@settings(max_examples=60, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(raw=broken_images(), mode=st.sampled_from(["instance_ids", "instance_files"]))
def test_mask_image_mutations(workdir, raw, mode):
    root = tempfile.mkdtemp(dir=workdir)
    os.makedirs(os.path.join(root, "images"))
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(os.path.join(root, "images", "a.png"))
    if mode == "instance_ids":
        os.makedirs(os.path.join(root, "masks"))
        target = os.path.join(root, "masks", "a.png")
    else:
        os.makedirs(os.path.join(root, "masks", "a"))
        good = np.zeros((H, W), np.uint8)
        good[2:5, 2:5] = 255
        Image.fromarray(good).save(os.path.join(root, "masks", "a", "cell_1.png"))
        target = os.path.join(root, "masks", "a", "cell_2.png")
    with open(target, "wb") as f:
        f.write(raw)
    _exercise(lambda p: load_mask_folder(os.path.join(p, "images"), os.path.join(p, "masks"),
                                         mode=mode), root)
    shutil.rmtree(root, ignore_errors=True)
