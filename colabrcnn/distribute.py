"""More than one accelerator, through the engines Keras already has.

Kaggle's two T4s, a machine with several GPUs, or a TPU: Mask R-CNN is trained
data-parallel — every device holds the whole model and gets ``IMAGES_PER_GPU`` images
of each global batch of ``BATCH_SIZE = IMAGES_PER_GPU * GPU_COUNT``. Nothing here
re-implements that; it picks and sets up the engine of the Keras backend in use:

    JAX         keras.distribution.DataParallel(devices=...), set with
                keras.distribution.set_distribution before the model is built
                (one jit-compiled SPMD program over the devices; also TPUs)
    TensorFlow  tf.distribute.MirroredStrategy over several GPUs, TPUStrategy when a
                TPU is found; the model is built and compiled in strategy.scope()
    PyTorch     no multi-device engine through Keras: GPU_COUNT > 1 is a ConfigError

``MaskRCNN`` calls :func:`setup` when it is built and keeps the result as
``model.distribution``; ``with model.scope():`` enters it (train, detect, evaluate and
compile already do). ``GPU_COUNT="auto"`` is resolved there, at model build, not in
``Config()`` (which must stay light and import no backend): it becomes the number of
devices the backend computes on — its GPUs or TPU cores, else its CPU devices, which is
1 on an ordinary CPU machine. ``Config.BATCH_SIZE`` is updated in place at that moment.

The model's loss averages over the images a replica sees. Under tf.distribute each
replica's loss is divided by the replica count before gradients are summed across
replicas (see :func:`scale_loss`, as Keras' own ``compute_loss`` does), so the update
is the mean of the replicas' gradients; under JAX the program is global and the loss
is the one of the whole batch. The two agree exactly when the images have equal numbers
of anchors/ROIs that count; in general TF weights each replica's images equally (what
matterport's multi-GPU ``ParallelModel`` did), JAX each counted element.

This module imports no backend at import time: ``colabrcnn doctor`` uses
:func:`describe_plan` without one.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from dataclasses import dataclass, field

from . import hardware
from .errors import ConfigError

logger = logging.getLogger(__name__)

AUTO = "auto"

TORCH_MULTI = ("The torch backend has no multi-device training through Keras: use "
               "KERAS_BACKEND=jax (keras.distribution.DataParallel) or "
               "KERAS_BACKEND=tensorflow (tf.distribute.MirroredStrategy) to train on "
               "{n} devices, or set GPU_COUNT = 1.")


def _backend():
    if "keras" in sys.modules:
        return sys.modules["keras"].backend.backend()
    return hardware.keras_backend()


# ------------------------------------------------------------------- devices
_TPU_STRATEGY = None  # initialising a TPU system twice would wipe it: once a process


def _tf_tpu_strategy():
    """TPUStrategy when this machine has a TPU (TF backend), else None."""
    global _TPU_STRATEGY
    if _TPU_STRATEGY is not None:
        return _TPU_STRATEGY or None
    if not has_tpu():
        _TPU_STRATEGY = False
        return None
    import tensorflow as tf
    try:
        # TPU VMs (Kaggle, Colab's current TPUs): the chips are local; older Colab TPU
        # nodes name a remote worker in COLAB_TPU_ADDR / TPU_NAME.
        name = os.environ.get("TPU_NAME") or (None if os.environ.get("COLAB_TPU_ADDR")
                                              else "local")
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=name)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as e:
        logger.warning("colabrcnn: a TPU seems present but TensorFlow could not connect "
                       "to it (%s); continuing without it.", e)
        _TPU_STRATEGY = False
        return None
    _TPU_STRATEGY = tf.distribute.TPUStrategy(resolver)
    return _TPU_STRATEGY


# TPU detection lives in colabrcnn.hardware (no backend import); re-exported here.
has_tpu = hardware.has_tpu


def backend_devices(backend=None):
    """Names of the devices the Keras backend computes on: its GPUs or TPU cores if it
    has any, else its CPU devices (one, unless virtual CPU devices were configured).

    Imports the backend. On TF this starts its runtime (settings such as memory growth
    must come before), and on a TPU machine it connects to the TPU.
    """
    backend = backend or _backend()
    if backend == "jax":
        import jax
        return [f"{d.platform}:{d.id}" for d in jax.devices()]
    if backend == "tensorflow":
        import tensorflow as tf
        tpu = _tf_tpu_strategy()
        if tpu is not None:
            return [d.name for d in tf.config.list_logical_devices("TPU")] or \
                [f"TPU:{i}" for i in range(tpu.num_replicas_in_sync)]
        gpus = tf.config.list_logical_devices("GPU")
        return [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
    if backend == "torch":
        import torch
        if torch.cuda.is_available():
            return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        return ["cpu"]
    return ["cpu"]


def device_count(backend=None):
    """How many devices ``GPU_COUNT="auto"`` uses with this backend (see backend_devices)."""
    return len(backend_devices(backend))


def _existing(backend):
    """A distribution the user set up themselves: (kind, engine, replicas) or None."""
    if backend == "jax":
        import keras
        d = keras.distribution.distribution()
        if d is not None and not getattr(d, "_colabrcnn", False):
            return "keras-distribution", d, int(d.device_mesh.devices.size)
    elif backend == "tensorflow" and "tensorflow" in sys.modules:
        tf = sys.modules["tensorflow"]
        if tf.distribute.has_strategy():
            s = tf.distribute.get_strategy()
            return "tf-strategy", s, int(s.num_replicas_in_sync)
    return None


def resolve_gpu_count(config, backend=None):
    """Turn ``config.GPU_COUNT`` ("auto" or a number) into the device count to use;
    updates ``config.GPU_COUNT`` and ``config.BATCH_SIZE`` in place and returns it.

    A count larger than the devices found, or above 1 on the torch backend, raises
    ConfigError saying what to change.
    """
    backend = backend or _backend()
    requested = config.GPU_COUNT
    existing = _existing(backend)
    if existing is not None:
        available, where = existing[2], f"the {existing[0]} you set up"
    else:
        devices = backend_devices(backend)
        available, where = len(devices), f"the {backend} backend ({', '.join(devices)})"
    n = available if requested == AUTO else int(requested)
    if backend == "torch" and n > 1:
        raise ConfigError(TORCH_MULTI.format(n=n))
    if existing is not None and n != available:
        raise ConfigError(f"GPU_COUNT is {requested} but {where} has {available} "
                          f"replicas: set GPU_COUNT = 'auto' (or {available}).")
    if n > available:
        raise ConfigError(f"GPU_COUNT is {n} but {where} has only {available} "
                          f"device{'s' if available != 1 else ''}: set GPU_COUNT = "
                          f"'auto' or at most {available}.")
    config.GPU_COUNT = n
    config.BATCH_SIZE = config.IMAGES_PER_GPU * n
    return n


# ------------------------------------------------------------------- set up
@dataclass
class DeviceSetup:
    """The distribution a MaskRCNN runs under.

    kind: "single" (one device, no engine), "jax-data-parallel", "tf-mirrored",
    "tf-tpu", or "keras-distribution" / "tf-strategy" when one the user set up was
    found and adopted. engine: the keras.distribution.Distribution or
    tf.distribute.Strategy (None for "single"). replicas: devices sharing each batch.
    """
    backend: str
    kind: str
    replicas: int
    engine: object = None
    devices: list = field(default_factory=list)

    def scope(self):
        """Context in which to build, compile, fit and predict. On JAX a one-device
        model's scope holds off a distribution another model set globally."""
        if self.engine is None:
            if self.backend == "jax":
                return _without_keras_distribution()
            return contextlib.nullcontext()
        return self.engine.scope()

    @property
    def distributed(self):
        return self.engine is not None

    def __str__(self):
        if self.kind == "single":
            return f"one device ({self.devices[0] if self.devices else '?'})"
        names = {"jax-data-parallel": "keras.distribution.DataParallel",
                 "tf-mirrored": "tf.distribute.MirroredStrategy",
                 "tf-tpu": "tf.distribute.TPUStrategy",
                 "keras-distribution": f"your {type(self.engine).__name__}",
                 "tf-strategy": f"your {type(self.engine).__name__}"}
        return f"{names.get(self.kind, self.kind)} over {self.replicas} devices" + \
            (f" ({', '.join(self.devices)})" if self.devices else "")


