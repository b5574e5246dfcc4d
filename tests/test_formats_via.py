"""VIA 1.x / 2.x reader: every shape type, both versions, class attributes, errors."""
import json
import math
import os
import warnings

import numpy as np
import pytest
import skimage.draw
from PIL import Image

from colabrcnn.data.formats import load_via
from colabrcnn.data.formats.records import ImageRecord
from colabrcnn.errors import AnnotationError

H, W = 60, 80


def write_image(path, h=H, w=W, mode="RGB"):
    channels = {"RGB": 3, "RGBA": 4, "L": None}[mode]
    shape = (h, w) if channels is None else (h, w, channels)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8),
                    mode).save(path)


def region(shape, cls="thing", **extra):
    return {"shape_attributes": dict(shape), "region_attributes": {"class": cls, **extra}}


def via2_export(regions, filename="a.png"):
    return {f"{filename}1234": {"filename": filename, "size": 1234, "regions": regions,
                                "file_attributes": {}}}


def write_json(path, data):
    with open(path, "w") as f:
        json.dump(data, f)
    return str(path)


def read(tmp_path, data, name="via.json", **kw):
    p = write_json(tmp_path / name, data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_via(p, **kw)


@pytest.fixture
def img(tmp_path):
    write_image(tmp_path / "a.png")
    return tmp_path / "a.png"


def test_rect_gives_exact_pixel_set(tmp_path, img):
    ds = read(tmp_path, via2_export([region({"name": "rect", "x": 2, "y": 3, "width": 4,
                                             "height": 5})]))
    masks, ids = ds.load_mask(0)
    expected = np.zeros((H, W), bool)
    expected[3:8, 2:6] = True  # rows y..y+h-1, columns x..x+w-1
    assert masks.shape == (H, W, 1) and masks.dtype == bool
    assert ids.dtype == np.int32 and list(ids) == [1]
    np.testing.assert_array_equal(masks[..., 0], expected)


def test_polygon_drawn_as_the_balloon_sample_draws_it(tmp_path, img):
    """matterport's balloon sample: skimage.draw.polygon(all_points_y, all_points_x),
    pixel centres on integer coordinates, so an integer-cornered L covers its corners."""
    xs, ys = [10, 30, 30, 20, 20, 10], [10, 10, 20, 20, 40, 40]
    ds = read(tmp_path, via2_export([region({"name": "polygon", "all_points_x": xs,
                                             "all_points_y": ys})]))
    m = ds.load_mask(0)[0][..., 0]
    reference = np.zeros((H, W), bool)
    rr, cc = skimage.draw.polygon(ys, xs)  # exactly the balloon sample's call
    reference[rr, cc] = True
    np.testing.assert_array_equal(m, reference)
    # Every pixel whose centre lies strictly inside is covered, none beyond the edges.
    expected_inner = np.zeros((H, W), bool)
    expected_inner[11:20, 11:30] = True
    expected_inner[20:40, 11:20] = True
    assert m[expected_inner].all() and not m[:, 31:].any() and not m[41:].any()
    assert not m[:10].any() and not m[:, :10].any()


@pytest.mark.parametrize("r", [3, 8, 20])
def test_circle_as_skimage_draws_it(tmp_path, img, r):
    ds = read(tmp_path, via2_export([region({"name": "circle", "cx": 40, "cy": 30, "r": r})]))
    m = ds.load_mask(0)[0][..., 0]
    reference = np.zeros((H, W), bool)
    reference[skimage.draw.disk((30, 40), r, shape=(H, W))] = True
    np.testing.assert_array_equal(m, reference)
    # Pixel centres on integer coordinates: symmetric about the centre pixel.
    ys, xs = np.nonzero(m)
    assert xs.mean() == 40 and ys.mean() == 30
    assert abs(m.sum() - math.pi * r * r) <= math.pi * r  # lattice error ~ perimeter / 2


def test_ellipse_with_and_without_theta(tmp_path, img):
    shapes = [{"name": "ellipse", "cx": 40, "cy": 30, "rx": 20, "ry": 8},
              {"name": "ellipse", "cx": 40, "cy": 30, "rx": 20, "ry": 8, "theta": math.pi / 2},
              {"name": "ellipse", "cx": 40, "cy": 30, "rx": 20, "ry": 8, "theta": 0.5}]
    ds = read(tmp_path, via2_export([region(s) for s in shapes]))
    masks, _ = ds.load_mask(0)
    for k in range(3):
        assert abs(masks[..., k].sum() - math.pi * 160) < 0.04 * math.pi * 160
    ys, xs = np.nonzero(masks[..., 0])
    assert xs.max() - xs.min() + 1 == 39 and ys.max() - ys.min() + 1 == 15
    ys, xs = np.nonzero(masks[..., 1])  # rotated a quarter turn: tall, narrow
    assert ys.max() - ys.min() + 1 >= 39 and xs.max() - xs.min() + 1 <= 17
    # theta turns clockwise on screen (y down), as VIA draws it: the long axis runs
    # from top-left to bottom-right for a small positive theta.
    ys, xs = np.nonzero(masks[..., 2])
    assert np.corrcoef(xs, ys)[0, 1] > 0.5


def test_polyline_closed_and_point_skipped_and_counted(tmp_path, img):
    xs, ys = [10, 30, 30, 10], [10, 10, 20, 20]
    ds = read(tmp_path, via2_export([
        region({"name": "polyline", "all_points_x": xs, "all_points_y": ys}),
        region({"name": "point", "cx": 5, "cy": 5}),
    ]))
    masks, _ = ds.load_mask(0)
    assert masks.shape[-1] == 1
    assert masks[..., 0].sum() == 21 * 11  # integer pixel centres: both edges included
    kinds = {s["kind"]: s for s in ds.image_info[0]["issues"]}
    assert kinds["skipped_shape"]["severity"] == "warning"
    assert "regions[1]" in kinds["skipped_shape"]["region"]
    assert kinds["converted_shape"]["severity"] == "warning"


def test_reader_warns_about_skipped_shapes(tmp_path, img):
    p = write_json(tmp_path / "via.json",
                   via2_export([region({"name": "point", "cx": 5, "cy": 5})]))
    with pytest.warns(UserWarning, match="skipped_shape"):
        load_via(p)


def test_via1_regions_dict_in_numeric_order(tmp_path, img):
    regions = {str(i): region({"name": "rect", "x": i, "y": 0, "width": 1, "height": 1},
                              cls=f"c{i:02d}") for i in (0, 1, 2, 10)}
    data = {"a.png1234": {"fileref": "", "size": 1234, "filename": "a.png",
                          "base64_img_data": "", "file_attributes": {}, "regions": regions}}
    ds = read(tmp_path, data)
    insts = ds.image_info[0]["instances"]
    assert [i["label"] for i in insts] == ["c00", "c01", "c02", "c10"]
    assert insts[3]["region"].startswith("regions['10']")
    masks, ids = ds.load_mask(0)
    assert [int(np.nonzero(masks[..., k])[1][0]) for k in range(4)] == [0, 1, 2, 10]


def test_via2_project_file_and_dropdown_preferred_over_text(tmp_path, img):
    meta = via2_export([{"shape_attributes": {"name": "rect", "x": 1, "y": 1, "width": 3,
                                              "height": 3},
                         "region_attributes": {"kind": "dog", "note": "brown, fluffy"}}])
    project = {"_via_settings": {"core": {"default_filepath": ""}},
               "_via_img_metadata": meta,
               "_via_attributes": {"region": {"kind": {"type": "dropdown",
                                                       "options": {"dog": "", "cat": ""}},
                                              "note": {"type": "text"}}, "file": {}},
               "_via_data_format_version": "2.0.10", "_via_image_id_list": list(meta)}
    ds = read(tmp_path, project)
    assert ds.class_names == ["BG", "dog"]
    assert ds.format == "VIA 2.x project"


def test_default_filepath_of_project_is_searched(tmp_path):
    os.makedirs(tmp_path / "pics")
    write_image(tmp_path / "pics" / "a.png")
    project = {"_via_settings": {"core": {"default_filepath": "pics/"}},
               "_via_img_metadata": via2_export([region({"name": "rect", "x": 1, "y": 1,
                                                          "width": 3, "height": 3})])}
    ds = read(tmp_path, project)
    assert ds.load_image(0).shape == (H, W, 3)


def test_checkbox_attribute(tmp_path, img):
    regions = [{"shape_attributes": {"name": "rect", "x": 1, "y": 1, "width": 3, "height": 3},
                "region_attributes": {"type": {"cat": True, "dog": False}}},
               {"shape_attributes": {"name": "rect", "x": 9, "y": 1, "width": 3, "height": 3},
                "region_attributes": {"type": {"cat": False, "dog": True}}},
               {"shape_attributes": {"name": "rect", "x": 19, "y": 1, "width": 3, "height": 3},
                "region_attributes": {"type": {"cat": True, "dog": True}}}]
    ds = read(tmp_path, via2_export(regions))
    assert ds.class_names == ["BG", "cat", "dog"]
    assert [i["label"] for i in ds.image_info[0]["instances"]] == ["cat", "dog"]
    (issue,) = ds.image_info[0]["issues"]
    assert issue["kind"] == "no_class" and "regions[2]" in issue["region"]
    assert "several classes are ticked" in issue["message"]


def test_ambiguous_class_attribute_lists_candidates(tmp_path, img):
    regions = [{"shape_attributes": {"name": "rect", "x": 1, "y": 1, "width": 3, "height": 3},
                "region_attributes": {"species": "dog", "colour": "brown"}}]
    with pytest.raises(AnnotationError) as e:
        read(tmp_path, via2_export(regions))
    msg = str(e.value)
    assert "'colour'" in msg and "'species'" in msg and "class_attribute=" in msg
    assert "via.json" in msg
    ds = read(tmp_path, via2_export(regions), class_attribute="colour")
    assert ds.class_names == ["BG", "brown"]


def test_no_region_attributes_one_default_class_with_warning(tmp_path, img):
    regions = [{"shape_attributes": {"name": "rect", "x": 1, "y": 1, "width": 3, "height": 3},
                "region_attributes": {}}]
    p = write_json(tmp_path / "via.json", via2_export(regions))
    with pytest.warns(UserWarning, match="object"):
        ds = load_via(p)
    assert ds.class_names == ["BG", "object"]
    assert any(i["kind"] == "default_class" for i in ds.read_issues)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert load_via(p, default_class="balloon").class_names == ["BG", "balloon"]


def test_missing_class_value_is_counted_not_dropped(tmp_path, img):
    regions = [region({"name": "rect", "x": 1, "y": 1, "width": 3, "height": 3}),
               {"shape_attributes": {"name": "rect", "x": 9, "y": 1, "width": 3, "height": 3},
                "region_attributes": {"class": ""}}]
    ds = read(tmp_path, via2_export(regions))
    assert len(ds.image_info[0]["instances"]) == 1
    (issue,) = ds.image_info[0]["issues"]
    assert issue["kind"] == "no_class" and issue["severity"] == "error"


def test_classes_sorted_and_fixed_order(tmp_path, img):
    regions = [region({"name": "rect", "x": i, "y": 1, "width": 2, "height": 2}, cls=c)
               for i, c in enumerate(["zebra", "ant", "moose"])]
    ds = read(tmp_path, via2_export(regions))
    assert ds.class_names == ["BG", "ant", "moose", "zebra"]
    assert list(ds.load_mask(0)[1]) == [3, 1, 2]
    ds = read(tmp_path, via2_export(regions), classes=["zebra", "moose"])
    assert ds.class_names == ["BG", "zebra", "moose"]
    assert list(ds.load_mask(0)[1]) == [1, 2]
    assert ds.image_info[0]["issues"][0]["kind"] == "unknown_label"


def test_size_read_lazily_from_header(tmp_path):
    write_image(tmp_path / "a.png", h=33, w=44)
    ds = read(tmp_path, via2_export([region({"name": "rect", "x": 1, "y": 1, "width": 3,
                                             "height": 3})]))
    info = ds.image_info[0]
    assert isinstance(info, ImageRecord) and info.known_size() is None
    assert ds.image_size(0) == (33, 44)
    assert info["width"] == 44 and info["size_from"] == "file"
    assert ds.load_mask(0)[0].shape == (33, 44, 1)


def test_exif_rotated_jpeg_size_matches_read_image(tmp_path):
    im = Image.fromarray(np.zeros((20, 50, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: shown 20 wide, 50 high
    im.save(tmp_path / "a.jpg", exif=exif)
    ds = read(tmp_path, via2_export([region({"name": "rect", "x": 1, "y": 1, "width": 3,
                                             "height": 3})], "a.jpg"))
    assert ds.image_size(0) == (50, 20) == ds.load_image(0).shape[:2]


@pytest.mark.parametrize("mode", ["L", "RGBA"])
def test_grayscale_and_rgba_images_load_as_rgb(tmp_path, mode):
    write_image(tmp_path / "a.png", mode=mode)
    ds = read(tmp_path, via2_export([region({"name": "rect", "x": 1, "y": 1, "width": 3,
                                             "height": 3})]))
    image = ds.load_image(0)
    assert image.shape == (H, W, 3) and image.dtype == np.uint8


def test_image_dir_argument_and_windows_paths(tmp_path):
    os.makedirs(tmp_path / "imgs")
    write_image(tmp_path / "imgs" / "a.png")
    data = via2_export([region({"name": "rect", "x": 1, "y": 1, "width": 3, "height": 3})],
                       filename="C:\\Users\\me\\data\\a.png")
    ds = read(tmp_path, data, image_dir=str(tmp_path / "imgs"))
    assert ds.image_info[0]["path"] == str(tmp_path / "imgs" / "a.png")
    assert ds.load_image(0).shape == (H, W, 3)


def test_missing_image_error_names_annotation_file_and_image(tmp_path):
    ds = read(tmp_path, via2_export([], filename="nothere.jpg"))
    with pytest.raises(AnnotationError) as e:
        ds.load_image(0)
    assert "via.json" in str(e.value) and "nothere.jpg" in str(e.value)


@pytest.mark.parametrize("shape,expect", [
    ({"name": "polygon", "all_points_x": [1, 2, "x"], "all_points_y": [1, 2, 3]},
     "all_points_x[2] must be a number"),
    ({"name": "polygon", "all_points_x": [1, 2, 3], "all_points_y": [1, 2]},
     "all_points_y has 2"),
    ({"name": "rect", "x": 1, "y": 1, "width": 3}, "no 'height'"),
    ({"name": "circle", "cx": None, "cy": 1, "r": 3}, "cx must be a number"),
    ({"name": "ellipse", "cx": 1, "cy": 1, "rx": 3, "ry": float("nan")}, "not a usable"),
    ({"x": 1}, "shape_attributes.name"),
])
def test_malformed_region_names_file_image_field(tmp_path, img, shape, expect):
    data = via2_export([region({"name": "rect", "x": 1, "y": 1, "width": 3, "height": 3}),
                        {"shape_attributes": shape, "region_attributes": {"class": "a"}}])
    with pytest.raises(AnnotationError) as e:
        read(tmp_path, data)
    msg = str(e.value)
    assert expect in msg and "via.json" in msg and "a.png" in msg and "regions[1]" in msg
    assert e.value.field == "regions[1]" and e.value.image == "a.png"


def test_several_malformed_regions_reported_together(tmp_path, img):
    bad = {"shape_attributes": {"name": "rect", "x": "?", "y": 1, "width": 3, "height": 3},
           "region_attributes": {"class": "a"}}
    with pytest.raises(AnnotationError) as e:
        read(tmp_path, via2_export([bad, bad, bad]))
    msg = str(e.value)
    assert "3 malformed" in msg
    assert all(f"regions[{i}]" in msg for i in range(3))


@pytest.mark.parametrize("data,expect", [
    ([1, 2, 3], "JSON object"),
    ({"a": {"nothing": 1}}, "does not look like a VIA file"),
    ({}, "no images"),
    ({"project": {}, "config": {}, "attribute": {}, "file": {}, "metadata": {}, "view": {}},
     "VIA 3"),
    ({"_via_img_metadata": []}, "_via_img_metadata must be an object"),
    ({"a": {"filename": "a.png", "regions": 5}}, "'regions' must be a list"),
])
def test_malformed_file(tmp_path, data, expect):
    with pytest.raises(AnnotationError, match=expect):
        read(tmp_path, data)


def test_broken_json_names_the_file(tmp_path):
    p = tmp_path / "via.json"
    p.write_text('{"a.png": {"filename": "a.png", "regions": [')
    with pytest.raises(AnnotationError, match="not valid JSON") as e:
        load_via(str(p))
    assert "via.json" in str(e.value)


def test_degenerate_shapes_are_recorded_not_instances(tmp_path, img):
    data = via2_export([
        region({"name": "polygon", "all_points_x": [1, 5], "all_points_y": [1, 5]}),
        region({"name": "polygon", "all_points_x": [1, 5, 9], "all_points_y": [1, 5, 9]}),
        region({"name": "rect", "x": 1, "y": 1, "width": 0, "height": 4}),
        region({"name": "circle", "cx": 1, "cy": 1, "r": 0}),
        region({"name": "blob", "cx": 1}),
    ])
    ds = read(tmp_path, data)
    assert ds.image_info[0]["instances"] == []
    issues = ds.image_info[0]["issues"]
    assert [i["kind"] for i in issues] == ["degenerate"] * 4 + ["unknown_shape"]
    assert all(i["severity"] == "error" for i in issues)
