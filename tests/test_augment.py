"""Augmentation keeps masks aligned with the image and drops vanished instances."""
import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from colabrcnn.data.augment import (apply_augmentation, augmentation_callable,  # noqa: E402
                                    default_augmentation)
from colabrcnn.errors import AnnotationError  # noqa: E402

H, W = 60, 80


def position_image():
    """Each pixel's colour encodes where it came from: R = 3x, G = 4y."""
    y, x = np.mgrid[0:H, 0:W]
    return np.stack([x * 3, y * 4, np.full_like(x, 255)], -1).astype(np.uint8)


def decode(image):
    return image[..., 0].astype(int) // 3, image[..., 1].astype(int) // 4  # x, y


def instance_masks():
    m = np.zeros((H, W, 3), bool)
    m[5:15, 10:30, 0] = True                     # rectangle
    yy, xx = np.mgrid[0:H, 0:W]
    m[..., 1] = (xx - 55) ** 2 + (yy - 35) ** 2 < 12 ** 2   # disc
    m[45:58, 2:9, 2] = True
    m[50:52, 2:40, 2] = True                     # an L near the bottom-left corner
    return m, np.array([1, 2, 3], np.int32)


def assert_aligned(image, masks, orig_masks, ids, orig_ids):
    """Every output mask pixel shows image content from inside the original mask."""
    x, y = decode(image)
    for k, cid in enumerate(ids):
        j = list(orig_ids).index(cid)
        ys, xs = np.nonzero(masks[..., k])
        assert len(ys) > 0
        src_x, src_y = x[ys, xs], y[ys, xs]
        assert orig_masks[src_y, src_x, j].all(), f"instance {cid} misaligned"


@pytest.mark.parametrize("transform", [
    A.HorizontalFlip(p=1), A.VerticalFlip(p=1), A.Transpose(p=1),
    A.Compose([A.RandomRotate90(p=1)], seed=1),
    A.Compose([A.HorizontalFlip(p=1), A.RandomRotate90(p=1)], seed=2),
    A.Crop(x_min=5, y_min=3, x_max=75, y_max=55),
    A.Compose([A.RandomCrop(height=40, width=50, p=1)], seed=3),
])
def test_geometric_transforms_keep_masks_aligned(transform):
    image, (masks, ids) = position_image(), instance_masks()
    out_img, out_masks, out_ids = apply_augmentation(transform, image, masks, ids)
    assert out_masks.dtype == bool and out_ids.dtype == np.int32
    assert out_masks.shape[:2] == out_img.shape[:2] and out_masks.shape[-1] == len(out_ids)
    assert_aligned(out_img, out_masks, masks, out_ids, ids)
    if isinstance(transform, (A.HorizontalFlip, A.VerticalFlip, A.Transpose)):
        np.testing.assert_array_equal(out_masks.sum((0, 1)), masks.sum((0, 1)))


def test_affine_nearest_keeps_masks_aligned():
    aug = A.Compose([A.Affine(scale=(1.1, 1.3), rotate=(-30, 30), translate_percent=0.05,
                              interpolation=cv2.INTER_NEAREST,
                              mask_interpolation=cv2.INTER_NEAREST, p=1)], seed=0)
    image, (masks, ids) = position_image(), instance_masks()
    for _ in range(5):
        out_img, out_masks, out_ids = apply_augmentation(aug, image, masks, ids)
        assert_aligned(out_img, out_masks, masks, out_ids, ids)


def test_vanished_instances_removed_from_masks_and_ids():
    image, (masks, ids) = position_image(), instance_masks()
    ids = np.array([7, 4, 9], np.int32)
    crop = A.Crop(x_min=0, y_min=0, x_max=40, y_max=30)   # only the rectangle survives
    out_img, out_masks, out_ids = apply_augmentation(crop, image, masks, ids)
    assert list(out_ids) == [7] and out_masks.shape == (30, 40, 1)
    np.testing.assert_array_equal(out_masks[..., 0], masks[:30, :40, 0])
    crop = A.Crop(x_min=0, y_min=20, x_max=80, y_max=60)  # the disc and the L survive
    _, out_masks, out_ids = apply_augmentation(crop, image, masks, ids)
    assert list(out_ids) == [4, 9] and out_masks.shape == (40, 80, 2)
    np.testing.assert_array_equal(out_masks, masks[20:, :, 1:])
    _, out_masks, out_ids = apply_augmentation(crop, image, masks, ids, min_area=200)
    assert list(out_ids) == [4]


def test_default_pipelines_keep_masks_on_objects():
    # Bright objects on black: after colour and geometric changes the masks must still
    # cover bright pixels.
    masks, ids = instance_masks()
    image = np.zeros((H, W, 3), np.uint8)
    image[masks.any(-1)] = 200
    for level in ("light", "medium"):
        for upright in (True, False):
            aug = default_augmentation(level, seed=0, upright=upright)
            for _ in range(10):
                out_img, out_masks, out_ids = apply_augmentation(aug, image, masks, ids)
                if out_masks.shape[-1]:
                    inside = out_img[out_masks.any(-1)].mean()
                    outside = out_img[~out_masks.any(-1)].mean()
                    assert inside > outside + 100


def test_seeded_pipelines_are_deterministic():
    image, (masks, ids) = position_image(), instance_masks()

    def run(aug):
        return [apply_augmentation(aug, image, masks, ids) for _ in range(6)]

    a = run(default_augmentation("medium", seed=11, upright=False))
    b = run(default_augmentation("medium", seed=11, upright=False))
    for (ia, ma, ca), (ib, mb, cb) in zip(a, b):
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(ma, mb)
        np.testing.assert_array_equal(ca, cb)
    c = run(default_augmentation("medium", seed=12, upright=False))
    assert any(not np.array_equal(x[0], y[0]) for x, y in zip(a, c))


def test_none_and_level_none_and_no_instances():
    image, (masks, ids) = position_image(), instance_masks()
    assert default_augmentation("none") is None
    out = apply_augmentation(None, image, masks, ids)
    assert out[0] is image and np.array_equal(out[1], masks)
    img, m, c = apply_augmentation(A.Transpose(p=1), image, np.zeros((H, W, 0), bool), [])
    assert img.shape == (W, H, 3) and m.shape == (W, H, 0) and c.shape == (0,)


def test_bad_inputs():
    image, (masks, ids) = position_image(), instance_masks()
    with pytest.raises(AnnotationError, match="masks must be"):
        apply_augmentation(None, image, masks[:10], ids)
    with pytest.raises(AnnotationError, match="masks must be"):
        apply_augmentation(None, image, masks, ids[:2])
    with pytest.raises(ValueError, match="level"):
        default_augmentation("heavy")
    with pytest.raises(TypeError, match="albumentations"):
        apply_augmentation("flip", image, masks, ids)


def test_loader_callable_form_pickles_and_matches():
    import pickle
    image, (masks, ids) = position_image(), instance_masks()
    fn = pickle.loads(pickle.dumps(augmentation_callable(A.Transpose(p=1))))
    img, m, c = fn(image, masks, ids)
    np.testing.assert_array_equal(img, image.transpose(1, 0, 2))
    np.testing.assert_array_equal(m, masks.transpose(1, 0, 2))
    assert augmentation_callable(None)(image, masks, ids)[0] is image
