"""The one tiny Mask R-CNN configuration of the tests, and helpers around it.

``TinyConfig`` is the demo's ShapesConfig (ResNet-18, 4 classes, small anchors) cut down
to 64 x 64 images and narrow heads. ``tiny_config(size)`` gives it at another square
image size; ``tiny_model`` an untrained model, whose weights with
DETECTION_MIN_CONFIDENCE = 0 still give detections (random but deterministic for a
seed), which is all that file writing and exporting need.
"""
import keras

from colabrcnn import MaskRCNN
from colabrcnn.demo import ShapesConfig

CLASS_NAMES = ["BG", "square", "circle", "triangle"]


class TinyConfig(ShapesConfig):
    NAME = "tiny"
    IMAGE_MIN_DIM = 64
    IMAGE_MAX_DIM = 64
    IMAGES_PER_GPU = 2
    PRE_NMS_LIMIT = 300
    POST_NMS_ROIS_TRAINING = 64
    POST_NMS_ROIS_INFERENCE = 32
    TOP_DOWN_PYRAMID_SIZE = 16
    FPN_CLASSIF_FC_LAYERS_SIZE = 32
    DETECTION_MIN_CONFIDENCE = 0.0
    DETECTION_MAX_INSTANCES = 6


def tiny_config(size=64, **overrides):
    """TinyConfig at ``size`` x ``size`` images, with Config attributes overridden."""
    return TinyConfig(**{"IMAGE_MIN_DIM": size, "IMAGE_MAX_DIM": size, **overrides})


def tiny_model(model_dir, seed=0, mode="inference", **overrides):
    keras.utils.set_random_seed(seed)
    return MaskRCNN(mode, TinyConfig(**overrides), str(model_dir))
