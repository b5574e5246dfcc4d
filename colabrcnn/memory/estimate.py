"""The training-memory estimate and the mixed-precision choice.

Plain arithmetic from the architecture (no Keras, no backend): :func:`estimate_memory`
returns a :class:`MemoryEstimate` with a readable breakdown; :func:`mixed_precision_policy`
picks the Keras dtype policy for the accelerator at hand.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields

from .. import hardware
from ..errors import ConfigError
from ..model.spec import (BASIC_FILTERS, BOTTLENECK_FILTERS, LAYER_REGEX, STAGE_BLOCKS,
                          positive_count)

GiB = 1 << 30
MiB = 1 << 20


# =============================================================================
# Devices and mixed precision
# =============================================================================
# Compute capability 7.0 and up have tensor cores: float16 is fast there and mixed
# precision is a free win. P100 (6.0) has float16 arithmetic but no tensor cores;
# K80/P4/P40 and the GTX 10 series are slow at it. The capability comes from
# colabrcnn.hardware (nvidia-smi for this machine's GPU, a name table for named GPUs).
def as_device(dev) -> dict:
    """A device dict from a dict, or from a name such as "T4", "TPU v3" or "cpu"."""
    if isinstance(dev, dict):
        return dev
    name = str(dev)
    low = name.lower()
    if low.startswith("tpu") or " tpu" in low:
        kind = "tpu"
    elif low in ("cpu", "") or low.startswith("cpu"):
        kind = "cpu"
    else:
        kind = "gpu"
    return {"name": name, "kind": kind, "memory_bytes": None}


def first_accelerator(devices) -> dict | None:
    """The first GPU or TPU among ``devices`` (dicts or names), or None."""
    for d in devices or []:
        d = as_device(d)
        if d.get("kind") in ("gpu", "tpu"):
            return d
    return None


def has_fast_float16(device):
    """True for GPUs with tensor cores (compute capability >= 7.0), False for older
    GPUs, TPUs and CPUs, None for a GPU this module does not know."""
    d = as_device(device)
    if d.get("kind") != "gpu":
        return False
    cc = hardware.compute_capability(d)
    if cc is None:
        return None
    return cc >= (7, 0)


def mixed_precision_policy(config, devices=None):
    """The Keras dtype policy for ``config.MIXED_PRECISION``: None (float32),
    "mixed_float16" or "mixed_bfloat16".

    "auto": mixed_float16 on GPUs with fast float16 (tensor cores, compute capability
    >= 7.0: T4, V100, A100, A10, L4, H100, RTX 20xx and newer), decided from the
    compute capability nvidia-smi reports or else from the GPU's name
    (:func:`colabrcnn.hardware.compute_capability`); off (float32) on
    P100, K80, other older or unknown GPUs and on the CPU; mixed_bfloat16 on TPUs.
    True: mixed_float16 (mixed_bfloat16 on a TPU). False: None. A policy name is
    returned as given.

    ``devices``: device dicts as :func:`colabrcnn.hardware.devices` returns, or names
    ("T4", "Tesla P100-PCIE-16GB", "TPU v3", "cpu"); default: this machine's.
    """
    mp = config.MIXED_PRECISION if hasattr(config, "MIXED_PRECISION") else config
    if mp is False or mp is None:
        return None
    if isinstance(mp, str) and mp in ("mixed_float16", "mixed_bfloat16"):
        return mp
    if isinstance(devices, (str, dict)):
        devices = [devices]
    devs = hardware.local_devices() if devices is None else [as_device(d) for d in devices]
    accel = first_accelerator(devs)
    if mp is True:
        return "mixed_bfloat16" if accel is not None and accel["kind"] == "tpu" \
            else "mixed_float16"
    if mp != "auto":
        raise ConfigError(f"MIXED_PRECISION must be True, False, 'auto', 'mixed_float16' "
                          f"or 'mixed_bfloat16', got {mp!r}.")
    if accel is None:
        return None
    if accel["kind"] == "tpu":
        return "mixed_bfloat16"
    return "mixed_float16" if has_fast_float16(accel) else None


# =============================================================================
# The estimate
# =============================================================================
# Calibration notes (public figures for matterport-style training, all layers unless
# said otherwise):
#
# * matterport/Mask_RCNN README and issue #186 (waleedka, 2018-01-12): "You need a 12GB
#   GPU to use the default settings" -- ResNet-101, 1024x1024, IMAGES_PER_GPU=2,
#   TRAIN_ROIS_PER_IMAGE=200, mini-masks, float32, TF1 graph mode. So the real peak
#   is below ~11.5 GiB (what TF could use of a 12 GB card).
# * matterport issues #587, #498, #872: 8-12 GB cards (GTX 1080/1080 Ti, Titan Xp)
#   run out of memory training '4+'/'all' with ResNet-101 while 'heads' trains (their
#   image sizes vary from 512 px up): the default is near the limit of such cards.
# * facebookresearch/maskrcnn-benchmark MODEL_ZOO.md (PyTorch, V100, 2 images/GPU,
#   800x1333, float32, stem + res2 frozen, 512 ROIs, masks on positives only): Mask
#   R-CNN R-50-FPN 5.2 GB, R-101-FPN 7.9 GB; Detectron (Caffe2, P100) 8.6 / 10.2 GB;
#   mmdetection (V100) R-50-FPN 5.9 GB (later model zoo: R-50 4.4, R-101 6.4 GB).
#   Images of 800x1333 have about the area of 1024x1024.
# * matterport issues #44, #2395, #2895: the tensors named in the OOM messages are the
#   mask head's [ROIs, 256, 28, 28] float32 (2 images x 200 ROIs = 321 MB each).
#
# The formula below (with ACTIVATION_OVERHEAD) gives 9.8 GiB for matterport's default
# in float32 (inside the 12 GB figure), 5.7 GiB with mixed precision, and for a
# maskrcnn-benchmark-like setting (layers="3+", 128 ROIs through the mask head, same
# image area) 7.5 GiB for R-101 and 5.4 GiB for R-50 against the measured 7.9 and 5.2.
# The tensor inventory was checked against XLA's buffer assignment of this model's
# jitted training step (JAX on CPU: ``compiled.memory_analysis()`` and the
# --xla_dump_to memory-usage report; benchmarks/memory.py --xla). XLA keeps the
# tensors counted here and more: 1.5x the count in the backbone and up to 1.9x in the
# mask head, partly CPU-only layout copies (NHWC -> CHWN for kernel gradients). The
# activations are therefore scaled by ACTIVATION_OVERHEAD; 1.2 brings the formula to
# maskrcnn-benchmark's measured figures and keeps matterport's default
# under its 12 GB.
ACTIVATION_OVERHEAD = 1.2

# Layer names that stand for each part when a layers regex is matched against them.
_PART_NAMES = {1: "conv1", 2: "res2a_branch2a", 3: "res3a_branch2a",
               4: "res4a_branch2a", 5: "res5a_branch2a", "fpn": "fpn_c5p5",
               "rpn": "rpn_model", "heads": "mrcnn_mask_conv1"}
# The ResNet block tables and matterport's layer presets come from model/spec.py
# (Keras-free), the same tables the backbone and train.set_trainable use.
LAYER_PRESETS = LAYER_REGEX


def layer_regex(layers) -> str:
    """The regular expression of a layers preset ("heads", "3+", ...) or ``layers``."""
    return LAYER_PRESETS.get(layers, layers)


def trainable_parts(layers) -> dict:
    """{part: bool} for stages 1-5, "fpn", "rpn", "heads" under a layers preset/regex."""
    try:
        pattern = re.compile(layer_regex(layers))
    except (re.error, TypeError) as e:
        raise ConfigError(f"layers={layers!r} is neither a preset (heads, 3+, 4+, 5+, "
                          f"all) nor a valid regular expression: {e}") from None
    return {part: bool(pattern.fullmatch(name)) for part, name in _PART_NAMES.items()}


def _backbone_blocks(arch):
    """[(stage, stride, out_channels, stored_per_px, internal_per_px, conv_params,
    bn_channels)] for every residual block; stored/internal count elements per output
    pixel (see estimate_memory)."""
    out = []
    cin = 64
    for stage in (2, 3, 4, 5):
        stride = 2 ** stage
        for b in range(STAGE_BLOCKS[arch][stage]):
            if arch == "resnet18":
                f = BASIC_FILTERS[stage]
                proj = b == 0 and (stage > 2 or cin != f)
                # 2a conv out + relu out, 2b conv out, block out (+ shortcut conv out)
                stored = 2 * f + f + f + (f if proj else 0)
                params = 9 * cin * f + f + 9 * f * f + f + ((cin * f + f) if proj else 0)
                bn = 2 * f + (f if proj else 0)
                cout = f
            else:
                f1, f2, f3 = BOTTLENECK_FILTERS[stage]
                proj = b == 0
                # 2a, 2b: conv out + relu out; 2c: conv out; block out; shortcut conv out
                stored = 2 * f1 + 2 * f2 + f3 + f3 + (f3 if proj else 0)
                params = (cin * f1 + f1 + 9 * f1 * f2 + f2 + f2 * f3 + f3
                          + ((cin * f3 + f3) if proj else 0))
                bn = f1 + f2 + f3 + (f3 if proj else 0)
                cout = f3
            out.append((stage, stride, cout, stored, stored - cout, params, bn))
            cin = cout
    return out


@dataclass
class MemoryEstimate:
    """Training memory of one Config on one device, in bytes, by part.

    ``total`` is the sum of the parts. ``bytes_per_activation`` is 2 with mixed
    precision, 4 without; ``params``/``trainable_params`` count weights.
    """
    weights: int = 0
    gradients: int = 0
    optimizer: int = 0
    backbone: int = 0
    fpn: int = 0
    rpn: int = 0
    roi_heads: int = 0
    inputs: int = 0
    workspace: int = 0
    params: int = 0
    trainable_params: int = 0
    bytes_per_activation: int = 4
    policy: str | None = None
    layers: str = "all"
    notes: list = field(default_factory=list)

    PARTS = ("weights", "gradients", "optimizer", "backbone", "fpn", "rpn", "roi_heads",
             "inputs", "workspace")
    LABELS = {"weights": "weights", "gradients": "gradients (trainable part)",
              "optimizer": "optimizer state (momentum, accumulators)",
              "backbone": "backbone activations kept for backward",
              "fpn": "FPN activations", "rpn": "RPN activations",
              "roi_heads": "ROI heads (box + mask) activations",
              "inputs": "inputs and mask targets (mini-masks)",
              "workspace": "workspace (transient gradients, cuDNN, remat)"}

    @property
    def total(self):
        return int(sum(getattr(self, p) for p in self.PARTS))

    @property
    def activations(self):
        return self.backbone + self.fpn + self.rpn + self.roi_heads

    def as_dict(self):
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["total"] = self.total
        return out

    def lines(self):
        out = [f"Estimated training memory, layers={self.layers!r}, "
               f"{self.policy or 'float32'}: {fmt_bytes(self.total)}"]
        for p in self.PARTS:
            out.append(f"  {self.LABELS[p]:<48} {fmt_bytes(getattr(self, p)):>10}")
        out.append(f"  ({self.params / 1e6:.1f}M weights, "
                   f"{self.trainable_params / 1e6:.1f}M trained)")
        return out

    def __str__(self):
        return "\n".join(self.lines())


def fmt_bytes(n):
    return "n/a" if n is None else f"{n / GiB:.2f} GiB"


def _resolve_policy(config, mixed_precision, devices):
    if mixed_precision is None:
        return mixed_precision_policy(config, devices)
    if mixed_precision is True:
        return "mixed_float16"
    if mixed_precision is False:
        return None
    if mixed_precision in ("mixed_float16", "mixed_bfloat16"):
        return mixed_precision
    raise ConfigError(f"mixed_precision must be None (from the config), True, False, "
                      f"'mixed_float16' or 'mixed_bfloat16', got {mixed_precision!r}.")


def estimate_memory(config, layers="all", mixed_precision=None, devices=None):
    """Estimate the accelerator memory of one training step of ``config``.

    Returns a :class:`MemoryEstimate` (bytes per part, ``.total``). ``layers`` is what
    ``train(layers=...)`` gets (a preset or a regex). ``mixed_precision``: None to
    follow ``config.MIXED_PRECISION`` on ``devices`` (default: this machine's; a name
    like "T4" works), or True/False/a policy name to force it.

    Formula (elements are counted per image, then x IMAGES_PER_GPU x bytes):

    * weights: every parameter in float32 (4 bytes; mixed precision keeps float32
      variables). Counted from the layer shapes (conv k*k*cin*cout + bias, BatchNorm 4
      per channel, of which gamma/beta train). ResNet-101 + heads at 81 classes: 64M.
    * gradients: 4 bytes per trained parameter. optimizer: SGD momentum, 4 bytes per
      trained parameter, plus 4 more for the accumulator when
      GRADIENT_ACCUMULATION_STEPS > 1.
    * backbone: activations kept for the backward pass, from the ResNet shapes at
      IMAGE_SHAPE (stage k works at 1/2^k of the side). Per conv+BN(+ReLU) unit two
      tensors stay (the conv output, which BatchNorm's gamma gradient needs, and the
      ReLU output, which the next conv's kernel gradient needs): for a bottleneck
      block 2*f1 + 2*f2 + f3 + f3(out) [+ f3 projection shortcut] channels at its
      output resolution; stem: 2 x 64 channels at 1/2. Layers *before* the first
      trained layer keep nothing, except C2..C5, the inputs of the FPN's trained
      lateral convs (so layers='heads' keeps almost nothing in the backbone). With
      REMAT only block outputs stay, plus one block's internals recomputed at a time
      (counted in workspace).
    * fpn: P2'..P5' (inputs of the 3x3 smoothing convs) and P2..P6, 256 channels each.
    * rpn: the shared conv's output (RPN_CONV_CHANNELS, 512) on every level, plus
      12 x anchors per cell (class/box outputs and their concatenations).
    * roi_heads: per ROI (TRAIN_ROIS_PER_IMAGE per image), the box head's pooled 7x7x256
      and two FC layers (conv + ReLU out); per positive slot (the mask head runs on
      the int(TRAIN_ROIS_PER_IMAGE * ROI_POSITIVE_RATIO) positive slots per image),
      the mask head's pooled 14x14x256, four conv+ReLU pairs, the 28x28x256 deconv
      output and the 28x28xNUM_CLASSES logits (plus their float32 copy under mixed
      precision).
    * inputs: the molded image (float32), GT masks as bool plus one float32 copy made
      while cropping mask targets (MINI_MASK_SHAPE with USE_MINI_MASK, else the full
      image size -- the reason mini-masks matter), RPN targets, anchors.
    * workspace: transient memory during backward: three times the largest kept
      activation (incoming and outgoing gradient plus a temporary), the ROIAlign
      gradient scattered over the whole pyramid, float16 copies of the weights under
      mixed precision, the recomputed block under REMAT, and 256 MiB for cuDNN.

    The four activation parts are then multiplied by ACTIVATION_OVERHEAD (1.2) for
    what real graphs keep beyond this inventory; see the calibration notes above.

    Assumptions: a compiled step (XLA on TF/JAX: element-wise ops fused, dead
    intermediates freed); PyTorch runs eagerly here and may keep more (measure it
    with benchmarks/memory.py). Square images (IMAGE_SHAPE). Activations in 2 bytes
    under mixed precision except the float32 losses/logits. A callable BACKBONE is
    counted as a ResNet-50. REMAT is counted as block-level recomputation. The CUDA
    context and fragmentation are not included: compare with about 87% of the card
    (what :func:`fit_to_gpu` does).
    """
    policy = _resolve_policy(config, mixed_precision, devices)
    act = 2 if policy else 4
    f32 = 4
    parts = trainable_parts(layers)
    arch = config.BACKBONE if config.BACKBONE in STAGE_BLOCKS else "resnet50"
    notes = []
    if callable(config.BACKBONE):
        notes.append("callable BACKBONE counted as a ResNet-50")
    remat = bool(getattr(config, "REMAT", False))
    batch = int(config.IMAGES_PER_GPU)
    h, w = int(config.IMAGE_SHAPE[0]), int(config.IMAGE_SHAPE[1])
    C = int(config.TOP_DOWN_PYRAMID_SIZE)
    nc = int(config.NUM_CLASSES)
    fc = int(config.FPN_CLASSIF_FC_LAYERS_SIZE)
    A = len(config.RPN_ANCHOR_RATIOS)

    def px(stride):
        return math.ceil(h / stride) * math.ceil(w / stride)

    # ---------------------------------------------------------------- backbone
    stages = [s for s in (1, 2, 3, 4, 5) if parts[s]]
    first = stages[0] if stages else None          # first trained backbone stage
    blocks = _backbone_blocks(arch)
    fpn_inputs = {2: None, 3: None, 4: None, 5: None}
    for stage, stride, cout, *_ in blocks:
        fpn_inputs[stage] = cout * px(stride)       # last block of the stage wins
    backbone = 0          # elements kept per image
    largest = 0           # largest single kept tensor, elements per image
    recompute = 0         # REMAT: one block's internals, elements per image
    conv_params = 7 * 7 * 3 * 64 + 64
    bn_channels = 64
    if first is not None and first <= 1:
        stem = 2 * 64 * px(2)
        if remat:
            recompute = max(recompute, stem)
        else:
            backbone += stem
        largest = max(largest, 64 * px(2))
    if first is not None and first <= 2:
        backbone += 64 * px(4)                      # C1, input of stage 2
    for stage, stride, cout, stored, internal, params, bn in blocks:
        conv_params += params
        bn_channels += bn
        if first is not None and stage >= first:
            if remat:
                backbone += cout * px(stride)
                recompute = max(recompute, internal * px(stride))
            else:
                backbone += stored * px(stride)
            largest = max(largest, cout * px(stride))
    # Frozen stages still hand C2..C5 to the trained FPN laterals, and the first
    # trained stage needs its input.
    for stage in (2, 3, 4, 5):
        frozen = first is None or stage < first
        if frozen and (parts["fpn"] or (first is not None and stage == first - 1)):
            backbone += fpn_inputs[stage]
    backbone_params = conv_params + 4 * bn_channels
    backbone_trainable = 0
    if first is not None:
        trained_conv = (7 * 7 * 3 * 64 + 64) if parts[1] else 0
        trained_bn = 64 if parts[1] else 0
        for stage, stride, cout, stored, internal, params, bn in blocks:
            if parts[stage]:
                trained_conv += params
                trained_bn += bn
        backbone_trainable = trained_conv + 2 * trained_bn

    # ---------------------------------------------------------------------- FPN
    cins = [fpn_inputs[s] // px(2 ** s) for s in (2, 3, 4, 5)]
    fpn_params = sum(ci * C + C for ci in cins) + 4 * (9 * C * C + C)
    fpn_kept = (C * (2 * sum(px(2 ** s) for s in (2, 3, 4, 5)) + px(64))
                if (parts["fpn"] or first is not None) else C * px(64))

    # ---------------------------------------------------------------------- RPN
    stride2 = int(config.RPN_ANCHOR_STRIDE) ** 2
    cells = sum(px(s) for s in config.BACKBONE_STRIDES) // stride2
    rc = int(getattr(config, "RPN_CONV_CHANNELS", 512))   # the shared conv's width
    rpn_kept = (rc + 12 * A) * cells
    rpn_params = 9 * C * rc + rc + rc * 6 * A + 6 * A
    largest = max(largest, rc * px(config.BACKBONE_STRIDES[0]) // stride2,
                  2 * C * px(4))

    # ----------------------------------------------------------------- ROI heads
    rois = int(config.TRAIN_ROIS_PER_IMAGE)
    # The mask head runs on the positive slots of the sample only.
    mask_rois = positive_count(rois, config.ROI_POSITIVE_RATIO)
    pool, mpool = int(config.POOL_SIZE), int(config.MASK_POOL_SIZE)
    mh, mw = (int(v) for v in config.MASK_SHAPE)
    box_head = pool * pool * C + 4 * fc
    mask_head = (mpool * mpool * C * (1 + 2 * 4) + mh * mw * C + mh * mw * nc)
    box_f32 = 5 * nc                                       # float32 logits/copies
    mask_f32 = mh * mw * nc if policy else 0
    heads_params = (pool * pool * C * fc + fc + fc * fc + fc + 4 * 2 * fc
                    + fc * nc + nc + fc * 4 * nc + 4 * nc
                    + 4 * (9 * C * C + C + 4 * C) + 4 * C * C + C + C * nc + nc)
    largest = max(largest, mh * mw * C * mask_rois)

    # -------------------------------------------------------------------- inputs
    if config.USE_MINI_MASK:
        mask_px = int(config.MINI_MASK_SHAPE[0]) * int(config.MINI_MASK_SHAPE[1])
    else:
        mask_px = h * w
    gt = int(config.MAX_GT_INSTANCES)
    anchors = sum(px(s) for s in config.BACKBONE_STRIDES) * A // stride2
    inputs_per_image = (h * w * 3 * f32                         # molded image
                        + mask_px * gt * (1 + f32)                # bool masks + f32 copy
                        + anchors * 4                             # rpn_match int32
                        + int(config.RPN_TRAIN_ANCHORS_PER_IMAGE) * 16
                        + gt * 20 + rois * mh * mw * f32)         # GT boxes, mask targets
    inputs_bytes = batch * inputs_per_image + anchors * 16        # anchors, float32

    # ------------------------------------------------------------------- weights
    params = backbone_params + fpn_params + rpn_params + heads_params
    trainable = (backbone_trainable + (fpn_params if parts["fpn"] else 0)
                 + (rpn_params if parts["rpn"] else 0)
                 + (heads_params - 2 * 2 * fc - 4 * 2 * C if parts["heads"] else 0))
    opt_slots = (1 if float(getattr(config, "LEARNING_MOMENTUM", 0.9)) else 0) \
        + (1 if int(getattr(config, "GRADIENT_ACCUMULATION_STEPS", 1)) > 1 else 0)

    # ----------------------------------------------------------------- workspace
    pyramid = C * sum(px(2 ** s) for s in (2, 3, 4, 5))
    workspace = (3 * largest * batch * act
                 + pyramid * batch * f32
                 + recompute * batch * act
                 + (params * act if policy else 0)
                 + 256 * MiB)

    k = ACTIVATION_OVERHEAD
    est = MemoryEstimate(
        weights=params * f32,
        gradients=trainable * f32,
        optimizer=trainable * f32 * opt_slots,
        backbone=int(backbone * batch * act * k),
        fpn=int(fpn_kept * batch * act * k),
        rpn=int(rpn_kept * batch * act * k),
        roi_heads=int(batch * ((rois * box_head + mask_rois * mask_head) * act
                               + (rois * box_f32 + mask_rois * mask_f32) * f32) * k),
        inputs=inputs_bytes,
        workspace=workspace,
        params=params, trainable_params=trainable, bytes_per_activation=act,
        policy=policy, layers=str(layers), notes=notes)
    return est


# =============================================================================
# Memory sizes
# =============================================================================
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_memory(value):
    """Bytes from an int (bytes) or a string such as "15GB", "16 GiB", "15.5 gb",
    "24000 MiB". GB and GiB both mean 2**30 here: GPU makers and Colab's "15 GB" T4
    are binary gigabytes (nvidia-smi: 15360 MiB)."""
    if isinstance(value, bool):
        raise ConfigError(f"memory must be bytes or a size like '15GB', got {value!r}.")
    if isinstance(value, (int, float)):
        n = int(value)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?)(?:i?[bB])?\s*", str(value))
        if not m:
            raise ConfigError(f"Cannot read memory={value!r}: give bytes or a size like "
                              f"'15GB', '16 GiB' or '24000MiB'.")
        n = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if n < 64 * MiB:
        raise ConfigError(f"memory={value!r} is {n} bytes, too small for any GPU; an int "
                          f"counts bytes -- did you mean '{value}GB'?")
    return n




__all__ = ["GiB", "MiB", "as_device", "first_accelerator", "has_fast_float16",
           "mixed_precision_policy", "ACTIVATION_OVERHEAD", "LAYER_PRESETS", "layer_regex",
           "trainable_parts", "MemoryEstimate", "fmt_bytes", "estimate_memory",
           "parse_memory"]
