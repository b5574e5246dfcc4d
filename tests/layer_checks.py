"""Checks shared by the per-stage model tests (KerasHub style)."""
import keras
import numpy as np
from keras import ops


def to_numpy(x):
    return np.asarray(ops.convert_to_numpy(x))


def round_trip(layer):
    """A copy of ``layer`` rebuilt from its serialised config (registered name included)."""
    copy = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(copy) is type(layer)
    assert copy.get_config() == layer.get_config()
    return copy


def weight_count(layers):
    return int(sum(np.prod(w.shape) for layer in layers for w in layer.weights))
