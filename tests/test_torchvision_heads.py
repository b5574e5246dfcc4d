"""torchvision's Mask R-CNN from the proposals on, in our layers (issue 18): ROIAlign,
box and mask heads with converted weights, detections and mask pasting, each compared
with torchvision's own modules on the same inputs.

Reference: ``maskrcnn_resnet50_fpn(weights=None)`` (its ``roi_heads`` and ``transform``
with random, non-trivial weights); ours with DETECTOR_STYLE="torchvision",
HEAD_BATCHNORM=False and ``colabrcnn/weights/torchvision_heads.py``. Tolerance: max abs
diff <= 1e-4 * max(1, max |reference|). TensorFlow in-process; JAX in a subprocess on
the same saved inputs and references.
"""
import os
import sys

import cv2
import keras
import numpy as np
import pytest

from colabrcnn.config import Config
from colabrcnn.model import transform
from colabrcnn.model.detection import DetectionLayer
from colabrcnn.model.heads import ClassifierHead, MaskHead
from colabrcnn.model.roi_align import PyramidROIAlign, roi_levels_torchvision
from colabrcnn.weights.torchvision_heads import head_weights
from conftest import run_in_backend
from layer_checks import round_trip, to_numpy

SIDE = 512            # network input (square, no resize/pad in torchvision)
STRIDES = (4, 8, 16, 32)
NUM_CLASSES = 91
CHANNELS = 256
FC = 1024
STD_DEV = [0.1, 0.1, 0.2, 0.2]   # torchvision's box coder weights (10, 10, 5, 5)


