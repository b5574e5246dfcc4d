"""Mask-folder reader: one PNG per instance, or one instance-id PNG per image."""
import json
import os
import warnings

import numpy as np
import pytest
from PIL import Image

from colabrcnn.data.formats import load_mask_folder
from colabrcnn.data.formats.masks import class_from_mask_name
from colabrcnn.errors import AnnotationError

H, W = 30, 40


def read(*a, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_mask_folder(*a, **kw)


def box(y0, y1, x0, x1):
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


@pytest.fixture
def images(tmp_path):
    os.makedirs(tmp_path / "images")
    for name in ("a.jpg", "b.png", "c.png"):
        Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "images" / name)
    os.makedirs(tmp_path / "masks")
    return tmp_path


def save_mask(path, mask, scale=255):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * scale).save(path)


@pytest.mark.parametrize("name,cls", [("balloon_1.png", "balloon"), ("dog.png", "dog"),
                                      ("traffic_light_12.png", "traffic_light"),
                                      ("cat_a.png", "cat_a")])
def test_class_from_file_name(name, cls):
    assert class_from_mask_name(name) == cls


def test_one_png_per_instance(images):
    m = images / "masks"
    save_mask(m / "a" / "dog_1.png", box(1, 5, 1, 5))
    save_mask(m / "a" / "dog_2.png", box(10, 20, 10, 12), scale=1)  # 0/1 PNG
    save_mask(m / "a" / "cat_1.png", box(20, 25, 30, 40))
    save_mask(m / "b" / "cat_1.png", box(0, 30, 0, 1))
    save_mask(m / "ghost" / "cat_1.png", box(0, 2, 0, 2))            # no such image
    ds = read(str(images / "images"), str(m))
    assert ds.class_names == ["BG", "cat", "dog"]
    assert [i["name"] for i in ds.image_info] == ["a.jpg", "b.png", "c.png"]
    masks, ids = ds.load_mask(0)
    # files in name order: cat_1, dog_1, dog_2
    np.testing.assert_array_equal(masks, np.stack([box(20, 25, 30, 40), box(1, 5, 1, 5),
                                                   box(10, 20, 10, 12)], -1))
    assert list(ids) == [1, 2, 2]
    assert ds.load_mask(2)[0].shape == (H, W, 0)          # c.png: no masks, no instances
    (orphan,) = ds.read_issues
    assert orphan["kind"] == "orphan_mask" and orphan["severity"] == "error"
    assert "ghost" in orphan["file"]


def test_instance_id_png_with_sidecar(images):
    m = images / "masks"
    ids_img = np.zeros((H, W), np.uint8)
    ids_img[1:5, 1:5] = 1
    ids_img[10:12, 10:30] = 2
    ids_img[20:29, 0:3] = 7
    Image.fromarray(ids_img).save(m / "a.png")
    with open(m / "a.json", "w") as f:
        json.dump({"1": "dog", "2": "cat", "7": "dog"}, f)
    ds = read(str(images / "images"), str(m))
    assert ds.class_names == ["BG", "cat", "dog"]
    masks, ids = ds.load_mask(0)
    np.testing.assert_array_equal(masks, np.stack([ids_img == v for v in (1, 2, 7)], -1))
    assert list(ids) == [2, 1, 2]
    assert ds.image_info[0].known_size() == (H, W)


def test_instance_id_png_16_bit_with_class_map(images):
    m = images / "masks"
    ids_img = np.zeros((H, W), np.uint16)
    ids_img[0:3, 0:3] = 1000
    ids_img[5:9, 5:9] = 2000
    Image.fromarray(ids_img).save(m / "b.png")
    ds = read(str(images / "images"), str(m), class_map={1000: "cell", "2000": "cell"})
    masks, ids = ds.load_mask(1)
    assert masks.shape[-1] == 2 and masks[..., 0].sum() == 9 and masks[..., 1].sum() == 16


def test_instance_id_rgb_colour_coded(images):
    m = images / "masks"
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[0:4, 0:4] = (255, 0, 0)
    rgb[10:12, 0:4] = (0, 128, 255)
    Image.fromarray(rgb).save(m / "a.png")
    with open(m / "a.json", "w") as f:
        json.dump({"#ff0000": "red_thing", "#0080ff": "blue_thing"}, f)
    ds = read(str(images / "images"), str(m))
    masks, ids = ds.load_mask(0)
    assert sorted(ds.class_names[i] for i in ids) == ["blue_thing", "red_thing"]
    assert sorted(masks.reshape(-1, 2).sum(0)) == [8, 16]


def test_instance_id_default_class_warns(images):
    m = images / "masks"
    Image.fromarray((box(0, 3, 0, 3) * 1 + box(5, 6, 5, 9) * 2).astype(np.uint8)).save(m / "a.png")
    with pytest.warns(UserWarning, match="object"):
        ds = load_mask_folder(str(images / "images"), str(m))
    assert ds.class_names == ["BG", "object"]
    assert len(ds.image_info[0]["instances"]) == 2


def test_value_missing_from_sidecar_is_an_error_issue(images):
    m = images / "masks"
    Image.fromarray((box(0, 3, 0, 3) * 1 + box(5, 6, 5, 9) * 2).astype(np.uint8)).save(m / "a.png")
    with open(m / "a.json", "w") as f:
        json.dump({"1": "dog"}, f)
    Image.fromarray(box(0, 3, 0, 3).astype(np.uint8)).save(m / "zzz.png")
    ds = read(str(images / "images"), str(m))
    (issue,) = ds.image_info[0]["issues"]
    assert issue["kind"] == "no_class" and "value 2" in issue["region"]
    assert ds.read_issues[0]["kind"] == "orphan_mask"


def test_mode_auto_finds_nothing(images):
    with pytest.raises(AnnotationError, match="found no masks"):
        read(str(images / "images"), str(images / "masks"))


def test_bad_arguments(images):
    with pytest.raises(AnnotationError, match="mode must be"):
        read(str(images / "images"), str(images / "masks"), mode="x")
    with pytest.raises(AnnotationError, match="mask folder not found"):
        read(str(images / "images"), str(images / "nope"))
    with pytest.raises(AnnotationError, match="class map keys"):
        read(str(images / "images"), str(images / "masks"), mode="instance_ids",
             class_map={"one": "dog"})


def test_mask_size_mismatch_raises_on_load(images):
    m = images / "masks"
    save_mask(m / "a" / "dog_1.png", np.ones((H + 1, W), bool))
    ds = read(str(images / "images"), str(m))
    with pytest.raises(AnnotationError) as e:
        ds.load_mask(0)
    assert "dog_1.png" in str(e.value) and "a.jpg" in str(e.value)
