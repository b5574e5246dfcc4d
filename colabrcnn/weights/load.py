"""Reading and writing weights by layer name: matterport's HDF5 layout and friends.

What :func:`load_weights` reads (the format is detected, see :func:`inspect_file`):

* the Keras 2 HDF5 layout (a group per layer name, attribute ``weight_names``), which
  covers ``mask_rcnn_coco.h5``, models trained with matterport or its TF2 forks, the old
  ImageNet ResNet-50 file matterport uses, our own checkpoints, and files written by
  Keras 2 ``model.save()`` (weights under ``model_weights``). Nested models are one group
  (matterport's ``rpn_model``); a nested model's layers are also found by the prefix of
  their weight names (``backbone/res2a_branch2a/kernel:0``);
* ``keras.applications`` ResNet50/ResNet101 weights (``conv1_conv``, ``conv2_block1_1_conv``
  ...), renamed to matterport's names (:func:`keras_applications_name`), in the legacy
  ``.h5`` layout that ``keras.applications`` downloads, and in the Keras 3
  ``.weights.h5`` layout that ``keras.applications.ResNet50(...).save_weights`` writes
  (that layout stores layers by position, not name, so the matching ResNet is built
  and Keras reads the file into it first);
* a Keras model object (its layers by name).

Not read: other Keras 3 ``.weights.h5`` files (load them with the model that saved
them, ``keras_model.load_weights(path)``, then :func:`save_weights` to get a by-name
file), ``.keras`` archives (see ``colabrcnn.export``), ResNet V2 weights (a different
architecture), Detectron checkpoints. torchvision's Mask R-CNN ``.pth`` files are
converted by ``colabrcnn/weights/torchvision.py`` and set through :func:`load_weights`.

:func:`save_weights` writes the same by-name layout. Layout facts:
``shared/reference/matterport-h5-layout.md``.
"""
from __future__ import annotations

import logging
import os
import re
import warnings
from collections import OrderedDict
from contextlib import contextmanager

import numpy as np

from ..errors import WeightsError

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------- constants
# Sub-models stored as one group (their weights in order), as matterport's rpn_model.
UNIT_MODELS = ("rpn_model",)
# The layers inside each unit, in weight order (for files that store them flat).
UNIT_LAYERS = {"rpn_model": ("rpn_conv_shared", "rpn_class_raw", "rpn_bbox_pred")}

# Class-count-specific layers: exclude them to fine-tune on a new NUM_CLASSES.
# (mrcnn_bbox has no weights in this package; it is listed because matterport's
# notebooks name it, and excluding a name that is not there is harmless.)
HEADS = ["mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_bbox", "mrcnn_mask"]
# Every layer of the box and mask heads (all of "heads" that is not FPN or RPN).
ALL_HEADS = [r"mrcnn_.*"]
# The heads and the region proposal network: keep only the backbone and the FPN
# (e.g. for anchors of other scales or ratios, where rpn_class_raw's shape changes).
HEADS_AND_RPN = HEADS + ["rpn_model"]
# Everything but the ResNet: keep only the ImageNet-like part of a COCO model.
ALL_BUT_BACKBONE = [r"mrcnn_.*", r"fpn_.*", "rpn_model"]


# ------------------------------------------------------------------ model layers
def named_layers(model):
    """Layers that own weights, by name: nested models are flattened, except UNIT_MODELS."""
    out = OrderedDict()

    def visit(layer):
        sub = getattr(layer, "layers", None)
        if sub is not None and layer.name not in UNIT_MODELS:
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
    """An HDF5 attribute holding names (bytes or str, array or scalar) -> [str]."""
    if values is None:
        return []
    if isinstance(values, (bytes, str, np.bytes_, np.str_)):
        values = [values]
    out = []
    for v in np.asarray(values, dtype=object).ravel().tolist():
        out.append(v.decode("utf8") if isinstance(v, bytes) else str(v))
    return out


def h5_attr(group, name):
    """Attribute ``name``, also when Keras 2 split a large one into name0, name1, ..."""
    if name in group.attrs:
        return _decode(group.attrs[name])
    out, i = [], 0
    while f"{name}{i}" in group.attrs:
        out.extend(_decode(group.attrs[f"{name}{i}"]))
        i += 1
    return out if i else None


# ------------------------------------------------------------------------- saving
def save_weights(model, path):
    """Write every named layer's weights to ``path`` (Keras 2 HDF5 layout), atomically."""
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


# ------------------------------------------------------------- keras.applications
_KA_BLOCK = re.compile(r"conv([2-5])_block(\d+)_([0-3])_(conv|bn)")
_KA_BRANCH = {"0": "1", "1": "2a", "2": "2b", "3": "2c"}


