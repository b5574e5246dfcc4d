"""Pretrained and saved weights: find, download, verify, cache, and load by layer name.

Fine-tuning from matterport's COCO weights is how a few dozen annotated images give
good masks. The whole path, on Colab or anywhere::

    from colabrcnn import MaskRCNN, weights
    model = MaskRCNN("training", config, model_dir)
    model.load_weights(weights.fetch("coco"), by_name=True, exclude=weights.HEADS)

``exclude=weights.HEADS`` leaves out the four class-count-specific layers so that a
model with another ``NUM_CLASSES`` takes everything else. To start from ImageNet
instead (train with ``layers="heads"`` first, then ``"all"``)::

    model.load_weights(weights.fetch(weights.imagenet_for(config.BACKBONE)), by_name=True)

torchvision's COCO Mask R-CNN (``colabrcnn.TorchvisionR50FPN``; ``torchvision.py``
converts its ``.pth``, which ``MaskRCNN.load_weights`` reads)::

    model.load_weights(weights.fetch("torchvision-coco"), by_name=True,
                       exclude=weights.HEADS)

``load.py`` reads and writes the by-name HDF5 layouts (matterport's, keras.applications'
ResNets); ``download.py`` holds the registry, the resumable download, verification and
the cache (Drive on Colab). The command line: ``colabrcnn fetch-weights coco``.
"""
from __future__ import annotations

from .download import (ALIASES, CACHE_ENV, DRIVE_CACHE, DRIVE_DIR, LOCAL_CACHE,
                       REGISTRY, WeightsEntry, default_cache_dir, fetch, imagenet_for,
                       list_registry, resolve, verify)
from .load import (ALL_BUT_BACKBONE, ALL_HEADS, HEADS, HEADS_AND_RPN, UNIT_LAYERS,
                   UNIT_MODELS, NamedWeights, inspect_file, keras_applications_name,
                   load_weights, named_layers, save_weights)
from .torchvision import load_torchvision_weights

__all__ = ["HEADS", "ALL_HEADS", "HEADS_AND_RPN", "ALL_BUT_BACKBONE", "REGISTRY", "ALIASES",
           "WeightsEntry", "fetch", "verify", "resolve", "default_cache_dir", "imagenet_for",
           "load_weights", "save_weights", "load_torchvision_weights", "NamedWeights",
           "named_layers", "inspect_file",
           "keras_applications_name", "list_registry", "UNIT_MODELS", "UNIT_LAYERS",
           "DRIVE_DIR", "DRIVE_CACHE", "LOCAL_CACHE", "CACHE_ENV"]
