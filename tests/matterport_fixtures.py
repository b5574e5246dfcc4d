"""Shared pieces of the matterport transcription tests (test_matterport_*.py).

The transcriptions replay matterport's samples with only their imports changed; what a
sample gets from the network (``mask_rcnn_coco.h5``) is made here instead: a file in
matterport's by-name HDF5 layout, written by a model of the samples' tiny architecture
with COCO's 81 classes, so that ``load_weights(..., exclude=[heads])`` has heads of the
wrong shape to skip, as with the real file.
"""
import os

import keras
import numpy as np
import pytest

# The tiny CPU architecture of every transcription's Config (its weight shapes).
ARCH = dict(BACKBONE="resnet18", TOP_DOWN_PYRAMID_SIZE=32, FPN_CLASSIF_FC_LAYERS_SIZE=64)


@pytest.fixture(scope="session")
def coco_weights(tmp_path_factory):
    """(path, conv1 weights) of a stand-in ``mask_rcnn_coco.h5`` (81 classes)."""
    from colabrcnn import Config, MaskRCNN

    class CocoConfig(Config):
        NAME = "coco"
        NUM_CLASSES = 81
        IMAGE_MIN_DIM = 64
        IMAGE_MAX_DIM = 64
        IMAGES_PER_GPU = 1
    for key, value in ARCH.items():
        setattr(CocoConfig, key, value)

    keras.utils.set_random_seed(1)
    folder = tmp_path_factory.mktemp("coco")
    model = MaskRCNN("inference", CocoConfig(), str(folder))
    path = os.path.join(str(folder), "mask_rcnn_coco.h5")
    model.save_weights(path)
    conv1 = [np.array(w) for w in find_layer(model.keras_model, "conv1").get_weights()]
    return path, conv1


def find_layer(keras_model, name):
    """A layer by name anywhere in a (nested) Keras model, or None."""
    for layer in keras_model.layers:
        if layer.name == name:
            return layer
        if hasattr(layer, "layers"):
            found = find_layer(layer, name)
            if found is not None:
                return found
    return None
