"""Keras-free tables of the built-in backbones and the layer presets.

The backbone (``model/backbone.py``), layer selection (``train.py``) and the memory
estimate all read these, so the three agree without the estimate importing Keras.
"""
from __future__ import annotations

# Residual blocks per stage (2..5) of each built-in ResNet.
STAGE_BLOCKS: dict[str, dict[int, int]] = {
    "resnet18": {2: 2, 3: 2, 4: 2, 5: 2},
    "resnet50": {2: 3, 3: 4, 4: 6, 5: 3},
    "resnet101": {2: 3, 3: 4, 4: 23, 5: 3},
}

# Bottleneck filters (1x1 in, 3x3, 1x1 out) per stage of ResNet-50/101.
BOTTLENECK_FILTERS: dict[int, tuple[int, int, int]] = {
    2: (64, 64, 256), 3: (128, 128, 512), 4: (256, 256, 1024), 5: (512, 512, 2048)}

# Basic-block filters per stage of ResNet-18.
BASIC_FILTERS: dict[int, int] = {2: 64, 3: 128, 4: 256, 5: 512}

# matterport's layer-selection presets (regular expressions over layer names).
LAYER_REGEX: dict[str, str] = {
    "heads": r"(mrcnn\_.*)|(rpn\_.*)|(fpn\_.*)",
    "3+": r"(res3.*)|(bn3.*)|(res4.*)|(bn4.*)|(res5.*)|(bn5.*)|(mrcnn\_.*)|(rpn\_.*)|(fpn\_.*)",
    "4+": r"(res4.*)|(bn4.*)|(res5.*)|(bn5.*)|(mrcnn\_.*)|(rpn\_.*)|(fpn\_.*)",
    "5+": r"(res5.*)|(bn5.*)|(mrcnn\_.*)|(rpn\_.*)|(fpn\_.*)",
    "all": ".*",
}


def block_letter(index: int) -> str:
    """Block name within a stage: 0 -> 'a', 1 -> 'b', ... (matterport's naming)."""
    return chr(ord("a") + index)


def positive_count(train_rois_per_image: int, positive_ratio: float) -> int:
    """Slots for positives at the start of each image's ROI sample (matterport's
    ``int(TRAIN_ROIS_PER_IMAGE * ROI_POSITIVE_RATIO)``); training runs the mask head on
    these slots only (at least one)."""
    return max(1, int(train_rois_per_image * positive_ratio))
