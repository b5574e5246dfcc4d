"""A tiny untrained Mask R-CNN for tests of inference tooling (predict, export).

Untrained weights with DETECTION_MIN_CONFIDENCE = 0 still give detections (random but
deterministic for a seed), which is all that file writing and exporting need.
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


def tiny_model(model_dir, seed=0, **overrides):
    keras.utils.set_random_seed(seed)
    return MaskRCNN("inference", TinyConfig(**overrides), str(model_dir))
