"""COCO reader: polygons, RLE (both kinds), crowd, category mapping, errors."""
import json
import warnings

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from colabrcnn.data.formats import load_coco
from colabrcnn.errors import AnnotationError

H, W = 40, 60


def compressed(mask):
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def uncompressed(mask):
    flat = mask.astype(np.uint8).ravel(order="F")
    counts, value, run = [], 0, 0
    for v in flat:
        if v == value:
            run += 1
        else:
            counts.append(run)
            value, run = v, 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def coco_doc(annotations, categories=None, images=None):
    return {"images": images if images is not None else
            [{"id": 7, "file_name": "a.png", "width": W, "height": H}],
            "annotations": annotations,
            "categories": categories if categories is not None else
            [{"id": 5, "name": "zebra"}, {"id": 2, "name": "yak"}, {"id": 9, "name": "ant"}]}


def ann(i, seg, cat=5, image=7, crowd=0):
    return {"id": i, "image_id": image, "category_id": cat, "segmentation": seg,
            "iscrowd": crowd, "bbox": [0, 0, 1, 1], "area": 1}


def read(tmp_path, doc, **kw):
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "a.png")
    with open(tmp_path / "coco.json", "w") as f:
        json.dump(doc, f)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_coco(str(tmp_path / "coco.json"), **kw)


POLY = [10, 5, 30, 5, 30, 20, 10, 20]
POLY2 = [40, 25, 50, 25, 45, 35]


def test_polygon_multi_part_and_both_rles_give_identical_masks(tmp_path):
    poly_mask = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([POLY, POLY2], H, W)))
    poly_mask = poly_mask.astype(bool)
    doc = coco_doc([ann(1, [POLY, POLY2]), ann(2, compressed(poly_mask)),
                    ann(3, uncompressed(poly_mask))])
    ds = read(tmp_path, doc)
    masks, ids = ds.load_mask(0)
    assert masks.shape == (H, W, 3)
    for k in range(3):
        np.testing.assert_array_equal(masks[..., k], poly_mask)
    expected = np.zeros((H, W), bool)
    expected[5:20, 10:30] = True
    np.testing.assert_array_equal(masks[..., 0][:, :35], expected[:, :35])
    assert [i["shape"] for i in ds.image_info[0]["instances"]] == ["polygon", "rle", "rle"]


def test_categories_mapped_to_contiguous_ids_in_id_order(tmp_path):
    doc = coco_doc([ann(1, [POLY], cat=9), ann(2, [POLY], cat=2), ann(3, [POLY], cat=5)])
    ds = read(tmp_path, doc)
    assert ds.class_names == ["BG", "yak", "zebra", "ant"]   # ids 2, 5, 9
    assert list(ds.load_mask(0)[1]) == [3, 1, 2]
    assert ds.map_source_class_id("coco.9") == 3


def test_two_category_ids_with_one_name_become_one_class_with_a_warning(tmp_path):
    doc = coco_doc([ann(1, [POLY], cat=5), ann(2, [POLY2], cat=6)],
                   categories=[{"id": 5, "name": "zebra"}, {"id": 6, "name": "zebra "}])
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "a.png")
    with open(tmp_path / "coco.json", "w") as f:
        json.dump(doc, f)
    with pytest.warns(UserWarning):
        ds = load_coco(str(tmp_path / "coco.json"))
    assert ds.class_names == ["BG", "zebra"]
    assert list(ds.load_mask(0)[1]) == [1, 1]


def test_crowd_kept_apart_and_reported(tmp_path):
    crowd = np.zeros((H, W), bool)
    crowd[30:38, 2:20] = True
    doc = coco_doc([ann(1, [POLY]), ann(2, uncompressed(crowd), crowd=1)])
    ds = read(tmp_path, doc)
    masks, ids = ds.load_mask(0)
    assert masks.shape[-1] == 1
    cmasks, cids = ds.load_crowd_mask(0)
    np.testing.assert_array_equal(cmasks[..., 0], crowd)
    assert ds.class_names[cids[0]] == "zebra"
    assert len(ds.image_info[0]["crowd"]) == 1