def max_diff(ours, ref, name):
    """Max abs difference, asserted within 1e-4 of the reference's scale (>= 1)."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (name, ours.shape, ref.shape)
    diff = float(np.max(np.abs(ours - ref))) if ref.size else 0.0
    tol = 1e-4 * max(1.0, float(np.max(np.abs(ref))) if ref.size else 1.0)
    assert diff <= tol, f"{name}: max abs diff {diff:.3g} > {tol:.3g}"
    print(f"{name}: max abs diff {diff:.3g} (reference max {np.max(np.abs(ref)):.3g})")
    return diff


# --------------------------------------------------------------------------- inputs
def roi_boxes(rng):
    """[K, (x1, y1, x2, y2)] float32 pixels of a SIDE x SIDE image: every pyramid level,
    boxes touching the image border, boxes over the top/left border by less than a P2
    pixel, tiny boxes (< 1 level pixel: torchvision's size clamp). Box sizes stay
    >= 5 % away from the level boundaries 112 / 224 / 448 px."""
    boxes = []

    def add(h, w, y1=None, x1=None):
        y1 = rng.uniform(0, SIDE - h) if y1 is None else y1
        x1 = rng.uniform(0, SIDE - w) if x1 is None else x1
        boxes.append([x1, y1, x1 + w, y1 + h])

    for lo, hi, n in ((0.3, 3.0, 4), (20, 100, 6), (125, 210, 6), (250, 420, 6)):
        for _ in range(n):
            s, r = rng.uniform(lo, hi), rng.uniform(0.6, 1.6)
            add(s * np.sqrt(r), s / np.sqrt(r))
    for _ in range(4):                                   # level 5: >= 470 px
        add(rng.uniform(470, SIDE), rng.uniform(470, SIDE))
    add(60.5, 33.3, y1=0.0)                              # touching the top
    add(150.2, 181.7, x1=0.0)                            # touching the left
    add(40.7, 70.1, y1=SIDE - 40.7)                      # touching the bottom
    add(300.3, 280.9, x1=SIDE - 280.9, y1=SIDE - 300.3)  # touching bottom-right
    add(90.6, 45.2, y1=-2.3, x1=-1.7)                    # over the top-left corner
    add(200.4, 260.8, x1=-3.1)                           # over the left border
    return np.array(boxes, np.float32)


def proposals_and_outputs(rng, count=240):
    """Proposals clustered around a few objects (so that NMS matters), class logits
    and box regressions in torchvision's layout ([R, NC], [R, NC * 4] (dx, dy, dw, dh)
    raw, i.e. times (10, 10, 5, 5))."""
    centres = rng.uniform(60, SIDE - 60, (12, 2))
    sizes = rng.uniform(20, 200, (12, 2))
    pick = rng.integers(0, 12, count)
    c = centres[pick] + rng.normal(0, 8, (count, 2))
    s = sizes[pick] * rng.uniform(0.8, 1.25, (count, 2))
    boxes = np.concatenate([c - s / 2, c + s / 2], 1)[:, [1, 0, 3, 2]]  # x1 y1 x2 y2
    boxes = np.clip(boxes, 0, SIDE).astype(np.float32)
    logits = rng.normal(0, 1.5, (count, NUM_CLASSES))
    object_class = rng.integers(1, NUM_CLASSES, 12)
    logits[np.arange(count), object_class[pick]] += rng.uniform(1, 7, count)
    logits[:, 0] += rng.normal(2, 2, count)
    regression = rng.normal(0, 1, (count, NUM_CLASSES * 4))
    regression[:8, 2::4] = 25.0   # dw / 5 = 5 > log(1000/16): the clamp
    return boxes, logits.astype(np.float32), regression.astype(np.float32)


def xyxy_to_ours(boxes, side=SIDE):
    """torchvision pixel (x1, y1, x2, y2) -> our normalized (y1, x1, y2, x2) / side."""
    return (np.asarray(boxes, np.float32)[..., [1, 0, 3, 2]] / np.float32(side))


def tv_regression_to_ours(regression):
    """[R, NC * 4] (dx, dy, dw, dh) -> our deltas [R, NC, 4] (dy, dx, dh, dw) (the raw
    outputs; both scale them by the same BBOX_STD_DEV)."""
    return regression.reshape(len(regression), -1, 4)[..., [1, 0, 3, 2]]


# ----------------------------------------------------------------------------- ours
def head_config():
    return Config(NAME="tv", NUM_CLASSES=NUM_CLASSES, DETECTOR_STYLE="torchvision",
                  HEAD_BATCHNORM=False)


def build_ours(weights, num_boxes, num_proposals):
    """Our stages as one Keras model (compiled once by predict_on_batch):
    PyramidROIAlign 7 and 14 (torchvision style) on boxes + P2..P5, ClassifierHead and
    MaskHead (converted weights, no BatchNorm) on given pooled ROIs, DetectionLayer
    (torchvision style) on given proposals, class probabilities and deltas."""
    k, r = num_boxes, num_proposals
    boxes = keras.Input((k, 4), name="boxes")
    fmaps = [keras.Input((SIDE // s, SIDE // s, CHANNELS), name=f"p{i + 2}")
             for i, s in enumerate(STRIDES)]
    pooled7 = keras.Input((k, 7, 7, CHANNELS), name="pooled7")
    pooled14 = keras.Input((k, 14, 14, CHANNELS), name="pooled14")
    rois = keras.Input((r, 4), name="rois")
    probs = keras.Input((r, NUM_CLASSES), name="probs")
    deltas = keras.Input((r, NUM_CLASSES, 4), name="deltas")
    window = keras.Input((4,), name="window")
    cls = ClassifierHead(NUM_CLASSES, FC, 7, train_bn=False, batchnorm=False)
    mask = MaskHead(NUM_CLASSES, CHANNELS, train_bn=False, batchnorm=False)
    logits, _, box_deltas = cls(pooled7, k)
    outputs = {
        "pool7": PyramidROIAlign((7, 7), (SIDE, SIDE), style="torchvision")(boxes, *fmaps),
        "pool14": PyramidROIAlign((14, 14), (SIDE, SIDE), style="torchvision")(boxes,
                                                                                 *fmaps),
        "logits": logits, "deltas": box_deltas, "masks": mask(pooled14, k),
        "detections": DetectionLayer(100, 0.05, 0.5, STD_DEV, style="torchvision",
                                     image_shape=(SIDE, SIDE))(rois, probs, deltas, window),
    }
    model = keras.Model([boxes] + fmaps + [pooled7, pooled14, rois, probs, deltas, window],
                        outputs)
    assert not any("bn" in layer.name for layer in model.layers)
    for layer in [cls.conv1, cls.conv2, cls.logits, cls.bbox] + mask.convs + \
            [mask.deconv, mask.out]:
        layer.set_weights(weights[layer.name])
    return model


def run_ours(ref):
    """build_ours on the saved inputs -> its outputs (NumPy, batch of one removed)."""
    weights = {name: [ref[f"w/{name}/{i}"] for i in range(2)]
               for name in sorted({k.split("/")[1] for k in ref if k.startswith("w/")})}
    model = build_ours(weights, len(ref["boxes"]), len(ref["proposals"]))
    logits = ref["det_logits"]
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs = (probs / probs.sum(-1, keepdims=True)).astype(np.float32)
    inputs = [xyxy_to_ours(ref["boxes"])] + [ref[f"p{i}"][0] for i in range(2, 6)] + \
        [ref["pooled7"], ref["pooled14"], xyxy_to_ours(ref["proposals"]), probs,
         tv_regression_to_ours(ref["det_regression"]), np.array([0, 0, 1, 1], np.float32)]
    out = model.predict_on_batch([x[None] for x in inputs])
    return {name: np.asarray(v)[0] for name, v in out.items()}


def compare_ours(ref):
    """Every stage of ours against the saved torchvision references; {stage: diff}."""
    ours = run_ours(ref)
    diffs = {}
    diffs["roi_align_7"] = max_diff(ours["pool7"], ref["pooled7"], "roi_align 7x7")
    diffs["roi_align_14"] = max_diff(ours["pool14"], ref["pooled14"], "roi_align 14x14")
    # The heads on torchvision's pooled ROIs (each stage on the same input).
    diffs["class_logits"] = max_diff(ours["logits"], ref["class_logits"], "class logits")
    diffs["box_deltas"] = max_diff(ours["deltas"],
                                   tv_regression_to_ours(ref["box_regression"]),
                                   "box deltas")
    diffs["mask_logits"] = max_diff(ours["masks"], ref["mask_logits"], "mask logits")
    det = ours["detections"]
    det = det[det[:, 4] > 0]
    det[:, :4] *= SIDE
    assert len(det) == len(ref["det_boxes"]) > 20
    np.testing.assert_array_equal(det[:, 4], ref["det_labels"])
    assert np.all(np.diff(det[:, 5]) <= 0)
    np.testing.assert_allclose(det[:, 5], ref["det_scores"], rtol=1e-5, atol=1e-6)
    box_diff = float(np.max(np.abs(det[:, :4] - xyxy_to_ours(ref["det_boxes"], 1))))
    assert box_diff <= 1e-3, box_diff
    print(f"detections: {len(det)}, boxes max abs diff {box_diff:.3g} px, same classes "
          f"and score order")
    diffs["detection_boxes_px"] = box_diff
    return diffs


# -------------------------------------------------------------------- torchvision side
@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """torchvision's outputs on seeded random inputs, saved for the JAX subprocess."""
    # torch loads here only: the JAX subprocess imports this module without it.
    import torch
    from torchvision_ref import load_torchvision
    tv = load_torchvision()
    return compute_reference(tv, torch, tmp_path_factory)


