"""Bad input is never a raw traceback or a silent loss: one test per kind of failure,
several cases each, asserting our own error (naming the file) or a validate() entry."""
import base64
import io
import json
import os
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from colabrcnn.data import validate
from colabrcnn.data.dataset import read_image
from colabrcnn.data.formats import load, load_coco, load_labelme, load_mask_folder, load_via
from colabrcnn.errors import AnnotationError, ColabRCNNError

H, W = 30, 40


def quiet(fn, *a, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*a, **kw)


def png(array=None):
    buf = io.BytesIO()
    Image.fromarray(np.zeros((H, W, 3), np.uint8) if array is None else array).save(
        buf, format="PNG")
    return buf.getvalue()


def with_png_size(data, width, height):
    """A PNG whose header (IHDR) declares another size, with a valid CRC: what a
    decompression bomb looks like to PIL."""
    ihdr = bytearray(data[16:29])
    ihdr[0:8] = struct.pack(">II", width, height)
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(ihdr)) & 0xFFFFFFFF)
    return data[:16] + bytes(ihdr) + crc + data[33:]


def jpeg():
    buf = io.BytesIO()
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


BROKEN_IMAGES = {
    "bomb.png": with_png_size(png(), 200_000, 200_000),
    "wide.png": with_png_size(png(), 2 ** 31 - 1, 1),
    "cut.png": png()[:60],
    "cut.jpg": jpeg()[:200],
    "noise.png": bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8)),
    "empty.png": b"",
    "header_only.gif": b"GIF89a\x10\x00\x10\x00",
}


def write_via(folder, names, with_size=False):
    meta = {}
    for n in names:
        meta[n + "1"] = {"filename": n, "size": 1, "file_attributes": {}, "regions": [
            {"shape_attributes": {"name": "rect", "x": 1, "y": 1, "width": 5, "height": 5},
             "region_attributes": {"class": "c"}}]}
    with open(folder / "via.json", "w") as f:
        json.dump(meta, f)
    return str(folder / "via.json")


@pytest.mark.parametrize("name", sorted(BROKEN_IMAGES))
def test_broken_image_files_raise_our_error_naming_the_file(tmp_path, name):
    (tmp_path / name).write_bytes(BROKEN_IMAGES[name])
    # read_image directly, load_image of a dataset, and the header read for the size.
    with pytest.raises(AnnotationError, match=name.replace(".", r"\.")):
        read_image(str(tmp_path / name))
    ds = quiet(load_via, write_via(tmp_path, [name]))
    with pytest.raises(AnnotationError) as e:
        ds.load_image(0)
    assert name in str(e.value) and "via.json" in str(e.value)
    # The size comes from the header alone: a truncated file may still give it.
    for call in (lambda: ds.image_size(0), lambda: ds.load_mask(0)):
        try:
            call()
        except AnnotationError as e:
            assert name in str(e) and "via.json" in str(e)
    report = validate(ds)
    assert not report.ok and {i.kind for i in report.errors} & {"unreadable_image"}


@pytest.mark.parametrize("name", ["bomb.png", "cut.png", "noise.png", "empty.png"])
def test_broken_mask_images_raise_our_error_naming_the_file(tmp_path, name):
    os.makedirs(tmp_path / "images")
    os.makedirs(tmp_path / "masks" / "a")
    (tmp_path / "images" / "a.png").write_bytes(png())
    good = np.zeros((H, W), np.uint8)
    good[2:6, 2:6] = 255
    Image.fromarray(good).save(tmp_path / "masks" / "a" / "cell_1.png")
    (tmp_path / "masks" / "a" / f"cell_2{os.path.splitext(name)[1]}").write_bytes(
        BROKEN_IMAGES[name])
    ds = quiet(load_mask_folder, str(tmp_path / "images"), str(tmp_path / "masks"))
    with pytest.raises(AnnotationError, match="cell_2"):
        ds.load_mask(0)
    assert "bad_mask" in {i.kind for i in validate(ds).errors}


