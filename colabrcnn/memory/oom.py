"""Out-of-memory errors: recognise them, say what to change, retry with less.

:func:`is_oom_error` (from :mod:`colabrcnn.errors`) recognises every backend's
out-of-memory error; :func:`oom_advice` lists the settings to change in the order
:func:`colabrcnn.memory.fit.fit_to_gpu` would; :func:`reduced_config` is what
``train(on_oom="reduce")`` retries with.
"""
from __future__ import annotations

from .. import hardware
from ..errors import GPUMemoryError, is_oom_error
from .estimate import (GiB, as_device, estimate_memory, first_accelerator, fmt_bytes,
                       has_fast_float16, mixed_precision_policy, trainable_parts)
from .fit import LEVERS, estimated_bytes, lever_batch, next_lever


def oom_advice(config, layers="all", devices=None):
    """Concrete settings to change after an out-of-memory error with ``config``, in the
    order fit_to_gpu applies them, skipping levers already in use; each with the
    estimated saving. The last suggestions change what is trained."""
    devices = hardware.local_devices() if devices is None else [as_device(d) for d in devices]
    accel = first_accelerator(devices)
    ctx = {"device": accel, "layers": layers}
    base = estimated_bytes(config, ctx)
    out = []
    for name, lever in LEVERS:
        got = lever(config, ctx)
        if got is None:
            continue
        new_cfg, what, why, cost = got
        saving = base - estimated_bytes(new_cfg, ctx)
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
    parts = trainable_parts(layers)
    if any(parts[s] for s in (1, 2, 3, 4, 5)):
        heads = estimated_bytes(config, {**ctx, "layers": "heads"})
        out.append(f"train layers='heads' first (frozen backbone: estimate "
                   f"{heads / GiB:.1f} GiB instead of {base / GiB:.1f} GiB), then "
                   f"'4+' or 'all' with the levers above")
    out.append("colabrcnn.memory.fit_to_gpu(config, layers=...) applies these in order "
               "and checks the result; model.train(..., on_oom='reduce') retries "
               "automatically")
    return out


def raise_gpu_memory_error(exc, config, layers="all"):
    """Raise :class:`GPUMemoryError` from ``exc`` (chained) with :func:`oom_advice`."""
    accel = first_accelerator(hardware.local_devices())
    where = f"{accel.get('name')} ({fmt_bytes(accel.get('memory_bytes'))})" if accel \
        else "the accelerator"
    est = estimate_memory(config, layers)
    raise GPUMemoryError(
        f"Out of memory on {where} while training layers={layers!r} with "
        f"BACKBONE={config.BACKBONE}, IMAGE_SHAPE={[int(v) for v in config.IMAGE_SHAPE]}, "
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
    devices = hardware.local_devices() if devices is None else [as_device(d) for d in devices]
    ctx = {"device": first_accelerator(devices), "layers": layers}
    got = lever_batch(config, ctx)
    if got is not None:
        new_cfg, what, why, cost = got
        line = f"{what}: {why}. Cost: {cost}"
    else:
        step = next_lever(config, ctx, 0)
        if step is None:
            raise GPUMemoryError(
                f"Out of memory and nothing left to reduce for layers={layers!r} "
                f"(IMAGES_PER_GPU=1, every lever in use).",
                suggestions=oom_advice(config, layers, devices))
        _, _, new_cfg, line, _, _ = step
    return (new_cfg, line) if explain else new_cfg


__all__ = ["is_oom_error", "oom_advice", "raise_gpu_memory_error", "reduced_config"]