def keras_applications_name(name):
    """matterport's name for a keras.applications ResNet (v1) layer, or None.

    ``conv1_conv`` -> ``conv1``, ``conv1_bn`` -> ``bn_conv1``, ``conv4_block2_1_conv``
    -> ``res4b_branch2a``, ``conv2_block1_0_bn`` -> ``bn2a_branch1`` (blocks 1, 2, 3 ...
    are letters a, b, c ...; convs _1, _2, _3 are branch2a/2b/2c, _0 the shortcut).
    """
    if name == "conv1_conv":
        return "conv1"
    if name == "conv1_bn":
        return "bn_conv1"
    m = _KA_BLOCK.fullmatch(name)
    if not m:
        return None
    stage, block, conv, kind = m.groups()
    if not 1 <= int(block) <= 26:
        return None
    letter = chr(ord("a") + int(block) - 1)
    prefix = "res" if kind == "conv" else "bn"
    return f"{prefix}{stage}{letter}_branch{_KA_BRANCH[conv]}"


def _is_keras_applications(names):
    return "conv1_conv" in names or any(_KA_BLOCK.fullmatch(n) for n in names)


def _check_not_resnet_v2(names, path):
    if any(n.endswith(("_preact_bn", "post_bn")) for n in names):
        raise WeightsError(
            f"{path} holds ResNet V2 weights (keras.applications ResNet50V2/101V2): a "
            f"different architecture from Mask R-CNN's ResNet (v1). Use "
            f"weights.fetch('keras-resnet50') or weights.fetch('keras-resnet101').")


# ------------------------------------------------------------------ weight sources
class _Source:
    """Weights by layer name from somewhere (a file or a Keras model).

    ``names``: the source's layers that hold weights, in its order; ``rename``: source
    name -> model name (identity unless keras.applications); ``get(model_name)`` -> the
    list of array-likes stored for that model layer, or None; ``used`` collects the
    source layers that ``get`` handed out.
    """

    def __init__(self, layout, entries, order, rename=None, origin=None):
        self.layout = layout
        self._entries = entries            # model name -> list of array-likes
        self._origin = origin or {}        # model name -> source layer it came from
        self.names = order
        self.rename = rename or {}
        self.used = set()

    def _take(self, name):
        self.used.add(self._origin.get(name, name))
        return self._entries[name]

    def get(self, name):
        if name in self._entries:
            return self._take(name)
        if name in UNIT_LAYERS:  # a unit stored flat: concatenate its layers
            parts = UNIT_LAYERS[name]
            if all(p in self._entries for p in parts):
                return [a for p in parts for a in self._take(p)]
        return None


def _renamed_source(layout, entries, order, path):
    """A source with keras.applications names renamed to matterport's (if it has them)."""
    _check_not_resnet_v2(order, path)
    if not _is_keras_applications(order):
        return _Source(layout, entries, order)
    rename = {n: keras_applications_name(n) for n in order}
    rename = {k: v for k, v in rename.items() if v}
    mapped = OrderedDict((rename[n], entries[n]) for n in order if n in rename)
    origin = {v: k for k, v in rename.items()}
    return _Source(layout + "/keras-applications", mapped, order, rename, origin)


def _h5_source(f, path):
    """A Keras 2 layout file (or its ``model_weights`` group) as a _Source."""
    root = f
    if h5_attr(f, "layer_names") is None and "model_weights" in f:
        root = f["model_weights"]
    names = h5_attr(root, "layer_names")
    if names is None:  # no layer list: every group with weight_names
        names = [k for k in root.keys() if h5_attr(root[k], "weight_names") is not None]
    entries, order = OrderedDict(), []
    nested = OrderedDict()
    for name in names:
        if name not in root or not hasattr(root[name], "attrs"):
            continue
        g = root[name]
        weight_names = h5_attr(g, "weight_names") or []
        if not weight_names:
            continue
        try:
            arrays = [g[w] for w in weight_names]
        except KeyError as e:
            raise WeightsError(f"{path}: layer '{name}' lists weight {e} that is not in "
                               f"the file; the file is damaged") from None
        entries[name] = arrays
        order.append(name)
        # A nested model stored as one group: index its layers by weight-name prefix
        # ("backbone/res2a_branch2a/kernel:0" or "res2a_branch2a/kernel:0").
        prefixes = OrderedDict()
        for w, a in zip(weight_names, arrays):
            parts = w.split("/")
            if len(parts) >= 2:
                inner = parts[-2]
                prefixes.setdefault(inner, []).append(a)
        if len(prefixes) > 1 or (prefixes and next(iter(prefixes)) != name):
            for inner, arrs in prefixes.items():
                if inner != name:
                    nested.setdefault(inner, (arrs, name))
    origin = {}
    for inner, (arrs, owner) in nested.items():
        if inner not in entries:
            entries[inner] = arrs
            origin[inner] = owner
    src = _renamed_source("keras2-model" if root is not f else "keras2", entries, order,
                          path)
    src._origin.update(origin)
    return src


