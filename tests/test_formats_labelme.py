"""LabelMe reader: shapes, groups, embedded images, paths, errors."""
import base64
import io
import json
import math
import os
import warnings

import numpy as np
import pytest
from PIL import Image, ImageDraw

from colabrcnn.data.formats import load_labelme
from colabrcnn.errors import AnnotationError

H, W = 50, 70


def png_bytes(array, mode=None):
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, format="PNG")
    return buf.getvalue()


def b64(data):
    return base64.b64encode(data).decode("ascii")


def shape(label, points, shape_type="polygon", group_id=None, **extra):
    return {"label": label, "points": points, "group_id": group_id, "shape_type": shape_type,
            "flags": {}, "description": "", **extra}


def labelme_doc(shapes, image_path="a.png", image_data=None, h=H, w=W):
    return {"version": "5.4.1", "flags": {}, "shapes": shapes, "imagePath": image_path,
            "imageData": image_data, "imageHeight": h, "imageWidth": w}


def write(path, doc):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(doc, f)
    return str(path)


def read(*args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_labelme(*args, **kw)


@pytest.fixture
def folder(tmp_path):
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "a.png")
    return tmp_path


def labelme_shape_to_mask(img_shape, points, shape_type=None, line_width=10, point_size=5):
    """The reference: the PIL calls of labelme's own ``labelme.utils.shape_to_mask``
    (labelme 6.3.1, labelme/utils/shape.py), made the same way. (labelme itself needs
    PyQt5 and onnxruntime, too heavy to install for the tests.)"""
    mask = Image.fromarray(np.zeros(img_shape[:2], dtype=np.uint8))
    draw = ImageDraw.Draw(mask)
    xy = [tuple(point) for point in points]
    if shape_type == "circle":
        (cx, cy), (px, py) = xy
        d = math.sqrt((cx - px) ** 2 + (cy - py) ** 2)
        draw.ellipse([cx - d, cy - d, cx + d, cy + d], outline=1, fill=1)
    elif shape_type == "rectangle":
        (x0, y0), (x1, y1) = xy
        draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], outline=1,
                       fill=1)
    elif shape_type in ("line", "linestrip"):
        draw.line(xy=xy, fill=1, width=line_width)
    elif shape_type == "point":
        (cx, cy), r = xy[0], point_size
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=1, fill=1)
    else:
        draw.polygon(xy=xy, outline=1, fill=1)
    return np.array(mask, dtype=bool)


def test_every_shape_type_drawn_as_labelme_draws_it(folder):
    mask = np.zeros((6, 5), np.uint8)
    mask[1:4, 1:3] = 255
    drawn = [
        shape("box", [[10, 12], [2, 3]], "rectangle"),             # corners in any order
        shape("ring", [[40, 25], [48, 25]], "circle"),
        shape("tri", [[20, 30], [30, 30], [30, 40]], "polygon"),
        shape("stroke", [[1, 1], [5, 5]], "line"),
        shape("stroke", [[1, 1], [5, 5], [9, 2]], "linestrip"),
        shape("dot", [[1, 1]], "point"),
        shape("box", [[40.3, 2.7], [55.6, 4.2], [52.1, 14.9], [41.8, 11.5]],
              "oriented_rectangle"),
    ]
    doc = labelme_doc(drawn + [
        shape("blob", [[60, 40], [64, 45]], "mask", mask=b64(png_bytes(mask)))])
    ds = read(write(folder / "a.json", doc))
    assert ds.class_names == ["BG", "blob", "box", "dot", "ring", "stroke", "tri"]
    masks, ids = ds.load_mask(0)
    assert masks.shape == (H, W, 8)
    assert [ds.class_names[i] for i in ids] == ["box", "ring", "tri", "stroke", "stroke",
                                                "dot", "box", "blob"]
    for k, s in enumerate(drawn):
        np.testing.assert_array_equal(
            masks[..., k], labelme_shape_to_mask((H, W), s["points"], s["shape_type"]),
            err_msg=s["shape_type"])
    expected = np.zeros((H, W), bool)
    expected[3:13, 2:11] = True  # PIL includes both corners' rows and columns
    np.testing.assert_array_equal(masks[..., 0], expected)
    assert abs(masks[..., 1].sum() - math.pi * 64) < math.pi * 8 * 2
    expected = np.zeros((H, W), bool)
    expected[41:44, 61:63] = True   # the mask PNG placed at its top-left point (60, 40)
    np.testing.assert_array_equal(masks[..., 7], expected)
    issues = ds.image_info[0]["issues"]
    assert sorted(i["kind"] for i in issues) == ["converted_shape"] * 3
    assert all(i["severity"] == "warning" for i in issues)
    assert {i["region"].split(" ")[0] for i in issues} == {"shapes[3]", "shapes[4]", "shapes[5]"}