def labelme_with_data(folder, image_data, name="a.json"):
    doc = {"version": "5.4.1", "shapes": [{"label": "c", "points": [[1, 1], [9, 1], [9, 9]],
                                          "shape_type": "polygon"}],
           "imagePath": "not_there.png", "imageData": image_data, "imageHeight": H,
           "imageWidth": W}
    with open(folder / name, "w") as f:
        json.dump(doc, f)
    return str(folder / name)


def bytes_with_urlsafe_chars():
    """PNG bytes whose base64 has '+' or '/' (so URL-safe encoding differs)."""
    for seed in range(50):
        data = png(np.random.default_rng(seed).integers(0, 255, (H, W, 3), dtype=np.uint8))
        if {"+", "/"} & set(base64.b64encode(data).decode()):
            return data
    raise AssertionError("no such image")


@pytest.mark.parametrize("image_data,why", [
    ("%%%not base64%%%", "character '%'"),
    ("QUJD" * 10 + "Q", "cut short"),
    (base64.b64encode(b"just some text, not a picture").decode(), "not a readable image"),
    ("ab+c" + "d-_e" * 4, "mixes the standard"),
    ("", "empty"),
])
def test_broken_embedded_images_name_the_json_file(tmp_path, image_data, why):
    path = labelme_with_data(tmp_path, image_data)
    with pytest.raises(AnnotationError) as e:
        quiet(load_labelme, path)
    assert_names_the_json(e.value, path, why)


def assert_names_the_json(err, path, why):
    text = str(err)
    assert err.file == path and err.field == "imageData" and why in text, text
    assert "not found" not in text and "looked in folder" not in text


def test_truncated_embedded_image_fails_at_load_naming_the_json_file(tmp_path):
    """The header decodes (so reading works), the pixels do not."""
    for k, cut in enumerate((40, 200)):
        path = labelme_with_data(tmp_path, base64.b64encode(png(
            np.random.default_rng(k).integers(0, 255, (H, W, 3), dtype=np.uint8))[:-cut]
        ).decode(), f"{k}.json")
        ds = quiet(load_labelme, path)
        with pytest.raises(AnnotationError) as e:
            ds.load_image(0)
        assert_names_the_json(e.value, path, "embedded")


def test_url_safe_and_wrapped_base64_decode_exactly(tmp_path):
    data = bytes_with_urlsafe_chars()
    want = np.array(Image.open(io.BytesIO(data)).convert("RGB"))
    encodings = [base64.urlsafe_b64encode(data).decode(),
                 base64.urlsafe_b64encode(data).decode().rstrip("="),   # padding dropped
                 base64.encodebytes(data).decode(),                     # 76-column lines
                 "data:image/png;base64," + base64.b64encode(data).decode()]
    for k, text in enumerate(encodings):
        ds = quiet(load_labelme, labelme_with_data(tmp_path, text, f"{k}.json"))
        np.testing.assert_array_equal(ds.load_image(0), want)


