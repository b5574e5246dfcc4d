"""colabrcnn.model.ops against plain numpy references, on all three backends.

In-process on TensorFlow (eager and tf.function(jit_compile=True)); JAX (inside jax.jit)
and torch (eager) in one child process each, which checks against the same references
(tests/ops_reference.py) and exits non-zero on any mismatch.
"""
import functools

import numpy as np
import pytest
import tensorflow as tf

from conftest import run_in_backend
from ops_reference import (crop_and_resize_numpy, crop_and_resize_numpy_grad,
                           crop_cases, nms_cases, nms_numpy_batched, off_grid_boxes)
from colabrcnn.model import ops as cops

NMS_CASES = nms_cases()
CROP_CASES = crop_cases()


@functools.lru_cache(maxsize=None)
def nms_expected(k):
    _, boxes, scores, max_out, thr, score_thr = NMS_CASES[k]
    return nms_numpy_batched(boxes, scores, max_out, thr, score_thr)


def assert_nms_equal(got, expected, label):
    indices, num_valid = (np.asarray(g) for g in got)
    exp_indices, exp_valid = expected
    assert indices.dtype == np.int32 and num_valid.dtype == np.int32, label
    assert indices.shape == exp_indices.shape, label
    np.testing.assert_array_equal(num_valid, exp_valid, err_msg=label)
    np.testing.assert_array_equal(indices, exp_indices, err_msg=label)


# ---------------------------------------------------------------------------------------
# NMS on TensorFlow
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("k", range(len(NMS_CASES)), ids=[c[0] for c in NMS_CASES])
def test_nms_tf_matches_numpy(k):
    name, boxes, scores, max_out, thr, score_thr = NMS_CASES[k]
    expected = nms_expected(k)
    # tf.image.non_max_suppression_padded drops kept boxes with no positive coordinate
    # (documented in _nms_tf_padded, and the reason "auto" does not use it).
    impls = ["pure"] if name == "zero_area" else ["pure", "native"]
    for impl in impls:
        def nms(b, s, impl=impl):
            return cops.non_max_suppression(b, s, max_out, thr, score_thr,
                                            implementation=impl)
        assert_nms_equal(nms(boxes, scores), expected, f"{name} {impl} eager")
        jitted = tf.function(nms, jit_compile=True)
        assert_nms_equal(jitted(tf.constant(boxes), tf.constant(scores)), expected,
                         f"{name} {impl} jit")
    assert_nms_equal(cops.non_max_suppression(boxes, scores, max_out, thr, score_thr),
                     expected, f"{name} auto")


@pytest.mark.parametrize("tile_size", [7, 64])
def test_nms_pure_small_tiles(tile_size):
    """Many tiles: cross-tile suppression and the early stop carry the result."""
    name, boxes, scores, max_out, thr, score_thr = NMS_CASES[2]  # clustered, N=300

    @tf.function(jit_compile=True)
    def nms(b, s, max_out):
        return cops._nms_pure(b, s, max_out, thr, score_thr, tile_size=tile_size)

    assert_nms_equal(nms(boxes, scores, max_out), nms_expected(2), f"{name} tile {tile_size}")
    got = nms(boxes, scores, 300)  # every box fits: no early stop
    assert_nms_equal(got, nms_numpy_batched(boxes, scores, 300, thr), f"tile {tile_size}")