@pytest.mark.parametrize("seed", range(3))
def test_random_rectangles_and_circles_match_labelme(folder, seed):
    """Rectangles and circles at fractional positions, as labelme draws them."""
    rng = np.random.default_rng(seed)
    shapes = []
    for _ in range(10):
        x, y = rng.uniform(-5, W + 5), rng.uniform(-5, H + 5)
        if rng.random() < 0.5:
            pts = [[x, y], [x + rng.uniform(2, 25) * rng.choice([-1, 1]),
                            y + rng.uniform(2, 25) * rng.choice([-1, 1])]]
            shapes.append(shape("r", pts, "rectangle"))
        else:
            r = rng.uniform(1.5, 15)
            t = rng.uniform(0, 2 * math.pi)
            shapes.append(shape("c", [[x, y], [x + r * math.cos(t), y + r * math.sin(t)]],
                                "circle"))
    ds = read(write(folder / "a.json", labelme_doc(shapes)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # shapes wholly outside the image are left out
        masks, _ = ds.load_mask(0)
    kept = 0
    for s in shapes:
        want = labelme_shape_to_mask((H, W), s["points"], s["shape_type"])
        if want.any():
            np.testing.assert_array_equal(masks[..., kept], want)
            kept += 1
    assert masks.shape[-1] == kept


def test_group_id_merges_shapes_of_one_label(folder):
    doc = labelme_doc([
        shape("person", [[0, 0], [10, 0], [10, 10], [0, 10]], group_id=1),
        shape("person", [[20, 0], [30, 10]], "rectangle", group_id=1),
        shape("person", [[40, 0], [50, 0], [50, 10], [40, 10]], group_id=2),
        shape("dog", [[0, 20], [10, 20], [10, 30], [0, 30]], group_id=1),
    ])
    ds = read(write(folder / "a.json", doc))
    masks, ids = ds.load_mask(0)
    assert masks.shape[-1] == 3
    # Two 11 x 11 squares: labelme draws the outline, both edges included.
    assert masks[..., 0].sum() == 2 * 121 and masks[..., 0][5, 5] and masks[..., 0][5, 25]
    first = ds.image_info[0]["instances"][0]
    assert "shapes[0] + shapes[1]" in first["region"] and "group_id 1" in first["region"]
    assert [ds.class_names[i] for i in ids] == ["person", "person", "dog"]


def test_embedded_image_data_used_when_file_missing(tmp_path):
    pixels = np.random.default_rng(1).integers(0, 255, (H, W, 3), dtype=np.uint8)
    doc = labelme_doc([shape("a", [[1, 1], [5, 1], [5, 5]])], image_path="gone.png",
                      image_data=b64(png_bytes(pixels)))
    ds = read(write(tmp_path / "a.json", doc))
    np.testing.assert_array_equal(ds.load_image(0), pixels)
    assert "embedded" in ds.image_reference(0)


def test_file_preferred_over_embedded_copy(folder):
    doc = labelme_doc([], image_data=b64(png_bytes(np.ones((H, W, 3), np.uint8))))
    ds = read(write(folder / "a.json", doc))
    assert ds.image_info[0]["image_bytes"] is None
    assert ds.load_image(0).max() == 0


def test_relative_and_windows_image_paths(tmp_path):
    os.makedirs(tmp_path / "images")
    Image.fromarray(np.zeros((H, W), np.uint8)).save(tmp_path / "images" / "x.png")
    write(tmp_path / "ann" / "x.json", labelme_doc([], image_path="..\\images\\x.png"))
    write(tmp_path / "ann" / "sub" / "y.json", labelme_doc([], image_path="../../images/x.png"))
    ds = read(str(tmp_path / "ann"))  # folder, searched recursively
    assert len(ds.image_info) == 2
    for i in range(2):
        assert ds.load_image(i).shape == (H, W, 3)


def test_image_dir_argument(tmp_path):
    os.makedirs(tmp_path / "pics")
    Image.fromarray(np.zeros((H, W), np.uint8)).save(tmp_path / "pics" / "a.png")
    p = write(tmp_path / "json" / "a.json", labelme_doc([], image_path="/elsewhere/a.png"))
    ds = read([p], image_dir=str(tmp_path / "pics"))
    assert ds.load_image(0).shape == (H, W, 3)


def test_size_from_annotation(folder):
    ds = read(write(folder / "a.json", labelme_doc([], h=11, w=22)))
    assert ds.image_info[0].known_size() == (11, 22)
    assert ds.image_info[0]["size_from"] == "annotation"


def test_non_labelme_json_in_folder_is_reported(folder):
    write(folder / "a.json", labelme_doc([shape("a", [[1, 1], [5, 1], [5, 5]])]))
    write(folder / "classes.json", {"1": "cat"})
    ds = read(str(folder))
    assert len(ds.image_info) == 1
    (issue,) = ds.read_issues
    assert issue["kind"] == "not_labelme" and issue["file"].endswith("classes.json")


def test_explicit_non_labelme_file_is_an_error(folder):
    p = write(folder / "x.json", {"images": []})
    with pytest.raises(AnnotationError, match="not a LabelMe file"):
        read(p)


def test_old_files_without_shape_type_are_polygons(folder):
    s = shape("a", [[1, 1], [9, 1], [9, 9], [1, 9]])
    del s["shape_type"]
    ds = read(write(folder / "a.json", labelme_doc([s])))
    assert ds.load_mask(0)[0].sum() == 81  # 9 x 9: labelme draws the outline too


@pytest.mark.parametrize("bad,expect", [
    ({"label": "a", "points": [[1, 1], [2]], "shape_type": "polygon"}, "points[1]"),
    ({"label": "a", "points": "1,2", "shape_type": "polygon"}, "points must be a list"),
    ({"label": "a", "points": [[1, 1], [2, "y"], [3, 3]]}, "points[1][1] must be a number"),
    ({"label": ["a"], "points": [[1, 1], [2, 2], [3, 3]]}, "label must be a string"),
    ({"label": "a"}, "no 'points'"),
    ({"label": "a", "points": [[1, 1], [2, 2], [3, 3]], "shape_type": "circle"},
     "circle needs 2 points"),
    ({"label": "a", "points": [[0, 0], [3, 3]], "shape_type": "mask", "mask": "%%%"}, "mask"),
    ("polygon", "a shape must be an object"),
])
def test_malformed_shapes_name_file_image_field(folder, bad, expect):
    doc = labelme_doc([shape("ok", [[1, 1], [5, 1], [5, 5]]), bad])
    p = write(folder / "a.json", doc)
    try:
        ds = read(p)
    except AnnotationError as e:
        msg = str(e)
        assert expect in msg and "a.json" in msg and "a.png" in msg and "shapes[1]" in msg
        return
    # A mask that is not base64 PNG fails when it is rasterised, still naming the shape.
    with pytest.raises(AnnotationError) as e:
        ds.load_mask(0)
    assert "shapes[1]" in str(e.value) and "a.json" in str(e.value)


def test_degenerate_and_empty_label_recorded(folder):
    doc = labelme_doc([shape("a", [[1, 1], [5, 5]]),
                       shape("a", [[1, 1], [1, 1]], "rectangle"),
                       shape("", [[1, 1], [5, 1], [5, 5]])])
    ds = read(write(folder / "a.json", doc))
    assert ds.image_info[0]["instances"] == []
    kinds = [i["kind"] for i in ds.image_info[0]["issues"]]
    assert kinds == ["degenerate", "degenerate", "no_class"]


def test_empty_folder_is_an_error(tmp_path):
    with pytest.raises(AnnotationError, match="no .json files"):
        read(str(tmp_path))