@contextlib.contextmanager
def _without_keras_distribution():
    import keras
    previous = keras.distribution.distribution()
    if previous is None:
        yield
        return
    keras.distribution.set_distribution(None)
    try:
        yield
    finally:
        keras.distribution.set_distribution(previous)


def setup(config, backend=None):
    """Resolve GPU_COUNT and set up the backend's distribution for it.

    JAX: several devices -> keras.distribution.DataParallel set globally (so variables
    made from now on are replicated and fit() shards each batch); one device clears a
    distribution this module set earlier. TF: several GPUs -> MirroredStrategy, a TPU ->
    TPUStrategy (always, with GPU_COUNT "auto" or the core count), several virtual CPU
    devices -> MirroredStrategy over them (tests). A distribution or strategy the user
    set up (keras.distribution.set_distribution, or building inside their
    strategy.scope()) is adopted as it is.
    """
    backend = backend or _backend()
    n = resolve_gpu_count(config, backend)
    existing = _existing(backend)
    if existing is not None:
        kind, engine, replicas = existing
        return DeviceSetup(backend, kind, replicas, engine)
    devices = backend_devices(backend)
    if backend == "jax":
        import keras
        current = keras.distribution.distribution()
        if n == 1:
            if current is not None and getattr(current, "_colabrcnn", False):
                keras.distribution.set_distribution(None)
            return DeviceSetup(backend, "single", 1, None, devices[:1])
        dist = keras.distribution.DataParallel(devices=devices[:n])
        dist._colabrcnn = True  # ours: a later single-device model may clear it
        keras.distribution.set_distribution(dist)
        return DeviceSetup(backend, "jax-data-parallel", n, dist, devices[:n])
    if backend == "tensorflow":
        tpu = _tf_tpu_strategy()
        if tpu is not None:
            if n != tpu.num_replicas_in_sync:
                raise ConfigError(f"On a TPU the TensorFlow backend uses all its "
                                  f"{tpu.num_replicas_in_sync} cores: set GPU_COUNT = "
                                  f"'auto' (IMAGES_PER_GPU is then per core).")
            return DeviceSetup(backend, "tf-tpu", n, tpu, devices)
        if n == 1:
            return DeviceSetup(backend, "single", 1, None, devices[:1])
        import tensorflow as tf
        strategy = tf.distribute.MirroredStrategy(devices=devices[:n])
        return DeviceSetup(backend, "tf-mirrored", n, strategy, devices[:n])
    return DeviceSetup(backend, "single", 1, None, devices[:1])


