"""torchvision's Mask R-CNN box and mask heads -> our head layers (issue 18).

``head_weights(state_dict, config)`` maps the ``roi_heads.*`` tensors of a torchvision
``maskrcnn_resnet50_fpn`` state dict (NumPy arrays) to our Keras layer names, each with
its weights in ``get_weights()`` order, for a model built with HEAD_BATCHNORM=False and
DETECTOR_STYLE="torchvision":

    roi_heads.box_head.fc6            -> mrcnn_class_conv1 (7x7 'valid' conv = the FC)
    roi_heads.box_head.fc7            -> mrcnn_class_conv2 (1x1 conv)
    roi_heads.box_predictor.cls_score -> mrcnn_class_logits
    roi_heads.box_predictor.bbox_pred -> mrcnn_bbox_fc
    roi_heads.mask_head.mask_fcn1..4 (old files) / mask_head.0.0 .. 3.0 (new modules)
                                      -> mrcnn_mask_conv1..4
    roi_heads.mask_predictor.conv5_mask     -> mrcnn_mask_deconv
    roi_heads.mask_predictor.mask_fcn_logits -> mrcnn_mask

The box-coder weights (10, 10, 5, 5) are BBOX_STD_DEV = (0.1, 0.1, 0.2, 0.2): the raw
regression outputs are the same numbers, only their order changes.
"""
from __future__ import annotations

import numpy as np

from ..errors import WeightsError

PREFIX = "roi_heads."


def _get(state_dict: dict, *names: str) -> np.ndarray:
    """The first of ``names`` present in the state dict, as float32 NumPy."""
    for name in names:
        if name in state_dict:
            return np.asarray(state_dict[name], dtype=np.float32)
    raise WeightsError(f"the torchvision state dict has none of {list(names)}")


def _conv(weight: np.ndarray) -> np.ndarray:
    """Conv2d OIHW -> Keras HWIO."""
    return np.transpose(weight, (2, 3, 1, 0))


def _expect(name: str, array: np.ndarray, shape: tuple) -> None:
    if tuple(array.shape) != tuple(shape):
        raise WeightsError(f"{name}: torchvision's tensor has shape {tuple(array.shape)}, "
                           f"the Config needs {tuple(shape)} (NUM_CLASSES, POOL_SIZE, "
                           f"FPN_CLASSIF_FC_LAYERS_SIZE, TOP_DOWN_PYRAMID_SIZE)")


def head_weights(state_dict: dict[str, np.ndarray], config) -> dict[str, list[np.ndarray]]:
    """Keras layer name -> that layer's weights (``get_weights()`` order) for the box
    and mask heads, from a torchvision Mask R-CNN (v1 heads) state dict.

    state_dict: name -> array (torch tensors converted with ``.numpy()``); both the
    key names of old files (``mask_head.mask_fcn1``) and of current modules
    (``mask_head.0.0``) are read. Shapes are checked against ``config``.
    """
    sd = state_dict
    p = PREFIX
    nc = int(config.NUM_CLASSES)
    fc = int(config.FPN_CLASSIF_FC_LAYERS_SIZE)
    pool = int(config.POOL_SIZE)
    ch = int(config.TOP_DOWN_PYRAMID_SIZE)
    out: dict[str, list[np.ndarray]] = {}

    # TwoMLPHead flattens the pooled [C, 7, 7] ROI in (C, H, W) order; our first FC is
    # a 7x7 'valid' conv, an FC over (H, W, C): reorder fc6's inputs.
    fc6 = _get(sd, p + "box_head.fc6.weight")
    _expect("box_head.fc6.weight", fc6, (fc, ch * pool * pool))
    kernel = fc6.reshape(fc, ch, pool, pool).transpose(2, 3, 1, 0)    # [7, 7, C, fc]
    out["mrcnn_class_conv1"] = [kernel, _get(sd, p + "box_head.fc6.bias")]
    fc7 = _get(sd, p + "box_head.fc7.weight")
    _expect("box_head.fc7.weight", fc7, (fc, fc))
    out["mrcnn_class_conv2"] = [fc7.T[None, None], _get(sd, p + "box_head.fc7.bias")]

    cls = _get(sd, p + "box_predictor.cls_score.weight")
    _expect("box_predictor.cls_score.weight", cls, (nc, fc))
    out["mrcnn_class_logits"] = [cls.T, _get(sd, p + "box_predictor.cls_score.bias")]
    # Per class (dx, dy, dw, dh) -> ours (dy, dx, dh, dw).
    bbox = _get(sd, p + "box_predictor.bbox_pred.weight")
    _expect("box_predictor.bbox_pred.weight", bbox, (4 * nc, fc))
    order = [1, 0, 3, 2]
    bbox = bbox.reshape(nc, 4, fc)[:, order].reshape(4 * nc, fc)
    bbox_b = _get(sd, p + "box_predictor.bbox_pred.bias").reshape(nc, 4)[:, order]
    out["mrcnn_bbox_fc"] = [bbox.T, bbox_b.reshape(-1)]

    for i in range(1, 5):
        old, new = f"{p}mask_head.mask_fcn{i}", f"{p}mask_head.{i - 1}.0"
        w = _get(sd, old + ".weight", new + ".weight")
        _expect(f"mask_head conv {i}", w, (ch, ch, 3, 3))
        out[f"mrcnn_mask_conv{i}"] = [_conv(w), _get(sd, old + ".bias", new + ".bias")]
    # ConvTranspose2d (in, out, kh, kw) -> Conv2DTranspose (kh, kw, out, in); with
    # kernel 2 and stride 2 neither flips the kernel (tests/test_torchvision_heads.py).
    deconv = _get(sd, p + "mask_predictor.conv5_mask.weight")
    _expect("mask_predictor.conv5_mask.weight", deconv, (ch, ch, 2, 2))
    out["mrcnn_mask_deconv"] = [np.transpose(deconv, (2, 3, 1, 0)),
                                _get(sd, p + "mask_predictor.conv5_mask.bias")]
    logits = _get(sd, p + "mask_predictor.mask_fcn_logits.weight")
    _expect("mask_predictor.mask_fcn_logits.weight", logits, (nc, ch, 1, 1))
    out["mrcnn_mask"] = [_conv(logits), _get(sd, p + "mask_predictor.mask_fcn_logits.bias")]
    return {name: [np.ascontiguousarray(w, dtype=np.float32) for w in ws]
            for name, ws in out.items()}