def _model_source(model, layout="model"):
    layers = named_layers(model)
    entries = OrderedDict((n, list(l.weights)) for n, l in layers.items())
    return _renamed_source(layout, entries, list(layers), model.name)


# keras.applications ResNets by their count of Conv2D layers (each with one BN).
_KERAS3_RESNETS = {53: "ResNet50", 104: "ResNet101", 155: "ResNet152"}


def _keras3_source(f, path):
    """A Keras 3 ``.weights.h5`` file: only keras.applications ResNets can be renamed."""
    layers = f["layers"]
    keys = list(layers.keys())
    convs = sum(1 for k in keys if re.fullmatch(r"conv2d(_\d+)?", k))
    bns = sum(1 for k in keys if re.fullmatch(r"batch_normalization(_\d+)?", k))
    arch = _KERAS3_RESNETS.get(convs) if convs == bns else None
    if arch is None or arch == "ResNet152":
        raise WeightsError(
            f"{path} is a Keras 3 '.weights.h5' file: it stores layers by position, not "
            f"by name, so it loads only into the model that saved it. Load it there "
            f"(keras_model.load_weights(path)) and write a by-name file with "
            f"colabrcnn.weights.save_weights(keras_model, 'weights.h5'), or pass that "
            f"Keras model itself to load_weights. Of keras.applications files only "
            f"ResNet50/ResNet101 (v1) fit Mask R-CNN.")
    import keras
    include_top = "dense" in keys
    shape = (224, 224, 3) if include_top else (None, None, 3)
    app = getattr(keras.applications, arch)(weights=None, include_top=include_top,
                                            input_shape=shape)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            app.load_weights(path)
    except Exception as e:  # Keras' own message says which layer did not fit
        raise WeightsError(f"{path}: looks like keras.applications {arch} weights in the "
                           f"Keras 3 layout, but Keras could not read them into "
                           f"{arch}: {e}") from None
    return _model_source(app, layout="keras3")


class NamedWeights(dict):
    """Weights already converted to this model's layers: {layer name: [arrays in
    ``get_weights()`` order]} (``colabrcnn/weights/torchvision.py`` makes them), read
    by :func:`load_weights` like a file. layout: what the report calls it; label: the
    name its messages use."""

    def __init__(self, weights, layout="arrays", label="converted weights"):
        super().__init__(weights)
        self.layout = layout
        self.label = label


@contextmanager
def _open_source(source):
    """Yield a _Source for a path, a Keras model or NamedWeights."""
    if isinstance(source, NamedWeights):
        yield _Source(source.layout, dict(source), list(source))
        return
    if hasattr(source, "layers") and hasattr(source, "weights"):
        yield _model_source(source)
        return
    import h5py

    path = os.fspath(source)
    if not os.path.exists(path):
        raise WeightsError(f"weights file not found: {path}")
    if path.endswith(".keras"):
        raise WeightsError(f"{path} is a Keras archive; load it with "
                           f"colabrcnn.export.load_exported (or keras.saving.load_model)")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise WeightsError(f"cannot open weights file {path} ({e}): not an HDF5 file, or "
                           f"an incomplete download; delete it and fetch it again") from None
    with f:
        if h5_attr(f, "layer_names") is None and "model_weights" not in f \
                and "layers" in f and hasattr(f["layers"], "keys"):
            yield _keras3_source(f, path)
        else:
            yield _h5_source(f, path)


def inspect_file(path):
    """What a weight file holds: {"layout", "layers": [names as in the file],
    "renamed": {file name: model name}} (no model needed)."""
    with _open_source(path) as src:
        return {"layout": src.layout, "layers": list(src.names), "renamed": dict(src.rename)}


# ------------------------------------------------------------------------ loading
def _exclusion(exclude):
    """exclude: names or regular expressions (full match) -> predicate."""
    if isinstance(exclude, str):
        exclude = [exclude]
    names, patterns = set(), []
    for e in exclude or []:
        names.add(e)
        try:
            patterns.append(re.compile(e))
        except re.error:
            pass  # not a regex: a plain name
    return lambda n: n in names or any(p.fullmatch(n) for p in patterns)


def _shape(a):
    return tuple(int(d) for d in a.shape)


