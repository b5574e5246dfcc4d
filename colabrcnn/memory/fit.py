"""Fitting a Config to a GPU: the levers, :func:`fit_to_gpu` and the GPU presets.

Each lever is a Config change that lowers the estimate
(:func:`colabrcnn.memory.estimate.estimate_memory`), in order of accuracy cost;
:func:`fit_to_gpu` applies them until the estimate fits, then optionally checks with
real training steps (:func:`colabrcnn.probe.measure_training_step`).
:data:`GPU_PRESETS` holds the result for the GPUs of free notebooks.
"""
from __future__ import annotations

import logging
import re

from .. import hardware, probe
from ..config import Config
from ..errors import ConfigError, GPUMemoryError, is_oom_error
from .estimate import (GiB, MiB, as_device, estimate_memory, first_accelerator,
                       has_fast_float16, mixed_precision_policy, parse_memory,
                       trainable_parts)

logger = logging.getLogger(__name__)

# fit_to_gpu aims the estimate at this fraction of the GPU's memory. The rest covers
# the CUDA context (~0.3-0.5 GB), allocator fragmentation, images with more instances
# than the synthetic ones and the estimate's own error (about +-15% against the
# figures in the calibration notes of colabrcnn/memory/estimate.py).
DEFAULT_TARGET = 0.87


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
    parts = trainable_parts(ctx["layers"])
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


def lever_batch(cfg, ctx):
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
    ("batch", lever_batch),
    ("crop", _lever_crop),
    ("backbone", _lever_backbone),
    ("image_size", _lever_image_size),
)
LEVER_NAMES = tuple(name for name, _ in LEVERS)


def next_lever(cfg, ctx, start=0, min_saving=0.01):
    """First lever from LEVERS[start:] that applies and saves at least ``min_saving``
    of the estimate -> (index, name, new_config, line, old_estimate, new_estimate) or
    None. A lever that would cost accuracy for (almost) no memory is passed over."""
    old = estimated_bytes(cfg, ctx)
    for i in range(start, len(LEVERS)):
        name, lever = LEVERS[i]
        got = lever(cfg, ctx)
        if got is None:
            continue
        new_cfg, what, why, cost = got
        new = estimated_bytes(new_cfg, ctx)
        if old - new < min_saving * old:
            continue
        line = (f"{what}: {why}; estimate {old / GiB:.1f} -> {new / GiB:.1f} GiB. "
                f"Cost: {cost}")
        return i, name, new_cfg, line, old, new
    return None


def estimated_bytes(cfg, ctx):
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
        device = dict(as_device(gpu))
        if device.get("kind") == "gpu" and device.get("memory_bytes") is None:
            preset = _preset_key(device.get("name"))
            if preset:
                device["memory_bytes"] = GPU_MEMORY[preset]
    else:
        device = first_accelerator(hardware.local_devices())
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
            logger.info(line)

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

    while estimated_bytes(cfg, ctx) > budget:
        step = next_lever(cfg, ctx, start)
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
            probe.free_memory()
            say(f"Trial steps ran out of memory on {gpu_name} with the estimate at "
                f"{estimated_bytes(cfg, ctx) / GiB:.1f} GiB: applying the next lever.")
            step = next_lever(cfg, ctx, start)
            if step is None:
                _raise_cannot_fit(cfg, ctx, memory, budget, layers, gpu_name, exc=e)
            apply(step)
            continue
        if measured is not None and measured > 0.95 * memory:
            say(f"Trial steps peaked at {measured / GiB:.1f} GiB of {memory / GiB:.1f} GiB: "
                f"too close to the limit, applying the next lever.")
            step = next_lever(cfg, ctx, start)
            if step is None:
                break
            apply(step)
            continue
        break

    est = estimated_bytes(cfg, ctx)
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
    parts = trainable_parts(layers)
    if any(parts[s] for s in (1, 2, 3, 4, 5)):
        suggestions.append("train layers='heads' (frozen backbone) -- estimate "
                           f"{estimated_bytes(cfg, {**ctx, 'layers': 'heads'}) / GiB:.1f} GiB")
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
# Trial steps on a real GPU (colabrcnn.probe; not run by the test suite: no GPU there)
# =============================================================================
def _measurer(measure, device):
    if callable(measure):
        return measure
    if not measure:
        return None
    local = first_accelerator(hardware.local_devices())
    if local is None or local.get("kind") != "gpu":
        return None           # nothing to measure on; the estimate decides
    if device is not None and not _same_gpu(device.get("name"), local.get("name")):
        return None           # fitting for another GPU than this one
    return probe.measure_training_step


def _same_gpu(a, b):
    a, b = str(a or "").lower(), str(b or "").lower()
    if a and b and (a in b or b in a):
        return True
    key = _preset_key(a)
    return key is not None and key == _preset_key(b)



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
    # Settings declared on the Config class (as Config.copy does), not derived ones.
    names = [n for n in sorted(dir(type(base))) if n.isupper() and n != "NAME"]
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
        accel = first_accelerator(hardware.local_devices())
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



__all__ = ["DEFAULT_TARGET", "LEVERS", "LEVER_NAMES", "lever_batch", "next_lever",
           "estimated_bytes", "remat_unavailable", "fit_to_gpu", "GPU_MEMORY",
           "GPU_PRESETS", "derive_preset", "preset_for_gpu"]
