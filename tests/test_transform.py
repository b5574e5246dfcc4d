"""Image molding (model/transform.py): resize modes, mini-masks, meta, mold/unmold."""
import cv2
import numpy as np
import pytest

from colabrcnn import utils
from colabrcnn.model import transform
from tiny_model import tiny_config


@pytest.mark.parametrize("mode", ["square", "pad64", "none"])
def test_resize_modes_keep_shapes_static_and_windows_right(mode):
    cfg = tiny_config(128, IMAGE_RESIZE_MODE=mode, IMAGE_MIN_DIM=64)
    image = np.zeros((50, 100, 3), np.uint8)
    image[10:20, 30:60] = 255
    out, window, scale, padding, crop = utils.resize_image(
        image, cfg.IMAGE_MIN_DIM, cfg.IMAGE_MAX_DIM, mode=mode)
    out = utils.pad_to_shape(out, cfg.IMAGE_SHAPE)
    assert out.shape == (128, 128, 3)
    y1, x1, y2, x2 = window
    assert (y2 - y1, x2 - x1) == (round(50 * scale), round(100 * scale))
    mask = utils.resize_mask(np.pad(image[..., :1] > 0, ((0, 0), (0, 0), (0, 0))), scale,
                             padding)
    mask = utils.pad_to_shape(mask, cfg.IMAGE_SHAPE)
    # Mask (nearest) and image (bilinear) agree except on the edge pixels.
    assert (mask[..., 0] != (out[..., 0] > 127)).mean() < 0.002
    assert mask[..., 0].sum() > 0 and not mask[:y1].any() and not mask[y2:].any()
    assert not mask[:, :x1].any() and not mask[:, x2:].any()


def test_crop_mode_crops_to_min_dim():
    cfg = tiny_config(128, IMAGE_RESIZE_MODE="crop", IMAGE_MIN_DIM=64)
    assert list(cfg.IMAGE_SHAPE) == [64, 64, 3]
    image = np.arange(200 * 150 * 3, dtype=np.uint32).reshape(200, 150, 3).astype(np.uint8)
    out, window, scale, padding, crop = utils.resize_image(
        image, 64, 128, mode="crop", rng=np.random.default_rng(0))
    assert out.shape == (64, 64, 3)
    y, x, h, w = crop
    np.testing.assert_array_equal(out, image[y:y + 64, x:x + 64])


def test_mini_mask_round_trip():
    mask = np.zeros((64, 64, 1), bool)
    mask[10:40, 20:50, 0] = True
    mask[20:30, 30:40, 0] = False
    bbox = utils.extract_bboxes(mask)
    np.testing.assert_array_equal(bbox, [[10, 20, 40, 50]])
    mini = utils.minimize_mask(bbox, mask, (56, 56))
    back = utils.expand_mask(bbox, mini, mask.shape)
    assert (back == mask).mean() > 0.99


def test_mold_inputs_then_unmold_detections_maps_back_to_the_original_image():
    cfg = tiny_config(64)
    image = np.full((50, 100, 3), 7, np.uint8)
    molded, metas, windows = transform.mold_inputs([image], cfg)
    assert molded.shape == (1, 64, 64, 3) and molded.dtype == np.float32
    np.testing.assert_allclose(molded[0, 20, 5], 7 - np.asarray(cfg.MEAN_PIXEL), rtol=1e-6)
    np.testing.assert_array_equal(windows[0], [16, 0, 48, 64])  # 0.64 x: 32 x 64, centred
    meta = utils.parse_image_meta(metas)
    np.testing.assert_array_equal(meta["original_image_shape"][0], [50, 100, 3])
    np.testing.assert_array_equal(meta["window"][0], [16, 0, 48, 64])
    assert meta["scale"][0] == pytest.approx(0.64)
    assert metas.shape == (1, cfg.IMAGE_META_SIZE)

    # A detection of the original box (10, 20, 30, 60), as the network reports it:
    # normalized coordinates of the molded image, zero-padded rows after it.
    box = np.array([10, 20, 30, 60]) * 0.64 + [16, 0, 16, 0]
    det = np.zeros((cfg.DETECTION_MAX_INSTANCES, 6), np.float32)
    det[0, :4] = utils.norm_boxes(box[None], (64, 64))[0]
    det[0, 4:] = [2, 0.9]
    masks = np.zeros((cfg.DETECTION_MAX_INSTANCES, 28, 28, cfg.NUM_CLASSES), np.float32)
    masks[0, :, :, 2] = 1.0  # the class-2 mask fills its box; other classes' are empty
    rois, class_ids, scores, full = transform.unmold_detections(
        det, masks, image.shape, molded[0].shape, windows[0])
    np.testing.assert_allclose(rois, [[10, 20, 30, 60]], atol=1)
    np.testing.assert_array_equal(class_ids, [2])
    np.testing.assert_allclose(scores, [0.9])
    assert full.shape == (50, 100, 1)
    y1, x1, y2, x2 = rois[0]
    assert full[y1:y2, x1:x2, 0].all() and full.sum() == (y2 - y1) * (x2 - x1)


