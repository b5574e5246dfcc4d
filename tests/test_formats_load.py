"""load(): format detection and dispatch."""
import json
import os
import warnings

import numpy as np
import pytest
from PIL import Image

from colabrcnn.data.formats import detect_format, load
from colabrcnn.errors import AnnotationError

VIA = {"a.png1": {"filename": "a.png", "size": 1, "file_attributes": {},
                  "regions": [{"shape_attributes": {"name": "rect", "x": 1, "y": 1,
                                                    "width": 4, "height": 4},
                               "region_attributes": {"class": "box"}}]}}
COCO = {"images": [{"id": 1, "file_name": "a.png", "width": 20, "height": 10}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1,
                         "segmentation": [[1, 1, 5, 1, 5, 5, 1, 5]], "iscrowd": 0}],
        "categories": [{"id": 1, "name": "box"}]}
LABELME = {"version": "5.0", "shapes": [{"label": "box", "points": [[1, 1], [5, 5]],
                                         "shape_type": "rectangle"}],
           "imagePath": "a.png", "imageData": None}


def setup(tmp_path, files):
    Image.fromarray(np.zeros((10, 20, 3), np.uint8)).save(tmp_path / "a.png")
    for name, doc in files.items():
        with open(tmp_path / name, "w") as f:
            json.dump(doc, f)


def quiet_load(*a, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load(*a, **kw)


@pytest.mark.parametrize("name,doc,fmt", [("via.json", VIA, "via"),
                                          ("coco.json", COCO, "coco"),
                                          ("a.json", LABELME, "labelme")])
def test_detects_file_and_folder(tmp_path, name, doc, fmt):
    setup(tmp_path, {name: doc})
    assert detect_format(str(tmp_path / name))[0] == fmt
    assert detect_format(str(tmp_path))[0] == fmt
    for p in (tmp_path / name, tmp_path):
        ds = quiet_load(str(p))
        assert ds.class_names == ["BG", "box"]
        # labelme draws a rectangle's corners inclusive (5 x 5); VIA's is 4 x 4
        assert ds.load_mask(0)[0].sum() == (25 if fmt == "labelme" else 16)


def test_mask_folders(tmp_path):
    os.makedirs(tmp_path / "images")
    os.makedirs(tmp_path / "masks" / "a")
    Image.fromarray(np.zeros((10, 20, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    m = np.zeros((10, 20), np.uint8)
    m[1:5, 1:5] = 255
    Image.fromarray(m).save(tmp_path / "masks" / "a" / "box_1.png")
    assert detect_format(str(tmp_path))[0] == "masks"
    ds = quiet_load(str(tmp_path))
    assert ds.class_names == ["BG", "box"] and ds.load_mask(0)[0].sum() == 16
    ds = quiet_load(str(tmp_path / "images"), mask_dir=str(tmp_path / "masks"))
    assert ds.load_mask(0)[0].sum() == 16


def test_keyword_arguments_reach_the_reader(tmp_path):
    setup(tmp_path, {"via.json": VIA})
    ds = quiet_load(str(tmp_path), class_attribute="class", classes=["box", "other"])
    assert ds.class_names == ["BG", "box", "other"]
    with pytest.raises(AnnotationError, match="takes no class_attribute"):
        setup(tmp_path, {"via.json": COCO})
        quiet_load(str(tmp_path / "via.json"), class_attribute="x")


def test_unknown_format_lists_accepted_formats(tmp_path):
    setup(tmp_path, {"x.json": {"hello": 1}})
    with pytest.raises(AnnotationError) as e:
        load(str(tmp_path / "x.json"))
    for word in ("VIA", "COCO", "LabelMe", "masks"):
        assert word in str(e.value)
    with pytest.raises(AnnotationError, match="accepted"):
        load(str(tmp_path))
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(AnnotationError, match="accepted"):
        load(str(tmp_path / "notes.txt"))
    with pytest.raises(AnnotationError, match="no such file"):
        load(str(tmp_path / "missing.json"))


def test_broken_json_says_so(tmp_path):
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(AnnotationError, match="not valid JSON"):
        load(str(tmp_path / "x.json"))


def test_several_annotation_files_in_folder(tmp_path):
    setup(tmp_path, {"via.json": VIA, "coco.json": COCO})
    with pytest.raises(AnnotationError, match="several annotation files"):
        load(str(tmp_path))


def test_via3_project_explains_what_to_do(tmp_path):
    setup(tmp_path, {"p.json": {"project": {}, "config": {}, "attribute": {}, "file": {},
                                "metadata": {}, "view": {}}})
    with pytest.raises(AnnotationError, match="VIA 3.*COCO"):
        load(str(tmp_path / "p.json"))
