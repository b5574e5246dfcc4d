"""Timings of colabrcnn.model.ops on the current Keras backend (not a test).

    KERAS_BACKEND=jax python benchmarks/ops.py [--repeats 10] [--quick]

Prints, per implementation, the median and best wall time of several calls after
warm-up (compilation excluded):
  * non_max_suppression: B=2 images, N=6000 boxes, max_output 2000, IoU 0.7 — the RPN
    proposal step — on clustered boxes like RPN proposals;
  * crop_and_resize: 400 boxes cropped to 7x7 and 14x14 from a [2, 256, 256, 256] map
    (ROIAlign for the box and mask heads), forward, and forward + gradient w.r.t. the map;
  * pyramid ROIAlign (what the training graph runs): formulations of its bilinear step,
    forward + gradient w.r.t. P2..P5, at the 256-px preset's sizes (64 ROIs at 7x7, 21
    positives at 14x14) and at 1024 px (200 at 7x7, 66 at 14x14); --roi-align-only.
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
from colabrcnn.model.roi_align import (bilinear_from_corners, roi_levels,  # noqa: E402
                                       sample_corners)

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
    parser.add_argument("--roi-align-only", action="store_true")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    devices = keras.distribution.list_devices() if BACKEND == "jax" else ""
    print(f"backend {BACKEND} (keras {keras.__version__}) {devices}")
    if args.roi_align_only:
        roi_align_formulations(rng, args)
        return

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
    roi_align_formulations(rng, args)


# --- pyramid ROIAlign formulations ------------------------------------------------------
def _gather4(fmaps, boxes, pool, image_shape):
    """What PyramidROIAlign runs: four gathers of [.., C] rows, scatter-add backward."""
    table, idx, weights = sample_corners(boxes, fmaps, pool, image_shape)
    return bilinear_from_corners(table, idx, weights, "float32")


def _gather1(fmaps, boxes, pool, image_shape):
    """One gather of all four corners [.., 4, C], then a weighted sum."""
    table, idx, weights = sample_corners(boxes, fmaps, pool, image_shape)
    return ops.sum(ops.take(table, idx, axis=0) * weights[..., None], axis=-2)


def _packed(fmaps, boxes, pool, image_shape):
    """Each pixel packed with its right/lower neighbours ([S, 4C]): one row per sample
    (a quarter of the indices) at four times the table's memory."""
    table, idx, w = sample_corners(boxes, fmaps, pool, image_shape)
    c = fmaps[0].shape[-1]
    batch = ops.shape(boxes)[0]
    packed = []
    for f in fmaps:
        fp = ops.pad(f, [[0, 0], [0, 1], [0, 1], [0, 0]])
        packed.append(ops.reshape(ops.concatenate(
            [fp[:, :-1, :-1], fp[:, :-1, 1:], fp[:, 1:, :-1], fp[:, 1:, 1:]], -1),
            (batch, -1, 4 * c)))
    packed = ops.reshape(ops.concatenate(packed, 1), (-1, 4 * c))
    w0, w1, w2, w3 = [w[..., k] for k in range(4)]
    # Where a corner was clipped onto its neighbour (the border), fold its weight in.
    sx = idx[..., 1] == idx[..., 0]
    w0, w1 = w0 + ops.where(sx, w1, 0.0), ops.where(sx, 0.0, w1)
    w2, w3 = w2 + ops.where(sx, w3, 0.0), ops.where(sx, 0.0, w3)
    sy = idx[..., 2] == idx[..., 0]
    w0, w2 = w0 + ops.where(sy, w2, 0.0), ops.where(sy, 0.0, w2)
    w1, w3 = w1 + ops.where(sy, w3, 0.0), ops.where(sy, 0.0, w3)
    rows = ops.take(packed, idx[..., 0], axis=0)
    rows = ops.reshape(rows, tuple(idx.shape[:-1]) + (4, c))
    return ops.sum(rows * ops.stack([w0, w1, w2, w3], -1)[..., None], axis=-2)


def _native_per_level(fmaps, boxes, pool, image_shape):
    """TF's CropAndResize (and its gradient kernel) on every level, masked by level:
    no XLA kernel, so the step could not be jit-compiled."""
    import tensorflow as tf

    b, r = boxes.shape[0], boxes.shape[1]
    level = tf.reshape(roi_levels(boxes, image_shape) - 2, (-1,))
    flat = tf.reshape(boxes, (-1, 4))
    box_ind = tf.repeat(tf.range(b), r)
    out = 0.0
    for i, f in enumerate(fmaps):
        crops = tf.image.crop_and_resize(f, flat, box_ind, pool)
        out = out + crops * tf.cast(level == i, crops.dtype)[:, None, None, None]
    return tf.reshape(out, (b, r) + tuple(pool) + (fmaps[0].shape[-1],))


def roi_align_formulations(rng, args):
    cases = [(256, 64, (7, 7)), (256, 21, (14, 14)), (1024, 200, (7, 7)),
             (1024, 66, (14, 14))]
    forms = [("gather4 (used)", _gather4, True), ("gather1", _gather1, True),
             ("packed", _packed, True)]
    if BACKEND == "tensorflow":
        forms.append(("native, no XLA", _native_per_level, False))
    for size, rois, pool in cases:
        if args.quick and size > 256:
            continue
        fmaps = [ops.convert_to_tensor(rng.normal(size=(2, size // s, size // s, 256))
                                       .astype(np.float32)) for s in (4, 8, 16, 32)]
        lo = rng.uniform(0, 0.8, (2, rois, 2))
        hi = np.minimum(lo + rng.uniform(0.03, 0.5, (2, rois, 2)), 1.0)
        boxes = ops.convert_to_tensor(np.concatenate([lo, hi], -1).astype(np.float32))
        cot = ops.convert_to_tensor(rng.normal(size=(2, rois) + pool + (256,))
                                    .astype(np.float32))
        # Reference: the used formulation, eagerly (the others are compared with it).
        reference = ops.convert_to_numpy(_gather4(fmaps, boxes, pool, (size, size)))
        for name, form, jit in forms:
            def loss(*fm, form=form):
                return ops.sum(form(list(fm), boxes, pool, (size, size)) * cot)
            forward = compile_fn(lambda *fm, form=form: form(list(fm), boxes, pool,
                                                             (size, size)), jit=jit)
            out = ops.convert_to_numpy(forward(*fmaps))
            diff = float(np.abs(out - reference).max())
            grad = compile_fn(_value_grad(loss), jit=jit)
            label = f"pyramid ROIAlign {size}px {rois} x {pool[0]}x{pool[1]} [{name}]"
            report(label + " fwd", forward, *fmaps, repeats=args.repeats)
            report(f"  + gradient w.r.t. P2..P5 (max diff {diff:.0e})", grad, *fmaps,
                   repeats=args.repeats)


def _value_grad(loss):
    """Gradient of ``loss(*fmaps)`` w.r.t. every map, on this backend."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        def grad(*fm):
            with tf.GradientTape() as tape:
                tape.watch(fm)
                value = loss(*fm)
            return tape.gradient(value, fm)
        return grad
    if BACKEND == "jax":
        import jax

        return jax.grad(loss, argnums=(0, 1, 2, 3))
    import torch

    def grad(*fm):
        fm = [f.detach().requires_grad_(True) for f in fm]
        return torch.autograd.grad(loss(*fm), fm)
    return grad


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
