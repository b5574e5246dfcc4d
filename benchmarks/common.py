"""Shared pieces of the model benchmarks: backend choice, config presets, memory.

Import this module before Keras: ``select_backend`` sets KERAS_BACKEND from --backend.
"""
import argparse
import os
import resource
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def base_parser(description):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--backend", choices=["tensorflow", "jax", "torch"],
                   default=os.environ.get("KERAS_BACKEND", "tensorflow"))
    p.add_argument("--preset", choices=sorted(PRESETS), default="shapes",
                   help="shapes: the demo's ResNet-18 at 128px (CPU-sized); "
                        "matterport: ResNet-101 at 1024px, matterport's defaults")
    p.add_argument("--batch", type=int, default=None, help="IMAGES_PER_GPU")
    p.add_argument("--image-size", type=int, default=None, help="IMAGE_MAX_DIM (and MIN)")
    p.add_argument("--backbone", default=None)
    p.add_argument("--steps", type=int, default=10, help="timed steps after warm-up")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps (compilation)")
    return p


def select_backend(args):
    os.environ["KERAS_BACKEND"] = args.backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _shapes():
    from colabrcnn.demo import ShapesConfig
    return {}, ShapesConfig


def _matterport():
    from colabrcnn import Config

    class MatterportConfig(Config):
        NAME = "bench"
        NUM_CLASSES = 81
    return {}, MatterportConfig


PRESETS = {"shapes": _shapes, "matterport": _matterport}


def make_config(args, **extra):
    overrides, cls = PRESETS[args.preset]()
    if args.batch:
        overrides["IMAGES_PER_GPU"] = args.batch
    if args.image_size:
        overrides["IMAGE_MAX_DIM"] = args.image_size
        overrides["IMAGE_MIN_DIM"] = args.image_size
    if args.backbone:
        overrides["BACKBONE"] = args.backbone
    overrides.update(extra)
    return cls(**overrides)


def device_name():
    import keras
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
    except Exception as e:  # a benchmark should still print its numbers
        return f"unknown ({e})"


def peak_memory():
    """(peak accelerator bytes or None, peak process RSS bytes)."""
    import keras
    backend = keras.backend.backend()
    device = None
    try:
        if backend == "jax":
            import jax
            stats = jax.devices()[0].memory_stats() or {}
            device = stats.get("peak_bytes_in_use")
        elif backend == "torch":
            import torch
            if torch.cuda.is_available():
                device = torch.cuda.max_memory_allocated()
        else:
            import tensorflow as tf
            if tf.config.list_physical_devices("GPU"):
                device = tf.config.experimental.get_memory_info("GPU:0")["peak"]
    except Exception:
        device = None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return device, rss


def fmt_bytes(n):
    return "n/a" if n is None else f"{n / 2**30:.2f} GiB"
