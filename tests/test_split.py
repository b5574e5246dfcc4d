"""train_val_split: deterministic, stratified, classes shared."""
import warnings

import numpy as np
import pytest

from colabrcnn.data.dataset import Dataset
from colabrcnn.data.formats.geometry import rect_polygon
from colabrcnn.data.formats.records import DatasetBuilder, make_instance
from colabrcnn.data.split import train_val_split
from colabrcnn.errors import AnnotationError


def make(labels_per_image, size=(20, 20)):
    """A prepared AnnotatedDataset; one small square instance per label."""
    b = DatasetBuilder("t", "test")
    for i, labels in enumerate(labels_per_image):
        rec = b.add_image(f"img{i}", f"img{i}.png", f"/nowhere/img{i}.png", "t.json",
                          width=size[1], height=size[0])
        for k, lab in enumerate(labels):
            b.add_instance(rec, make_instance(lab, "rect", f"regions[{k}]",
                                              [rect_polygon(k, k, 2, 2)]))
    return b.build()


def names_in(ds):
    return {inst["label"] for info in ds.image_info for inst in info["instances"]}


def image_names(ds):
    return [info["name"] for info in ds.image_info]


def test_deterministic_per_seed_and_partition():
    ds = make([["a"]] * 30 + [["b"]] * 10 + [[]] * 5)
    t1, v1 = train_val_split(ds, 0.2, seed=3)
    t2, v2 = train_val_split(ds, 0.2, seed=3)
    assert image_names(t1) == image_names(t2) and image_names(v1) == image_names(v2)
    assert sorted(image_names(t1) + image_names(v1)) == sorted(image_names(ds))
    assert not set(image_names(t1)) & set(image_names(v1))
    assert len(v1.image_info) == 9
    others = {tuple(image_names(train_val_split(ds, 0.2, seed=s)[1])) for s in range(5)}
    assert len(others) > 1  # different seeds, different splits


def test_stratified_keeps_rare_classes_on_both_sides():
    labels = [["common"]] * 40 + [["rare"]] * 2 + [["mid"]] * 5 + [["common", "mid"]] * 3
    ds = make(labels)
    for seed in range(10):
        with warnings.catch_warnings():
            warnings.simplefilter("error")   # no coverage warning expected
            train, val = train_val_split(ds, 0.1, seed=seed)
        assert names_in(train) == names_in(val) == {"common", "rare", "mid"}
        # proportions roughly kept
        n_common_val = sum("common" in {i["label"] for i in info["instances"]}
                           for info in val.image_info)
        assert 2 <= n_common_val <= 7


def test_shared_class_ids_and_names():
    ds = make([["x"], ["y"], ["x", "y"], ["y"], ["x"]])
    train, val = train_val_split(ds, 0.4, seed=1)
    for part in (train, val):
        assert part.class_names == ds.class_names
        assert part.class_info == ds.class_info
        for k in range(len(part.image_info)):
            _, ids = part.load_mask(k)
            assert all(ds.class_names[i] in ("x", "y") for i in ids)
    assert len(train.image_info) + len(val.image_info) == 5


def test_single_image_class_warns_and_stays_in_training():
    ds = make([["a"]] * 10 + [["lonely"]])
    with pytest.warns(UserWarning, match="lonely"):
        train, val = train_val_split(ds, 0.2, seed=0)
    assert "lonely" in names_in(train) and "lonely" not in names_in(val)


def test_impossible_coverage_warns():
    ds = make([["a", "b"], ["a", "c"], ["b", "c"]])
    with pytest.warns(UserWarning, match="could not be put in both"):
        train_val_split(ds, 0.34, seed=0)


def test_unstratified_and_arguments():
    ds = make([["a"]] * 10)
    train, val = train_val_split(ds, 0.3, seed=0, stratify=False)
    assert len(val.image_info) == 3 and len(train.image_info) == 7
    with pytest.raises(ValueError):
        train_val_split(ds, 1.0)
    with pytest.raises(ValueError):
        train_val_split(ds, 0)
    with pytest.raises(AnnotationError, match="cannot split 1"):
        train_val_split(make([["a"]]), 0.5)
    t, v = train_val_split(make([["a"], ["a"]]), 0.01)
    assert len(t.image_info) == len(v.image_info) == 1


class Plain(Dataset):
    def load_mask(self, image_id):
        cid = self.image_info[image_id]["cls"]
        return np.ones((4, 4, 1), bool), np.array([cid], np.int32)


def test_plain_dataset_subclass():
    ds = Plain()
    ds.add_class("p", 1, "one")
    ds.add_class("p", 2, "two")
    for i in range(10):
        ds.add_image("p", image_id=i, path=f"/x/{i}.png", cls=1 + (i % 5 == 0))
    ds.prepare()
    train, val = train_val_split(ds, 0.3, seed=0)
    assert isinstance(train, Plain) and train.class_names == ds.class_names
    assert {val.load_mask(k)[1][0] for k in range(len(val.image_info))} == {1, 2}
    assert len(ds.image_info) == 10  # the original is untouched