def test_duplicate_keys_are_kept_or_reported(tmp_path):
    (tmp_path / "a.png").write_bytes(png())
    (tmp_path / "b.png").write_bytes(png())

    def rect(x):
        return json.dumps({"shape_attributes": {"name": "rect", "x": x, "y": 2, "width": 4,
                                                "height": 4},
                           "region_attributes": {"class": "c"}})
    # VIA: an image entry twice (exports merged by hand), a region key twice.
    (tmp_path / "via.json").write_text(
        '{"a.png1": {"filename": "a.png", "size": 1, "file_attributes": {}, "regions": '
        f'{{"0": {rect(1)}, "0": {rect(8)}}}}}, '
        '"b.png1": {"filename": "b.png", "size": 1, "file_attributes": {}, "regions": []},'
        '"a.png1": {"filename": "a.png", "size": 1, "file_attributes": {}, "regions": '
        f'[{rect(15)}, {rect(22)}]}}}}')
    with pytest.warns(UserWarning, match="duplicate_key"):
        ds = load_via(str(tmp_path / "via.json"))
    assert [len(i["instances"]) for i in ds.image_info] == [4, 0]
    assert "duplicate_key" in {i.kind for i in validate(ds).warnings}

    # LabelMe: "shapes" twice; COCO: "annotations" twice. Every item kept.
    shape = {"label": "c", "points": [[1, 1], [9, 1], [9, 9]], "shape_type": "polygon"}
    lm = json.dumps({"version": "5", "imagePath": "a.png", "imageData": None,
                     "shapes": [shape]})[:-1] + ', "shapes": ' + json.dumps([shape, shape]) + "}"
    (tmp_path / "lm").mkdir()
    (tmp_path / "lm" / "a.json").write_text(lm)
    ds = quiet(load_labelme, str(tmp_path / "lm" / "a.json"), image_dir=str(tmp_path))
    assert len(ds.image_info[0]["instances"]) == 3
    assert "duplicate_key" in {i.kind for i in validate(ds).warnings}
    ann = {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0,
           "segmentation": [[1, 1, 9, 1, 9, 9]]}
    coco = json.dumps({"images": [{"id": 1, "file_name": "a.png", "width": W, "height": H}],
                       "categories": [{"id": 1, "name": "c"}], "annotations": [ann]})
    coco = coco[:-1] + ', "annotations": ' + json.dumps([dict(ann, id=2)]) + "}"
    (tmp_path / "coco.json").write_text(coco)
    ds = quiet(load_coco, str(tmp_path / "coco.json"))
    assert len(ds.image_info[0]["instances"]) == 2

    # A repeated key whose values differ, anywhere else: an error naming it and the file.
    for text in ('{"version": "5", "imagePath": "a.png", "imagePath": "b.png", "shapes": []}',
                 '{"version": "5", "imagePath": "a.png", "shapes": [{"label": "c", '
                 '"label": "d", "points": [[1, 1], [9, 1], [9, 9]]}]}'):
        (tmp_path / "lm" / "a.json").write_text(text)
        with pytest.raises(AnnotationError, match=r"appears 2 times.*a\.json|a\.json.*appears"):
            quiet(load_labelme, str(tmp_path / "lm" / "a.json"), image_dir=str(tmp_path))
    (tmp_path / "via.json").write_text(
        '{"a.png1": {"filename": "a.png", "size": 1, "file_attributes": {}, "regions": ['
        '{"shape_attributes": {"name": "rect", "x": 1, "x": 5, "y": 2, "width": 4, '
        '"height": 4}, "region_attributes": {"class": "c"}}]}}')
    with pytest.raises(AnnotationError, match="'x' appears 2 times"):
        quiet(load_via, str(tmp_path / "via.json"))


@pytest.mark.parametrize("other", ["via", "coco"])
def test_folder_mixing_formats_reports_the_file_not_read(tmp_path, other):
    (tmp_path / "a.png").write_bytes(png())
    for k in range(2):
        with open(tmp_path / f"l{k}.json", "w") as f:
            json.dump({"version": "5", "imagePath": "a.png", "imageData": None, "shapes": [
                {"label": "c", "points": [[1, 1], [9, 1], [9, 9]], "shape_type": "polygon"}]},
                f)
    doc = ({"a.png1": {"filename": "a.png", "size": 1, "regions": [], "file_attributes": {}}}
           if other == "via" else
           {"images": [{"id": 1, "file_name": "a.png"}], "annotations": [], "categories": []})
    with open(tmp_path / "other.json", "w") as f:
        json.dump(doc, f)
    with pytest.warns(UserWarning, match="other.json"):
        ds = load(str(tmp_path))
    report = validate(ds)
    found = [i for i in report.errors if i.kind == "other_format"]
    assert len(found) == 1 and found[0].file.endswith("other.json")
    assert not report.ok


