"""The Mask R-CNN model (Keras 3), and matterport's ``mrcnn.model`` names.

``import colabrcnn.model as modellib`` stands in for matterport's ``import mrcnn.model
as modellib``: ``modellib.MaskRCNN``, ``load_image_gt``, ``mold_image``, ``log``, ...
resolve here with matterport's signatures. They load lazily: importing this package
imports no Keras (``colabrcnn doctor`` works without it); Keras comes with the first
name that needs it. A matterport name with no counterpart raises
:class:`colabrcnn.errors.NotProvidedError` saying what replaces it.
"""
import importlib

from ..errors import NotProvidedError

_LAZY = {
    # name: (module, attribute)
    "MaskRCNN": ("colabrcnn.model.maskrcnn", "MaskRCNN"),
    "log": ("colabrcnn.model.matterport", "log"),
    "build_rpn_targets": ("colabrcnn.model.matterport", "build_rpn_targets"),
    "data_generator": ("colabrcnn.model.matterport", "data_generator"),
    "load_image_gt": ("colabrcnn.data.sample", "load_image_gt"),
    "mold_image": ("colabrcnn.model.transform", "mold_image"),
    "unmold_image": ("colabrcnn.model.transform", "unmold_image"),
    "compose_image_meta": ("colabrcnn.model.transform", "compose_image_meta"),
    "parse_image_meta": ("colabrcnn.model.transform", "parse_image_meta"),
    "compute_backbone_shapes": ("colabrcnn.model.anchors", "compute_backbone_shapes"),
    "BatchNorm": ("colabrcnn.model.backbone", "BatchNorm"),
}
for _name in ("apply_box_deltas_graph", "clip_boxes_graph", "overlaps_graph", "log2_graph",
              "norm_boxes_graph", "denorm_boxes_graph", "parse_image_meta_graph",
              "smooth_l1_loss", "resnet_graph", "identity_block", "conv_block", "rpn_graph",
              "build_rpn_model"):
    _LAZY[_name] = ("colabrcnn.model.matterport_graph", _name)

_LAYERS = ("Keras 3 layers with static shapes whose constructors take the anchors, image "
           "shape and counts rather than a config; build the whole graph with "
           "MaskRCNN(mode, config, model_dir) and read a layer's output with "
           "model.run_graph(images, [(name, model.keras_model.get_layer(...).output)]) "
           "instead (this layer: {})")
_DYNAMIC = ("it builds variable-length tensors per image, which jit compilation cannot "
            "take; the model does this work with fixed counts and validity masks in {} "
            "instead")
_NOT_PROVIDED = {
    "ProposalLayer": _LAYERS.format("colabrcnn.model.rpn.ProposalLayer"),
    "PyramidROIAlign": _LAYERS.format("colabrcnn.model.roi_align.PyramidROIAlign"),
    "DetectionTargetLayer": _LAYERS.format("colabrcnn.model.targets.DetectionTargetLayer"),
    "DetectionLayer": _LAYERS.format("colabrcnn.model.detection.DetectionLayer"),
    "detection_targets_graph": _DYNAMIC.format(
        "colabrcnn.model.targets.DetectionTargetLayer"),
    "refine_detections_graph": _DYNAMIC.format("colabrcnn.model.detection.DetectionLayer"),
    "trim_zeros_graph": _DYNAMIC.format("the layers (padded boxes carry a validity mask)"),
    "batch_pack_graph": _DYNAMIC.format("colabrcnn.model.losses (masked means)"),
    "fpn_classifier_graph": (
        "the heads are layer sets shared by the training and inference graphs, with "
        "matterport's layer names and weights; use colabrcnn.model.heads.ClassifierHead "
        "instead, or MaskRCNN, which builds it"),
    "build_fpn_mask_graph": (
        "the heads are layer sets shared by the training and inference graphs, with "
        "matterport's layer names and weights; use colabrcnn.model.heads.MaskHead "
        "instead, or MaskRCNN, which builds it"),
    "build_detection_targets": (
        "it serves training the heads on random ROIs (USE_RPN_ROIS=False), which is not "
        "supported; the heads train on the RPN's proposals. Use "
        "MaskRCNN.run_graph to look at ROIs and their targets instead"),
    "generate_random_rois": (
        "it serves training the heads on random ROIs (USE_RPN_ROIS=False), which is not "
        "supported; the heads train on the RPN's proposals. Use "
        "MaskRCNN.run_graph(images, [('proposals', model.keras_model.get_layer('ROI')"
        ".output)]) to see real proposals instead"),
}
for _loss, _layer in (("rpn_class_loss_graph", "rpn.RPNClassLoss"),
                      ("rpn_bbox_loss_graph", "rpn.RPNBBoxLoss"),
                      ("mrcnn_class_loss_graph", "losses.MRCNNClassLoss"),
                      ("mrcnn_bbox_loss_graph", "losses.MRCNNBBoxLoss"),
                      ("mrcnn_mask_loss_graph", "losses.MRCNNMaskLoss (it takes logits)")):
    _NOT_PROVIDED[_loss] = (f"the losses are layers with static shapes (masked means); "
                            f"use colabrcnn.model.{_layer} instead")


def __getattr__(name):
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    if name in _NOT_PROVIDED:
        raise NotProvidedError("mrcnn.model", name, _NOT_PROVIDED[name])
    raise AttributeError(f"module 'colabrcnn.model' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = sorted(_LAZY)
