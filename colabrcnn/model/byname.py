"""Keras models whose ``save_weights`` / ``load_weights`` speak matterport's by-name
HDF5 layout.

matterport's notebooks call ``model.keras_model.save_weights("mask_rcnn_x.h5")`` and
load such files by layer name. Keras 3 refuses a path that does not end in
``.weights.h5`` and stores layers by position. The graphs of MaskRCNN use
:class:`ByNameModel`, so that any ``.h5`` path (``.weights.h5`` included) is written in
the by-name layout ``MaskRCNN.save_weights`` writes, and read back by name; a Keras 3
positional ``.weights.h5`` file still loads, by position, into the model that wrote it.
"""
from __future__ import annotations

import os

import keras

from ..errors import WeightsError

H5_SUFFIXES = (".h5", ".hdf5")


@keras.saving.register_keras_serializable(package="colabrcnn")
class ByNameModel(keras.Model):
    """A functional Keras model with by-name HDF5 weight files (module docstring)."""

    def save_weights(self, filepath, overwrite=True, **kwargs):
        """Write the weights by layer name (matterport's layout) to an ``.h5`` path."""
        from .. import weights  # the weights package imports h5py and more: keep lazy
        if not str(filepath).endswith(H5_SUFFIXES):
            return super().save_weights(filepath, overwrite=overwrite, **kwargs)
        if not overwrite and os.path.exists(filepath):
            raise FileExistsError(f"{filepath} exists; pass overwrite=True to replace it")
        return weights.save_weights(self, filepath)

    def load_weights(self, filepath, skip_mismatch=False, by_name=True, exclude=None,
                     **kwargs):
        """Read weights by layer name from an ``.h5`` file of any layout colabrcnn
        knows; a Keras 3 positional ``.weights.h5`` loads by position (Keras)."""
        from .. import weights  # as above
        if not str(filepath).endswith(H5_SUFFIXES):
            return super().load_weights(filepath, skip_mismatch=skip_mismatch, **kwargs)
        try:
            return weights.load_weights(self, filepath, by_name=by_name, exclude=exclude,
                                        on_mismatch="skip" if skip_mismatch else "raise")
        except WeightsError:
            if not is_keras3_positional(filepath):
                raise
        return super().load_weights(filepath, skip_mismatch=skip_mismatch, **kwargs)


def is_keras3_positional(path):
    """True for a Keras 3 ``.weights.h5`` file (layers stored by position)."""
    import h5py
    try:
        with h5py.File(path, "r") as f:
            return "layer_names" not in f.attrs and "model_weights" not in f \
                and "layers" in f and hasattr(f["layers"], "keys")
    except OSError:
        return False
