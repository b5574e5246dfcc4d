"""The shipped sample dataset (datasets/coins) reads the same in VIA and LabelMe form."""
import os

import numpy as np
import pytest

from colabrcnn.data.formats import load, load_labelme, load_via
from colabrcnn.data.split import train_val_split
from colabrcnn.data.validate import validate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COINS = os.path.join(REPO, "datasets", "coins")


@pytest.fixture(scope="module")
def both():
    via = load_via(os.path.join(COINS, "via_project.json"))
    labelme = load_labelme(os.path.join(COINS, "labelme"))
    return via, labelme


def test_sample_is_small():
    total = sum(os.path.getsize(os.path.join(root, f))
                for root, _, files in os.walk(os.path.join(REPO, "datasets")) for f in files
                if "__pycache__" not in root)
    assert total < 2 * 1024 * 1024


def test_same_images_classes_and_masks_in_both_formats(both):
    via, labelme = both
    assert via.class_names == labelme.class_names == ["BG", "coin"]
    by_name = {os.path.basename(i["name"]): k for k, i in enumerate(labelme.image_info)}
    assert sorted(by_name) == sorted(i["name"] for i in via.image_info)
    for k, info in enumerate(via.image_info):
        j = by_name[info["name"]]
        mv, cv = via.load_mask(k)
        ml, cl = labelme.load_mask(j)
        assert mv.shape[-1] == 12 == ml.shape[-1]
        # The same polygons, drawn as each tool draws them (skimage's polygon for VIA,
        # PIL's filled and outlined polygon for LabelMe): they differ on the boundary.
        inter = (mv & ml).sum(axis=(0, 1))
        union = (mv | ml).sum(axis=(0, 1))
        assert (inter / union).min() > 0.9
        np.testing.assert_array_equal(cv, cl)
        iv, il = via.load_image(k), labelme.load_image(j)
        assert iv.shape == il.shape == mv.shape[:2] + (3,) and iv.dtype == np.uint8
        np.testing.assert_array_equal(iv, il)


def test_sample_masks_are_coins(both):
    via, _ = both
    for k in range(len(via.image_info)):
        image = via.load_image(k)[..., 0].astype(float)
        masks, _ = via.load_mask(k)
        inside = image[masks.any(-1)].mean()
        outside = image[~masks.any(-1)].mean()
        assert inside > outside + 60   # bright coins on a dark background
        areas = masks.reshape(-1, masks.shape[-1]).sum(0)
        assert areas.min() > 900 and areas.max() < 3500


def test_sample_validates_clean_and_splits(both):
    for ds in both:
        report = validate(ds)
        assert report.ok and not report.warnings, str(report)
        assert report.class_counts == {"coin": 24}
    train, val = train_val_split(both[0], val_fraction=0.5, seed=0)
    assert len(train.image_info) == len(val.image_info) == 1


def test_load_detects_both(both):
    assert load(COINS).format == "VIA 2.x project"
    assert load(os.path.join(COINS, "labelme")).format == "LabelMe"
