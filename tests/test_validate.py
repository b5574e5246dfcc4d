"""validate(): every problem is found, named (file, image, region) and counted."""
import json
import os
import warnings

import numpy as np
import pytest
from PIL import Image

from colabrcnn.data.dataset import Dataset
from colabrcnn.data.formats import load_coco, load_labelme, load_via
from colabrcnn.data.validate import ValidationReport, validate
from colabrcnn.errors import AnnotationError

H, W = 40, 50


def rect(x, y, w, h, cls="box"):
    return {"shape_attributes": {"name": "rect", "x": x, "y": y, "width": w, "height": h},
            "region_attributes": {"class": cls}}


def poly(xs, ys, cls="box"):
    return {"shape_attributes": {"name": "polygon", "all_points_x": xs, "all_points_y": ys},
            "region_attributes": {"class": cls}}


def via_file(tmp_path, entries, name="via.json"):
    data = {f"{fn}{i}": {"filename": fn, "size": i, "regions": regions, "file_attributes": {}}
            for i, (fn, regions) in enumerate(entries)}
    with open(tmp_path / name, "w") as f:
        json.dump(data, f)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_via(str(tmp_path / name))


def image(path, h=H, w=W):
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(path)


def only(report, kind):
    found = [i for i in report.issues if i.kind == kind]
    assert len(found) == 1, (kind, [str(i) for i in report.issues])
    return found[0]


def assert_named(issue, file="via.json", image=None, region=None):
    text = str(issue)
    assert file in text, text
    if image is not None:
        assert f"image '{image}'" in text, text
    if region is not None:
        assert region in text, text


@pytest.fixture
def messy(tmp_path):
    image(tmp_path / "good.png")
    image(tmp_path / "empty.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return via_file(tmp_path, [
        ("good.png", [
            rect(2, 2, 10, 10),                                   # fine
            rect(45, 30, 20, 20),                                 # clipped (warning)
            rect(100, 100, 5, 5),                                 # outside (error)
            poly([1, 5], [1, 5]),                                 # degenerate (error)
            rect(3, 3, 0, 4),                                     # zero width (error)
            poly([10.2, 10.5, 10.3], [10.2, 10.2, 10.4]),         # covers no pixel (error)
            {"shape_attributes": {"name": "point", "cx": 1, "cy": 1},
             "region_attributes": {"class": "box"}},              # skipped (warning)
            {"shape_attributes": {"name": "rect", "x": 1, "y": 1, "width": 3, "height": 3},
             "region_attributes": {"class": ""}},                 # no class (error)
            rect(20, 20, 5, 5, cls="Box"),                        # similar name (warning)
        ]),
        ("empty.png", []),                                        # no instances (warning)
        ("missing.png", [rect(1, 1, 4, 4)]),                      # missing image (error)
        ("broken.png", [rect(1, 1, 4, 4)]),                       # unreadable (error)
        ("good.png", [rect(1, 1, 4, 4)]),                         # duplicate (error)
    ])


def test_each_problem_named_and_counted(messy):
    r = validate(messy)
    assert isinstance(r, ValidationReport) and not r.ok
    assert_named(only(r, "clipped"), image="good.png", region="regions[1]")
    assert only(r, "clipped").severity == "warning"
    assert_named(only(r, "outside_image"), image="good.png", region="regions[2]")
    degenerate = [i for i in r.issues if i.kind == "degenerate"]
    assert len(degenerate) == 2
    assert_named(degenerate[0], image="good.png", region="regions[3]")
    assert_named(degenerate[1], image="good.png", region="regions[4]")
    assert_named(only(r, "empty_mask"), image="good.png", region="regions[5]")
    assert_named(only(r, "skipped_shape"), image="good.png", region="regions[6]")
    assert_named(only(r, "no_class"), image="good.png", region="regions[7]")
    assert "'Box'" in str(only(r, "similar_class_names"))
    assert_named(only(r, "no_instances"), image="empty.png")
    assert_named(only(r, "missing_image"), image="missing.png")
    assert "not found" in str(only(r, "missing_image"))
    assert_named(only(r, "unreadable_image"), image="broken.png")
    dup = only(r, "duplicate_image")
    assert_named(dup, image="good.png")
    assert "2 times" in dup.message
    assert r.counts["degenerate"] == 2
    errors = {i.kind for i in r.errors}
    assert errors == {"outside_image", "degenerate", "empty_mask", "no_class", "missing_image",
                      "unreadable_image", "duplicate_image"}
    warns = {i.kind for i in r.warnings}
    assert warns == {"clipped", "skipped_shape", "similar_class_names", "no_instances"}
    # Instances of the missing/broken images still count: the image is at fault, not them.
    assert r.class_counts == {"Box": 1, "box": 5}
    assert r.images_without_instances == ["empty.png"]