def test_nms_contract_details():
    boxes = np.array([[[0.1, 0.1, 0.5, 0.5],      # 0: kept (score 0.9)
                       [0.1, 0.1, 0.5, 0.52],     # 1: IoU 0.95 with 0: dropped
                       [0.6, 0.6, 0.9, 0.9],      # 2: kept (0.7)
                       [0.0, 0.0, 0.0, 0.0],      # 3: zero area at the origin: kept
                       [0.3, 0.3, 0.3, 0.3]]],    # 4: a point inside box 0: kept
                     np.float32)
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.95]], np.float32)
    indices, num_valid = cops.non_max_suppression(boxes, scores, 8, 0.5)
    np.testing.assert_array_equal(indices, [[4, 0, 2, 3, 0, 0, 0, 0]])
    np.testing.assert_array_equal(num_valid, [4])
    # Score threshold is inclusive; max_output_size cuts the list.
    indices, num_valid = cops.non_max_suppression(boxes, scores, 2, 0.5, score_threshold=0.7)
    np.testing.assert_array_equal(indices, [[4, 0]])
    np.testing.assert_array_equal(num_valid, [2])
    # The native TF op loses the zero box at the origin (why auto is pure on TF).
    indices, num_valid = cops.non_max_suppression(boxes, scores, 8, 0.5,
                                                  implementation="native")
    np.testing.assert_array_equal(num_valid, [3])
    # float16 inputs, max_output_size 0, and no NaN from zero-area pairs.
    indices, num_valid = cops.non_max_suppression(boxes.astype(np.float16),
                                                  scores.astype(np.float16), 8, 0.5)
    np.testing.assert_array_equal(num_valid, [4])
    indices, num_valid = cops.non_max_suppression(boxes, scores, 0, 0.5)
    assert tuple(indices.shape) == (1, 0) and int(num_valid[0]) == 0
    corners = [tf.constant(boxes[..., i]) for i in range(4)]
    iou = cops._pairwise_iou(corners, corners).numpy()
    assert np.isfinite(iou).all() and iou[0, 3, 3] == 0 and iou[0, 4, 4] == 0
    with pytest.raises(ValueError):
        cops.non_max_suppression(boxes, scores, 8, 0.5, implementation="fast")


def test_auto_choices_on_tensorflow():
    assert cops.auto_implementation("non_max_suppression") == "pure"
    assert cops.auto_implementation("crop_and_resize") == "pure"


# ---------------------------------------------------------------------------------------
# crop_and_resize on TensorFlow
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("k", range(len(CROP_CASES)), ids=[c[0] for c in CROP_CASES])
def test_crop_and_resize_tf_matches_numpy(k):
    name, images, boxes, box_indices, size = CROP_CASES[k]
    expected = crop_and_resize_numpy(images, boxes, box_indices, size)
    for impl in ["pure", "native", "auto"]:
        got = cops.crop_and_resize(images, boxes, box_indices, size, implementation=impl)
        assert got.dtype == tf.float32
        np.testing.assert_allclose(got, expected, atol=2e-5, err_msg=f"{name} {impl}")
    jitted = tf.function(lambda x, b, i: cops.crop_and_resize(x, b, i, size),
                         jit_compile=True)
    np.testing.assert_allclose(jitted(images, boxes, box_indices), expected, atol=2e-5,
                               err_msg=f"{name} jit")


def test_crop_and_resize_tf_float16_and_gradient():
    _, images, boxes, box_indices, _ = CROP_CASES[0]
    half = images.astype(np.float16)
    expected = crop_and_resize_numpy(half.astype(np.float32), boxes, box_indices, (7, 7))
    for impl in ["pure", "native"]:
        got = cops.crop_and_resize(half, boxes, box_indices, (7, 7), implementation=impl)
        assert got.dtype == tf.float16
        np.testing.assert_allclose(np.asarray(got, np.float32), expected, atol=1e-2)

    # Gradient w.r.t. the images against the NumPy adjoint, for the pure version (eager
    # and under XLA). Sample points stay off integer coordinates, where the gradient's
    # split between neighbouring pixels would depend on how the compiler rounds the
    # sampling grid. TF's own kernel (CropAndResizeGradImage) is not checked: on a CPU
    # its threads race on overlapping boxes (2 of 200 repeats of this very case off by
    # up to 2 on an idle machine, 179 of 200 with the other core busy), which is one
    # reason "auto" never picks it.
    rng = np.random.default_rng(5)
    boxes = off_grid_boxes(rng, 30, images.shape[1], images.shape[2], (14, 14))
    box_indices = rng.integers(0, images.shape[0], len(boxes)).astype(np.int32)
    crops = crop_and_resize_numpy(images, boxes, box_indices, (14, 14))
    expected = crop_and_resize_numpy_grad(images.shape, boxes, box_indices, (14, 14),
                                          np.cos(crops) - crops * np.sin(crops))
    assert np.abs(expected).sum() > 0

    def grad(impl):
        x = tf.constant(images)
        with tf.GradientTape() as tape:
            tape.watch(x)
            crops = cops.crop_and_resize(x, boxes, box_indices, (14, 14),
                                         implementation=impl)
            loss = tf.reduce_sum(crops * tf.cos(crops))
        return tape.gradient(loss, x)

    np.testing.assert_allclose(tf.convert_to_tensor(grad("pure")).numpy(), expected,
                               atol=1e-4, err_msg="pure")
    jit_grad = tf.function(lambda: tf.convert_to_tensor(grad("pure")), jit_compile=True)
    np.testing.assert_allclose(jit_grad().numpy(), expected, atol=1e-4, err_msg="jit")


