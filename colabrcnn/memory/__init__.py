"""GPU memory as a feature (DESIGN.md, decision 7).

Every memory lever is a Config setting. This package

* picks mixed precision for the accelerator at hand (:func:`mixed_precision_policy`)
  and estimates the training memory of a Config from the architecture, not from a
  magic constant (:func:`estimate_memory`), with a breakdown a person can read
  (``estimate.py``);
* turns a Config that does not fit into one that does, cheapest lever first, and says
  what each change costs (:func:`fit_to_gpu`), optionally checking with real steps;
  ships presets for the GPUs of free notebooks (:data:`GPU_PRESETS`) (``fit.py``);
* recognises out-of-memory errors of every backend (:func:`is_oom_error`) and answers
  them with the settings to change (:func:`oom_advice`, :func:`raise_gpu_memory_error`,
  :func:`reduced_config`) (``oom.py``).

Typical use on Colab::

    from colabrcnn import memory
    config, why = memory.fit_to_gpu(config, layers="all")   # logs one line per change
    print(memory.estimate_memory(config, layers="all"))

Estimates, fitting and advice are plain arithmetic and never import Keras or a
backend; only the trial steps (``fit_to_gpu(measure=True)`` on a GPU, through
:mod:`colabrcnn.probe`) build a model.
"""
from __future__ import annotations

from ..hardware import gpu_compute_capability, local_devices
from ..probe import (free_memory, measure_training_step, read_peak_memory,
                     reset_peak_memory)
from .estimate import (ACTIVATION_OVERHEAD, LAYER_PRESETS, GiB, MemoryEstimate, MiB,
                       estimate_memory, fmt_bytes, has_fast_float16,
                       mixed_precision_policy, parse_memory)
from .fit import (DEFAULT_TARGET, GPU_MEMORY, GPU_PRESETS, LEVER_NAMES, LEVERS,
                  derive_preset, fit_to_gpu, preset_for_gpu, remat_unavailable)
from .oom import is_oom_error, oom_advice, raise_gpu_memory_error, reduced_config

__all__ = ["mixed_precision_policy", "has_fast_float16", "gpu_compute_capability",
           "local_devices", "estimate_memory", "MemoryEstimate", "parse_memory",
           "fit_to_gpu", "measure_training_step", "remat_unavailable", "GPU_PRESETS",
           "GPU_MEMORY", "preset_for_gpu", "derive_preset", "is_oom_error", "oom_advice",
           "raise_gpu_memory_error", "reduced_config", "LEVER_NAMES", "fmt_bytes",
           "LEVERS", "LAYER_PRESETS", "ACTIVATION_OVERHEAD", "DEFAULT_TARGET", "GiB",
           "MiB", "free_memory", "reset_peak_memory", "read_peak_memory"]
