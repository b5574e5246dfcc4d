"""GPU memory as a feature (DESIGN.md, decision 7).

Every memory lever is a Config setting. This module

* picks mixed precision for the accelerator at hand (:func:`mixed_precision_policy`);
* estimates the training memory of a Config from the architecture, not from a magic
  constant (:func:`estimate_memory`), with a breakdown a person can read;
* turns a Config that does not fit into one that does, cheapest lever first, and says
  what each change costs (:func:`fit_to_gpu`), optionally checking with real steps;
* ships presets for the GPUs of free notebooks (:data:`GPU_PRESETS`);
* recognises out-of-memory errors of every backend (:func:`is_oom_error`) and answers
  them with the settings to change (:func:`oom_advice`, :func:`raise_gpu_memory_error`,
  :func:`reduced_config`).

Typical use on Colab::

    from colabrcnn import memory
    config, why = memory.fit_to_gpu(config, layers="all")   # prints one line per change
    print(memory.estimate_memory(config, layers="all"))

Estimates, fitting and advice are plain arithmetic and never import Keras or a
backend; only the trial steps (``fit_to_gpu(measure=True)`` on a GPU) build a model.
"""
from __future__ import annotations

import functools
import gc
import math
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field, fields

from .errors import ConfigError, GPUMemoryError

GiB = 1 << 30
MiB = 1 << 20

# fit_to_gpu aims the estimate at this fraction of the GPU's memory. The rest covers
# the CUDA context (~0.3-0.5 GB), allocator fragmentation, images with more instances
# than the synthetic ones and the estimate's own error (about +-15% against the
# figures in the calibration notes below).
DEFAULT_TARGET = 0.87


# =============================================================================
# Devices and mixed precision
# =============================================================================
# Compute capability by GPU name, most specific patterns first. Compute capability 7.0
# and up have tensor cores: float16 is fast there and mixed precision is a free win.
# P100 (6.0) has float16 arithmetic but no tensor cores; K80/M60/P4/P40 and the GTX 10
# series are slow at it. Sources: NVIDIA's CUDA GPUs table
# (https://developer.nvidia.com/cuda-gpus) and the Keras mixed precision guide.
_GPU_CC = [
    (r"GB?200|B200|B100", (10, 0)),
    (r"RTX\s*PRO\s*\d+\s*Blackwell|RTX\s*50\d\d", (12, 0)),
    (r"H100|H200|H800|GH200|\bH20\b", (9, 0)),
    (r"L40S?|\bL4\b|\bL20\b|RTX\s*40\d\d|RTX\s*\d000\s*Ada|RTX\s*[2345]000\s*Ada", (8, 9)),
    (r"Orin", (8, 7)),
    (r"A100|A800|\bA30\b", (8, 0)),
    (r"\bA10G?\b|\bA16\b|\bA2\b|\bA40\b|RTX\s*A\d{4}|RTX\s*30\d\d", (8, 6)),
    (r"Xavier", (7, 2)),
    (r"\bT4\b|RTX\s*20\d\d|TITAN\s*RTX|Quadro\s*RTX|GTX\s*16\d\d|RTX\s*[68]000", (7, 5)),
    (r"V100|TITAN\s*V\b|Quadro\s*GV100", (7, 0)),
    (r"P100|Quadro\s*GP100", (6, 0)),
    (r"\bP40\b|\bP4\b|\bP6\b|GTX\s*10\d\d|TITAN\s*Xp?\b|Quadro\s*P\d+|\bP6000\b", (6, 1)),
    (r"\bM60\b|\bM40\b|\bM4\b|GTX\s*9\d\d|Quadro\s*M\d+|TITAN\s*X\b", (5, 2)),
    (r"K80", (3, 7)),
    (r"K40|K20|K10", (3, 5)),
]


def gpu_compute_capability(name):
    """(major, minor) of a GPU from its name (as nvidia-smi prints it), None if unknown."""
    text = str(name or "")
    for pattern, cc in _GPU_CC:
        if re.search(pattern, text, flags=re.IGNORECASE):
            return cc
    return None


def _parse_cc(value):
    if value is None:
        return None
    if isinstance(value, (tuple, list)) and len(value) >= 2:
        return int(value[0]), int(value[1])
    m = re.match(r"\s*(\d+)\.(\d+)", str(value))
    return (int(m.group(1)), int(m.group(2))) if m else None


def _as_device(dev):
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


def _accelerator(devices):
    for d in devices or []:
        d = _as_device(d)
        if d.get("kind") in ("gpu", "tpu"):
            return d
    return None


def has_fast_float16(device):
    """True for GPUs with tensor cores (compute capability >= 7.0), False for older
    GPUs, TPUs and CPUs, None for a GPU this module does not know."""
    d = _as_device(device)
    if d.get("kind") != "gpu":
        return False
    cc = _parse_cc(d.get("compute_capability")) or gpu_compute_capability(d.get("name"))
    if cc is None:
        return None
    return cc >= (7, 0)