def test_report_text_and_raise_if_errors(messy):
    r = validate(messy)
    text = r.format()
    assert "class" in text and "instances" in text and "box" in text
    assert "outside_image" in text and "regions[2]" in text and str(r) == text
    with pytest.raises(AnnotationError) as e:
        r.raise_if_errors()
    msg = str(e.value)
    assert f"{len(r.errors)} annotation problem(s)" in msg
    for issue in r.errors:
        assert str(issue) in msg
    assert "via.json" in msg


def test_strict_raises_first_error_with_place(messy):
    with pytest.raises(AnnotationError) as e:
        validate(messy, strict=True)
    err = e.value
    assert err.file.endswith("via.json") and err.image == "good.png"
    # problems found while reading come first, then the checks of each instance
    assert err.field.startswith("regions[3]") and "2 point(s)" in str(err)


def test_clean_dataset_passes(tmp_path):
    image(tmp_path / "a.png")
    ds = via_file(tmp_path, [("a.png", [rect(1, 1, 5, 5), rect(10, 10, 5, 5, cls="cat")])])
    r = validate(ds)
    assert r.ok and not r.issues
    assert r.raise_if_errors() is r
    assert r.class_counts == {"box": 1, "cat": 1}
    assert "No problems found" in str(r)
    assert r.to_dict()["num_instances"] == 2


def test_unknown_labels_and_empty_class_with_class_list(tmp_path):
    image(tmp_path / "a.png")
    ds = via_file(tmp_path, [("a.png", [rect(1, 1, 5, 5), rect(10, 10, 5, 5, cls="dgo")])])
    r = validate(ds, classes=["box", "dog"])
    bad = [i for i in r.issues if i.kind == "unknown_label"]
    assert any("'dgo'" in str(i) and "regions[1]" in str(i) and "a.png" in str(i) for i in bad)
    # A class list on the reader makes the unknown label an error and the class empty.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = load_via(str(tmp_path / "via.json"), classes=["box", "dog"])
    r = validate(ds)
    assert_named(only(r, "unknown_label"), image="a.png", region="regions[1]")
    assert "'dog'" in str(only(r, "empty_class"))


def test_size_mismatch(tmp_path):
    image(tmp_path / "a.png", h=H, w=W)
    doc = {"version": "5", "shapes": [{"label": "x", "points": [[1, 1], [9, 9]],
                                       "shape_type": "rectangle"}],
           "imagePath": "a.png", "imageData": None, "imageHeight": H * 2, "imageWidth": W * 2}
    with open(tmp_path / "a.json", "w") as f:
        json.dump(doc, f)
    ds = load_labelme(str(tmp_path / "a.json"))
    issue = only(validate(ds), "size_mismatch")
    assert_named(issue, file="a.json", image="a.png")
    assert f"{W * 2} x {H * 2}" in issue.message and f"{W} x {H}" in issue.message
    # without opening images there is nothing to compare with
    assert not [i for i in validate(ds, check_images=False).issues if i.kind == "size_mismatch"]


def test_rle_of_wrong_size_found_by_lazy_size_check(tmp_path):
    image(tmp_path / "a.png", h=H, w=W)
    doc = {"images": [{"id": 1, "file_name": "a.png"}],   # no size: checked at load time
           "categories": [{"id": 1, "name": "x"}],
           "annotations": [{"id": 4, "image_id": 1, "category_id": 1,
                            "segmentation": {"size": [H + 1, W], "counts": [(H + 1) * W]}}]}
    with open(tmp_path / "c.json", "w") as f:
        json.dump(doc, f)
    ds = load_coco(str(tmp_path / "c.json"))
    issue = only(validate(ds), "bad_mask")
    assert_named(issue, file="c.json", image="a.png", region="annotations[0] (id 4)")


