"""Pretrained and saved weights: find, download, verify, cache, and load by layer name.

Fine-tuning from matterport's COCO weights is how a few dozen annotated images give
good masks. The whole path, on Colab or anywhere::

    from colabrcnn import MaskRCNN, weights
    model = MaskRCNN("training", config, model_dir)
    model.load_weights(weights.fetch("coco"), by_name=True, exclude=weights.HEADS)

``fetch("coco")`` downloads ``mask_rcnn_coco.h5`` once (246 MB, with a progress bar,
resuming after a cut connection), checks it and keeps it in the cache: on Colab with
Drive mounted that is ``/content/drive/MyDrive/colabrcnn/weights``, so the next session
finds it; else ``~/.cache/colabrcnn/weights``; ``$COLABRCNN_CACHE`` or ``cache_dir=``
override both. ``exclude=weights.HEADS`` leaves out the four class-count-specific layers
so that a model with another ``NUM_CLASSES`` takes everything else. To start from
ImageNet instead (train with ``layers="heads"`` first, then ``"all"``)::

    model.load_weights(weights.fetch(weights.imagenet_for(config.BACKBONE)), by_name=True)

The command line does the download too: ``colabrcnn fetch-weights coco``.

What ``load_weights`` reads (the format is detected, see :func:`inspect_file`):

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
architecture), PyTorch/Detectron checkpoints.

Layout facts: ``shared/reference/matterport-h5-layout.md``.
"""
from __future__ import annotations

import hashlib
import os
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np

from .errors import WeightsError

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

# Where Google Drive appears on Colab once mounted (colabrcnn.env.mount_drive()).
DRIVE_DIR = "/content/drive/MyDrive"
DRIVE_CACHE = os.path.join(DRIVE_DIR, "colabrcnn", "weights")
LOCAL_CACHE = os.path.join("~", ".cache", "colabrcnn", "weights")
CACHE_ENV = "COLABRCNN_CACHE"

CHUNK = 1 << 20  # download and hash in 1 MiB pieces


# ------------------------------------------------------------------------ registry
@dataclass(frozen=True)
class WeightsEntry:
    """Where a weight file comes from and how to know it arrived whole."""
    name: str
    url: str
    filename: str
    size: int | None = None          # bytes
    sha256: str | None = None
    md5: str | None = None
    layers: tuple = ()               # layer groups the HDF5 file must have
    backbone: str | None = None      # the Config.BACKBONE it fits
    num_classes: int | None = None   # NUM_CLASSES of its heads, if it has any
    description: str = ""
    gdrive_id: str | None = None     # set for Google Drive files (downloaded by gdown)


_KERAS_APPS = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"

# Sizes are the Content-Length the servers send; md5 hashes are those keras.applications
# and matterport check. matterport published no hash of mask_rcnn_coco.h5: the size and
# the HDF5 check stand in for it.
REGISTRY: dict[str, WeightsEntry] = {e.name: e for e in [
    WeightsEntry(
        "coco",
        "https://github.com/matterport/Mask_RCNN/releases/download/v2.0/mask_rcnn_coco.h5",
        "mask_rcnn_coco.h5", size=257_557_808,
        layers=("conv1", "bn_conv1", "res4w_branch2c", "bn5c_branch2c", "fpn_p2",
                "rpn_model", "mrcnn_class_logits", "mrcnn_mask"),
        backbone="resnet101", num_classes=81,
        description="matterport Mask R-CNN trained on COCO (ResNet-101, 80 classes + BG)"),
    WeightsEntry(
        "imagenet-resnet50",
        "https://github.com/fchollet/deep-learning-models/releases/download/v0.2/"
        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5", size=94_653_016,
        md5="a268eb855778b3df3c7506639542a6af",
        layers=("conv1", "bn_conv1", "res2a_branch2a", "res5c_branch2c", "bn5c_branch2c"),
        backbone="resnet50",
        description="ImageNet ResNet-50 without top, old Keras names (matterport's)"),
    WeightsEntry(
        "keras-resnet50",
        _KERAS_APPS + "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "keras_resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5", size=94_765_736,
        md5="4d473c1dd8becc155b73f8504c6f6626",
        layers=("conv1_conv", "conv1_bn", "conv2_block1_0_conv", "conv5_block3_3_bn"),
        backbone="resnet50",
        description="ImageNet ResNet50 without top, keras.applications"),
    WeightsEntry(
        "keras-resnet101",
        _KERAS_APPS + "resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "keras_resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5", size=171_446_536,
        md5="88cf7a10940856eca736dc7b7e228a21",
        layers=("conv1_conv", "conv1_bn", "conv4_block23_3_conv", "conv5_block3_3_bn"),
        backbone="resnet101",
        description="ImageNet ResNet101 without top, keras.applications"),
]}

