"""to_coco: round trips through load_coco and pycocotools give the same masks."""
import base64
import io
import json
import os
import warnings

import numpy as np
from PIL import Image
from pycocotools.coco import COCO

from colabrcnn.data.convert import to_coco
from colabrcnn.data.formats import load, load_coco, load_labelme, load_mask_folder, load_via

H, W = 48, 64


def quiet(fn, *a, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*a, **kw)


def same_masks(a, b):
    assert a.class_names == b.class_names
    assert len(a.image_info) == len(b.image_info)
    for i in range(len(a.image_info)):
        ma, ca = a.load_mask(i)
        mb, cb = b.load_mask(i)
        np.testing.assert_array_equal(ma, mb)
        np.testing.assert_array_equal(ca, cb)


def via_dataset(tmp_path):
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((H, W), np.uint8)).save(tmp_path / "b.png")
    regions = [
        {"shape_attributes": {"name": "rect", "x": 2.5, "y": 3, "width": 10, "height": 7},
         "region_attributes": {"class": "box"}},
        {"shape_attributes": {"name": "circle", "cx": 40, "cy": 30, "r": 9.3},
         "region_attributes": {"class": "ball"}},
        {"shape_attributes": {"name": "ellipse", "cx": 20, "cy": 35, "rx": 12, "ry": 5,
                              "theta": 0.4}, "region_attributes": {"class": "ball"}},
        {"shape_attributes": {"name": "polygon", "all_points_x": [50, 70, 60],
                              "all_points_y": [-5, 10, 20]},     # partly outside
         "region_attributes": {"class": "box"}},
    ]
    data = {"a.png1": {"filename": "a.png", "size": 1, "regions": regions,
                       "file_attributes": {}},
            "b.png1": {"filename": "b.png", "size": 1, "regions": [], "file_attributes": {}}}
    with open(tmp_path / "via.json", "w") as f:
        json.dump(data, f)
    return quiet(load_via, str(tmp_path / "via.json"))


def test_via_round_trip_through_coco(tmp_path):
    ds = via_dataset(tmp_path)
    out = to_coco(ds, str(tmp_path / "out" / "coco.json"))
    back = quiet(load_coco, out)
    same_masks(ds, back)
    doc = json.load(open(out))
    assert [c["name"] for c in doc["categories"]] == ["ball", "box"]
    # VIA's rect, circle and ellipse are drawn by skimage: written as RLE, exact.
    assert [isinstance(a["segmentation"], dict) for a in doc["annotations"]][:3] == [True] * 3
    assert doc["images"][0]["file_name"] == "../a.png"
    # pycocotools agrees, pixel for pixel
    coco = COCO(out)
    masks, _ = ds.load_mask(0)
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[1]))
    assert len(anns) == masks.shape[-1]
    for k, a in enumerate(anns):
        np.testing.assert_array_equal(coco.annToMask(a).astype(bool), masks[..., k])
        ys, xs = np.nonzero(masks[..., k])
        assert a["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert a["area"] == masks[..., k].sum()


def test_coco_rle_and_crowd_round_trip(tmp_path):
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "a.png")
    m = np.zeros((H, W), np.uint8)
    m[5:9, 3:40] = 1
    from pycocotools import mask as mask_utils
    rle = mask_utils.encode(np.asfortranarray(m))
    rle = {"size": [H, W], "counts": rle["counts"].decode()}
    doc = {"images": [{"id": 3, "file_name": "a.png", "width": W, "height": H}],
           "categories": [{"id": 11, "name": "cable"}],
           "annotations": [{"id": 1, "image_id": 3, "category_id": 11, "segmentation": rle,
                            "iscrowd": 0},
                           {"id": 2, "image_id": 3, "category_id": 11, "iscrowd": 1,
                            "segmentation": [[30, 30, 40, 30, 40, 40, 30, 40]]}]}
    with open(tmp_path / "in.json", "w") as f:
        json.dump(doc, f)
    ds = quiet(load_coco, str(tmp_path / "in.json"))
    out = to_coco(ds, str(tmp_path / "out.json"))
    back = quiet(load_coco, out)
    same_masks(ds, back)
    np.testing.assert_array_equal(ds.load_crowd_mask(0)[0], back.load_crowd_mask(0)[0])
    anns = json.load(open(out))["annotations"]
    assert anns[0]["segmentation"] == rle and anns[1]["iscrowd"] == 1


def test_mask_folder_and_embedded_labelme_round_trip(tmp_path):
    os.makedirs(tmp_path / "images")
    os.makedirs(tmp_path / "masks" / "a")
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    m = np.zeros((H, W), np.uint8)
    m[10:20, 5:9] = 255
    m[30, 30] = 255
    Image.fromarray(m).save(tmp_path / "masks" / "a" / "blob_1.png")
    ds = quiet(load_mask_folder, str(tmp_path / "images"), str(tmp_path / "masks"))
    same_masks(ds, quiet(load_coco, to_coco(ds, str(tmp_path / "m.json"))))

    buf = io.BytesIO()
    Image.fromarray(np.full((H, W, 3), 7, np.uint8)).save(buf, format="PNG")
    lm = {"version": "5", "shapes": [{"label": "x", "points": [[1, 1], [9, 1], [9, 9]],
                                      "shape_type": "polygon"}],
          "imagePath": "gone.png", "imageData": base64.b64encode(buf.getvalue()).decode()}
    os.makedirs(tmp_path / "lm")
    with open(tmp_path / "lm" / "e.json", "w") as f:
        json.dump(lm, f)
    ds = quiet(load_labelme, str(tmp_path / "lm"))
    out = to_coco(ds, str(tmp_path / "export" / "e.json"))
    back = quiet(load_coco, out)
    same_masks(ds, back)
    assert back.load_image(0).max() == 7     # the embedded image was written out
    assert os.path.isfile(tmp_path / "export" / "images" / "gone.png")


def test_sample_dataset_round_trip(tmp_path):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ds = load(os.path.join(repo, "datasets", "coins"))
    out = to_coco(ds, str(tmp_path / "coins.json"))
    back = load(out, image_dir=os.path.join(repo, "datasets", "coins"))
    same_masks(ds, back)


def test_command_line_functions(tmp_path, capsys):
    import argparse

    from colabrcnn.cli.convert import add_arguments as add_cli_arguments, run as run_cli
    via_dataset(tmp_path)
    parser = argparse.ArgumentParser()
    add_cli_arguments(parser)
    args = parser.parse_args([str(tmp_path / "via.json"), "--to", "coco",
                              str(tmp_path / "o.json")])
    assert run_cli(args) == 0
    assert "2 images, 4 annotations, 2 categories" in capsys.readouterr().out
    same_masks(quiet(load_via, str(tmp_path / "via.json")),
               quiet(load_coco, str(tmp_path / "o.json")))