def test_duplicate_file_names_in_different_folders(tmp_path):
    for d in ("x", "y"):
        os.makedirs(tmp_path / d)
        image(tmp_path / d / "a.png")
    doc = {"images": [{"id": 1, "file_name": "x/a.png", "width": W, "height": H},
                      {"id": 2, "file_name": "y/a.png", "width": W, "height": H}],
           "categories": [{"id": 1, "name": "x"}],
           "annotations": [{"id": k, "image_id": k, "category_id": 1,
                            "segmentation": [[1, 1, 9, 1, 9, 9]]} for k in (1, 2)]}
    with open(tmp_path / "c.json", "w") as f:
        json.dump(doc, f)
    r = validate(load_coco(str(tmp_path / "c.json")))
    assert r.ok
    assert "a.png" in str(only(r, "duplicate_name"))


def test_read_issues_are_reported(tmp_path):
    os.makedirs(tmp_path / "lm")
    (tmp_path / "lm" / "other.json").write_text("{}")
    image(tmp_path / "lm" / "a.png")
    with open(tmp_path / "lm" / "a.json", "w") as f:
        json.dump({"version": "5", "shapes": [], "imagePath": "a.png"}, f)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = load_labelme(str(tmp_path / "lm"))
    assert "other.json" in str(only(validate(ds), "not_labelme"))


def test_crowd_counted(tmp_path):
    image(tmp_path / "a.png")
    doc = {"images": [{"id": 1, "file_name": "a.png", "width": W, "height": H}],
           "categories": [{"id": 1, "name": "x"}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 1,
                            "segmentation": [[1, 1, 9, 1, 9, 9]]},
                           {"id": 2, "image_id": 1, "category_id": 1,
                            "segmentation": [[1, 1, 9, 1, 9, 9]]}]}
    with open(tmp_path / "c.json", "w") as f:
        json.dump(doc, f)
    r = validate(load_coco(str(tmp_path / "c.json")))
    assert r.num_crowd == 1 and r.num_instances == 1 and r.ok
    assert "crowd" in str(r)


class Custom(Dataset):
    """A matterport-style subclass: validate checks what load_mask returns."""

    def load_mask(self, image_id):
        m = np.zeros((H, W, 3), bool)
        m[1:5, 1:5, 0] = True
        m[6:9, 6:9, 2] = True
        return m, np.array([1, 1, 7], np.int32)


def test_any_dataset_subclass(tmp_path):
    image(tmp_path / "a.png")
    ds = Custom()
    ds.add_class("x", 1, "thing")
    ds.add_image("x", image_id="a", path=str(tmp_path / "a.png"))
    ds.prepare()
    r = validate(ds)
    assert {i.kind for i in r.errors} == {"empty_mask", "bad_class_id"}
    assert r.class_counts == {"thing": 1}


def test_command_line_functions(tmp_path, capsys, messy):
    import argparse

    # from-imports: colabrcnn.data may export the validate() function under the same
    # name as this module
    from colabrcnn.cli.validate import add_arguments as add_cli_arguments, run as run_cli
    parser = argparse.ArgumentParser()
    add_cli_arguments(parser)
    status = run_cli(parser.parse_args([str(tmp_path / "via.json"), "--max-issues", "3"]))
    out = capsys.readouterr().out
    assert status == 1 and "outside_image" in out and "--max-issues" in out
    run_cli(parser.parse_args([str(tmp_path / "via.json")]))
    assert "regions[2]" in capsys.readouterr().out
    image(tmp_path / "ok.png")
    clean = tmp_path / "clean"
    clean.mkdir()
    image(clean / "a.png")
    via_file(clean, [("a.png", [rect(1, 1, 5, 5)])])
    args = parser.parse_args([str(clean), "--classes", "box,cat", "--class-attribute", "class"])
    assert run_cli(args) == 0
    assert "expected class 'cat' does not occur" in capsys.readouterr().out