def test_unmold_image_inverts_mold_image():
    cfg = tiny_config(64)
    image = np.random.default_rng(0).integers(0, 256, (8, 8, 3)).astype(np.uint8)
    np.testing.assert_array_equal(utils.unmold_image(utils.mold_image(image, cfg), cfg),
                                  image)


def test_torchvision_scale_rule_shrinks_to_min_dim_and_floors_sizes():
    # torchvision: the short side to min_size unless the long side passes max_size;
    # matterport's square mode never shrinks below the original for min_dim.
    assert transform.resize_scale((1000, 1200), 800, 1333, style="torchvision") == 0.8
    assert transform.resize_scale((1000, 1200), 800, 1333) == 1.0
    assert transform.resize_scale((400, 1200), 800, 1333, style="torchvision") \
        == pytest.approx(1333 / 1200)
    # Sizes floored as torch's interpolate(scale_factor, recompute_scale_factor=True).
    assert transform.scaled_size((335, 501), 0.5, "torchvision") == (167, 250)
    assert transform.scaled_size((335, 501), 0.5) == (168, 250)
    # pad64 / none: matterport's rule in both styles.
    assert transform.resize_scale((200, 300), 64, 128, mode="pad64",
                                  style="torchvision") == 1.0
    # pad64: padded to multiples of 64 below and to the right (matterport: centred).
    padding, _, window = transform.placement((50, 100, 3), 64, 128, "pad64",
                                             style="torchvision")
    assert padding[:2] == [(0, 14), (0, 28)] and window == (0, 0, 50, 100)
    assert transform.placement((50, 100, 3), 64, 128, "pad64")[2] == (7, 14, 57, 114)


def test_torchvision_style_places_top_left_and_unmolds_to_the_original_pixels():
    std = [58.395, 57.12, 57.375]
    cfg = tiny_config(128, IMAGE_MIN_DIM=64, DETECTOR_STYLE="torchvision", PIXEL_STD=std)
    image = np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    molded, metas, windows = transform.mold_inputs([image], cfg)
    # Scale 64 / 200 = 0.32: 64 x 96 at the top-left of 128 x 128 (matterport: 85 x 128,
    # centred), the padding 0 after molding (torchvision's mean-colour padding).
    np.testing.assert_array_equal(windows[0], [0, 0, 64, 96])
    meta = utils.parse_image_meta(metas)
    np.testing.assert_array_equal(meta["window"][0], [0, 0, 64, 96])
    assert meta["scale"][0] == pytest.approx(0.32)
    resized = transform.mold_image(cv2.resize(image, (96, 64), interpolation=cv2.INTER_LINEAR),
                                   cfg)
    np.testing.assert_array_equal(molded[0, :64, :96], resized)
    assert not molded[0, 64:].any() and not molded[0, :, 96:].any()
    _, mp_windows = transform.mold_inputs([image], tiny_config(128, IMAGE_MIN_DIM=64))[1:]
    np.testing.assert_array_equal(mp_windows[0], [21, 0, 106, 128])  # matterport: as before

    # A detection of the original box (40, 60, 120, 210) as the network reports it.
    box = np.array([40, 60, 120, 210], np.float64)
    det = np.zeros((cfg.DETECTION_MAX_INSTANCES, 6), np.float32)
    det[0, :4] = box * 0.32 / 128
    det[0, 4:] = [2, 0.9]
    masks = np.zeros((cfg.DETECTION_MAX_INSTANCES, 28, 28, cfg.NUM_CLASSES), np.float32)
    masks[0, :, :, 2] = 1.0
    rois, class_ids, scores, full = transform.unmold_detections(
        det, masks, image.shape, molded[0].shape, windows[0], style="torchvision")
    np.testing.assert_allclose(rois, [box], atol=1e-3)
    np.testing.assert_array_equal(class_ids, [2])
    assert full.shape == (200, 300, 1)
    # The pasted mask fills the box (torchvision grows it by 1/28 for its 1-px border).
    assert full[42:118, 62:208, 0].all()
    assert not full[:36].any() and not full[124:].any()
    assert not full[:, :55].any() and not full[:, 215:].any()
