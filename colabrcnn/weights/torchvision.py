"""torchvision's Mask R-CNN weights in this model (issue 18).

    config = colabrcnn.TorchvisionR50FPN(NAME="mine", NUM_CLASSES=1 + 3)
    model = MaskRCNN("training", config, "logs")
    model.load_weights(weights.fetch("torchvision-coco"), by_name=True,
                       exclude=weights.HEADS)

``MaskRCNN.load_weights`` sends ``.pth`` / ``.pt`` files here. A torchvision state_dict
(``maskrcnn_resnet50_fpn``'s, v1) is converted to Keras layer weights under matterport's
layer names and set by name with :func:`colabrcnn.weights.load_weights` (same
``exclude=`` names and regexes, all-or-nothing shape checks, same report):

* ResNet-50 (``backbone.body``): ``layer{1..4}.{i}`` -> ``res{2..5}{a,b,...}``,
  ``conv1/2/3`` -> ``branch2a/2b/2c``, ``downsample.0/1`` -> ``branch1``; BatchNorm
  (``bn*``) weight, bias, running mean and variance -> gamma, beta, moving mean and
  variance. The model must be built with BACKBONE_STYLE="torchvision" (ResNet v1.5,
  convs without bias).
* FPN (``backbone.fpn``): ``inner_blocks.0..3`` -> ``fpn_c2p2..fpn_c5p5``,
  ``layer_blocks.0..3`` -> ``fpn_p2..fpn_p5``.
* RPN (``rpn.head``): ``conv`` -> ``rpn_conv_shared``; ``cls_logits`` (one sigmoid logit
  per anchor) -> ``rpn_class_raw`` with a zero background logit, so that
  softmax([0, x])[1] = sigmoid(x); ``bbox_pred`` (dx, dy, dw, dh) -> ``rpn_bbox_pred``
  (dy, dx, dh, dw).
* the box and mask heads: ``colabrcnn/weights/torchvision_heads.py``.

Convolutions go from PyTorch's OIHW to Keras' HWIO. Both key forms of torchvision's
state dicts are read: the files' (``rpn.head.conv.weight``,
``backbone.fpn.inner_blocks.0.weight``) and current modules'
(``rpn.head.conv.0.0.weight``, ``backbone.fpn.inner_blocks.0.0.weight``).
``maskrcnn_resnet50_fpn_v2``'s architecture (two-conv RPN head, BatchNorm in the FPN
and the heads, a 4conv1fc box head) is not built here: its files raise WeightsError.
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping

import numpy as np

from ..errors import WeightsError
from ..model.spec import STAGE_BLOCKS, block_letter
from . import load, torchvision_heads

logger = logging.getLogger(__name__)

# What load_weights' report calls the layout of a converted torchvision file, and what
# recipe.weights_origin records as its source.
LAYOUT = "torchvision"
# File endings MaskRCNN.load_weights sends here.
EXTENSIONS = (".pth", ".pt")

# torchvision's RPN box deltas (dx, dy, dw, dh) -> ours (dy, dx, dh, dw).
_DELTA_ORDER = [1, 0, 3, 2]

# The newer modules' keys (Conv2dNormActivation wraps each conv in a Sequential) ->
# the files' keys, so that one mapping reads both.
_NEW_KEYS = [
    (re.compile(r"^backbone\.fpn\.(inner|layer)_blocks\.(\d+)\.0\.(weight|bias)$"),
     r"backbone.fpn.\1_blocks.\2.\3"),
    (re.compile(r"^rpn\.head\.conv\.0\.0\.(weight|bias)$"), r"rpn.head.conv.\1"),
]
# Keys only maskrcnn_resnet50_fpn_v2 has, and what each means.
_V2_MARKERS = {
    r"^rpn\.head\.conv\.1\.": "a second RPN conv",
    r"^backbone\.fpn\.(inner|layer)_blocks\.\d+\.1\.": "BatchNorm in the FPN",
    r"^roi_heads\.box_head\.\d+\.0\.": "a 4conv1fc box head",
}


def read_state_dict(source) -> dict[str, np.ndarray]:
    """A torchvision state_dict as float32 NumPy arrays.

    source: a path to a ``.pth`` file (read with ``torch.load(map_location="cpu",
    weights_only=True)``; needs PyTorch, preinstalled on Colab and Kaggle) or a dict of
    tensors / arrays. A checkpoint that wraps the state_dict under "model" or
    "state_dict" is unwrapped; a "module." prefix (DataParallel) is dropped.
    """
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise WeightsError(f"weights file not found: {path}")
        try:
            import torch  # optional dependency: only .pth files need it
        except ImportError:
            raise WeightsError(
                f"{path} is a PyTorch file: reading it needs PyTorch (preinstalled on "
                f"Colab and Kaggle; elsewhere pip install torch)") from None
        try:
            source = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - torch raises many kinds for a bad file
            raise WeightsError(f"cannot read {path} as a PyTorch state_dict ({e}); an "
                               f"incomplete download? Delete it and fetch it again") from None
    if not isinstance(source, Mapping):
        raise WeightsError(f"expected a torchvision state_dict (a dict of tensors), got "
                           f"{type(source).__name__}")
    for key in ("model", "state_dict"):
        if key in source and isinstance(source[key], Mapping):
            source = source[key]
    out = {}
    for key, value in source.items():
        if key.endswith("num_batches_tracked"):
            continue
        if hasattr(value, "detach"):  # a torch tensor
            value = value.detach().cpu().float().numpy()
        out[key[len("module."):] if key.startswith("module.") else key] = \
            np.asarray(value, dtype=np.float32)
    return out


def canonical_keys(state_dict: Mapping) -> dict:
    """The same state_dict with the newer modules' keys renamed to the files' form."""
    out = {}
    for key, value in state_dict.items():
        for pattern, repl in _NEW_KEYS:
            key = pattern.sub(repl, key)
        out[key] = value
    return out


def check_v1(state_dict: Mapping) -> None:
    """Raise WeightsError for maskrcnn_resnet50_fpn_v2 weights (not built here)."""
    found = sorted({what for key in state_dict for pattern, what in _V2_MARKERS.items()
                    if re.match(pattern, key)})
    if found:
        raise WeightsError(
            "these are torchvision maskrcnn_resnet50_fpn_v2 weights, whose architecture "
            f"this model does not build yet (it lacks {', '.join(found)}); use the v1 "
            "weights, weights.fetch('torchvision-coco'), with TorchvisionR50FPN")


def conv_kernel(w: np.ndarray) -> np.ndarray:
    """PyTorch Conv2d weight [out, in, kh, kw] -> Keras Conv2D kernel [kh, kw, in, out]."""
    return np.ascontiguousarray(np.transpose(w, (2, 3, 1, 0)))


def _need(sd, key):
    if key not in sd:
        raise WeightsError(f"the state_dict has no '{key}': not torchvision Mask R-CNN "
                           f"(maskrcnn_resnet50_fpn) weights?")
    return sd[key]


def _bn(sd, prefix):
    return [_need(sd, f"{prefix}.{k}") for k in ("weight", "bias", "running_mean",
                                                  "running_var")]


def backbone_weights(sd: Mapping, architecture: str = "resnet50") -> dict:
    """ResNet body (``backbone.body.*``) -> {Keras layer name: weights}."""
    body = "backbone.body"
    out = {"conv1": [conv_kernel(_need(sd, f"{body}.conv1.weight"))],
           "bn_conv1": _bn(sd, f"{body}.bn1")}
    for stage, blocks in STAGE_BLOCKS[architecture].items():
        for b in range(blocks):
            src = f"{body}.layer{stage - 1}.{b}"
            dst = f"{stage}{block_letter(b)}_branch"
            for i, branch in ((1, "2a"), (2, "2b"), (3, "2c")):
                out[f"res{dst}{branch}"] = [conv_kernel(_need(sd, f"{src}.conv{i}.weight"))]
                out[f"bn{dst}{branch}"] = _bn(sd, f"{src}.bn{i}")
            if f"{src}.downsample.0.weight" in sd:
                out[f"res{dst}1"] = [conv_kernel(sd[f"{src}.downsample.0.weight"])]
                out[f"bn{dst}1"] = _bn(sd, f"{src}.downsample.1")
    return out


def fpn_weights(sd: Mapping) -> dict:
    """Feature pyramid (``backbone.fpn.*``) -> {Keras layer name: weights}."""
    out = {}
    for i, level in enumerate((2, 3, 4, 5)):
        for block, name in (("inner_blocks", f"fpn_c{level}p{level}"),
                            ("layer_blocks", f"fpn_p{level}")):
            key = f"backbone.fpn.{block}.{i}"
            out[name] = [conv_kernel(_need(sd, f"{key}.weight")), _need(sd, f"{key}.bias")]
    return out


def rpn_weights(sd: Mapping) -> dict:
    """RPN head (``rpn.head.*``) -> {Keras layer name: weights} for rpn_model's three
    layers (load.UNIT_LAYERS joins them)."""
    conv_w, conv_b = _need(sd, "rpn.head.conv.weight"), _need(sd, "rpn.head.conv.bias")
    cls_w, cls_b = _need(sd, "rpn.head.cls_logits.weight"), _need(sd, "rpn.head.cls_logits.bias")
    box_w, box_b = _need(sd, "rpn.head.bbox_pred.weight"), _need(sd, "rpn.head.bbox_pred.bias")
    anchors, channels = cls_w.shape[0], cls_w.shape[1]
    # Objectness: channel 2a is the background logit (0), 2a + 1 torchvision's logit a.
    class_w = np.zeros((2 * anchors, channels, 1, 1), np.float32)
    class_b = np.zeros((2 * anchors,), np.float32)
    class_w[1::2], class_b[1::2] = cls_w, cls_b
    # Deltas: channel 4a + k holds our k-th delta of anchor a.
    order = (4 * np.arange(anchors)[:, None] + np.asarray(_DELTA_ORDER)[None]).ravel()
    return {"rpn_conv_shared": [conv_kernel(conv_w), conv_b],
            "rpn_class_raw": [conv_kernel(class_w), class_b],
            "rpn_bbox_pred": [conv_kernel(box_w[order]), box_b[order]]}


def convert_state_dict(state_dict, config=None) -> dict[str, list[np.ndarray]]:
    """A torchvision Mask R-CNN state_dict -> {Keras layer name: weights in
    ``get_weights()`` order}: backbone, FPN and RPN here, the box and mask heads from
    ``colabrcnn/weights/torchvision_heads.py`` when ``config`` is given."""
    sd = canonical_keys(read_state_dict(state_dict))
    check_v1(sd)
    architecture = "resnet101" if "backbone.body.layer3.22.conv1.weight" in sd else "resnet50"
    out = {**backbone_weights(sd, architecture), **fpn_weights(sd), **rpn_weights(sd)}
    if config is not None:  # the box and mask heads (their shapes depend on the config)
        out.update(torchvision_heads.head_weights(sd, config))
    return out


def is_torchvision_file(path) -> bool:
    """Whether MaskRCNN.load_weights should read ``path`` as a PyTorch state_dict."""
    return isinstance(path, (str, os.PathLike)) and \
        os.fspath(path).lower().endswith(EXTENSIONS)


def load_torchvision_weights(model, source, exclude=None, verbose=0, on_mismatch="raise",
                             config=None) -> dict:
    """Set torchvision Mask R-CNN weights on a model by layer name.

    model: a MaskRCNN (its ``keras_model`` and ``config`` are used) or a Keras model
        (then pass ``config`` for the heads).
    source: a ``.pth`` path or a state_dict (tensors or arrays).
    exclude, verbose, on_mismatch: as :func:`colabrcnn.weights.load_weights`, e.g.
        ``exclude=weights.HEADS`` to fine-tune on another NUM_CLASSES.

    Returns load_weights' report (layout "torchvision"). ``MaskRCNN.load_weights`` on a
    ``.pth`` file calls this and records the weights' origin (a loaded backbone: frozen
    BatchNorm and matterport's SGD with TRAIN_BN / OPTIMIZER "auto").
    """
    keras_model = getattr(model, "keras_model", model)
    config = config if config is not None else getattr(model, "config", None)
    if config is not None and getattr(config, "BACKBONE_STYLE", None) != "torchvision":
        raise WeightsError(
            "torchvision's weights need BACKBONE_STYLE='torchvision' (ResNet v1.5, convs "
            "without bias) and DETECTOR_STYLE='torchvision': build the model with "
            "colabrcnn.TorchvisionR50FPN (or a subclass)")
    label = os.path.basename(os.fspath(source)) \
        if isinstance(source, (str, os.PathLike)) else "torchvision state_dict"
    layers = convert_state_dict(source, config)
    return load.load_weights(keras_model, load.NamedWeights(layers, LAYOUT, label),
                             exclude=exclude, verbose=verbose, on_mismatch=on_mismatch)


__all__ = ["LAYOUT", "EXTENSIONS", "read_state_dict", "canonical_keys", "check_v1",
           "conv_kernel", "backbone_weights", "fpn_weights", "rpn_weights",
           "convert_state_dict", "is_torchvision_file", "load_torchvision_weights"]