def test_numpy_crop_gradient_is_the_numerical_gradient():
    # The adjoint above against central differences of the reference itself (exact up
    # to rounding, since the crop is linear in the images), on a few pixels.
    rng = np.random.default_rng(1)
    images = rng.normal(size=(2, 9, 11, 2))
    boxes = off_grid_boxes(rng, 6, 9, 11, (5, 4))
    box_indices = rng.integers(0, 2, 6)
    upstream = rng.normal(size=(6, 5, 4, 2))
    adjoint = crop_and_resize_numpy_grad(images.shape, boxes, box_indices, (5, 4), upstream)
    touched = np.argwhere(adjoint != 0)
    for idx in list(touched[rng.choice(len(touched), 8, replace=False)]) + [
            np.argwhere(adjoint == 0)[0]]:
        e = np.zeros_like(images)
        e[tuple(idx)] = 0.5

        def f(x):
            return np.sum(upstream * crop_and_resize_numpy(x, boxes, box_indices, (5, 4)))

        numeric = (f(images + e) - f(images - e)) / 1.0
        assert numeric == pytest.approx(adjoint[tuple(idx)], abs=1e-9)


# ---------------------------------------------------------------------------------------
# JAX and torch: one child process each
# ---------------------------------------------------------------------------------------

CHILD = r"""
import sys
sys.path.insert(0, "tests")
import numpy as np
import keras
from keras import ops
from ops_reference import (crop_and_resize_numpy, crop_cases, nms_cases,
                           nms_numpy_batched)
from colabrcnn.model import ops as cops

backend = keras.backend.backend()
assert backend == BACKEND, backend
failures = []

if backend == "jax":
    import jax
    compile_fn = jax.jit
else:
    compile_fn = lambda f: f  # torch runs eagerly


def check_nms(label, got, expected):
    indices, num_valid = (ops.convert_to_numpy(g) for g in got)
    if indices.dtype != np.int32 or num_valid.dtype != np.int32:
        failures.append(f"{label}: dtypes {indices.dtype} {num_valid.dtype}")
    elif not (np.array_equal(num_valid, expected[1])
              and np.array_equal(indices, expected[0])):
        failures.append(f"{label}: num_valid {num_valid} expected {expected[1]}")


for name, boxes, scores, max_out, thr, score_thr in nms_cases():
    expected = nms_numpy_batched(boxes, scores, max_out, thr, score_thr)
    fn = compile_fn(lambda b, s: cops.non_max_suppression(
        b, s, max_out, thr, score_thr, implementation="auto"))
    check_nms(f"nms {name}", fn(boxes, scores), expected)
# Several tiles (the tile loop, cross-tile suppression, early stop) on this backend.
name, boxes, scores, max_out, thr, score_thr = nms_cases()[2]
fn = compile_fn(lambda b, s: cops._nms_pure(b, s, max_out, thr, score_thr, tile_size=16))
check_nms("nms tile 16", fn(boxes, scores),
          nms_numpy_batched(boxes, scores, max_out, thr, score_thr))

for name, images, boxes, box_indices, size in crop_cases():
    expected = crop_and_resize_numpy(images, boxes, box_indices, size)
    fn = compile_fn(lambda x, b, i: cops.crop_and_resize(x, b, i, size))
    got = ops.convert_to_numpy(fn(images, boxes, box_indices))
    if not np.allclose(got, expected, atol=2e-5):
        failures.append(f"crop {name}: max error {np.abs(got - expected).max()}")

# float16 in, float16 out.
_, images, boxes, box_indices, _ = crop_cases()[0]
half = compile_fn(lambda x, b, i: cops.crop_and_resize(x, b, i, (7, 7)))(
    ops.convert_to_tensor(images.astype(np.float16)), boxes, box_indices)
expected = crop_and_resize_numpy(images.astype(np.float16).astype(np.float32), boxes,
                                 box_indices, (7, 7))
if ops.convert_to_numpy(half).dtype != np.float16:
    failures.append(f"crop float16 returned {ops.convert_to_numpy(half).dtype}")
elif not np.allclose(ops.convert_to_numpy(half).astype(np.float32), expected, atol=1e-2):
    failures.append("crop float16 values")

# Gradient w.r.t. the images: finite, non-zero, and matching a finite difference.
def loss(x):
    crops = cops.crop_and_resize(x, boxes, box_indices, (14, 14))
    return ops.sum(crops * ops.cos(crops))

if backend == "jax":
    grad = np.asarray(jax.jit(jax.grad(loss))(images))
else:
    import torch
    x = torch.tensor(images, requires_grad=True)
    loss(x).backward()
    grad = x.grad.numpy()
if not (np.isfinite(grad).all() and np.abs(grad).sum() > 0):
    failures.append("crop gradient not finite or all zero")
else:
    pos = tuple(np.argwhere(np.abs(grad) == np.abs(grad).max())[0])
    eps = 1e-2
    plus, minus = images.astype(np.float64).copy(), images.astype(np.float64).copy()
    plus[pos] += eps
    minus[pos] -= eps
    def loss_np(x):
        c = crop_and_resize_numpy(x, boxes, box_indices, (14, 14))
        return float(np.sum(c * np.cos(c)))
    numeric = (loss_np(plus) - loss_np(minus)) / (2 * eps)
    if not np.isclose(grad[pos], numeric, rtol=1e-2, atol=1e-3):
        failures.append(f"crop gradient {grad[pos]} vs finite difference {numeric}")

EXTRA

if failures:
    raise SystemExit("\n".join([f"[{backend}] {len(failures)} failure(s):"] + failures))
print(f"[{backend}] ops OK")
"""

