"""Shared pieces of the model benchmarks: backend choice, config presets, memory.

Import this module before Keras: ``select_backend`` sets KERAS_BACKEND from --backend.
Building a model and measuring steps is ``colabrcnn.probe`` (shared with
``memory.fit_to_gpu`` and ``notebook.measure_step``).
"""
import argparse
import os
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
    """The device the Keras backend computes on (colabrcnn.probe.device_name)."""
    from colabrcnn import probe
    return probe.device_name()


def peak_memory():
    """(peak accelerator bytes or None, peak process RSS bytes), from colabrcnn.probe."""
    from colabrcnn import probe
    return probe.read_peak_memory(), probe.peak_rss_bytes()


def fmt_bytes(n):
    return "n/a" if n is None else f"{n / 2**30:.2f} GiB"
