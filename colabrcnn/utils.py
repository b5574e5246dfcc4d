"""matterport's ``utils`` module: the NumPy helpers of the data pipeline, the model
wrapper and evaluation, gathered from their homes so ``colabrcnn.utils.X`` keeps working.

Boxes: ``colabrcnn/boxes.py``. Anchors and RPN targets: ``model/anchors.py``. Resizing,
mini-masks, molding and image meta: ``model/transform.py``. matterport's AP
(``compute_matches``, ``compute_ap``, ``compute_ap_range``, ``trim_zeros``):
``evaluate/ap.py``.
"""
from __future__ import annotations

import numpy as np

from .boxes import (apply_box_deltas, box_refinement, compute_overlaps,  # noqa: F401
                    compute_overlaps_masks, denorm_boxes, extract_bboxes, norm_boxes)
from .evaluate.ap import (compute_ap, compute_ap_range, compute_matches,  # noqa: F401
                          trim_zeros)
from .model.anchors import (AnchorIndex, anchor_index, build_rpn_targets,  # noqa: F401
                            compute_backbone_shapes, generate_anchors,
                            generate_pyramid_anchors, get_anchors)
from .model.transform import (compose_image_meta, expand_mask, minimize_mask,  # noqa: F401
                              mold_image, pad_to_shape, parse_image_meta, placement,
                              resize_image, resize_mask, resize_scale, scaled_size,
                              unmold_image, unmold_mask)


# -------------------------------------------------------------- ground truth loading
def __getattr__(name):
    # load_image_gt is built by the loader's sample builder (colabrcnn/data/sample.py),
    # which imports this module: re-exported on first use, so neither import needs the
    # other to have finished.
    if name == "load_image_gt":
        from .data.sample import load_image_gt
        return load_image_gt
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
