"""torchvision as a reference implementation in the tests (issue 18).

The dev install pins torchvision 0.28.0, the release built for torch 2.13. Its compiled
library does not load beside torch's CPU build ("operator torchvision::nms does not
exist"), so before importing torchvision this module defines the ``torchvision::nms``
operator schema (and ``qnms``, whose fake kernel torchvision registers at import) with a
small Python kernel. ``roi_align`` needs nothing: without compiled ops torchvision
itself falls back to its pure-PyTorch implementation. Both kernels are slow but exact.

    tv = load_torchvision()
    model = tv.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
"""
import functools

import torch


def nms_kernel(dets: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS with torchvision's semantics: boxes [N, (x1, y1, x2, y2)], scores [N]
    -> int64 indices kept, best score first; a box goes when its IoU with a kept box
    exceeds ``iou_threshold``."""
    if dets.numel() == 0:
        return torch.zeros(0, dtype=torch.long)
    order = torch.argsort(scores, descending=True, stable=True)
    boxes = dets[order].double()
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1) * (y2 - y1)
    # [N, N] IoU once (proposals are a few thousand at most), then the greedy pass.
    inter = ((torch.minimum(x2[:, None], x2[None]) - torch.maximum(x1[:, None], x1[None]))
             .clamp(min=0) * (torch.minimum(y2[:, None], y2[None])
                              - torch.maximum(y1[:, None], y1[None])).clamp(min=0))
    iou = inter / (areas[:, None] + areas[None] - inter)
    over = (iou > iou_threshold).numpy()
    removed = [False] * len(order)
    keep = []
    for i in range(len(order)):
        if removed[i]:
            continue
        keep.append(i)
        for j in over[i, i + 1:].nonzero()[0]:
            removed[i + 1 + j] = True
    return order[torch.tensor(keep, dtype=torch.long)]


@functools.lru_cache(None)
def load_torchvision():
    """Import torchvision with the Python NMS kernel in place of its compiled ops."""
    if not hasattr(torch.ops.torchvision, "nms"):
        lib = torch.library.Library("torchvision", "DEF")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.impl("nms", nms_kernel, "CPU")
        load_torchvision.library = lib  # keep the registration alive
    import torchvision
    import torchvision.ops.boxes as tv_boxes
    # torchvision.ops.nms asserts that its compiled library loaded; the operator it
    # then calls is the one defined above.
    tv_boxes._assert_has_ops = lambda: None
    return torchvision
