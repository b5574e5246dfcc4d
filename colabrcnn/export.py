"""Export a trained model for inference elsewhere, and load it back.

    from colabrcnn import export
    export.export_keras(model, "balloon.keras")          # + balloon.config.json beside it
    loaded = export.load_exported("balloon.keras")        # .detect() like a MaskRCNN
    export.export_saved_model(model, "balloon_savedmodel") # TensorFlow backend only

The ``.keras`` file holds the inference graph (input ``input_image`` [B, H, W, 3] molded
and ``input_image_meta`` [B, META]; outputs ``detections``, ``mrcnn_mask``, ...) with its
weights. Every colabrcnn layer is registered with Keras (package "colabrcnn") and the
graph has no Lambda layer, so it loads with ``keras.saving.load_model(path)`` in safe
mode once ``colabrcnn.export`` (or ``colabrcnn.model.maskrcnn``) is imported. Molding
(resize, pad, meta) and unmolding (boxes and masks back to the original image) stay in
Python: :func:`load_exported` wraps the graph so ``detect`` does both, given the Config
(stored as JSON next to the file by :func:`export_keras`).
"""
from __future__ import annotations

import os

import keras

from .checkpoint import config_from_json, load_inference
from .config import Config
from .distribute import DeviceSetup
from .errors import ConfigError
from .model.maskrcnn import MaskRCNN

__all__ = ["export_keras", "load_exported", "load_inference_model", "export_saved_model",
           "config_from_json",
           "config_path_for", "ExportedModel"]


def config_path_for(path):
    """Where export_keras writes the Config: ``model.keras`` -> ``model.config.json``."""
    base = os.fspath(path)
    if base.endswith(".keras"):
        base = base[:-len(".keras")]
    return base + ".config.json"


def _keras_model(model):
    if isinstance(model, MaskRCNN):
        return model.graph("inference")
    import keras
    if isinstance(model, keras.Model):
        return model
    raise TypeError(f"expected a MaskRCNN or a keras.Model, got {type(model).__name__}")


def export_keras(model, path, save_config=True):
    """Save the inference graph of ``model`` (a MaskRCNN, any mode) as a ``.keras`` file.

    With ``save_config`` (and a MaskRCNN) the Config goes to ``config_path_for(path)``.
    Returns the path.
    """
    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise ValueError(f"the file name must end with .keras (Keras' format), got {path}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    _keras_model(model).save(path)
    if save_config and isinstance(model, MaskRCNN):
        with open(config_path_for(path), "w") as f:
            f.write(model.config.to_json())
    return path


class ExportedModel(MaskRCNN):
    """A loaded inference graph with MaskRCNN's ``detect``, ``mold_inputs``,
    ``unmold_detections`` and ``predict_folder``/``predict_video`` (no training)."""

    def __init__(self, keras_model, config, model_dir=None):
        self.mode = "inference"
        self.config = config
        self.model_dir = model_dir
        self.run_name = (config.NAME or "model").lower()
        self.dtype_policy = None
        self.epoch = 0
        self.log_dir = None
        self.checkpoint_path = None
        self.keras_model = keras_model
        self._graphs = {"inference": keras_model}
        self._optimizer_state = None
        # A loaded graph runs on one device (it was not built under a distribution).
        self.distribution = DeviceSetup(keras.backend.backend(), "single", 1)
        want = tuple(int(v) for v in self._image_shape("inference"))
        inputs = {t.name.split(":")[0]: t for t in keras_model.inputs}
        image = inputs.get("input_image", keras_model.inputs[0])
        got = tuple(image.shape[1:])
        if got != want:
            raise ConfigError(f"the exported model takes images of shape {got} but the "
                              f"Config gives {want}: load it with the Config it was "
                              f"exported with (IMAGE_MIN_DIM/IMAGE_MAX_DIM/"
                              f"IMAGE_RESIZE_MODE)")
        meta = inputs.get("input_image_meta")
        if meta is not None and meta.shape[-1] != config.IMAGE_META_SIZE:
            raise ConfigError(f"the exported model has image_meta size {meta.shape[-1]} "
                              f"but the Config gives {config.IMAGE_META_SIZE}: NUM_CLASSES "
                              f"differs from the exported model's")

    def train(self, *args, **kwargs):
        raise ConfigError("an exported model is for inference; train a MaskRCNN and "
                          "export it again")


def load_exported(path, config=None, model_dir=None):
    """Load a ``.keras`` export (safe mode) and wrap it so that ``.detect()`` works.

    config: the Config it was exported with (a Config, or anything
    :func:`config_from_json` reads); default: the ``.config.json`` written beside it.
    """
    import keras
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ConfigError(f"exported model not found: {path}")
    if config is None:
        sidecar = config_path_for(path)
        if not os.path.exists(sidecar):
            raise ConfigError(f"no Config given and no {os.path.basename(sidecar)} next to "
                              f"{path}; pass config=... (a Config or its JSON)")
        config = config_from_json(sidecar)
    elif not isinstance(config, Config):
        config = config_from_json(config)
    keras_model = keras.saving.load_model(path, compile=False, safe_mode=True)
    return ExportedModel(keras_model, config,
                         model_dir or os.path.dirname(os.path.abspath(path)))


def load_inference_model(weights, config=None, model_dir=None):
    """An inference model from a weights file: a ``.keras`` export or an ``.h5``
    checkpoint / matterport file. The config is optional where the file has one beside
    it (see :func:`colabrcnn.checkpoint.load_inference`, which this calls)."""
    return load_inference(weights, config, model_dir)


def export_saved_model(model, export_dir, verbose=False):
    """TensorFlow backend: write a SavedModel of the inference graph (for TF Serving,
    TFLite converters, ``tf.saved_model.load``). Its ``serve`` function takes
    ``[molded_images float32 [B, H, W, 3], image_metas float32 [B, META]]`` and returns
    the output dict. Returns ``export_dir``."""
    import keras
    if keras.backend.backend() != "tensorflow":
        raise ConfigError("export_saved_model needs the TensorFlow backend "
                          f"(KERAS_BACKEND=tensorflow); this process uses "
                          f"{keras.backend.backend()}. export_keras works on every backend.")
    export_dir = os.fspath(export_dir)
    _keras_model(model).export(export_dir, format="tf_saved_model", verbose=verbose)
    if isinstance(model, MaskRCNN):
        with open(os.path.join(export_dir, "colabrcnn_config.json"), "w") as f:
            f.write(model.config.to_json())
    return export_dir
