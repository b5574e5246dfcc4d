"""matterport's ``utils`` module: the NumPy helpers of the data pipeline, the model
wrapper and evaluation, gathered from their homes so ``colabrcnn.utils.X`` keeps working.

Boxes: ``colabrcnn/boxes.py``. Anchors and RPN targets: ``model/anchors.py``. Resizing,
mini-masks, molding and image meta: ``model/transform.py``. matterport's AP
(``compute_matches``, ``compute_ap``, ``compute_ap_range``, ``trim_zeros``):
``evaluate/ap.py``. ``Dataset``, ``load_image_gt`` and the Keras helpers
(``batch_slice``, ``box_refinement_graph``) load on first use, so importing this module
imports no Keras. README, "Migrating from matterport", lists every name of matterport's
module and what it is here.
"""
from __future__ import annotations

import importlib
import os
import shutil

from .boxes import (apply_box_deltas, box_refinement, compute_iou,  # noqa: F401
                    compute_overlaps, compute_overlaps_masks, compute_recall,
                    denorm_boxes, extract_bboxes, non_max_suppression, norm_boxes)
from .errors import NotProvidedError
from .evaluate.ap import (compute_ap, compute_ap_range, compute_matches,  # noqa: F401
                          trim_zeros)
from .model.anchors import (AnchorIndex, anchor_index, build_rpn_targets,  # noqa: F401
                            compute_backbone_shapes, generate_anchors,
                            generate_pyramid_anchors, get_anchors)
from .model.transform import (compose_image_meta, expand_mask, minimize_mask,  # noqa: F401
                              mold_image, pad_to_shape, parse_image_meta, placement,
                              resize, resize_image, resize_mask, resize_scale,
                              scaled_size, unmold_image, unmold_mask)

# Where matterport's download_trained_weights fetched mask_rcnn_coco.h5 from.
COCO_MODEL_URL = ("https://github.com/matterport/Mask_RCNN/releases/download/v2.0/"
                  "mask_rcnn_coco.h5")

_LAZY = {
    # name: (module, attribute); loaded on first use (see the module docstring)
    "Dataset": ("colabrcnn.data.dataset", "Dataset"),
    "batch_slice": ("colabrcnn.model.matterport_graph", "batch_slice"),
    "box_refinement_graph": ("colabrcnn.model.matterport_graph", "box_refinement_graph"),
}
_NOT_PROVIDED = {
    "mold_mask": "matterport's mold_mask is an empty placeholder (its body is `pass`); "
                 "use minimize_mask (mini-masks) or resize_mask instead",
}


def download_trained_weights(coco_model_path, verbose=1):
    """Put matterport's COCO weights (mask_rcnn_coco.h5) at ``coco_model_path``.

    Downloads through :func:`colabrcnn.weights.fetch` (resumed if cut, size and
    checksum verified, cached on Drive when mounted), then copies the file there.
    """
    from . import weights  # the weights module imports h5py and more: keep it lazy
    if verbose > 0:
        print("Downloading pretrained model to " + coco_model_path + " ...")
    source = weights.fetch("coco", progress=verbose > 0)
    folder = os.path.dirname(os.path.abspath(coco_model_path))
    os.makedirs(folder, exist_ok=True)
    if os.path.abspath(source) != os.path.abspath(coco_model_path):
        tmp = f"{coco_model_path}.partial{os.getpid()}"
        shutil.copyfile(source, tmp)
        os.replace(tmp, coco_model_path)
    if verbose > 0:
        print("... done downloading pretrained model!")


def __getattr__(name):
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    if name in _NOT_PROVIDED:
        raise NotProvidedError("mrcnn.utils", name, _NOT_PROVIDED[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Ground truth loading: the loader's one sample builder, with matterport's signature.
from .data.sample import load_image_gt  # noqa: F401, E402