def load_weights(model, path, by_name=True, exclude=None, verbose=0, on_mismatch="raise"):
    """Assign weights from ``path`` to the layers of ``model`` with the same names.

    path: a weight file (any layout in this module's docstring), a Keras model or
        :class:`NamedWeights`.
    by_name: accepted for matterport compatibility; loading is always by layer name
        (our layer names are matterport's, so its by-order files load the same way).
    exclude: layer names or regular expressions (full match) to leave untouched, e.g.
        ``HEADS`` when NUM_CLASSES differs from the file's.
    on_mismatch: "raise" (default): a layer whose weights do not fit raises
        :class:`WeightsError` naming the layer and both shapes, and nothing is loaded;
        "skip": such layers are left as they are, with a warning.
    verbose: 1 prints a summary, 2 also every loaded layer.

    Returns a report: ``loaded``, ``skipped`` (excluded), ``mismatched`` (skipped for
    their shapes), ``missing`` (in the model, not in the file), ``unused`` (in the file,
    not in the model), ``layout`` (what the file was read as) and ``renamed``.
    """
    if on_mismatch not in ("raise", "skip"):
        raise WeightsError(f"on_mismatch must be 'raise' or 'skip', got {on_mismatch!r}")
    excluded = _exclusion(exclude)
    layers = named_layers(model)
    if isinstance(path, NamedWeights):
        label = path.label
    else:
        label = os.path.basename(os.fspath(path)) if not hasattr(path, "layers") else path.name
    report = {"loaded": [], "skipped": [], "mismatched": [], "missing": [], "unused": [],
              "layout": None, "renamed": {}}
    pending = []  # assign only once every layer has been checked: all or nothing
    problems = []
    with _open_source(path) as src:
        report["layout"] = src.layout
        report["renamed"] = dict(src.rename)
        for name, layer in layers.items():
            stored = src.get(name)
            if excluded(name):
                report["skipped"].append(name)
                continue
            if stored is None:
                report["missing"].append(name)
                continue
            targets = layer.weights
            problem = None
            if len(stored) != len(targets):
                problem = (f"layer '{name}': {label} has {len(stored)} weights "
                           f"{[_shape(a) for a in stored]}, the model "
                           f"{len(targets)} {[_shape(v) for v in targets]}")
            else:
                for var, val in zip(targets, stored):
                    if _shape(var) != _shape(val):
                        problem = (f"layer '{name}': weight '{var.path}' has shape "
                                   f"{_shape(var)} in the model but {_shape(val)} in "
                                   f"{label}")
                        break
            if problem:
                report["mismatched"].append(name)
                problems.append(problem)
                if on_mismatch == "skip":
                    warnings.warn(problem + "; skipped (on_mismatch='skip')", stacklevel=2)
                continue
            pending.append((name, targets, stored))
            report["loaded"].append(name)
        if problems and on_mismatch == "raise":
            names = report["mismatched"]
            heads = set(names) <= set(HEADS)
            raise WeightsError(
                f"{len(problems)} layer(s) of the model do not fit {label}; nothing was "
                f"loaded:\n  " + "\n  ".join(problems) + "\n" +
                ("A different NUM_CLASSES? " if heads else "A different architecture? ") +
                f"Leave them out with exclude={names!r}" +
                (" (or exclude=weights.HEADS)" if heads else "") +
                ", or pass on_mismatch='skip' to skip them with a warning")
        for name, targets, stored in pending:
            for var, val in zip(targets, stored):
                var.assign(np.asarray(_value(val)).astype(var.dtype))
        report["unused"] = [n for n in src.names if n not in src.used]
    if verbose:
        logger.info(f"Loaded {len(report['loaded'])} layers from {label} "
                    f"({report['layout']}); excluded {len(report['skipped'])}, shape "
                    f"mismatch {len(report['mismatched'])}, not in file "
                    f"{len(report['missing'])}, not in model {len(report['unused'])}")
        for key, title in (("skipped", "excluded"), ("mismatched", "shape mismatch"),
                           ("missing", "not in file"), ("unused", "not in model")):
            if report[key]:
                logger.info(f"  {title}: {', '.join(report[key])}")
        if verbose >= 2:
            logger.info(f"  loaded: {', '.join(report['loaded'])}")
    return report


def _value(a):
    """An h5py dataset, a Keras variable or an array -> numpy array."""
    if isinstance(a, np.ndarray):
        return a
    if hasattr(a, "assign"):  # a Keras variable
        import keras
        return keras.ops.convert_to_numpy(a)
    return a[()]


__all__ = ["UNIT_MODELS", "UNIT_LAYERS", "HEADS", "ALL_HEADS", "HEADS_AND_RPN",
           "ALL_BUT_BACKBONE", "NamedWeights", "named_layers", "h5_attr", "save_weights",
           "keras_applications_name", "inspect_file", "load_weights"]