def test_flat_polygon_without_outer_list(tmp_path):
    ds = read(tmp_path, coco_doc([ann(1, POLY)]))
    assert ds.load_mask(0)[0].sum() == 20 * 15


def test_unknown_category_and_missing_segmentation_recorded(tmp_path):
    doc = coco_doc([ann(1, [POLY], cat=77), ann(2, []), ann(3, [[1, 1, 2, 2]]),
                    ann(4, [POLY, [1, 1, 2, 2]])])
    ds = read(tmp_path, doc)
    issues = ds.image_info[0]["issues"]
    assert [i["kind"] for i in issues] == ["unknown_label", "no_mask", "degenerate",
                                           "degenerate_part"]
    assert issues[0]["region"] == "annotations[0] (id 1)"
    assert len(ds.image_info[0]["instances"]) == 1


def test_classes_argument_filters_and_orders(tmp_path):
    doc = coco_doc([ann(1, [POLY], cat=9), ann(2, [POLY], cat=2)])
    ds = read(tmp_path, doc, classes=["ant"])
    assert ds.class_names == ["BG", "ant"]
    assert ds.image_info[0]["issues"][0]["kind"] == "unknown_label"


def test_image_without_size_read_lazily(tmp_path):
    doc = coco_doc([ann(1, [POLY])], images=[{"id": 7, "file_name": "a.png"}])
    ds = read(tmp_path, doc)
    assert ds.image_info[0].known_size() is None
    assert ds.load_mask(0)[0].shape == (H, W, 1)


def test_string_ids_accepted(tmp_path):
    doc = coco_doc([ann("x", [POLY], cat="c", image="im")],
                   categories=[{"id": "c", "name": "cat"}],
                   images=[{"id": "im", "file_name": "a.png", "width": W, "height": H}])
    ds = read(tmp_path, doc)
    assert ds.class_names == ["BG", "cat"]


@pytest.mark.parametrize("seg,expect", [
    ({"size": [H, W], "counts": [5, 3]}, "add up to 8 pixels"),
    ({"size": [H, W + 1], "counts": [H * (W + 1)]}, "but the image is"),
    ({"size": [H, W], "counts": "@@@@"}, "do not fill"),
    ({"size": [H, W], "counts": "\x7f"}, "not a valid compressed RLE"),
    ({"size": [H, W], "counts": 3}, "counts must be"),
    ({"size": "big", "counts": [1]}, "size must be"),
    ({"counts": [1]}, "needs 'size'"),
    ([[1, 2, 3]], "has 3 numbers"),
    ([[1, 2, "a", 4, 5, 6]], "must be a number"),
    ("polygon", "segmentation must be"),
])
def test_malformed_segmentation_names_file_image_field(tmp_path, seg, expect):
    with pytest.raises(AnnotationError) as e:
        read(tmp_path, coco_doc([ann(1, [POLY]), ann(12, seg)]))
    msg = str(e.value)
    assert expect in msg and "coco.json" in msg and "a.png" in msg
    assert "annotations[1] (id 12)" in msg


@pytest.mark.parametrize("doc,expect", [
    ({"images": [{"id": 1}], "annotations": [], "categories": []}, "file_name"),
    ({"images": [{"id": 1, "file_name": "a.png"}, {"id": 1, "file_name": "b.png"}],
      "annotations": [], "categories": []}, "appears twice"),
    ({"images": [{"id": 1, "file_name": "a.png"}], "annotations": [{"image_id": 2,
      "category_id": 5, "segmentation": POLY}], "categories": [{"id": 5, "name": "x"}]},
     "image_id 2 is not in 'images'"),
    ({"images": [], "annotations": {}, "categories": []}, "'annotations' must be a list"),
    ({"images": [{"id": 1, "file_name": "a.png"}], "annotations": [],
      "categories": [{"id": 1}]}, "needs 'id' and 'name'"),
    ({"images": {}, "annotations": []}, "not a COCO file"),
])
def test_malformed_structure(tmp_path, doc, expect):
    with pytest.raises(AnnotationError, match=expect):
        read(tmp_path, doc)