def compute_reference(tv, torch, tmp_path_factory):
    """torchvision's heads (random weights) on seeded inputs -> the arrays compare_ours
    checks, saved to an .npz for the JAX subprocess."""
    torch.manual_seed(0)
    model = tv.models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, min_size=256, max_size=256).eval()
    heads = model.roi_heads
    # Non-trivial weights everywhere in the heads (the predictors start at std 0.01 /
    # 0.001, which would hide a wrong conversion); biases too.
    with torch.no_grad():
        for name, p in heads.named_parameters():
            fan_in = p[0].numel() if p.dim() > 1 else 1
            p.copy_(torch.randn_like(p) * (1.5 / np.sqrt(fan_in) if p.dim() > 1 else 0.3))
    rng = np.random.default_rng(0)
    out = {"boxes": roi_boxes(rng)}
    feats = {}
    for i, s in enumerate(STRIDES):
        f = rng.normal(size=(CHANNELS, SIDE // s, SIDE // s)).astype(np.float32)
        feats[str(i)] = torch.from_numpy(f[None])
        out[f"p{i + 2}"] = np.transpose(f, (1, 2, 0))[None]        # NHWC
    boxes = [torch.from_numpy(out["boxes"])]
    with torch.no_grad():
        p7 = heads.box_roi_pool(feats, boxes, [(SIDE, SIDE)])        # [K, C, 7, 7]
        p14 = heads.mask_roi_pool(feats, boxes, [(SIDE, SIDE)])      # [K, C, 14, 14]
        class_logits, box_regression = heads.box_predictor(heads.box_head(p7))
        mask_logits = heads.mask_predictor(heads.mask_head(p14))     # [K, NC, 28, 28]
        proposals, det_logits, det_regression = proposals_and_outputs(rng)
        det_boxes, det_scores, det_labels = heads.postprocess_detections(
            torch.from_numpy(det_logits), torch.from_numpy(det_regression),
            [torch.from_numpy(proposals)], [(SIDE, SIDE)])
    sd = {k: v.numpy() for k, v in model.state_dict().items() if k.startswith("roi_heads.")}
    out.update(pooled7=p7.permute(0, 2, 3, 1).numpy(), pooled14=p14.permute(0, 2, 3, 1).numpy(),
               class_logits=class_logits.numpy(), box_regression=box_regression.numpy(),
               mask_logits=mask_logits.permute(0, 2, 3, 1).numpy(),
               proposals=proposals, det_logits=det_logits, det_regression=det_regression,
               det_boxes=det_boxes[0].numpy(), det_scores=det_scores[0].numpy(),
               det_labels=det_labels[0].numpy().astype(np.float32))
    for name, ws in head_weights(sd, head_config()).items():
        for i, w in enumerate(ws):
            out[f"w/{name}/{i}"] = w
    path = tmp_path_factory.mktemp("tv_heads") / "reference.npz"
    np.savez(path, **out)
    return {"arrays": out, "path": str(path), "state_dict": sd, "model": model,
            "torch": torch}


# ---------------------------------------------------------------------------- tests
def test_roi_boxes_span_every_level():
    boxes = roi_boxes(np.random.default_rng(0))
    levels = to_numpy(roi_levels_torchvision(xyxy_to_ours(boxes)[None], (SIDE, SIDE)))[0]
    assert set(levels.tolist()) == {2, 3, 4, 5}
    assert min((boxes[:, 2] - boxes[:, 0]) / 4) < 1          # tiny: clamped to 1 px
    assert boxes[:, :2].min() < 0 and boxes[:, 2:].max() == SIDE


def test_every_stage_matches_torchvision_on_tensorflow(reference):
    compare_ours(reference["arrays"])


def test_every_stage_matches_torchvision_on_jax(reference):
    out = run_in_backend("jax", f"""
        import sys
        sys.path.insert(0, "tests")
        import numpy as np
        from test_torchvision_heads import compare_ours
        ref = dict(np.load({reference["path"]!r}))
        print(compare_ours(ref))
    """)
    assert "detection_boxes_px" in out


def test_converter_reads_old_key_names_too(reference):
    sd = reference["state_dict"]
    renamed = {}
    for k, v in sd.items():
        if ".mask_head." in k:
            i = int(k.split(".")[2])
            k = f"roi_heads.mask_head.mask_fcn{i + 1}.{k.split('.')[-1]}"
        renamed[k] = v
    assert "roi_heads.mask_head.mask_fcn4.weight" in renamed
    new, from_old = head_weights(sd, head_config()), head_weights(renamed, head_config())
    assert new.keys() == from_old.keys()
    for name in new:
        for a, b in zip(new[name], from_old[name]):
            np.testing.assert_array_equal(a, b)


def test_mask_pasting_matches_torchvision(reference):
    torch = reference["torch"]
    tv_transform = reference["model"].transform
    rng = np.random.default_rng(5)
    # An original image of 300 x 384 molded into SIDE x SIDE (square mode): scaled by
    # 4/3 to 400 x 512 and padded above and below.
    original = (300, 384, 3)
    scale = transform.resize_scale(original, 400, SIDE, None, "square")
    resized = transform.scaled_size(original, scale)
    _, _, window = transform.placement(resized + (3,), 400, SIDE, "square")
    assert resized == (400, 512) and window == (56, 0, 456, 512)
    n = 24
    h = rng.uniform(6, 300, n)
    w = rng.uniform(6, 400, n)
    y1 = rng.uniform(0, resized[0] - h)
    x1 = rng.uniform(0, resized[1] - w)
    y1[:3], x1[3:6] = 0.0, resized[1] - w[3:6]                 # on the borders
    boxes = np.stack([x1, y1, x1 + w, y1 + h], 1).astype(np.float32)  # resized image
    labels = rng.integers(1, NUM_CLASSES, n)
    # Smooth blobs: 4x4 noise upsampled, through a sigmoid.
    coarse = rng.normal(0, 4, (n, 4, 4)).astype(np.float32)
    probs = np.stack([1 / (1 + np.exp(-cv2.resize(c, (28, 28)))) for c in coarse])
    result = tv_transform.postprocess(
        [{"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(labels),
          "scores": torch.linspace(0.9, 0.1, n), "masks": torch.from_numpy(probs)[:, None]}],
        [resized], [original[:2]])[0]
    ref_boxes = result["boxes"].numpy()
    ref_masks = result["masks"][:, 0].numpy() > 0.5
    # Ours: the same detections in the molded image, padded to 100 rows.
    det = np.zeros((100, 6), np.float32)
    det[:n, :4] = (boxes[:, [1, 0, 3, 2]] + [window[0], window[1]] * 2) / SIDE
    det[:n, 4] = labels
    det[:n, 5] = np.linspace(0.9, 0.1, n)
    mrcnn_mask = np.zeros((100, 28, 28, NUM_CLASSES), np.float32)
    mrcnn_mask[np.arange(n), :, :, labels] = probs
    rois, class_ids, scores, masks = transform.unmold_detections(
        det, mrcnn_mask, original, (SIDE, SIDE, 3), window, style="torchvision")
    assert rois.dtype == np.float32 and masks.shape == original[:2] + (n,)
    np.testing.assert_array_equal(class_ids, labels)
    box_diff = np.max(np.abs(rois - ref_boxes[:, [1, 0, 3, 2]]))
    assert box_diff <= 1e-3, box_diff
    inter = np.logical_and(masks, np.moveaxis(ref_masks, 0, -1)).sum((0, 1))
    union = np.logical_or(masks, np.moveaxis(ref_masks, 0, -1)).sum((0, 1))
    iou = inter / np.maximum(union, 1)
    assert union.min() > 0 and iou.min() >= 0.99, iou.min()
    print(f"mask pasting: boxes max diff {box_diff:.3g} px, min mask IoU {iou.min():.4f}")


def test_cv2_linear_resize_is_torch_bilinear(reference):
    """paste_mask's cv2.resize(INTER_LINEAR) on float32 = F.interpolate(bilinear,
    align_corners=False), upsampling and downsampling (exact halves included)."""
    torch = reference["torch"]
    m = np.random.default_rng(1).random((30, 30), dtype=np.float32)
    for h, w in ((7, 13), (15, 15), (30, 30), (31, 60), (97, 211), (460, 300)):
        ref = torch.nn.functional.interpolate(torch.from_numpy(m)[None, None], size=(h, w),
                                              mode="bilinear", align_corners=False)[0, 0]
        np.testing.assert_allclose(cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR),
                                   ref.numpy(), atol=1e-5)


def test_roi_align_torchvision_style_zero_outside_and_round_trip():
    """Samples beyond the map (y > H) are 0, as in torchvision's compiled roi_align
    (its pure-PyTorch fallback, the reference above, reads the border there, so the
    parity boxes stay where both agree)."""
    fmaps = [np.ones((1, SIDE // s, SIDE // s, 3), np.float32) for s in STRIDES]
    layer = PyramidROIAlign((7, 7), (SIDE, SIDE), style="torchvision")
    boxes = np.array([[[1.1, 0.2, 1.3, 0.4], [0.2, 0.2, 0.4, 0.4]]], np.float32)
    out = to_numpy(layer(boxes, *fmaps))
    np.testing.assert_array_equal(out[0, 0], 0)
    np.testing.assert_allclose(out[0, 1], 1, rtol=1e-6)
    copy = round_trip(layer)
    assert copy.style == "torchvision"
    det = round_trip(DetectionLayer(100, 0.05, 0.5, STD_DEV, style="torchvision",
                                    image_shape=(SIDE, SIDE)))
    assert (det.style, det.image_shape) == ("torchvision", [SIDE, SIDE])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([os.path.abspath(__file__), "-q", "-s"]))
