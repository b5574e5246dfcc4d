"""torchvision as a reference implementation in the tests (issue 18).

The dev install pins torchvision 0.28.0, the release built for torch 2.13. Its compiled
library does not load beside torch's CPU build ("operator torchvision::nms does not
exist"), so where that library does not load, this module defines the
``torchvision::nms`` operator schema (and ``qnms``, whose fake kernel torchvision
registers at import) with a small Python kernel before importing torchvision. For ``roi_align`` torchvision itself falls back to its
pure-PyTorch implementation, run here without torch.compile. Both are slow but exact.

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


def compiled_ops_load() -> bool:
    """Whether torchvision's compiled library loads beside this torch (on a CUDA build
    it does; beside the CPU build of the development machines it does not)."""
    import glob
    import importlib.util
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return False
    for path in glob.glob(f"{spec.submodule_search_locations[0]}/_C*.so"):
        try:
            torch.ops.load_library(path)
            return True
        except (OSError, RuntimeError):
            return False
    return False


@functools.lru_cache(None)
def load_torchvision():
    """Import torchvision; where its compiled ops do not load, with the Python NMS
    kernel in their place and its pure-PyTorch roi_align run eagerly."""
    compiled = compiled_ops_load()
    if not compiled:
        lib = torch.library.Library("torchvision", "DEF")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.impl("nms", nms_kernel, "CPU")
        load_torchvision.library = lib  # keep the registration alive
    import torchvision
    if not compiled:
        import sys
        tv_boxes = sys.modules["torchvision.ops.boxes"]
        # (``torchvision.ops.roi_align`` the attribute is the function, not the module.)
        tv_roi_align = sys.modules["torchvision.ops.roi_align"]
        # torchvision.ops.nms asserts that its compiled library loaded; the operator it
        # then calls is the one defined above.
        tv_boxes._assert_has_ops = lambda: None
        # The pure-PyTorch roi_align is wrapped in torch.compile, whose first call
        # takes ~20 s on CPU: the same function, run eagerly.
        tv_roi_align._roi_align = getattr(tv_roi_align._roi_align, "__wrapped__",
                                           tv_roi_align._roi_align)
    return torchvision