ALIASES = {"mask_rcnn_coco": "coco", "imagenet": "imagenet-resnet50",
           "imagenet-resnet101": "keras-resnet101"}


def imagenet_for(backbone):
    """Registry name of the ImageNet weights for a Config.BACKBONE."""
    names = {"resnet50": "imagenet-resnet50", "resnet101": "keras-resnet101"}
    if backbone not in names:
        raise WeightsError(f"no ImageNet weights for BACKBONE={backbone!r}; there are "
                           f"some for {' and '.join(names)} (resnet18 trains from "
                           f"scratch)")
    return names[backbone]


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


def _attr(group, name):
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
    if _attr(f, "layer_names") is None and "model_weights" in f:
        root = f["model_weights"]
    names = _attr(root, "layer_names")
    if names is None:  # no layer list: every group with weight_names
        names = [k for k in root.keys() if _attr(root[k], "weight_names") is not None]
    entries, order = OrderedDict(), []
    nested = OrderedDict()
    for name in names:
        if name not in root or not hasattr(root[name], "attrs"):
            continue
        g = root[name]
        weight_names = _attr(g, "weight_names") or []
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


@contextmanager
def _open_source(source):
    """Yield a _Source for a path or a Keras model."""
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
        if _attr(f, "layer_names") is None and "model_weights" not in f \
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

    path: a weight file (any layout in this module's docstring) or a Keras model.
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
        print(f"Loaded {len(report['loaded'])} layers from {label} ({report['layout']}); "
              f"excluded {len(report['skipped'])}, shape mismatch "
              f"{len(report['mismatched'])}, not in file {len(report['missing'])}, "
              f"not in model {len(report['unused'])}")
        for key, title in (("skipped", "excluded"), ("mismatched", "shape mismatch"),
                           ("missing", "not in file"), ("unused", "not in model")):
            if report[key]:
                print(f"  {title}: {', '.join(report[key])}")
        if verbose >= 2:
            print(f"  loaded: {', '.join(report['loaded'])}")
    return report


def _value(a):
    """An h5py dataset, a Keras variable or an array -> numpy array."""
    if isinstance(a, np.ndarray):
        return a
    if hasattr(a, "assign"):  # a Keras variable
        import keras
        return keras.ops.convert_to_numpy(a)
    return a[()]


# ------------------------------------------------------------------------ caching
def default_cache_dir():
    """$COLABRCNN_CACHE, else Drive's colabrcnn/weights when Drive is mounted (Colab),
    else ~/.cache/colabrcnn/weights."""
    if os.environ.get(CACHE_ENV):
        return os.path.expanduser(os.environ[CACHE_ENV])
    if os.path.isdir(DRIVE_DIR):
        return DRIVE_CACHE
    return os.path.expanduser(LOCAL_CACHE)


_GDRIVE_ID = re.compile(r"[A-Za-z0-9_-]{25,}")


def _gdrive_id(text):
    """The file id of a Google Drive link or a bare id, else None."""
    if re.fullmatch(r"https?://(drive|docs)\.google\.com/.*", text):
        m = re.search(r"/d/([A-Za-z0-9_-]+)", text) or re.search(r"[?&]id=([A-Za-z0-9_-]+)",
                                                                  text)
        if not m:
            raise WeightsError(f"cannot find a file id in the Google Drive link {text}")
        return m.group(1)
    if "." not in text and "/" not in text and _GDRIVE_ID.fullmatch(text):
        return text
    return None


def resolve(name_or_url):
    """A registry name, URL or Google Drive link/id -> WeightsEntry."""
    key = ALIASES.get(name_or_url, name_or_url)
    if key in REGISTRY:
        return REGISTRY[key]
    fid = _gdrive_id(name_or_url)
    if fid:
        return WeightsEntry(f"gdrive:{fid}", f"https://drive.google.com/uc?id={fid}",
                            f"gdrive_{fid}.h5", gdrive_id=fid)
    parsed = urllib.parse.urlparse(name_or_url)
    if parsed.scheme in ("http", "https", "ftp", "file") and parsed.path:
        filename = os.path.basename(urllib.parse.unquote(parsed.path)) or "weights.h5"
        return WeightsEntry(filename, name_or_url, filename)
    known = ", ".join(list(REGISTRY) + list(ALIASES))
    raise WeightsError(f"unknown weights {name_or_url!r}: give one of {known}, a URL, a "
                       f"Google Drive link or file id, or a local file path")


def _hash(path, algo):
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(path, entry, checksum=True):
    """Why ``path`` is not a good copy of ``entry`` (a string), or None if it is.

    Checks the size, the checksum (when known and ``checksum``), and that the HDF5 file
    opens and has the entry's expected layers (a truncated HDF5 file does not open).
    """
    size = os.path.getsize(path)
    if entry.size and size != entry.size:
        return f"size {size:,} bytes, expected {entry.size:,} (incomplete download?)"
    if checksum:
        for algo in ("sha256", "md5"):
            want = getattr(entry, algo)
            if want:
                got = _hash(path, algo)
                if got != want.lower():
                    return f"{algo} {got}, expected {want}"
                break
    import h5py
    try:
        with h5py.File(path, "r") as f:
            root = f
            if _attr(f, "layer_names") is None and "model_weights" in f:
                root = f["model_weights"]
            missing = [n for n in entry.layers if n not in root]
            if missing:
                return f"no layer {', '.join(missing)} in the file (not {entry.name} weights?)"
    except OSError as e:
        return f"not a readable HDF5 file ({e})"
    return None


class _Retry(Exception):
    """A download attempt failed in a way worth trying again."""


def _manual_hint(entry, dest):
    where = entry.url if not entry.gdrive_id else \
        f"https://drive.google.com/file/d/{entry.gdrive_id}/view"
    return (f"\nIf this machine cannot reach {where}, download the file elsewhere (another "
            f"computer, a browser) and put it at\n  {dest}\nthen run this again (a good "
            f"file there is used as it is), or pass the file's path to load_weights. "
            f"${CACHE_ENV} or cache_dir= choose another folder.")


def _download(url, part, entry, progress, timeout):
    """One attempt: fetch ``url`` into ``part``, resuming from what is there.

    Returns the number of new bytes. Raises _Retry for network trouble and server
    errors, WeightsError for answers that will not change (404, 403 ...).
    """
    have = os.path.getsize(part) if os.path.exists(part) else 0
    if entry.size and have > entry.size:
        os.remove(part)
        have = 0
    if entry.size and have == entry.size:
        return 0
    from . import __version__
    headers = {"User-Agent": f"colabrcnn/{__version__}"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                      timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to send: verification decides
            return 0
        if e.code in (408, 425, 429) or e.code >= 500:
            raise _Retry(f"HTTP {e.code} {e.reason}") from None
        raise WeightsError(f"{url} answered HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, socket.timeout, ConnectionError, OSError) as e:
        raise _Retry(str(getattr(e, "reason", e))) from None
    new = 0
    with resp:
        status = getattr(resp, "status", 200)
        start = 0
        if have and status == 206:
            m = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", ""))
            start = int(m.group(1)) if m else have
        if start != have:  # the server ignored or misread the range: start over
            start = 0
        length = resp.headers.get("Content-Length")
        total = start + int(length) if length and length.isdigit() else entry.size
        from tqdm.auto import tqdm
        with open(part, "r+b" if start else "wb") as f, \
                tqdm(total=total, initial=start, unit="B", unit_scale=True,
                     unit_divisor=1024, desc=os.path.basename(part)[:-5],
                     disable=not progress, leave=True) as bar:
            f.seek(start)
            f.truncate()
            try:
                while True:
                    chunk = resp.read(CHUNK)
                    if not chunk:
                        break
                    f.write(chunk)
                    new += len(chunk)
                    bar.update(len(chunk))
            except (OSError, socket.timeout, ConnectionError, ValueError) as e:
                f.flush()
                raise _Retry(f"connection lost after {start + new:,} bytes ({e})") \
                    from None
        if total and start + new < total:
            raise _Retry(f"connection closed after {start + new:,} of {total:,} bytes")
    return new


def _gdown(entry, part, progress):
    try:
        import gdown
    except ImportError:
        raise WeightsError("Google Drive downloads need gdown: pip install gdown") from None
    try:
        out = gdown.download(id=entry.gdrive_id, output=part, quiet=not progress,
                             resume=True)
    except Exception as e:  # gdown raises its own error types, by version
        raise _Retry(f"{type(e).__name__}: {e}") from None
    if not out or not os.path.exists(part):
        raise _Retry("gdown did not download the file (is it shared as 'anyone with "
                     "the link'?)")
    return os.path.getsize(part)


def fetch(name_or_url, cache_dir=None, progress=True, *, filename=None, sha256=None,
          md5=None, size=None, retries=4, backoff=1.0, timeout=60, force=False):
    """Path of a verified local copy of a weight file, downloading it if needed.

    name_or_url: a :data:`REGISTRY` name ("coco", "imagenet-resnet50", "keras-resnet50",
        "keras-resnet101"), an http(s) URL, a Google Drive link or file id (through
        gdown), or a path to a local file (returned as it is).
    cache_dir: where downloads are kept; default :func:`default_cache_dir`.
    filename, sha256, md5, size: for URLs, the file name in the cache and what to check.
    retries, backoff: failed attempts in a row allowed, waiting backoff * 2**k seconds.
    force: download again even if the cache has a good copy.

    A download goes to ``<file>.part`` (resumed with an HTTP Range request after a cut
    connection, also in a later session), is verified (checksum or size, then the HDF5
    file's layers), then renamed into place. A cached copy is checked (size, HDF5
    layers) before use; a damaged one is removed and fetched again.
    """
    text = os.fspath(name_or_url)
    if os.path.isfile(os.path.expanduser(text)):
        return os.path.abspath(os.path.expanduser(text))
    entry = resolve(text)
    overrides = {k: v for k, v in dict(filename=filename, sha256=sha256, md5=md5,
                                       size=size).items() if v is not None}
    if overrides:
        entry = replace(entry, **overrides)
    cache = os.path.expanduser(cache_dir) if cache_dir else default_cache_dir()
    dest = os.path.join(cache, entry.filename)
    if os.path.exists(dest) and not force:
        problem = verify(dest, entry, checksum=False)
        if problem is None:
            return dest
        print(f"colabrcnn: the cached {dest} is damaged ({problem}); removing it and "
              f"downloading again")
        os.remove(dest)
    try:
        os.makedirs(cache, exist_ok=True)
    except OSError as e:
        raise WeightsError(f"cannot create the weights cache folder {cache} ({e}); pass "
                           f"cache_dir= or set ${CACHE_ENV}") from None
    part = dest + ".part"
    if force and os.path.exists(part):
        os.remove(part)
    if progress:
        print(f"Downloading {entry.name} from {entry.url}\n  to {dest}")
    failures, bad_files, attempts = 0, 0, 0
    while True:
        attempts += 1
        try:
            if entry.gdrive_id:
                _gdown(entry, part, progress)
            else:
                new = _download(entry.url, part, entry, progress, timeout)
                if new:
                    failures = 0  # progress was made: a flaky line is not a dead one
        except _Retry as e:
            failures += 1
            if failures > retries or attempts > 100:
                raise WeightsError(
                    f"could not download {entry.name} ({e}; {attempts} attempts)."
                    + _manual_hint(entry, dest)) from None
            wait = backoff * 2 ** (failures - 1)
            if progress:
                print(f"  download interrupted ({e}); retrying in {wait:.0f} s")
            time.sleep(wait)
            continue
        problem = verify(part, entry, checksum=True)
        if problem is None:
            break
        os.remove(part)
        bad_files += 1
        if bad_files >= 2:
            raise WeightsError(
                f"the download of {entry.name} from {entry.url} is not the expected file "
                f"({problem}), twice; removed it." + _manual_hint(entry, dest))
        if progress:
            print(f"  the downloaded file is damaged ({problem}); downloading again")
    os.replace(part, dest)
    return dest


def list_registry():
    """One line per registry entry: name, size, what it is."""
    lines = []
    for e in REGISTRY.values():
        size = f"{e.size / 2**20:.0f} MB" if e.size else "?"
        lines.append(f"{e.name:18s} {size:>7s}  {e.description}")
    return lines


# --------------------------------------------------------------------------- CLI
def add_cli_arguments(parser):
    parser.add_argument("name", nargs="?",
                        help=f"what to fetch: {', '.join(REGISTRY)}, a URL, or a Google "
                             f"Drive link or file id")
    parser.add_argument("--cache", default=None,
                        help=f"folder to keep weights in (default: ${CACHE_ENV}, else "
                             f"{DRIVE_CACHE} when Drive is mounted, else {LOCAL_CACHE})")
    parser.add_argument("--list", action="store_true", help="list the known weights")
    parser.add_argument("--force", action="store_true",
                        help="download again even if a good copy is cached")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run_cli(args):
    if args.list or not args.name:
        print("\n".join(list_registry()))
        print(f"cache: {args.cache or default_cache_dir()}")
        return 0 if args.list else 2
    path = fetch(args.name, cache_dir=args.cache, progress=not args.quiet, force=args.force)
    print(path)
    return 0


__all__ = ["HEADS", "ALL_HEADS", "HEADS_AND_RPN", "ALL_BUT_BACKBONE", "REGISTRY", "ALIASES",
           "WeightsEntry", "fetch", "verify", "resolve", "default_cache_dir", "imagenet_for",
           "load_weights", "save_weights", "named_layers", "inspect_file",
           "keras_applications_name", "list_registry"]
