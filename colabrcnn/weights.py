"""Weights by layer name, in the Keras-2 HDF5 layout that matterport's files use.

Our checkpoints are written in that same layout (a group per layer name, attribute
``weight_names`` giving the order), so one reader serves ``mask_rcnn_coco.h5`` and our
own files, and a model trained in "training" mode loads into an "inference" model.
Layout facts: ../shared/reference/matterport-h5-layout.md.
"""
from __future__ import annotations

import os
import re
from collections import OrderedDict

import numpy as np

from .errors import WeightsError

# Sub-models stored as one group (their weights in order), as matterport's rpn_model.
UNIT_MODELS = ("rpn_model",)

# Class-count-specific layers: exclude them to fine-tune on a new NUM_CLASSES.
HEADS = ["mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_bbox", "mrcnn_mask"]


def named_layers(model):
    """Layers that own weights, by name: nested models are flattened, except UNIT_MODELS."""
    out = OrderedDict()

    def visit(layer):
        sub = getattr(layer, "layers", None)
        if sub is not None and layer.name not in UNIT_MODELS and layer is not None:
            for s in sub:
                visit(s)
            return
        if layer.weights:
            if layer.name in out and out[layer.name] is not layer:
                raise WeightsError(f"two different layers are named '{layer.name}'")
            out[layer.name] = layer

    for layer in model.layers:
        visit(layer)
    return out


def _decode(values):
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def save_weights(model, path):
    """Write every named layer's weights to ``path`` (HDF5), atomically."""
    import h5py
    import keras

    layers = named_layers(model)
    tmp = f"{path}.tmp{os.getpid()}"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with h5py.File(tmp, "w") as f:
        f.attrs["layer_names"] = [n.encode("utf8") for n in layers]
        f.attrs["backend"] = keras.backend.backend().encode("utf8")
        f.attrs["keras_version"] = keras.__version__.encode("utf8")
        for name, layer in layers.items():
            g = f.create_group(name)
            names = []
            for i, w in enumerate(layer.weights):
                wname = f"{name}/{w.path.split('/')[-1]}_{i}:0"
                names.append(wname.encode("utf8"))
                g.create_dataset(wname, data=np.asarray(keras.ops.convert_to_numpy(w)))
            g.attrs["weight_names"] = names
    os.replace(tmp, path)
    return path


def load_weights(model, path, by_name=True, exclude=None, verbose=0):
    """Assign weights from an HDF5 file to the model's layers with the same names.

    exclude: layer names or regular expressions (full match) to leave untouched.
    Returns a report dict: loaded, skipped (excluded), missing (in the model, not in
    the file), unused (in the file, not in the model).
    """
    import h5py

    if not os.path.exists(path):
        raise WeightsError(f"weights file not found: {path}")
    patterns = [re.compile(p) for p in (exclude or [])]

    def excluded(name):
        return any(p.fullmatch(name) for p in patterns)

    layers = named_layers(model)
    report = {"loaded": [], "skipped": [], "missing": [], "unused": []}
    pending = []  # assign only once every layer has been checked: all or nothing
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise WeightsError(f"cannot open weights file {path} ({e}); is the download "
                           f"complete?") from None
    with f:
        root = f["model_weights"] if "model_weights" in f and "layer_names" not in f.attrs \
            else f
        file_names = _decode(root.attrs.get("layer_names", list(root.keys())))
        for name, layer in layers.items():
            if excluded(name):
                report["skipped"].append(name)
                continue
            if name not in root:
                report["missing"].append(name)
                continue
            g = root[name]
            weight_names = _decode(g.attrs.get("weight_names", []))
            values = [np.asarray(g[w]) for w in weight_names]
            if not values:
                report["missing"].append(name)
                continue
            targets = layer.weights
            if len(values) != len(targets):
                raise WeightsError(
                    f"layer '{name}': the file has {len(values)} weights, the model "
                    f"{len(targets)}; use exclude=['{name}'] to skip it")
            for var, val in zip(targets, values):
                if tuple(var.shape) != tuple(val.shape):
                    raise WeightsError(
                        f"layer '{name}': weight '{var.path}' has shape {tuple(var.shape)} "
                        f"in the model but {tuple(val.shape)} in {os.path.basename(path)}; "
                        f"a different NUM_CLASSES? use exclude=['{name}'] (or "
                        f"exclude=weights.HEADS for all class-specific layers)")
            pending.append((targets, values))
            report["loaded"].append(name)
        for targets, values in pending:
            for var, val in zip(targets, values):
                var.assign(val.astype(var.dtype))
        report["unused"] = [n for n in file_names if n in root and n not in layers
                            and len(root[n].attrs.get("weight_names", [])) > 0]
    if verbose:
        print(f"Loaded {len(report['loaded'])} layers from {path}; skipped "
              f"{len(report['skipped'])}, missing {len(report['missing'])}, unused in file "
              f"{len(report['unused'])}")
        for key in ("skipped", "missing"):
            if report[key]:
                print(f"  {key}: {', '.join(report[key])}")
    return report
