"""Config: matterport's names and defaults, derived values, validation, helpers."""
import json

import numpy as np
import pytest

from colabrcnn import Config, ConfigError


# Not tests/tiny_model.py's config: subclassing Config as matterport's shapes notebook
# does, with every other setting at its default, is what these tests check.
class ShapesConfig(Config):
    NAME = "shapes"
    NUM_CLASSES = 1 + 3
    IMAGE_MIN_DIM = 128
    IMAGE_MAX_DIM = 128


def test_defaults_match_matterport():
    c = Config(NUM_CLASSES=2)
    assert c.BACKBONE == "resnet101"
    assert c.IMAGES_PER_GPU == 2 and c.GPU_COUNT == 1
    assert c.IMAGE_MIN_DIM == 800 and c.IMAGE_MAX_DIM == 1024
    assert c.IMAGE_RESIZE_MODE == "square"
    assert c.RPN_ANCHOR_SCALES == (32, 64, 128, 256, 512)
    assert c.RPN_ANCHOR_RATIOS == [0.5, 1, 2]
    assert c.BACKBONE_STRIDES == [4, 8, 16, 32, 64]
    assert c.TRAIN_ROIS_PER_IMAGE == 200 and c.ROI_POSITIVE_RATIO == 0.33
    assert c.POST_NMS_ROIS_TRAINING == 2000 and c.POST_NMS_ROIS_INFERENCE == 1000
    assert c.MASK_SHAPE == [28, 28] and c.MASK_POOL_SIZE == 14 and c.POOL_SIZE == 7
    assert c.MAX_GT_INSTANCES == 100 and c.DETECTION_MAX_INSTANCES == 100
    assert c.DETECTION_MIN_CONFIDENCE == 0.7 and c.DETECTION_NMS_THRESHOLD == 0.3
    assert c.LEARNING_RATE == 0.001 and c.LEARNING_MOMENTUM == 0.9
    assert c.WEIGHT_DECAY == 0.0001
    assert c.USE_MINI_MASK and tuple(c.MINI_MASK_SHAPE) == (56, 56)
    np.testing.assert_allclose(c.MEAN_PIXEL, [123.7, 116.8, 103.9], rtol=1e-6)
    np.testing.assert_allclose(c.BBOX_STD_DEV, [0.1, 0.1, 0.2, 0.2], rtol=1e-6)
    assert c.MEAN_PIXEL.dtype == np.float32


def test_default_num_classes_is_rejected_like_an_unconfigured_model():
    # matterport's default NUM_CLASSES = 1 (background only) cannot train anything.
    with pytest.raises(ConfigError, match="NUM_CLASSES"):
        Config()


def test_derived_values_square():
    c = Config(NUM_CLASSES=5, IMAGES_PER_GPU=3, GPU_COUNT=2, IMAGE_MIN_DIM=512,
               IMAGE_MAX_DIM=640)
    assert c.BATCH_SIZE == 6
    assert list(c.IMAGE_SHAPE) == [640, 640, 3]
    assert c.IMAGE_META_SIZE == 1 + 3 + 3 + 4 + 1 + 5


def test_derived_values_crop_uses_min_dim():
    c = Config(NUM_CLASSES=2, IMAGE_RESIZE_MODE="crop", IMAGE_MIN_DIM=256,
               IMAGE_MAX_DIM=1024)
    assert list(c.IMAGE_SHAPE) == [256, 256, 3]


def test_subclass_like_matterport():
    c = ShapesConfig()
    assert c.NAME == "shapes" and c.NUM_CLASSES == 4
    assert list(c.IMAGE_SHAPE) == [128, 128, 3]
    assert c.IMAGE_META_SIZE == 12 + 4
    # Untouched settings keep the base defaults.
    assert c.BACKBONE == "resnet101"


def test_keyword_overrides_and_subclass_overrides_combine():
    c = ShapesConfig(IMAGES_PER_GPU=8, BACKBONE="resnet50")
    assert c.IMAGES_PER_GPU == 8 and c.BATCH_SIZE == 8 and c.BACKBONE == "resnet50"
    assert c.NUM_CLASSES == 4
    assert Config.IMAGES_PER_GPU == 2  # the class default is untouched


def test_image_max_dim_not_divisible_by_64_suggests_neighbours():
    with pytest.raises(ConfigError) as info:
        Config(NUM_CLASSES=2, IMAGE_MIN_DIM=500, IMAGE_MAX_DIM=1000)
    msg = str(info.value)
    assert "IMAGE_MAX_DIM" in msg and "64" in msg
    assert "960" in msg and "1024" in msg


def test_num_classes_below_two():
    with pytest.raises(ConfigError, match="background"):
        Config(NUM_CLASSES=1)


def test_unknown_backbone():
    with pytest.raises(ConfigError, match="resnet50"):
        Config(NUM_CLASSES=2, BACKBONE="vgg16")


def test_callable_backbone_needs_shape_function():
    with pytest.raises(ConfigError, match="COMPUTE_BACKBONE_SHAPE"):
        Config(NUM_CLASSES=2, BACKBONE=lambda image, config: None)