def scale_loss(loss):
    """Divide a replica's loss by the number of replicas in sync under tf.distribute.

    tf.distribute sums the replicas' gradients; Keras' own compute_loss pre-divides
    (keras.src.losses.loss.scale_loss_for_distribution) so that the sum is the mean,
    and unscales the logged loss again. A compute_loss override must do the same, or
    N replicas take N-times larger steps. A no-op on JAX (one global program), torch
    and without a strategy.
    """
    import keras
    if keras.backend.backend() != "tensorflow":
        return loss
    import tensorflow as tf
    n = tf.distribute.get_strategy().num_replicas_in_sync
    if n > 1:
        loss = keras.ops.multiply(loss, keras.ops.cast(1.0 / n, loss.dtype))
    return loss


def optimizer_in_scope(optimizer, device_setup):
    """An optimizer usable under ``device_setup``: on TF an optimizer object created
    outside the strategy's scope is re-created from its config inside it (Keras' TF
    optimizers remember the strategy they were created under)."""
    if device_setup is None or device_setup.backend != "tensorflow" or \
            not device_setup.distributed or getattr(optimizer, "built", False):
        return optimizer
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    if getattr(inner, "_distribution_strategy", None) is device_setup.engine and \
            getattr(optimizer, "_distribution_strategy", device_setup.engine) is \
            device_setup.engine:
        return optimizer
    with device_setup.scope():
        return type(optimizer).from_config(optimizer.get_config())


# ------------------------------------------------------------------- doctor
def describe_plan(backend, devices):
    """What distribution GPU_COUNT="auto" would give, from ``env.devices()``-style dicts
    (pure: imports nothing). One line for ``colabrcnn doctor``."""
    accel = [d for d in devices or [] if d.get("kind") in ("gpu", "tpu")]
    if not accel:
        return "one device (no accelerator found)"
    kind = "TPU" if accel[0].get("kind") == "tpu" else "GPU"
    n = len(accel)
    if kind == "GPU" and n == 1:
        return "one GPU (no distribution needed)"
    what = f"{n} {kind}s" if kind == "GPU" else f"the TPU ({n} chip{'s' * (n > 1)} found)"
    if backend == "jax":
        engine = "keras.distribution.DataParallel"
    elif backend == "tensorflow":
        engine = "tf.distribute.TPUStrategy" if kind == "TPU" else \
            "tf.distribute.MirroredStrategy"
    elif backend == "torch":
        return (f"none on the torch backend ({what} found, one used): set "
                f"KERAS_BACKEND=jax or tensorflow to train on all of them")
    else:
        return f"none on the {backend} backend"
    if kind == "TPU":
        return f"{engine} over {what} with GPU_COUNT='auto'"
    return (f"{engine} over {what} with GPU_COUNT='auto' (global batch = "
            f"IMAGES_PER_GPU x {n}); GPU_COUNT=1 uses one")


__all__ = ["AUTO", "DeviceSetup", "has_tpu", "backend_devices", "device_count", "resolve_gpu_count",
           "setup", "scale_loss", "optimizer_in_scope", "describe_plan"]
