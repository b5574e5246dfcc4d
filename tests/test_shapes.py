"""Synthetic shapes dataset: determinism, and masks that agree with the pixels."""
import numpy as np
import pytest

from colabrcnn import ConfigError, Dataset
from colabrcnn.data import shapes
from colabrcnn.data.shapes import CLASS_NAMES, ShapesDataset

COUNT = 12


@pytest.fixture(scope="module")
def ds():
    return shapes(count=COUNT, size=96, seed=3)


def load_all(dataset):
    return [(dataset.load_image(i),) + tuple(dataset.load_mask(i))
            for i in dataset.image_ids]


def test_classes_and_size(ds):
    assert isinstance(ds, Dataset)
    assert ds.class_names == ["BG", "square", "circle", "triangle"]
    assert ds.num_classes == 4
    assert ds.map_source_class_id("shapes.3") == 3
    assert len(ds) == COUNT and list(ds.image_ids) == list(range(COUNT))
    assert ds.image_reference(3) == "shapes:seed=3:index=3"


def test_same_seed_same_data_and_different_seed_differs(ds):
    again = load_all(shapes(count=COUNT, size=96, seed=3))
    for (i1, m1, c1), (i2, m2, c2) in zip(load_all(ds), again):
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_array_equal(m1, m2)
        np.testing.assert_array_equal(c1, c2)
    other = load_all(shapes(count=COUNT, size=96, seed=4))
    differing = sum(not np.array_equal(a[0], b[0]) for a, b in zip(load_all(ds), other))
    assert differing == COUNT


def test_image_does_not_depend_on_count(ds):
    # Image i comes from (seed, i) alone, so a longer dataset starts with the same images.
    longer = shapes(count=COUNT + 5, size=96, seed=3)
    np.testing.assert_array_equal(longer.load_image(7), ds.load_image(7))


def test_images_and_masks_are_well_formed(ds):
    counts = set()
    for image, masks, class_ids in load_all(ds):
        assert image.shape == (96, 96, 3) and image.dtype == np.uint8
        assert masks.dtype == bool and masks.ndim == 3
        assert masks.shape[:2] == image.shape[:2]
        n = masks.shape[2]
        assert n >= 1 and class_ids.shape == (n,) and class_ids.dtype == np.int32
        assert set(class_ids.tolist()) <= {1, 2, 3}
        assert masks.reshape(-1, n).any(axis=0).all(), "empty mask"
        counts.add(n)
    assert max(counts) > 1  # several shapes per image happen


def test_masks_match_drawn_pixels(ds):
    for i in ds.image_ids:
        image, (masks, class_ids) = ds.load_image(i), ds.load_mask(i)
        info = ds.image_info[i]
        # Masks come out in drawing order with empty ones dropped; match them to the
        # specs by class and colour: every mask pixel has its shape's colour.
        specs = list(info["shapes"])
        for k in range(masks.shape[2]):
            colours = np.unique(image[masks[:, :, k]], axis=0)
            assert len(colours) == 1, "a mask covers pixels of several colours"
            match = [s for s in specs if tuple(colours[0]) == s[1]
                     and CLASS_NAMES.index(s[0]) + 1 == class_ids[k]]
            assert match, f"mask {k} of image {i} has no shape of its colour and class"
        # Everything outside the masks is background.
        outside = ~masks.any(axis=2)
        assert (image[outside] == np.array(info["bg_color"], np.uint8)).all()


def test_masks_do_not_overlap(ds):
    for i in ds.image_ids:
        masks, _ = ds.load_mask(i)
        assert masks.sum(axis=2).max() <= 1


def test_occluded_pixels_belong_to_the_top_shape():
    # Hand-made spec: a big square, then a circle on top of its corner.
    ds = ShapesDataset()
    ds.add_class("shapes", 1, "square")
    ds.add_class("shapes", 2, "circle")
    ds.add_class("shapes", 3, "triangle")
    ds.add_image("shapes", image_id=0, path=None, width=40, height=40, seed=0, index=0,
                 bg_color=(0, 0, 0),
                 shapes=[("square", (255, 0, 0), (15, 15, 10)),
                         ("circle", (0, 255, 0), (25, 25, 8)),
                         ("square", (0, 0, 255), (5, 35, 2)),
                         # fully hidden under the next one: must be dropped
                         ("triangle", (9, 9, 9), (33, 8, 2)),
                         ("square", (1, 2, 3), (33, 8, 5))])
    ds.prepare()
    image = ds.load_image(0)
    masks, class_ids = ds.load_mask(0)
    assert class_ids.tolist() == [1, 2, 1, 1]
    assert tuple(image[25, 25]) == (0, 255, 0)      # circle drawn over the square
    assert not masks[25, 25, 0] and masks[25, 25, 1]
    assert masks[10, 10, 0] and not masks[10, 10, 1]
    assert masks[:, :, 0].sum() == 21 * 21 - (masks[:, :, 1] & (
        np.arange(40)[:, None] <= 25) & (np.arange(40)[None, :] <= 25)).sum()
    assert (image == (9, 9, 9)).all(axis=2).sum() == 0


def test_shape_sizes_and_counts_follow_arguments():
    ds = shapes(count=20, size=128, seed=1, min_instances=2, max_instances=3)
    for info in ds.image_info:
        assert 2 <= len(info["shapes"]) <= 3
        for shape, color, (x, y, s) in info["shapes"]:
            assert 128 // 8 <= s <= 128 // 4
            assert 0 <= x < 128 and 0 <= y < 128
            assert all(isinstance(c, int) and 0 <= c <= 255 for c in color)


def test_non_square_size():
    ds = shapes(count=2, size=(64, 96), seed=0)
    assert ds.load_image(0).shape == (64, 96, 3)
    assert ds.load_mask(1)[0].shape[:2] == (64, 96)


@pytest.mark.parametrize("kwargs", [dict(count=-1), dict(size=8), dict(min_instances=0),
                                    dict(min_instances=3, max_instances=2),
                                    dict(size=(1, 2, 3))])
def test_bad_arguments(kwargs):
    with pytest.raises(ConfigError, match="shapes"):
        shapes(**kwargs)