def test_unknown_resize_mode():
    with pytest.raises(ConfigError, match="IMAGE_RESIZE_MODE"):
        Config(NUM_CLASSES=2, IMAGE_RESIZE_MODE="stretch")


def test_unknown_keyword():
    with pytest.raises(ConfigError, match="IMAGE_SIZE"):
        Config(NUM_CLASSES=2, IMAGE_SIZE=512)
    with pytest.raises(ConfigError, match="Unknown"):
        Config(NUM_CLASSES=2, images_per_gpu=1)  # settings are upper case


def test_mask_shape_must_be_twice_pool_size():
    with pytest.raises(ConfigError, match="MASK_SHAPE"):
        Config(NUM_CLASSES=2, MASK_POOL_SIZE=14, MASK_SHAPE=[56, 56])
    c = Config(NUM_CLASSES=2, MASK_POOL_SIZE=28, MASK_SHAPE=[56, 56])
    assert c.MASK_SHAPE == [56, 56]


def test_train_rois_cannot_exceed_post_nms_rois():
    with pytest.raises(ConfigError, match="TRAIN_ROIS_PER_IMAGE"):
        Config(NUM_CLASSES=2, TRAIN_ROIS_PER_IMAGE=300, POST_NMS_ROIS_TRAINING=200)


def test_config_errors_are_value_errors():
    # Users who catch ValueError (as with matterport) still catch config mistakes.
    with pytest.raises(ValueError):
        Config(NUM_CLASSES=0)


def test_instances_do_not_share_mutable_defaults():
    a = ShapesConfig()
    b = ShapesConfig()
    a.RPN_ANCHOR_RATIOS.append(4)
    a.LOSS_WEIGHTS["mrcnn_mask_loss"] = 5.0
    a.MEAN_PIXEL[0] = 0.0
    a.MASK_SHAPE[0] = 1
    assert b.RPN_ANCHOR_RATIOS == [0.5, 1, 2]
    assert b.LOSS_WEIGHTS["mrcnn_mask_loss"] == 1.0
    assert b.MEAN_PIXEL[0] == pytest.approx(123.7)
    assert b.MASK_SHAPE == [28, 28]
    assert Config.RPN_ANCHOR_RATIOS == [0.5, 1, 2]
    assert Config.LOSS_WEIGHTS["mrcnn_mask_loss"] == 1.0


def test_display_prints_every_setting(capsys):
    ShapesConfig().display()
    out = capsys.readouterr().out
    assert "Configurations:" in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()
             and line.split()[0].isupper()}
    assert "shapes" in lines["NAME"]
    assert lines["NUM_CLASSES"].split()[-1] == "4"
    assert "BATCH_SIZE" in lines and "IMAGE_SHAPE" in lines
    assert "[128, 128, 3]" in lines["IMAGE_SHAPE"]


def test_to_dict_is_json_serialisable_and_complete():
    c = ShapesConfig()
    d = c.to_dict()
    round_trip = json.loads(json.dumps(d))
    assert round_trip["NAME"] == "shapes"
    assert round_trip["IMAGE_SHAPE"] == [128, 128, 3]
    assert round_trip["BATCH_SIZE"] == 2
    assert round_trip["RPN_ANCHOR_SCALES"] == [32, 64, 128, 256, 512]
    assert round_trip["MEAN_PIXEL"] == pytest.approx([123.7, 116.8, 103.9], rel=1e-6)
    assert json.loads(c.to_json()) == round_trip


def test_copy_with_overrides_revalidates_and_keeps_class():
    c = ShapesConfig(IMAGES_PER_GPU=4)
    d = c.copy(IMAGE_MAX_DIM=256, IMAGE_MIN_DIM=256)
    assert type(d) is ShapesConfig
    assert list(d.IMAGE_SHAPE) == [256, 256, 3]
    assert d.IMAGES_PER_GPU == 4 and d.BATCH_SIZE == 4  # earlier overrides carried
    assert list(c.IMAGE_SHAPE) == [128, 128, 3]        # original untouched
    d.RPN_ANCHOR_RATIOS.append(8)
    assert c.RPN_ANCHOR_RATIOS == [0.5, 1, 2]           # no shared lists
    with pytest.raises(ConfigError):
        c.copy(IMAGE_MAX_DIM=100)
    with pytest.raises(ConfigError):
        c.copy(NOT_A_SETTING=1)


