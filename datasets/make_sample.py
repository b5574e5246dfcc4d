"""Regenerate the sample dataset in datasets/coins/ from scikit-image's bundled coins image.

    python datasets/make_sample.py

The image (``skimage.data.coins()``, Greek coins from Pompeii, Brooklyn Museum, no known
copyright restrictions) is split into two pictures between its second and third rows of
coins; the coins are found by the watershed recipe of scikit-image's gallery ("Comparing
edge-based and region-based segmentation") and written as the same objects in two
annotation formats:

* ``via_project.json``: a VIA 2.x project (regions as lists, class in a dropdown region
  attribute "class");
* ``labelme/*.json``: one LabelMe file per image, ``imagePath`` relative to it.

``coins_top.png`` (grayscale PNG) has its coins as polygons, ``coins_bottom.jpg`` (RGB
JPEG) as circles, so both shape kinds and both image kinds are exercised. Every
coordinate is a multiple of 1/4 pixel, exact in binary floating point, so both files
give identical masks.
"""
from __future__ import annotations

import json
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "coins")
SPLIT_ROW = 150  # between the 2nd and 3rd rows of coins


def segment_coins(image):
    """Label image of the 24 coins (scikit-image gallery watershed recipe)."""
    from scipy import ndimage as ndi
    from skimage import filters, measure, morphology, segmentation

    elevation = filters.sobel(image)
    markers = np.zeros_like(image, dtype=np.int32)
    markers[image < 30] = 1   # background
    markers[image > 150] = 2  # coin
    seg = segmentation.watershed(elevation, markers) == 2
    seg = ndi.binary_fill_holes(seg)
    seg = ndi.binary_opening(seg, morphology.disk(2))
    labels = measure.label(seg)
    for r in measure.regionprops(labels):
        if r.area < 300:  # specks
            labels[labels == r.label] = 0
    return measure.label(labels > 0)


def q(v):
    """Round to a quarter pixel: exact in binary, identical in both files."""
    return float(np.round(np.asarray(v, dtype=np.float64) * 4) / 4)


def coin_polygon(mask):
    """Outline of one coin as (x, y) points in colabrcnn's pixel convention."""
    from skimage import measure
    padded = np.pad(mask, 1)
    contour = max(measure.find_contours(padded.astype(float), 0.5), key=len)
    contour = measure.approximate_polygon(contour, tolerance=0.5)[:-1]  # drop repeat
    # find_contours puts pixel centres on integers; colabrcnn (like COCO, VIA, LabelMe)
    # puts them at +0.5. The padding shifted by one pixel.
    xs = contour[:, 1] - 1 + 0.5
    ys = contour[:, 0] - 1 + 0.5
    return [q(x) for x in xs], [q(y) for y in ys]


def coin_circle(region):
    cy, cx = region.centroid
    return q(cx + 0.5), q(cy + 0.5), q(region.equivalent_diameter_area / 2)


def main():
    from PIL import Image
    from skimage import data, measure

    coins = data.coins()
    labels = segment_coins(coins)
    os.makedirs(os.path.join(OUT, "labelme"), exist_ok=True)
    parts = [("coins_top.png", slice(0, SPLIT_ROW), "polygon"),
             ("coins_bottom.jpg", slice(SPLIT_ROW, coins.shape[0]), "circle")]
    via_meta, image_ids = {}, []
    for filename, rows, kind in parts:
        pixels = coins[rows]
        lab = labels[rows]
        path = os.path.join(OUT, filename)
        if filename.endswith(".png"):
            Image.fromarray(pixels).save(path, optimize=True)          # grayscale PNG
        else:
            Image.fromarray(np.stack([pixels] * 3, -1)).save(path, quality=90)  # RGB JPEG
        h, w = pixels.shape
        regions, shapes = [], []
        props = sorted(measure.regionprops(lab), key=lambda r: (r.bbox[0] // 40, r.bbox[1]))
        for r in props:
            if kind == "polygon":
                xs, ys = coin_polygon(lab == r.label)
                regions.append({"shape_attributes": {"name": "polygon", "all_points_x": xs,
                                                     "all_points_y": ys},
                                "region_attributes": {"class": "coin"}})
                shapes.append({"label": "coin", "points": [[x, y] for x, y in zip(xs, ys)],
                               "group_id": None, "description": "", "shape_type": "polygon",
                               "flags": {}})
            else:
                cx, cy, radius = coin_circle(r)
                regions.append({"shape_attributes": {"name": "circle", "cx": cx, "cy": cy,
                                                     "r": radius},
                                "region_attributes": {"class": "coin"}})
                shapes.append({"label": "coin", "points": [[cx, cy], [cx + radius, cy]],
                               "group_id": None, "description": "", "shape_type": "circle",
                               "flags": {}})
        size = os.path.getsize(path)
        key = f"{filename}{size}"
        image_ids.append(key)
        via_meta[key] = {"filename": filename, "size": size, "regions": regions,
                         "file_attributes": {}}
        labelme = {"version": "5.4.1", "flags": {}, "shapes": shapes,
                   "imagePath": f"../{filename}", "imageData": None,
                   "imageHeight": h, "imageWidth": w}
        with open(os.path.join(OUT, "labelme", os.path.splitext(filename)[0] + ".json"),
                  "w") as f:
            json.dump(labelme, f, indent=1)
    project = {
        "_via_settings": {"ui": {}, "core": {"buffer_size": 18, "filepath": {},
                                             "default_filepath": ""},
                          "project": {"name": "coins"}},
        "_via_img_metadata": via_meta,
        "_via_attributes": {"region": {"class": {"type": "dropdown", "description": "",
                                                 "options": {"coin": ""},
                                                 "default_options": {}}},
                            "file": {}},
        "_via_data_format_version": "2.0.10",
        "_via_image_id_list": image_ids,
    }
    with open(os.path.join(OUT, "via_project.json"), "w") as f:
        json.dump(project, f)
    print(f"wrote {OUT}: {len(parts)} images, {int(labels.max())} coins")


if __name__ == "__main__":
    main()
