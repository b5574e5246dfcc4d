"""What the user drew is what trains: instance masks of small objects traced with
cv2.findContours, written as LabelMe and VIA files, read back as the same masks; and
to_coco keeps those pixels."""
import json
import os
import warnings

import cv2
import numpy as np
import pytest
from PIL import Image

from colabrcnn.data.convert import to_coco
from colabrcnn.data.formats import load_coco, load_labelme, load_via
from colabrcnn.data.formats.geometry import rasterize_polygons

H, W = 160, 160
IMAGES, PER_IMAGE = 6, 8


def quiet(fn, *a, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*a, **kw)


def small_objects(rng):
    """Instance masks of 8-30 px objects: one to three overlapping ellipses each."""
    masks = []
    for _ in range(PER_IMAGE):
        m = np.zeros((H, W), np.uint8)
        size = rng.uniform(8, 30)
        cx, cy = rng.uniform(size, W - size), rng.uniform(size, H - size)
        for _ in range(rng.integers(1, 4)):
            axes = (max(2, int(size / 2 * rng.uniform(0.4, 1))),
                    max(2, int(size / 2 * rng.uniform(0.4, 1))))
            centre = (int(cx + rng.uniform(-size / 4, size / 4)),
                      int(cy + rng.uniform(-size / 4, size / 4)))
            cv2.ellipse(m, centre, axes, rng.uniform(0, 180), 0, 360, 1, -1)
        masks.append(m.astype(bool))
    return masks


def contour(mask):
    """The object's outer boundary as cv2.findContours traces it: [K, 2] (x, y)."""
    found, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                cv2.CHAIN_APPROX_SIMPLE)
    return max(found, key=len)[:, 0, :]


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    """(folder, true masks per image, contours per image) with LabelMe files and a VIA
    file written from the contours."""
    folder = tmp_path_factory.mktemp("traced")
    rng = np.random.default_rng(0)
    truth, contours, via = [], [], {}
    for i in range(IMAGES):
        name = f"im{i}.png"
        Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(folder / name)
        masks = small_objects(rng)
        polys = [contour(m) for m in masks]
        truth.append(masks)
        contours.append(polys)
        shapes = [{"label": "cell", "points": p.tolist(), "shape_type": "polygon",
                   "group_id": None, "flags": {}} for p in polys]
        with open(folder / f"im{i}.json", "w") as f:
            json.dump({"version": "5.4.1", "flags": {}, "shapes": shapes, "imagePath": name,
                       "imageData": None, "imageHeight": H, "imageWidth": W}, f)
        via[f"{name}1"] = {"filename": name, "size": 1, "file_attributes": {}, "regions": [
            {"shape_attributes": {"name": "polygon", "all_points_x": p[:, 0].tolist(),
                                  "all_points_y": p[:, 1].tolist()},
             "region_attributes": {"class": "cell"}} for p in polys]}
    os.makedirs(folder / "via")
    with open(folder / "via" / "via_region_data.json", "w") as f:
        json.dump(via, f)
    return folder, truth, contours


def read(fmt, folder):
    if fmt == "labelme":
        return quiet(load_labelme, str(folder))
    return quiet(load_via, str(folder / "via" / "via_region_data.json"), image_dir=str(folder))


def ious(ds, truth):
    out = []
    for k, masks in enumerate(truth):
        got, _ = ds.load_mask(k)
        assert got.shape[-1] == len(masks)
        for j, m in enumerate(masks):
            g = got[..., j]
            out.append((g & m).sum() / (g | m).sum())
    return np.array(out)


@pytest.mark.parametrize("fmt", ["labelme", "via"])
def test_traced_small_objects_read_back_as_their_masks(traced, fmt):
    folder, truth, _ = traced
    iou = ious(read(fmt, folder), truth)
    assert iou.mean() >= 0.99 and iou.min() >= 0.9, (iou.mean(), iou.min())


def test_corner_convention_would_lose_the_outer_ring(traced):
    """The same polygons drawn with pycocotools' convention (what all formats used to
    get) lose the boundary pixels: the round trip above is what tells them apart."""
    _, truth, contours = traced
    iou = []
    for masks, polys in zip(truth, contours):
        for m, p in zip(masks, polys):
            g = rasterize_polygons([p.astype(np.float64)], H, W, "coco")
            iou.append((g & m).sum() / (g | m).sum())
    assert np.mean(iou) < 0.9


def same_masks(a, b):
    assert len(a.image_info) == len(b.image_info)
    for k in range(len(a.image_info)):
        ma, ia = a.load_mask(k)
        mb, ib = b.load_mask(k)
        np.testing.assert_array_equal(ma, mb)
        np.testing.assert_array_equal(ia, ib)


@pytest.mark.parametrize("fmt", ["labelme", "via"])
def test_to_coco_keeps_the_traced_pixels(traced, fmt, tmp_path):
    folder, _, _ = traced
    ds = read(fmt, folder)
    out = to_coco(ds, str(tmp_path / "coco.json"))
    same_masks(ds, quiet(load_coco, out))
    # Edges through pixel centres: pycocotools cannot draw these polygons the same way.
    doc = json.load(open(out))
    assert all(isinstance(a["segmentation"], dict) for a in doc["annotations"])


def test_to_coco_writes_shifted_polygons_where_pycocotools_draws_them_exactly(tmp_path):
    """Both ways of keeping the pixels: a polygon shifted by half a pixel where
    pycocotools then draws the same mask (axis-aligned edges between pixel centres),
    RLE where it does not (most free-hand polygons)."""
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "a.png")
    rng = np.random.default_rng(1)
    regions = [{"shape_attributes": {"name": "polygon",
                                     "all_points_x": [10.3, 30.6, 30.6, 20.2, 20.2, 10.3],
                                     "all_points_y": [10.4, 10.4, 20.7, 20.7, 40.1, 40.1]},
                "region_attributes": {"class": "L"}}]
    for _ in range(12):
        k, r = int(rng.integers(3, 9)), rng.uniform(4, 15)
        t = np.sort(rng.uniform(0, 2 * np.pi, k))
        cx, cy = rng.uniform(20, W - 20), rng.uniform(20, H - 20)
        regions.append({"shape_attributes": {
            "name": "polygon", "all_points_x": (cx + r * np.cos(t)).round(2).tolist(),
            "all_points_y": (cy + r * np.sin(t)).round(2).tolist()},
            "region_attributes": {"class": "blob"}})
    with open(tmp_path / "via.json", "w") as f:
        json.dump({"a.png1": {"filename": "a.png", "size": 1, "regions": regions,
                              "file_attributes": {}}}, f)
    ds = quiet(load_via, str(tmp_path / "via.json"))
    out = to_coco(ds, str(tmp_path / "coco.json"))
    same_masks(ds, quiet(load_coco, out))
    segs = [a["segmentation"] for a in json.load(open(out))["annotations"]]
    assert isinstance(segs[0], list)  # the L: shifted polygon, exact
    np.testing.assert_allclose(np.array(segs[0][0]).reshape(-1, 2),
                               np.array([regions[0]["shape_attributes"]["all_points_x"],
                                         regions[0]["shape_attributes"]["all_points_y"]]
                                        ).T + 0.5)
    assert any(isinstance(s, dict) for s in segs[1:])  # RLE where needed