@pytest.mark.parametrize("name,value,says", [
    ("LEARNING_MOMENTUM", "0.9", "write LEARNING_MOMENTUM = 0.9 (without quotes"),
    ("LEARNING_MOMENTUM", 1.5, "in [0, 1)"),
    ("LEARNING_MOMENTUM", float("nan"), "in [0, 1)"),
    ("WEIGHT_DECAY", -0.001, ">= 0"),
    ("WEIGHT_DECAY", "1e-4", "write WEIGHT_DECAY = 1e-4"),
    ("LEARNING_RATE", 0, "> 0"),
    ("LEARNING_RATE", "0.001", "write LEARNING_RATE = 0.001"),
    ("GRADIENT_CLIP_NORM", "none", "write GRADIENT_CLIP_NORM = None"),
    ("GRADIENT_CLIP_NORM", "None", "write GRADIENT_CLIP_NORM = None"),
    ("CHECKPOINT_EVERY_MINUTES", "none", "write CHECKPOINT_EVERY_MINUTES = None"),
    ("CHECKPOINT_EVERY_MINUTES", 0, "> 0 or None"),
    ("BACKBONE_STRIDES", [4, 8, 16, 32], "list of 5 whole numbers"),
    ("BACKBONE_STRIDES", [4, 8, "16", 32, 64], "BACKBONE_STRIDES[2]"),
    ("BACKBONE_STRIDES", [4, 8, 0, 32, 64], "BACKBONE_STRIDES[2]"),
    ("BACKBONE_STRIDES", [64, 32, 16, 8, 4], "grow from P2 to P6"),
    ("BACKBONE_STRIDES", "4,8,16,32,64", "list of 5"),
    ("LR_STEP_EPOCHS", 10, "list of whole numbers"),
    ("LR_STEP_EPOCHS", [10, "20"], "LR_STEP_EPOCHS[1]"),
    ("LR_STEP_EPOCHS", [20, 10], "increasing order"),
    ("LR_STEP_EPOCHS", [0], "LR_STEP_EPOCHS[0]"),
    ("LR_STEP_FACTOR", 0, "> 0"),
    ("IMAGES_PER_GPU", "2", "write IMAGES_PER_GPU = 2"),
    ("IMAGES_PER_GPU", 2.0, "positive integer"),
    ("IMAGES_PER_GPU", True, "positive integer"),
    ("STEPS_PER_EPOCH", 0, "positive integer"),
    ("DETECTION_MIN_CONFIDENCE", "0.7", "write DETECTION_MIN_CONFIDENCE = 0.7"),
    ("DETECTION_MIN_CONFIDENCE", 1, "in [0, 1)"),
    ("RPN_NMS_THRESHOLD", 0, "in (0, 1]"),
    ("ROI_POSITIVE_RATIO", 1.2, "in (0, 1]"),
    ("USE_MINI_MASK", "False", "write USE_MINI_MASK = False"),
    ("USE_MINI_MASK", 1, "one of True, False"),
    ("TRAIN_BN", "yes", "TRAIN_BN must be one of"),
    ("LR_SCHEDULE", "linear", "'constant', 'step', 'cosine'"),
    ("LR_WARMUP_STEPS", -1, "integer >= 0"),
    ("MEAN_PIXEL", "123.7", "MEAN_PIXEL must be a list of numbers"),
    ("MEAN_PIXEL", [123.7, 116.8], "IMAGE_CHANNEL_COUNT"),
    ("MEAN_PIXEL", [123.7, 116.8, 300], "MEAN_PIXEL[2]"),
    ("BBOX_STD_DEV", [0.1, 0.1, 0.2], "list of 4 numbers"),
    ("RPN_BBOX_STD_DEV", [0.1, 0.1, 0.2, -0.2], "RPN_BBOX_STD_DEV[3]"),
    ("RPN_ANCHOR_SCALES", (32, 64, 128, 256, "512"), "RPN_ANCHOR_SCALES[4]"),
    ("RPN_ANCHOR_RATIOS", [], "RPN_ANCHOR_RATIOS must be a list"),
    ("MINI_MASK_SHAPE", (56.5, 56), "MINI_MASK_SHAPE[0]"),
    ("IMAGE_MIN_SCALE", "2", "write IMAGE_MIN_SCALE = 2"),
    ("IMAGE_MIN_DIM", "800", "write IMAGE_MIN_DIM = 800"),
    ("GPU_COUNT", 0, "or 'auto'"),
    ("NAME", 3, "NAME must be text"),
    ("LOSS_WEIGHTS", {"mrcnn_mask_loss": "2"}, "LOSS_WEIGHTS['mrcnn_mask_loss']"),
    ("MIXED_PRECISION", "fp16", "MIXED_PRECISION must be one of"),
])
def test_every_setting_is_type_and_range_checked(name, value, says):
    with pytest.raises(ConfigError) as info:
        Config(NUM_CLASSES=2, **{name: value})
    assert name.split("[")[0] in str(info.value) and says in str(info.value), str(info.value)


def test_numpy_and_tuple_values_pass():
    c = Config(NUM_CLASSES=2, BACKBONE_STRIDES=np.array([4, 8, 16, 32, 64]),
               LEARNING_MOMENTUM=np.float32(0.9), IMAGES_PER_GPU=np.int64(1),
               LR_STEP_EPOCHS=(5, 10), GRADIENT_CLIP_NORM=None, TRAIN_BN=None,
               MINI_MASK_SHAPE=[28, 28], MEAN_PIXEL=(1.0, 2.0, 3.0))
    assert c.BATCH_SIZE == 1