def _nvidia_smi_compute_caps(timeout=10):
    """["7.5", ...] per GPU from ``nvidia-smi --query-gpu=compute_cap`` (drivers >= 510);
    [] when nvidia-smi is missing, old or fails."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        proc = subprocess.run([exe, "--query-gpu=compute_cap", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return []
    if proc.returncode != 0:
        return []
    return [line.strip() for line in proc.stdout.splitlines() if line.strip()]


@functools.lru_cache(maxsize=1)
def _local_devices_cached():
    from . import env
    devs = [dict(d) for d in env.devices()]
    caps = _nvidia_smi_compute_caps()
    gpus = [d for d in devs if d.get("kind") == "gpu"]
    for d, cap in zip(gpus, caps):
        if _parse_cc(cap):
            d["compute_capability"] = cap
    return tuple(devs)


def local_devices(refresh=False):
    """This machine's devices (:func:`colabrcnn.env.devices`, plus ``compute_capability``
    for GPUs when nvidia-smi reports it). Cached: the answer does not change within a
    process; ``refresh=True`` asks again."""
    if refresh:
        _local_devices_cached.cache_clear()
    return [dict(d) for d in _local_devices_cached()]


def mixed_precision_policy(config, devices=None):
    """The Keras dtype policy for ``config.MIXED_PRECISION``: None (float32),
    "mixed_float16" or "mixed_bfloat16".

    "auto": mixed_float16 on GPUs with fast float16 (tensor cores, compute capability
    >= 7.0: T4, V100, A100, A10, L4, H100, RTX 20xx and newer), decided from the
    compute capability nvidia-smi reports or else from the GPU's name; off (float32) on
    P100, K80, other older or unknown GPUs and on the CPU; mixed_bfloat16 on TPUs.
    True: mixed_float16 (mixed_bfloat16 on a TPU). False: None. A policy name is
    returned as given.

    ``devices``: device dicts as :func:`colabrcnn.env.devices` returns, or names
    ("T4", "Tesla P100-PCIE-16GB", "TPU v3", "cpu"); default: this machine's.
    """
    mp = config.MIXED_PRECISION if hasattr(config, "MIXED_PRECISION") else config
    if mp is False or mp is None:
        return None
    if isinstance(mp, str) and mp in ("mixed_float16", "mixed_bfloat16"):
        return mp
    if isinstance(devices, (str, dict)):
        devices = [devices]
    devs = local_devices() if devices is None else [_as_device(d) for d in devices]
    accel = _accelerator(devs)
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
_BOTTLENECK = {2: (64, 64, 256), 3: (128, 128, 512), 4: (256, 256, 1024),
               5: (512, 512, 2048)}
_BLOCKS = {"resnet50": {2: 3, 3: 4, 4: 6, 5: 3}, "resnet101": {2: 3, 3: 4, 4: 23, 5: 3},
           "resnet18": {2: 2, 3: 2, 4: 2, 5: 2}}
_BASIC = {2: 64, 3: 128, 4: 256, 5: 512}


# matterport's layer-selection presets, as colabrcnn.train.LAYER_REGEX has them (a test
# keeps the two equal); copied so that estimates do not import Keras.
LAYER_PRESETS = {
    "heads": r"(mrcnn\_.*)|(rpn\_.*)|(fpn\_.*)",
    "3+": r"(res3.*)|(bn3.*)|(res4.*)|(bn4.*)|(res5.*)|(bn5.*)|(mrcnn\_.*)|(rpn\_.*)|"
          r"(fpn\_.*)",
    "4+": r"(res4.*)|(bn4.*)|(res5.*)|(bn5.*)|(mrcnn\_.*)|(rpn\_.*)|(fpn\_.*)",
    "5+": r"(res5.*)|(bn5.*)|(mrcnn\_.*)|(rpn\_.*)|(fpn\_.*)",
    "all": ".*",
}


def _layer_regex(layers):
    return LAYER_PRESETS.get(layers, layers)


def _trainable_parts(layers):
    """{part: bool} for stages 1-5, "fpn", "rpn", "heads" under a layers preset/regex."""
    try:
        pattern = re.compile(_layer_regex(layers))
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
        for b in range(_BLOCKS[arch][stage]):
            if arch == "resnet18":
                f = _BASIC[stage]
                proj = b == 0 and (stage > 2 or cin != f)
                # 2a conv out + relu out, 2b conv out, block out (+ shortcut conv out)
                stored = 2 * f + f + f + (f if proj else 0)
                params = 9 * cin * f + f + 9 * f * f + f + ((cin * f + f) if proj else 0)
                bn = 2 * f + (f if proj else 0)
                cout = f
            else:
                f1, f2, f3 = _BOTTLENECK[stage]
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
    * rpn: the 512-channel shared conv output on every level, plus 12 x anchors per
      cell (class/box outputs and their concatenations).
    * roi_heads: per ROI (TRAIN_ROIS_PER_IMAGE per image), the box head's pooled 7x7x256
      and two FC layers (conv + ReLU out), the mask head's pooled 14x14x256, four
      conv+ReLU pairs, the 28x28x256 deconv output and the 28x28xNUM_CLASSES logits
      (plus their float32 copy under mixed precision).
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
    parts = _trainable_parts(layers)
    arch = config.BACKBONE if config.BACKBONE in _BLOCKS else "resnet50"
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
    rpn_kept = (512 + 12 * A) * cells
    rpn_params = 9 * C * 512 + 512 + 512 * 6 * A + 6 * A
    largest = max(largest, 512 * px(config.BACKBONE_STRIDES[0]) // stride2,
                  2 * C * px(4))

    # ----------------------------------------------------------------- ROI heads
    rois = int(config.TRAIN_ROIS_PER_IMAGE)
    pool, mpool = int(config.POOL_SIZE), int(config.MASK_POOL_SIZE)
    mh, mw = (int(v) for v in config.MASK_SHAPE)
    box_head = pool * pool * C + 4 * fc
    mask_head = (mpool * mpool * C * (1 + 2 * 4) + mh * mw * C + mh * mw * nc)
    heads_f32 = 5 * nc + (mh * mw * nc if policy else 0)   # float32 logits/copies
    heads_params = (pool * pool * C * fc + fc + fc * fc + fc + 4 * 2 * fc
                    + fc * nc + nc + fc * 4 * nc + 4 * nc
                    + 4 * (9 * C * C + C + 4 * C) + 4 * C * C + C + C * nc + nc)
    largest = max(largest, mh * mw * C * rois)

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
        roi_heads=int(rois * batch * ((box_head + mask_head) * act + heads_f32 * f32) * k),
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


# =============================================================================
# Levers
# =============================================================================
# Each lever looks at a config and returns (new_config, what changed, why, cost) or
# None when it does not apply (already used, or nothing left to reduce). Order = least
# accuracy cost first. ``ctx`` carries the target device and the layers trained.

def _lever_mixed_precision(cfg, ctx):
    accel = ctx["device"]
    if accel is None or mixed_precision_policy(cfg, [accel]) is not None:
        return None
    if accel.get("kind") == "tpu":
        return (cfg.copy(MIXED_PRECISION=True), "MIXED_PRECISION = True",
                "bfloat16 activations on the TPU", "no accuracy cost expected")
    if not has_fast_float16(accel):
        return None
    return (cfg.copy(MIXED_PRECISION=True), "MIXED_PRECISION = True",
            f"{accel.get('name', 'this GPU')} has fast float16 (tensor cores): half-size "
            f"activations", "no accuracy cost expected (loss scaling keeps small "
            "gradients); steps usually get faster")


def _lever_remat(cfg, ctx):
    if cfg.REMAT:
        return None
    parts = _trainable_parts(ctx["layers"])
    if not any(parts[s] for s in (1, 2, 3, 4, 5)):
        return None   # a frozen backbone stores nothing to recompute
    why = remat_unavailable(cfg)
    if why:
        note = f"REMAT skipped: {why}."
        if note not in ctx.setdefault("notes", []):
            ctx["notes"].append(note)
        return None
    return (cfg.copy(REMAT=True), "REMAT = True",
            "the backbone keeps only block outputs and recomputes the rest in the backward "
            "pass", "about 20-30% slower steps; same results")


def remat_unavailable(cfg):
    """Why REMAT cannot be used with ``cfg`` (a short reason), or None when it can.

    The model recomputes the built-in ResNet's residual blocks; a callable BACKBONE
    must use keras.remat itself, and TRAIN_BN would update BatchNorm statistics twice.
    """
    if callable(cfg.BACKBONE):
        return "a callable BACKBONE has to use keras.remat itself"
    if cfg.TRAIN_BN is True:  # "auto" resolves at train(); colabrcnn.train checks it there
        return ("it would update BatchNorm statistics twice with TRAIN_BN = True (set "
                "TRAIN_BN = False to allow it)")
    return None


def _lever_mini_mask(cfg, ctx):
    if cfg.USE_MINI_MASK:
        return None
    return (cfg.copy(USE_MINI_MASK=True), "USE_MINI_MASK = True",
            f"ground-truth masks stored at {tuple(cfg.MINI_MASK_SHAPE)} inside their box "
            f"instead of full image size", "slightly coarser mask targets for large "
            "objects (matterport's default)")


def _lever_rois(cfg, ctx):
    n = int(cfg.TRAIN_ROIS_PER_IMAGE)
    new = 128 if n > 128 else 64 if n > 64 else None
    if new is None:
        return None
    return (cfg.copy(TRAIN_ROIS_PER_IMAGE=new), f"TRAIN_ROIS_PER_IMAGE = {new} (was {n})",
            "fewer sampled ROIs per image through the box and mask heads",
            "noisier head gradients, a small accuracy cost (the paper samples 512, "
            "matterport 200); positives keep their ROI_POSITIVE_RATIO share")


def _lever_gt(cfg, ctx):
    n = int(cfg.MAX_GT_INSTANCES)
    new = 50 if n > 50 else 35 if n > 35 else None
    if new is None:
        return None
    return (cfg.copy(MAX_GT_INSTANCES=new), f"MAX_GT_INSTANCES = {new} (was {n})",
            "fewer ground-truth slots (masks, boxes) per image",
            f"images with more than {new} instances train on a random {new} of them each "
            f"time; the other instances are dropped for that step")


def _largest_divisor(n):
    for d in range(n // 2, 0, -1):
        if n % d == 0:
            return d
    return 1


def _lever_batch(cfg, ctx):
    ipg = int(cfg.IMAGES_PER_GPU)
    if ipg <= 1:
        return None
    new = _largest_divisor(ipg)
    k = int(cfg.GRADIENT_ACCUMULATION_STEPS) * (ipg // new)
    bn = (" BatchNorm statistics come from fewer images (TRAIN_BN is on)."
          if cfg.TRAIN_BN is True else "")
    return (cfg.copy(IMAGES_PER_GPU=new, GRADIENT_ACCUMULATION_STEPS=k),
            f"IMAGES_PER_GPU = {new} with GRADIENT_ACCUMULATION_STEPS = {k} (was {ipg} "
            f"and {cfg.GRADIENT_ACCUMULATION_STEPS})",
            f"fewer images per step; gradients of {ipg // new} steps are summed before "
            f"each update, so the effective batch stays {new * k}",
            "same results, slightly slower per image (smaller steps use the GPU less "
            "fully)." + bn)


def _lever_crop(cfg, ctx):
    side = max(128, int(round(cfg.IMAGE_MAX_DIM / 2 / 64)) * 64)
    if cfg.IMAGE_RESIZE_MODE == "crop" and cfg.IMAGE_MIN_DIM <= side:
        return None
    new = cfg.copy(IMAGE_RESIZE_MODE="crop", IMAGE_MIN_DIM=min(side, cfg.IMAGE_MAX_DIM))
    return (new, f"IMAGE_RESIZE_MODE = 'crop' with IMAGE_MIN_DIM = {new.IMAGE_MIN_DIM}",
            f"training sees random {new.IMAGE_MIN_DIM}x{new.IMAGE_MIN_DIM} crops instead "
            f"of whole {cfg.IMAGE_MAX_DIM}x{cfg.IMAGE_MAX_DIM} images; detection still "
            f"runs on whole images at {cfg.IMAGE_MAX_DIM}",
            "less context per step and objects cut at crop borders; crops come from the "
            "image at its own scale (images larger than IMAGE_MAX_DIM are not shrunk "
            "first, so resize those beforehand)")


def _lever_backbone(cfg, ctx):
    if cfg.BACKBONE != "resnet101":
        return None
    return (cfg.copy(BACKBONE="resnet50"), "BACKBONE = 'resnet50'",
            "a ResNet-50 backbone (stage 4 has 6 blocks instead of 23)",
            "about 2 AP lower on COCO (R-50 vs R-101 FPN: 37.8 vs 40.1 box AP in "
            "maskrcnn-benchmark), and matterport's COCO weights are ResNet-101: start from "
            "ImageNet weights instead")


def _lever_image_size(cfg, ctx):
    if cfg.IMAGE_RESIZE_MODE == "crop":
        side = int(cfg.IMAGE_MIN_DIM)
        if side - 64 < 128:
            return None
        return (cfg.copy(IMAGE_MIN_DIM=side - 64), f"IMAGE_MIN_DIM = {side - 64} "
                f"(crop side, was {side})", "smaller training crops",
                "less context per crop; more objects cut at the borders")
    side = int(cfg.IMAGE_MAX_DIM)
    if side - 64 < 128:
        return None
    new_max = side - 64
    return (cfg.copy(IMAGE_MAX_DIM=new_max, IMAGE_MIN_DIM=min(cfg.IMAGE_MIN_DIM, new_max)),
            f"IMAGE_MAX_DIM = {new_max} (was {side})", "smaller images in training and "
            "detection", "small objects lose pixels: lower accuracy on them")


# Levers in order of accuracy cost; a lever may apply several times (ROIs 200->128->64,
# halving the batch again, image size in steps of 64).
LEVERS = (
    ("mixed_precision", _lever_mixed_precision),
    ("remat", _lever_remat),
    ("mini_mask", _lever_mini_mask),
    ("rois", _lever_rois),
    ("max_gt", _lever_gt),
    ("batch", _lever_batch),
    ("crop", _lever_crop),
    ("backbone", _lever_backbone),
    ("image_size", _lever_image_size),
)
LEVER_NAMES = tuple(name for name, _ in LEVERS)


def _next_lever(cfg, ctx, start=0, min_saving=0.01):
    """First lever from LEVERS[start:] that applies and saves at least ``min_saving``
    of the estimate -> (index, name, new_config, line, old_estimate, new_estimate) or
    None. A lever that would cost accuracy for (almost) no memory is passed over."""
    old = _estimate(cfg, ctx)
    for i in range(start, len(LEVERS)):
        name, lever = LEVERS[i]
        got = lever(cfg, ctx)
        if got is None:
            continue
        new_cfg, what, why, cost = got
        new = _estimate(new_cfg, ctx)
        if old - new < min_saving * old:
            continue
        line = (f"{what}: {why}; estimate {old / GiB:.1f} -> {new / GiB:.1f} GiB. "
                f"Cost: {cost}")
        return i, name, new_cfg, line, old, new
    return None


def _estimate(cfg, ctx):
    devices = [ctx["device"]] if ctx.get("device") else ["cpu"]
    return estimate_memory(cfg, ctx["layers"], devices=devices).total


# =============================================================================
# fit_to_gpu
# =============================================================================
def _target_device(gpu, memory):
    """(device dict or None, memory in bytes or None) from the arguments or this
    machine."""
    device = None
    if gpu is not None:
        device = dict(_as_device(gpu))
        if device.get("kind") == "gpu" and device.get("memory_bytes") is None:
            preset = _preset_key(device.get("name"))
            if preset:
                device["memory_bytes"] = GPU_MEMORY[preset]
    else:
        device = _accelerator(local_devices())
    if memory is not None:
        return device, parse_memory(memory)
    if device is not None and device.get("memory_bytes"):
        return device, int(device["memory_bytes"])
    raise ConfigError("No GPU found to fit the config to (nvidia-smi sees none). Pass the "
                      "GPU's memory, e.g. fit_to_gpu(config, memory='15GB', gpu='T4') for "
                      "Colab's T4.")


def fit_to_gpu(config, layers="all", memory=None, measure=True, verbose=True, gpu=None,
               target=DEFAULT_TARGET):
    """A copy of ``config`` whose training step fits the GPU, and why.

    Returns ``(new_config, lines)``: one line per change (what changed, why, what it
    costs), then a summary line. ``memory``: the GPU's memory as bytes or "15GB" /
    "16 GiB"; default: the GPU nvidia-smi finds (else ConfigError). ``gpu``: its name
    ("T4", "P100", a device dict) for the float16 decision; default: this machine's.
    ``target``: fraction of ``memory`` the estimate must stay under.

    Levers, cheapest in accuracy first, each applied only if still needed and only if
    it saves memory: mixed precision (GPUs with fast float16), REMAT, USE_MINI_MASK,
    TRAIN_ROIS_PER_IMAGE 200 -> 128 -> 64, MAX_GT_INSTANCES -> 50 -> 35, IMAGES_PER_GPU
    halved with GRADIENT_ACCUMULATION_STEPS doubled (same effective batch), training
    on crops of half the image size, ResNet-50, and finally smaller images in steps of
    64. Raises GPUMemoryError when even the smallest setting does not fit.

    ``measure``: True checks the chosen config with two real training steps on this
    GPU (synthetic shapes, the current Keras backend; a minute or two, mostly
    compilation) and applies further levers while they run out of memory or peak
    above 95% of the card; nothing is measured without a GPU, or when fitting for
    another GPU than this one. False trusts the estimate. A callable
    ``measure(config, layers) -> peak bytes or None`` (raising an out-of-memory error
    when it does not fit) replaces the real trial, for tests or custom checks.
    """
    device, memory = _target_device(gpu, memory)
    budget = int(memory * target)
    ctx = {"device": device, "layers": layers}
    lines = []
    gpu_name = (device or {}).get("name", "the GPU")

    def say(line):
        lines.append(line)
        if verbose:
            print(line)

    if device is None:
        say("No GPU named: mixed precision is left as configured (pass gpu='T4' etc. to "
            "consider it).")
    cfg = config
    start = 0
    changed = False
    notes_said = set()

    def apply(step):
        nonlocal start, cfg, changed
        for note in ctx.get("notes", []):
            if note not in notes_said:
                notes_said.add(note)
                say(note)
        start, _, cfg, line, _, _ = step
        changed = True
        say(line)

    while _estimate(cfg, ctx) > budget:
        step = _next_lever(cfg, ctx, start)
        if step is None:
            _raise_cannot_fit(cfg, ctx, memory, budget, layers, gpu_name)
        apply(step)

    runner = _measurer(measure, device)
    measured = None
    while runner is not None:
        try:
            measured = runner(cfg, layers)
        except Exception as e:  # noqa: BLE001 - only out-of-memory is handled
            if not is_oom_error(e):
                raise
            free_memory()
            say(f"Trial steps ran out of memory on {gpu_name} with the estimate at "
                f"{_estimate(cfg, ctx) / GiB:.1f} GiB: applying the next lever.")
            step = _next_lever(cfg, ctx, start)
            if step is None:
                _raise_cannot_fit(cfg, ctx, memory, budget, layers, gpu_name, exc=e)
            apply(step)
            continue
        if measured is not None and measured > 0.95 * memory:
            say(f"Trial steps peaked at {measured / GiB:.1f} GiB of {memory / GiB:.1f} GiB: "
                f"too close to the limit, applying the next lever.")
            step = _next_lever(cfg, ctx, start)
            if step is None:
                break
            apply(step)
            continue
        break

    est = _estimate(cfg, ctx)
    summary = (f"estimated {est / GiB:.1f} GiB of {memory / GiB:.1f} GiB "
               f"(target {target:.0%}: {budget / GiB:.1f} GiB)")
    policy = mixed_precision_policy(cfg, [device] if device else ["cpu"])
    if policy and cfg.MIXED_PRECISION == "auto":
        summary += f", {policy} through MIXED_PRECISION='auto'"
    if measured is not None:
        summary += f"; trial steps peaked at {measured / GiB:.1f} GiB"
    if changed:
        say(f"Fits {gpu_name}: {summary}.")
    else:
        say(f"The config fits {gpu_name} as it is: {summary}; nothing changed.")
    return cfg, lines


def _shape(cfg):
    return [int(v) for v in cfg.IMAGE_SHAPE]


def _raise_cannot_fit(cfg, ctx, memory, budget, layers, gpu_name, exc=None):
    est = estimate_memory(cfg, layers, devices=[ctx["device"]] if ctx["device"] else ["cpu"])
    suggestions = []
    parts = _trainable_parts(layers)
    if any(parts[s] for s in (1, 2, 3, 4, 5)):
        suggestions.append("train layers='heads' (frozen backbone) -- estimate "
                           f"{_estimate(cfg, {**ctx, 'layers': 'heads'}) / GiB:.1f} GiB")
    suggestions.append("use a GPU with more memory (Kaggle's P100 has 16 GB, Colab Pro "
                       "offers L4 24 GB and A100 40 GB)")
    err = GPUMemoryError(
        f"No setting fits {gpu_name} with {memory / GiB:.1f} GiB (target "
        f"{budget / GiB:.1f} GiB) for layers={layers!r}: the smallest setting tried "
        f"(BACKBONE={cfg.BACKBONE}, IMAGE_SHAPE={_shape(cfg)}, IMAGES_PER_GPU="
        f"{cfg.IMAGES_PER_GPU}) still needs an estimated {est.total / GiB:.1f} GiB.\n"
        + "\n".join(est.lines()), suggestions=suggestions)
    if exc is not None:
        raise err from exc
    raise err


# =============================================================================
# Trial steps on a real GPU (not run by the test suite: no GPU there)
# =============================================================================
def _measurer(measure, device):
    if callable(measure):
        return measure
    if not measure:
        return None
    local = _accelerator(local_devices())
    if local is None or local.get("kind") != "gpu":
        return None           # nothing to measure on; the estimate decides
    if device is not None and not _same_gpu(device.get("name"), local.get("name")):
        return None           # fitting for another GPU than this one
    return measure_training_step


def _same_gpu(a, b):
    a, b = str(a or "").lower(), str(b or "").lower()
    if a and b and (a in b or b in a):
        return True
    key = _preset_key(a)
    return key is not None and key == _preset_key(b)


def free_memory():
    try:
        if "keras" in sys.modules:
            sys.modules["keras"].backend.clear_session()
    except Exception:
        pass
    gc.collect()


def reset_peak_memory():
    """Reset the backend's peak-memory counter (no-op without a GPU); returns a baseline
    for JAX, whose peak cannot be reset."""
    import keras
    backend = keras.backend.backend()
    try:
        if backend == "tensorflow":
            import tensorflow as tf
            if tf.config.list_physical_devices("GPU"):
                tf.config.experimental.reset_memory_stats("GPU:0")
        elif backend == "torch":
            import torch
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
        elif backend == "jax":
            import jax
            return (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")
    except Exception:
        pass
    return None


def read_peak_memory(baseline=None):
    """Peak device memory in bytes since ``reset_peak_memory`` (None without a GPU)."""
    import keras
    backend = keras.backend.backend()
    try:
        if backend == "tensorflow":
            import tensorflow as tf
            if tf.config.list_physical_devices("GPU"):
                return int(tf.config.experimental.get_memory_info("GPU:0")["peak"])
        elif backend == "torch":
            import torch
            if torch.cuda.is_available():
                return int(torch.cuda.max_memory_allocated())
        elif backend == "jax":
            import jax
            peak = (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")
            # A JAX peak is for the whole process: only trust it if this trial set it.
            if peak is not None and (baseline is None or peak > baseline):
                return int(peak)
    except Exception:
        pass
    return None


def measure_training_step(config, layers="all", steps=2):
    """Build the training model for ``config`` in this process, run ``steps`` training
    steps on a synthetic batch and return the backend's peak device memory in bytes
    (None when the backend cannot tell). Out-of-memory errors propagate (see
    :func:`is_oom_error`). Needs a GPU to mean anything."""
    from .data.loader import DataGenerator
    from .data.shapes import shapes
    from .model.maskrcnn import MaskRCNN

    free_memory()
    baseline = reset_peak_memory()
    cfg = config
    with tempfile.TemporaryDirectory() as tmp:
        model = MaskRCNN("training", cfg, model_dir=tmp)
        try:
            model.set_trainable(layers)
            model.compile(cfg.LEARNING_RATE, cfg.LEARNING_MOMENTUM)
            size = int(cfg.IMAGE_SHAPE[0])
            data = shapes(max(2, cfg.BATCH_SIZE), size, seed=0,
                          max_instances=min(4, cfg.MAX_GT_INSTANCES))
            batch = DataGenerator(data, cfg, shuffle=False, seed=0)[0]
            for _ in range(steps):
                logs = model.keras_model.train_on_batch(batch, return_dict=True)
            float(logs["loss"])   # wait for the device
            return read_peak_memory(baseline)
        finally:
            del model
            free_memory()


# =============================================================================
# Presets for the GPUs of free notebooks
# =============================================================================
# Memory as nvidia-smi reports it (MiB): what fit_to_gpu sees on that machine.
GPU_MEMORY = {"T4": 15360 * MiB, "P100": 16280 * MiB, "L4": 23034 * MiB,
              "A100": 40960 * MiB}
_GPU_ALIASES = {"T4": r"\bT4\b", "P100": r"P100", "L4": r"\bL4\b", "A100": r"A100"}

# Config overrides for training all layers of ResNet-101 at 1024x1024 (matterport's
# defaults otherwise) on each GPU; tests/test_memory.py checks that fit_to_gpu on that
# GPU's memory gives the same settings (derive_preset regenerates them).
GPU_PRESETS = {
    "T4": {
        "overrides": {"MIXED_PRECISION": True},
        "memory_bytes": GPU_MEMORY["T4"],
        "note": "Colab/Kaggle T4, 15 GB, fast float16 (tensor cores): matterport's defaults "
                "(ResNet-101, 1024x1024, 2 images, all layers) fit with mixed precision, "
                "with room to spare; float32 would fit too but is slower.",
    },
    "P100": {
        "overrides": {},
        "memory_bytes": GPU_MEMORY["P100"],
        "note": "Kaggle P100, 16 GB, no tensor cores: matterport's defaults fit in float32. "
                "MIXED_PRECISION=True would still halve the activations if you need room "
                "(IMAGES_PER_GPU=4 fits then), but is not faster here.",
    },
    "L4": {
        "overrides": {"MIXED_PRECISION": True},
        "memory_bytes": GPU_MEMORY["L4"],
        "note": "L4, 22.5 GB, fast float16: matterport's defaults with mixed precision use "
                "about half the card; IMAGES_PER_GPU=4 fits.",
    },
    "A100": {
        "overrides": {"MIXED_PRECISION": True},
        "memory_bytes": GPU_MEMORY["A100"],
        "note": "A100 40 GB, fast float16: matterport's defaults with mixed precision use a "
                "fraction of the card; IMAGES_PER_GPU=8 fits (scale LEARNING_RATE with the "
                "batch).",
    },
}


def _matterport_default(**overrides):
    from .config import Config
    settings = dict(NAME="preset", NUM_CLASSES=81)
    settings.update(overrides)
    return Config(**settings)


def derive_preset(name, base=None, layers="all"):
    """Regenerate a GPU_PRESETS entry's overrides: :func:`fit_to_gpu` on that GPU's
    memory, then MIXED_PRECISION made explicit where the GPU has fast float16 (so the
    preset means the same on any machine). Returns {setting: value} that differ from
    ``base`` (default: matterport's defaults with 81 classes)."""
    key = _preset_key(name)
    if key is None:
        raise ConfigError(f"No preset for GPU {name!r}; known: {', '.join(GPU_PRESETS)}.")
    base = base if base is not None else _matterport_default()
    cfg, _ = fit_to_gpu(base, layers, memory=GPU_MEMORY[key], gpu=key, measure=False,
                        verbose=False)
    if has_fast_float16(key) and cfg.MIXED_PRECISION == "auto":
        cfg = cfg.copy(MIXED_PRECISION=True)
    names = [n for n in base._setting_names() if n != "NAME"]
    return {n: getattr(cfg, n) for n in names if _differs(getattr(cfg, n), getattr(base, n))}


def _differs(a, b):
    try:
        import numpy as np
        return not np.array_equal(np.asarray(a, dtype=object), np.asarray(b, dtype=object))
    except Exception:
        return a != b


def _preset_key(name):
    text = str(name or "")
    if text.upper() in GPU_PRESETS:
        return text.upper()
    for key, pattern in _GPU_ALIASES.items():
        if re.search(pattern, text, flags=re.IGNORECASE):
            return key
    return None


def preset_for_gpu(name=None):
    """The preset for a GPU name ("T4", "Tesla T4", "Tesla P100-PCIE-16GB", "NVIDIA L4",
    "A100-SXM4-40GB"; default: this machine's GPU): a dict with ``overrides`` (Config
    settings), ``memory_bytes`` and ``note``. Use ``config.copy(**preset["overrides"])``.
    Raises ConfigError for a GPU without a preset (use :func:`fit_to_gpu` there)."""
    if name is None:
        accel = _accelerator(local_devices())
        if accel is None:
            raise ConfigError("No GPU found here; name one: preset_for_gpu('T4').")
        name = accel.get("name")
    key = _preset_key(name)
    if key is None:
        raise ConfigError(f"No preset for GPU {name!r} (presets: {', '.join(GPU_PRESETS)}); "
                          f"fit_to_gpu(config) works for any GPU.")
    preset = GPU_PRESETS[key]
    cfg = _matterport_default(**preset["overrides"])
    est = estimate_memory(cfg, "all", devices=[key]).total
    return {"gpu": key, "overrides": dict(preset["overrides"]),
            "memory_bytes": preset["memory_bytes"], "note": preset["note"],
            "estimate_bytes": est}


# =============================================================================
# Out-of-memory errors
# =============================================================================
_OOM_TYPE_NAMES = {"ResourceExhaustedError", "OutOfMemoryError"}
_OOM_TEXT = re.compile(r"RESOURCE_EXHAUSTED|OOM when allocating|out of memory|"
                       r"Failed to allocate|CUBLAS_STATUS_ALLOC_FAILED|"
                       r"CUDNN_STATUS_ALLOC_FAILED|cudaErrorMemoryAllocation",
                       re.IGNORECASE)
_BACKEND_MODULES = ("tensorflow", "tf_keras", "keras", "jax", "jaxlib", "torch", "xla")


def _one_is_oom(exc):
    if isinstance(exc, MemoryError):
        return True
    mro = type(exc).__mro__
    if any(k.__name__ in _OOM_TYPE_NAMES for k in mro):
        return True
    from_backend = any(str(getattr(k, "__module__", "")).split(".")[0] in _BACKEND_MODULES
                       for k in mro)
    if from_backend or isinstance(exc, RuntimeError):
        return bool(_OOM_TEXT.search(str(exc)))
    return False


def is_oom_error(exc):
    """True if ``exc`` (or an exception it was raised from) is an out-of-memory error:
    TensorFlow's ResourceExhaustedError, XLA's RESOURCE_EXHAUSTED / "Out of memory"
    runtime errors (jaxlib's XlaRuntimeError), PyTorch's OutOfMemoryError / "CUDA out
    of memory", or Python's MemoryError. Looks at class names and messages only: no
    backend is imported."""
    seen = set()
    while exc is not None and id(exc) not in seen and len(seen) < 8:
        seen.add(id(exc))
        if _one_is_oom(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def oom_advice(config, layers="all", devices=None):
    """Concrete settings to change after an out-of-memory error with ``config``, in the
    order fit_to_gpu applies them, skipping levers already in use; each with the
    estimated saving. The last suggestions change what is trained."""
    devices = local_devices() if devices is None else [_as_device(d) for d in devices]
    accel = _accelerator(devices)
    ctx = {"device": accel, "layers": layers}
    base = _estimate(config, ctx)
    out = []
    for name, lever in LEVERS:
        got = lever(config, ctx)
        if got is None:
            continue
        new_cfg, what, why, cost = got
        saving = base - _estimate(new_cfg, ctx)
        if saving <= 0.005 * base:
            continue
        out.append(f"{what}: {why} (about -{saving / base:.0%} of the estimated "
                   f"{base / GiB:.1f} GiB). Cost: {cost}")
    if accel is not None and accel.get("kind") == "gpu" \
            and mixed_precision_policy(config, [accel]) is None \
            and not has_fast_float16(accel):
        saving = base - estimate_memory(config, layers, mixed_precision=True).total
        out.append(f"MIXED_PRECISION = True: works on {accel.get('name')} too and saves "
                   f"about -{saving / base:.0%}, but without tensor cores it is not faster")
    parts = _trainable_parts(layers)
    if any(parts[s] for s in (1, 2, 3, 4, 5)):
        heads = _estimate(config, {**ctx, "layers": "heads"})
        out.append(f"train layers='heads' first (frozen backbone: estimate "
                   f"{heads / GiB:.1f} GiB instead of {base / GiB:.1f} GiB), then "
                   f"'4+' or 'all' with the levers above")
    out.append("colabrcnn.memory.fit_to_gpu(config, layers=...) applies these in order "
               "and checks the result; model.train(..., on_oom='reduce') retries "
               "automatically")
    return out


def raise_gpu_memory_error(exc, config, layers="all"):
    """Raise :class:`GPUMemoryError` from ``exc`` (chained) with :func:`oom_advice`."""
    accel = _accelerator(local_devices())
    where = f"{accel.get('name')} ({fmt_bytes(accel.get('memory_bytes'))})" if accel \
        else "the accelerator"
    est = estimate_memory(config, layers)
    raise GPUMemoryError(
        f"Out of memory on {where} while training layers={layers!r} with "
        f"BACKBONE={config.BACKBONE}, IMAGE_SHAPE={_shape(config)}, "
        f"IMAGES_PER_GPU={config.IMAGES_PER_GPU}, TRAIN_ROIS_PER_IMAGE="
        f"{config.TRAIN_ROIS_PER_IMAGE}, mixed precision "
        f"{est.policy or 'off'} (estimated need {fmt_bytes(est.total)}).",
        suggestions=oom_advice(config, layers)) from exc


def reduced_config(config, layers="all", devices=None, explain=False):
    """The config to retry with after an out-of-memory error (``on_oom="reduce"``):
    IMAGES_PER_GPU halved with GRADIENT_ACCUMULATION_STEPS doubled (same effective
    batch); when IMAGES_PER_GPU is already 1, the first other lever that still applies
    (mixed precision, REMAT, mini-masks, fewer ROIs, fewer GT instances, crops,
    ResNet-50, smaller images). ``explain=True`` returns ``(config, line)``.
    Raises GPUMemoryError when no lever is left."""
    devices = local_devices() if devices is None else [_as_device(d) for d in devices]
    ctx = {"device": _accelerator(devices), "layers": layers}
    got = _lever_batch(config, ctx)
    if got is not None:
        new_cfg, what, why, cost = got
        line = f"{what}: {why}. Cost: {cost}"
    else:
        step = _next_lever(config, ctx, 0)
        if step is None:
            raise GPUMemoryError(
                f"Out of memory and nothing left to reduce for layers={layers!r} "
                f"(IMAGES_PER_GPU=1, every lever in use).",
                suggestions=oom_advice(config, layers, devices))
        _, _, new_cfg, line, _, _ = step
    return (new_cfg, line) if explain else new_cfg


__all__ = ["mixed_precision_policy", "has_fast_float16", "gpu_compute_capability",
           "local_devices", "estimate_memory", "MemoryEstimate", "parse_memory",
           "fit_to_gpu", "measure_training_step", "remat_unavailable", "GPU_PRESETS", "GPU_MEMORY",
           "preset_for_gpu", "derive_preset", "is_oom_error", "oom_advice",
           "raise_gpu_memory_error", "reduced_config", "LEVER_NAMES", "fmt_bytes"]
