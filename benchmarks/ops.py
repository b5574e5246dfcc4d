"""Timings of colabrcnn.model.ops on the current Keras backend (not a test).

    KERAS_BACKEND=jax python benchmarks/ops.py [--repeats 10] [--quick]

Prints, per implementation, the median and best wall time of several calls after
warm-up (compilation excluded):
  * non_max_suppression: B=2 images, N=6000 boxes, max_output 2000, IoU 0.7 — the RPN
    proposal step — on clustered boxes like RPN proposals;
  * crop_and_resize: 400 boxes cropped to 7x7 and 14x14 from a [2, 256, 256, 256] map
    (ROIAlign for the box and mask heads), forward, and forward + gradient w.r.t. the map.
Compiled the way the model runs: tf.function(jit_compile=True) on TensorFlow (TF's
CropAndResize has no XLA kernel, so its native crop runs in a plain tf.function),
jax.jit on JAX, eager on torch.
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import keras  # noqa: E402
from keras import ops  # noqa: E402

from colabrcnn.model import ops as cops  # noqa: E402

BACKEND = keras.backend.backend()


def rpn_like_boxes(rng, batch, n):
    """[batch, n, 4] boxes in [0, 1] crowded around a few hundred centres."""
    centres = rng.uniform(0.05, 0.95, (batch, 300, 2))
    c = np.take_along_axis(centres, rng.integers(0, 300, (batch, n))[..., None], axis=1)
    c = c + rng.normal(0, 0.02, (batch, n, 2))
    size = rng.uniform(0.02, 0.4, (batch, n, 2))
    return np.clip(np.concatenate([c - size / 2, c + size / 2], -1), 0, 1).astype(np.float32)


def compile_fn(fn, jit=True):
    """Compile ``fn`` the way the model would run it on this backend."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=jit)
    if BACKEND == "jax":
        import jax

        return jax.jit(fn)
    return fn


def block(x):
    """Wait for the result (JAX and torch on GPU return before the work is done)."""
    for leaf in keras.tree.flatten(x):
        ops.convert_to_numpy(leaf)


def timeit(fn, *args, repeats=10, warmup=2):
    for _ in range(warmup):
        block(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        block(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def report(name, fn, *args, repeats):
    try:
        median, best = timeit(fn, *args, repeats=repeats)
    except Exception as e:  # a native kernel missing here: say so and go on
        print(f"{name:<58s} n/a ({type(e).__name__}: {str(e).splitlines()[0][:90]})")
        return
    print(f"{name:<58s} median {median * 1e3:9.2f} ms   best {best * 1e3:9.2f} ms")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="smaller crop map (CI smoke)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    devices = keras.distribution.list_devices() if BACKEND == "jax" else ""
    print(f"backend {BACKEND} (keras {keras.__version__}) {devices}")

    # --- NMS --------------------------------------------------------------------------
    boxes = ops.convert_to_tensor(rpn_like_boxes(rng, 2, 6000))
    scores = ops.convert_to_tensor(rng.random((2, 6000)).astype(np.float32))
    for impl in ("native", "pure"):
        fn = compile_fn(lambda b, s, impl=impl: cops.non_max_suppression(
            b, s, 2000, 0.7, implementation=impl), jit=not (BACKEND == "torch"))
        report(f"nms B=2 N=6000 max_out=2000 [{impl}]", fn, boxes, scores,
               repeats=args.repeats)
    _, num_valid = cops.non_max_suppression(boxes, scores, 2000, 0.7, implementation="pure")
    print(f"  (kept per image: {ops.convert_to_numpy(num_valid).tolist()}; "
          f"auto = {cops.auto_implementation('non_max_suppression')})")

    # --- crop_and_resize ----------------------------------------------------------------
    size = 64 if args.quick else 256
    images = ops.convert_to_tensor(rng.normal(size=(2, size, size, 256)).astype(np.float32))
    corners = rng.uniform(0, 1, (400, 2, 2))
    crop_boxes = ops.convert_to_tensor(np.concatenate(
        [corners.min(1), corners.max(1)], -1).astype(np.float32))
    box_indices = ops.convert_to_tensor(rng.integers(0, 2, 400).astype(np.int32))

    for crop in (7, 14):
        for impl in ("native", "pure"):
            jit = not (BACKEND == "tensorflow" and impl == "native")
            fn = compile_fn(lambda x, b, i, impl=impl, crop=crop: cops.crop_and_resize(
                x, b, i, (crop, crop), implementation=impl), jit=jit)
            report(f"crop_and_resize 400 x {crop}x{crop} from [2,{size},{size},256] [{impl}]",
                   fn, images, crop_boxes, box_indices, repeats=args.repeats)
        grad_fn = compile_fn(_grad_fn(crop))
        if grad_fn is not None:
            report("  + gradient w.r.t. the map [pure]", grad_fn, images, crop_boxes,
                   box_indices, repeats=args.repeats)
    print(f"  (auto = {cops.auto_implementation('crop_and_resize')})")


def _grad_fn(crop):
    """Forward + gradient of sum(crops**2) w.r.t. images with the pure version."""
    def loss(x, b, i):
        crops = cops.crop_and_resize(x, b, i, (crop, crop), implementation="pure")
        return ops.sum(crops * crops)

    if BACKEND == "tensorflow":
        import tensorflow as tf

        def grad(x, b, i):
            with tf.GradientTape() as tape:
                tape.watch(x)
                value = loss(x, b, i)
            return tape.gradient(value, x)
        return grad
    if BACKEND == "jax":
        import jax

        return jax.grad(loss)
    if BACKEND == "torch":
        import torch

        def grad(x, b, i):
            x = x.detach().requires_grad_(True)
            return torch.autograd.grad(loss(x, b, i), x)[0]
        return grad
    return None


if __name__ == "__main__":
    main()