def test_load_warning_names_file_image_and_region_when_few(tmp_path):
    (tmp_path / "a.png").write_bytes(png())

    def via(regions):
        with open(tmp_path / "via.json", "w") as f:
            json.dump({"a.png1": {"filename": "a.png", "size": 1, "file_attributes": {},
                                  "regions": regions}}, f)
        return str(tmp_path / "via.json")
    point = {"shape_attributes": {"name": "point", "cx": 1, "cy": 1},
             "region_attributes": {"class": "c"}}
    with pytest.warns(UserWarning) as rec:
        load_via(via([point]))
    text = str(rec[0].message)
    assert "via.json" in text and "'a.png'" in text and "regions[0]" in text
    with pytest.warns(UserWarning) as rec:
        load_via(via([point] * 5))
    text = str(rec[0].message)
    assert "5 warning(s)" in text and "regions[3]" not in text and "validate" in text


BOW_TIE = [[0, 0], [20, 20], [20, 0], [0, 20]]          # signed areas cancel exactly
FIGURE_8 = [[0, 0], [20, 0], [0, 14], [20, 14], [10, 25]]


@pytest.mark.parametrize("points", [BOW_TIE, FIGURE_8])
def test_self_intersecting_polygons_named_for_what_they_are(tmp_path, points):
    (tmp_path / "a.png").write_bytes(png())
    xs = [p[0] + 5 for p in points]
    ys = [p[1] + 2 for p in points]
    with open(tmp_path / "via.json", "w") as f:
        json.dump({"a.png1": {"filename": "a.png", "size": 1, "file_attributes": {},
                              "regions": [{"shape_attributes": {
                                  "name": "polygon", "all_points_x": xs, "all_points_y": ys},
                                  "region_attributes": {"class": "c"}}]}}, f)
    with open(tmp_path / "a.json", "w") as f:
        json.dump({"version": "5", "imagePath": "a.png", "imageData": None, "shapes": [
            {"label": "c", "points": [[x, y] for x, y in zip(xs, ys)],
             "shape_type": "polygon"}]}, f)
    with open(tmp_path / "coco.json", "w") as f:
        json.dump({"images": [{"id": 1, "file_name": "a.png", "width": W, "height": H}],
                   "categories": [{"id": 1, "name": "c"}],
                   "annotations": [{"id": 1, "image_id": 1, "category_id": 1,
                                    "segmentation": [[v for p in zip(xs, ys) for v in p]]}]},
                  f)
    for ds in (quiet(load_via, str(tmp_path / "via.json")),
               quiet(load_labelme, str(tmp_path / "a.json")),
               quiet(load_coco, str(tmp_path / "coco.json"))):
        report = validate(ds)
        kinds = {i.kind for i in report.issues}
        assert "self_intersecting" in kinds and "degenerate" not in kinds, kinds
        assert "crosses itself" in str(report)
        masks, _ = ds.load_mask(0)  # drawn, both loops: not dropped
        assert masks.shape[-1] == 1 and masks.sum() > 100


def test_points_on_a_line_are_still_degenerate(tmp_path):
    (tmp_path / "a.png").write_bytes(png())
    with open(tmp_path / "via.json", "w") as f:
        json.dump({"a.png1": {"filename": "a.png", "size": 1, "file_attributes": {},
                              "regions": [{"shape_attributes": {
                                  "name": "polygon", "all_points_x": [1, 5, 9, 3],
                                  "all_points_y": [1, 5, 9, 3]},
                                  "region_attributes": {"class": "c"}}]}}, f)
    report = validate(quiet(load_via, str(tmp_path / "via.json")))
    assert [i.kind for i in report.errors] == ["degenerate"]
    assert "one line" in str(report)


def test_errors_are_colabrcnn_errors():
    assert issubclass(AnnotationError, ColabRCNNError)
