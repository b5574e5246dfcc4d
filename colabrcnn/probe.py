"""Build a training model, run a few steps on a synthetic batch, measure them.

One implementation for everything that asks "how fast, and how much memory?": the
trial steps of :func:`colabrcnn.memory.fit_to_gpu`, :func:`colabrcnn.notebook.measure_step`
and the scripts in ``benchmarks/``.

    from colabrcnn import probe
    row = probe.measure(config, layers="all", steps=3)
    row["images_per_second"], row["peak_bytes"], row["status"]

The batch is synthetic shapes (:func:`colabrcnn.data.shapes.shapes`) at the config's
image size, prepared once, so data loading is not measured. Peak memory is the
backend's own counter (TF ``get_memory_info``, JAX ``memory_stats``, torch
``max_memory_allocated``): None on a CPU, where the process' peak RSS is reported.
"""
from __future__ import annotations

import gc
import logging
import resource
import sys
import tempfile
import time

from .data.shapes import shapes
from .errors import is_oom_error

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------ memory
def free_memory() -> None:
    """Drop Keras' global state and collect garbage (between trials in one process)."""
    try:
        if "keras" in sys.modules:
            sys.modules["keras"].backend.clear_session()
    except Exception:
        pass
    gc.collect()


def reset_peak_memory() -> int | None:
    """Reset the backend's peak-memory counter (no-op without a GPU); returns a baseline
    for JAX, whose peak cannot be reset."""
    import keras  # lazy: this module must import without Keras (memory imports it)
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


def read_peak_memory(baseline: int | None = None) -> int | None:
    """Peak device memory in bytes since ``reset_peak_memory`` (None without a GPU)."""
    import keras  # lazy, as above
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


def peak_rss_bytes() -> int:
    """The process' peak resident memory in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def device_name() -> str:
    """Name of the device the Keras backend computes on ("cpu" without an accelerator)."""
    import keras  # lazy, as above
    backend = keras.backend.backend()
    try:
        if backend == "jax":
            import jax
            return str(jax.devices()[0].device_kind)
        if backend == "torch":
            import torch
            return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
        import tensorflow as tf
        gpus = tf.config.list_physical_devices("GPU")
        return gpus[0].name if gpus else "cpu"
    except Exception as e:  # a measurement should still print its numbers
        return f"unknown ({e})"


# ------------------------------------------------------------------- steps
def synthetic_batch(config, seed: int = 0) -> dict:
    """One training batch of synthetic shapes at ``config``'s image size."""
    from .data.loader import DataGenerator  # lazy: the loader imports Keras
    size = int(config.IMAGE_SHAPE[0])
    data = shapes(max(2, config.BATCH_SIZE), size, seed=seed,
                  max_instances=min(4, config.MAX_GT_INSTANCES))
    return DataGenerator(data, config, shuffle=False, seed=seed)[0]


def build(config, layers: str = "all", seed: int = 0, model_dir: str | None = None):
    """(MaskRCNN in training mode, compiled with ``layers`` trainable; a synthetic
    batch). ``model_dir`` defaults to the system's temporary folder (nothing is
    written there unless you train through the model)."""
    import keras  # lazy, as above

    from .model.maskrcnn import MaskRCNN  # lazy: Keras
    keras.utils.set_random_seed(seed)
    model = MaskRCNN("training", config, model_dir=model_dir or tempfile.gettempdir())
    model.set_trainable(layers)
    model.compile(config.LEARNING_RATE, config.LEARNING_MOMENTUM)
    return model, synthetic_batch(config, seed)


def run_steps(model, batch: dict, steps: int) -> tuple[float, float]:
    """Run ``steps`` training steps on ``batch``; (seconds per step, last loss), timed
    until the device has finished (the loss is read back)."""
    start = time.perf_counter()
    logs = None
    for _ in range(max(1, steps)):
        logs = model.keras_model.train_on_batch(batch, return_dict=True)
    loss = float(logs["loss"])   # wait for the device
    return (time.perf_counter() - start) / max(1, steps), loss


def _error_text(e: BaseException) -> str:
    lines = str(e).strip().splitlines() or [""]
    text = next((t for t in lines if t.strip()
                 and not t.startswith("Exception encountered")), lines[0])
    return f"{type(e).__name__}: {text[:120]}"


def measure(config, layers: str = "all", steps: int = 3, warmup: int = 1, seed: int = 0,
            model_dir: str | None = None, on_built=None) -> dict:
    """Build, run ``warmup`` untimed steps (compilation) and ``steps`` timed ones.

    Returns {"status": "ok" | "out of memory" | "error: ...", "peak_bytes" (device, None
    without a GPU), "rss_bytes", "step_seconds", "images_per_second",
    "warmup_seconds", "loss"}. Errors are caught and reported in ``status`` (a table
    of several rows can go on); the memory is released afterwards. ``on_built(model,
    batch)`` runs once the model is built (before the warm-up), e.g. to ask XLA for
    its memory plan.
    """
    out = {"status": "ok", "peak_bytes": None, "rss_bytes": None, "step_seconds": None,
           "images_per_second": None, "warmup_seconds": None, "loss": None}
    free_memory()
    baseline = reset_peak_memory()
    model = None
    tmp = tempfile.TemporaryDirectory() if model_dir is None else None
    try:
        model, batch = build(config, layers, seed=seed, model_dir=model_dir or tmp.name)
        if on_built is not None:
            on_built(model, batch)
        out["warmup_seconds"] = run_steps(model, batch, warmup)[0] * max(1, warmup)
        seconds, loss = run_steps(model, batch, steps)
        out.update(step_seconds=seconds, loss=loss,
                   images_per_second=config.BATCH_SIZE / seconds if seconds else None)
        out["peak_bytes"] = read_peak_memory(baseline)
    except Exception as e:  # noqa: BLE001 - one failed row must not end the table
        out["peak_bytes"] = read_peak_memory(baseline)
        out["status"] = "out of memory" if is_oom_error(e) else f"error: {_error_text(e)}"
        out["error"] = _error_text(e)
    finally:
        del model
        free_memory()
        if tmp is not None:
            tmp.cleanup()
    out["rss_bytes"] = peak_rss_bytes()
    return out


def measure_training_step(config, layers: str = "all", steps: int = 2) -> int | None:
    """Build the training model for ``config`` in this process, run ``steps`` training
    steps on a synthetic batch and return the backend's peak device memory in bytes
    (None when the backend cannot tell). Out-of-memory errors propagate (see
    :func:`colabrcnn.memory.is_oom_error`). Needs a GPU to mean anything."""
    free_memory()
    baseline = reset_peak_memory()
    model = None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            model, batch = build(config, layers, model_dir=tmp)
            run_steps(model, batch, steps)
            return read_peak_memory(baseline)
    finally:
        del model
        free_memory()


__all__ = ["free_memory", "reset_peak_memory", "read_peak_memory", "peak_rss_bytes",
           "device_name", "synthetic_batch", "build", "run_steps", "measure",
           "measure_training_step"]