# torch: torchvision's nms is used when importable and eager. It is not installed in
# this environment, so the wrapper (_nms_torchvision) is checked with a stand-in that
# follows torchvision.ops.nms's contract: (x1, y1, x2, y2) boxes, IoU > threshold,
# kept indices by descending score, with an *unstable* sort as the real kernel has.
TORCHVISION_STANDIN = r"""
import types, torch
real = cops._torchvision_nms()

def fake_nms(xyxy, scores, iou_threshold):
    b = xyxy.numpy()
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    kept = []
    for i in np.argsort(-scores.numpy(), kind="quicksort"):
        j = np.asarray(kept, np.int64)
        iw = np.maximum(np.minimum(b[j, 2], b[i, 2]) - np.maximum(b[j, 0], b[i, 0]), 0)
        ih = np.maximum(np.minimum(b[j, 3], b[i, 3]) - np.maximum(b[j, 1], b[i, 1]), 0)
        inter = iw * ih
        with np.errstate(invalid="ignore"):
            iou = inter / (area[j] + area[i] - inter)   # 0/0 = nan: not suppressed
        if not np.any(iou > iou_threshold):
            kept.append(i)
    return torch.tensor(kept, dtype=torch.int64)

if real is None:
    cops._torchvision_nms.cache_clear()
    module = types.ModuleType("torchvision")
    module.ops = types.ModuleType("torchvision.ops")
    module.ops.nms = fake_nms
    sys.modules["torchvision"] = module
    sys.modules["torchvision.ops"] = module.ops
assert cops.auto_implementation("non_max_suppression") == "native"
for name, boxes, scores, max_out, thr, score_thr in nms_cases():
    expected = nms_numpy_batched(boxes, scores, max_out, thr, score_thr)
    check_nms(f"torchvision nms {name}", cops.non_max_suppression(
        boxes, scores, max_out, thr, score_thr, implementation="native"), expected)
"""


def _child(backend, extra=""):
    return CHILD.replace("BACKEND", repr(backend)).replace("EXTRA", extra)


def test_ops_on_jax():
    out = run_in_backend("jax", _child("jax"))
    assert "[jax] ops OK" in out


def test_ops_on_torch():
    out = run_in_backend("torch", _child("torch", TORCHVISION_STANDIN))
    assert "[torch] ops OK" in out
