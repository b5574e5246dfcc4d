"""Several devices: GPU_COUNT, keras.distribution on JAX, tf.distribute on TensorFlow.

There is no multi-GPU machine here, so the devices are virtual CPU devices, set up in a
child process per test before the backend starts (Keras fixes its backend at import,
and JAX / TensorFlow fix their device lists at start):

    JAX  XLA_FLAGS=--xla_force_host_platform_device_count=2 -> jax.devices() has 2 CPUs
    TF   tf.config.set_logical_device_configuration(cpu, [...] * 2) -> /CPU:0, /CPU:1

The code paths are the ones a Kaggle T4 x2 takes (DataParallel / MirroredStrategy over
two devices); only the device kind differs.
"""
import json

import pytest

from conftest import run_in_backend

from colabrcnn import Config, ConfigError, distribute, env

# Set up two virtual CPU devices before the backend starts, and a tiny config.
PRELUDE = r"""
import json, os, sys
import numpy as np
BACKEND = os.environ["KERAS_BACKEND"]
DEVICES = int(os.environ.get("DIST_DEVICES", "2"))
if BACKEND == "jax" and DEVICES > 1:
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={DEVICES}"
if BACKEND == "tensorflow" and DEVICES > 1:
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * DEVICES)
import keras
from colabrcnn import Config, ConfigError, MaskRCNN, distribute
from colabrcnn import train as T
from colabrcnn.data import shapes
from colabrcnn.data.loader import DataGenerator
from tests.tiny_model import tiny_config


def dist_config(**kw):
    # The shared tiny config, plus what makes a step over 2 devices equal one on 1.
    return tiny_config(**{
        "NAME": "dist", "STEPS_PER_EPOCH": 1, "VALIDATION_STEPS": 1,
        "CHECKPOINT_EVERY_MINUTES": None, "MIXED_PRECISION": False,
        "TRAIN_BN": False,             # BatchNorm statistics would differ per replica
        "LEARNING_MOMENTUM": 0.0,
        "GRADIENT_CLIP_NORM": None,    # clipping is not linear: per image != per batch
        **kw})


def max_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
               for x, y in zip(a, b))


def one_batch(cfg):
    return DataGenerator(shapes(2, 64, seed=0), cfg, shuffle=False, seed=0)[0]


def model_for(gpu_count, images_per_gpu, weights=None, logs="logs", **kw):
    keras.utils.set_random_seed(0)
    cfg = dist_config(GPU_COUNT=gpu_count, IMAGES_PER_GPU=images_per_gpu, **kw)
    m = MaskRCNN("training", cfg, logs)
    if weights is not None:
        m.keras_model.set_weights(weights)
    m.set_trainable("all")
    m.compile(0.002)
    return m
"""


def _child(backend, code, devices=2):
    out = run_in_backend(backend, f"import os\nos.environ['DIST_DEVICES'] = "
                                  f"'{devices}'\n" + PRELUDE + code)
    return json.loads(out.strip().splitlines()[-1])


# ------------------------------------------------------------------- no backend needed
def test_config_accepts_auto_and_counts_one_device_until_built():
    c = Config(NUM_CLASSES=2, GPU_COUNT="auto", IMAGES_PER_GPU=3)
    assert c.GPU_COUNT == "auto" and c.BATCH_SIZE == 3
    assert Config(NUM_CLASSES=2, GPU_COUNT=2, IMAGES_PER_GPU=3).BATCH_SIZE == 6
    for bad in (0, -1, 1.5, "all", True, None):
        with pytest.raises(ConfigError, match="GPU_COUNT"):
            Config(NUM_CLASSES=2, GPU_COUNT=bad)
    assert json.loads(c.to_json())["GPU_COUNT"] == "auto"
    assert c.copy(IMAGES_PER_GPU=1).GPU_COUNT == "auto"


def test_describe_plan_and_doctor_line():
    gpu = {"name": "Tesla T4", "kind": "gpu", "memory_bytes": 15 * 2 ** 30}
    cpu = {"name": "CPU (4 cores)", "kind": "cpu", "memory_bytes": None}
    tpu = {"name": "TPU (accel0)", "kind": "tpu", "memory_bytes": None}
    two = [gpu, gpu, cpu]
    assert "MirroredStrategy over 2 GPUs" in distribute.describe_plan("tensorflow", two)
    assert "DataParallel over 2 GPUs" in distribute.describe_plan("jax", two)
    assert "KERAS_BACKEND=jax or tensorflow" in distribute.describe_plan("torch", two)
    assert "TPUStrategy" in distribute.describe_plan("tensorflow", [tpu] * 4 + [cpu])
    assert "DataParallel" in distribute.describe_plan("jax", [tpu] * 4 + [cpu])
    assert distribute.describe_plan("tensorflow", [gpu, cpu]).startswith("one GPU")
    assert distribute.describe_plan("jax", [cpu]).startswith("one device")
    report = env.doctor({"platform": "kaggle", "backend": "tensorflow",
                         "versions": {"python": "3.11.0"}, "devices": two})
    line = [x for x in report.lines if x.startswith("Distribution:")]
    assert line and "MirroredStrategy over 2 GPUs" in line[0]


# ------------------------------------------------------------------- GPU_COUNT="auto"
@pytest.mark.parametrize("backend", ["jax", "tensorflow"])
def test_gpu_count_auto_resolves_to_the_device_count(backend):
    out = _child(backend, r"""
c = dist_config(GPU_COUNT="auto", IMAGES_PER_GPU=3)
assert c.BATCH_SIZE == 3                          # nothing resolved in Config()
assert distribute.device_count() == 2
s = distribute.setup(c)
assert c.GPU_COUNT == 2 and c.BATCH_SIZE == 6, (c.GPU_COUNT, c.BATCH_SIZE)
assert s.replicas == 2 and s.distributed, s
try:
    distribute.resolve_gpu_count(dist_config(GPU_COUNT=3))
    raise AssertionError("GPU_COUNT=3 with 2 devices must fail")
except ConfigError as e:
    assert "at most 2" in str(e), e
one = distribute.setup(dist_config(GPU_COUNT=1))
assert one.kind == "single" and not one.distributed
if BACKEND == "jax":   # a one-device model clears the distribution set before
    assert keras.distribution.distribution() is None
print(json.dumps({"kind": s.kind, "text": str(s)}))
""")
    assert out["kind"] == {"jax": "jax-data-parallel", "tensorflow": "tf-mirrored"}[backend]


@pytest.mark.parametrize("backend", ["tensorflow", "torch"])
def test_gpu_count_auto_is_one_on_an_ordinary_cpu_machine(backend):
    out = _child(backend, r"""
c = dist_config(GPU_COUNT="auto")
s = distribute.setup(c)
assert c.GPU_COUNT == 1 and c.BATCH_SIZE == c.IMAGES_PER_GPU and s.kind == "single"
msg = ""
if BACKEND == "torch":
    try:
        distribute.setup(dist_config(GPU_COUNT=2))
    except ConfigError as e:
        msg = str(e)
print(json.dumps({"msg": msg}))
""", devices=1)
    if backend == "torch":
        assert "KERAS_BACKEND=jax" in out["msg"] and "tensorflow" in out["msg"]


# ------------------------------------------------------------------- one training step
def test_jax_data_parallel_step_equals_one_device_with_the_same_global_batch():
    """JAX: 2 devices x 1 image == 1 device x 2 images, loss and updated weights.

    keras.distribution.DataParallel compiles one SPMD program for the global batch, so
    the result is the one-device result exactly, ROI sampling included (JAX's random
    bits do not depend on how an array is sharded). The tolerance (1e-5 of weights
    whose update is ~1e-2) would catch any loss-scaling error.
    """
    out = _child("jax", r"""
one = model_for(1, 2)
w0 = one.keras_model.get_weights()
batch = one_batch(one.config)
l1 = one.keras_model.train_on_batch(batch, return_dict=True)
w1 = one.keras_model.get_weights()
two = model_for(2, 1, weights=w0)
assert two.distribution.kind == "jax-data-parallel" and two.config.BATCH_SIZE == 2
assert max_diff(two.keras_model.get_weights(), w0) == 0
h = two.keras_model.fit(batch, batch_size=2, epochs=1, shuffle=False, verbose=0)
l2 = {k: v[-1] for k, v in h.history.items()}
w2 = two.keras_model.get_weights()
update = max_diff(w1, w0)
print(json.dumps({"l1": l1, "l2": l2, "diff": max_diff(w2, w1), "update": update}))
""")
    assert out["update"] > 1e-3
    assert out["diff"] < 1e-5, out
    for k, v in out["l1"].items():
        assert out["l2"][k] == pytest.approx(v, rel=1e-5, abs=1e-6), k


def test_tf_mirrored_step_is_the_mean_of_the_replicas_steps():
    """TF: 2 replicas x 1 image == the mean of two 1-image steps on one device.

    Why not "== 1 device x 2 images" as on JAX: matterport's losses average over the
    anchors/ROIs that count in the whole batch; under tf.distribute each replica
    averages over its own image and the gradients are averaged across replicas (what
    matterport's ParallelModel did too), so with images of different instance counts
    the two weight them a little differently (here ~10% of the update). The exact
    identity is therefore with the mean of the per-image steps: with SGD, no momentum
    and no clipping, w0 - lr * (g0 + g1) / 2 == (w_img0 + w_img1) / 2.

    ROI sampling is random (keras.random in DetectionTargetLayer); each replica draws
    from the same seed state as a one-device 1-image step does, so the samples agree.

    The check is tight (1e-5 of an update ~1e-2) and catches a missing 1/replicas loss
    scaling, which doubles the step: the same run with distribute.scale_loss disabled
    must fail it (a negative control, run below).
    """
    out = _child("tensorflow", r"""
ref = model_for(1, 2)
w0 = ref.keras_model.get_weights()
batch = one_batch(ref.config)
w_img, l_img = [], []
for i in range(2):
    m = model_for(1, 1, weights=w0)
    part = {k: v[i:i + 1] for k, v in batch.items()}
    l_img.append(m.keras_model.train_on_batch(part, return_dict=True))
    w_img.append(m.keras_model.get_weights())
w_mean = [(a + b) / 2 for a, b in zip(*w_img)]
l_mean = {k: (l_img[0][k] + l_img[1][k]) / 2 for k in l_img[0]}

def two_replica_step():
    m = model_for(2, 1, weights=w0)
    assert m.distribution.kind == "tf-mirrored" and m.config.BATCH_SIZE == 2
    data = {k: (v.astype(np.uint8) if v.dtype == bool else v) for k, v in batch.items()}
    h = m.keras_model.fit(data, batch_size=2, epochs=1, shuffle=False, verbose=0)
    return {k: v[-1] for k, v in h.history.items()}, m.keras_model.get_weights()

l2, w2 = two_replica_step()
real_scale = distribute.scale_loss
distribute.scale_loss = lambda loss: loss        # the bug the scaling prevents
l_bad, w_bad = two_replica_step()
distribute.scale_loss = real_scale
print(json.dumps({"l2": l2, "l_mean": l_mean, "diff": max_diff(w2, w_mean),
                  "update": max_diff(w_mean, w0), "bad": max_diff(w_bad, w_mean),
                  "l_bad": l_bad["loss"]}))
""")
    assert out["update"] > 1e-3
    assert out["diff"] < 1e-5, out
    for k, v in out["l_mean"].items():
        assert out["l2"][k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
    # Without the scaling the step is twice as large and the logged loss doubled.
    assert out["bad"] > 100 * max(out["diff"], 1e-6), out
    assert out["l_bad"] == pytest.approx(2 * out["l_mean"]["loss"], rel=1e-4)


# -------------------------------------------------------------------------- checkpoints
ROUND_TRIP = r"""
import h5py
from colabrcnn.weights import named_layers
logs = os.environ["DIST_LOGS"]
ds = shapes(4, 64, seed=0)
images = [ds.load_image(i) for i in range(3)]

def same_weights(a, b):
    la, lb = named_layers(a.keras_model), named_layers(b.keras_model)
    common = set(la) & set(lb)   # a training model also has the ROI sampler's seed
    assert len(common) > 40, sorted(common)
    for name in common:
        assert max_diff(la[name].get_weights(), lb[name].get_weights()) == 0, name

def same_detections(a, b):
    for x, y in zip(a, b):
        assert len(x["class_ids"]) == len(y["class_ids"]) > 0
        np.testing.assert_array_equal(x["class_ids"], y["class_ids"])
        np.testing.assert_allclose(x["scores"], y["scores"], atol=2e-4)
        np.testing.assert_allclose(x["rois"], y["rois"], atol=1.0)
        assert np.mean(x["masks"] != y["masks"]) < 1e-3

def saved_optimizer(path):
    with h5py.File(path, "r") as f:
        g = f["training_state/optimizer"]
        return [np.asarray(g[k]) for k in sorted(g.keys())]

def check_optimizer_restores(model, path):
    with model.scope():
        model.set_trainable("heads")
        model.compile(0.002)
        got = T.restore_optimizer(model.keras_model.optimizer, path,
                                  model.keras_model.trainable_variables)
    assert got == "all", got
    variables = model.keras_model.optimizer.variables
    saved = saved_optimizer(path)
    assert len(variables) == len(saved)
    # The state round-trips; the learning rate is the one this call gave (0.002).
    state = [i for i, v in enumerate(variables) if v.name != "learning_rate"]
    assert len(state) == len(variables) - 1
    assert max_diff([keras.ops.convert_to_numpy(variables[i]) for i in state],
                    [saved[i] for i in state]) == 0
    assert np.isclose(float(keras.ops.convert_to_numpy(
        model.keras_model.optimizer.learning_rate)), 0.002)
    assert int(keras.ops.convert_to_numpy(model.keras_model.optimizer.iterations)) > 0

def rt_config(gpu_count, images_per_gpu):
    # matterport's optimizer (SGD with momentum, clipping): momentum buffers to
    # round-trip. OPTIMIZER is named, so a random backbone does not switch to the
    # from-scratch recipe (Adam) and compile() below builds the same optimizer.
    return dist_config(GPU_COUNT=gpu_count, IMAGES_PER_GPU=images_per_gpu,
                      OPTIMIZER="sgd", LEARNING_MOMENTUM=0.9, GRADIENT_CLIP_NORM=5.0)

def trained(gpu_count, images_per_gpu, start=None, epochs=1, sub="run"):
    keras.utils.set_random_seed(0)
    m = MaskRCNN("training", rt_config(gpu_count, images_per_gpu), os.path.join(logs, sub))
    if start is not None:
        m.load_weights(start, by_name=True)   # weights now, optimizer at train()
    else:
        # An untrained head calls everything background: lean it towards the objects
        # so that there are detections to compare.
        head = named_layers(m.keras_model)["mrcnn_class_logits"]
        kernel, bias = head.get_weights()
        head.set_weights([kernel, np.array([0.0, 3.0, 2.0, 1.0], bias.dtype)])
    # A small step: the round trip is the point, and a larger one can turn this
    # untrained model's every ROI into background (no detections to compare).
    m.train(ds, ds, learning_rate=1e-5, epochs=epochs, layers="heads", seed=0,
            verbose=0)
    path = T.list_checkpoints(m.log_dir, "dist")[-1]
    assert T.read_state(path)["has_optimizer"]
    return m, path

# Trained on 2 devices -> loaded on 1: same detections, optimizer state restored.
two, path2 = trained("auto", 1, sub="two")
assert two.distribution.distributed and two.config.BATCH_SIZE == 2
det2 = two.detect(images)
one = MaskRCNN("training", rt_config(1, 2), logs)
assert not one.distribution.distributed
one.load_weights(path2, by_name=True)
same_weights(one, two)
same_detections(one.detect(images), det2)
# evaluate() runs unchanged on the 2-device model (3 images: a padded second batch).
from colabrcnn.evaluate import coco_metrics
m2, m1 = (coco_metrics(m, ds, limit=3, verbose=0, out_json=False) for m in (two, one))
assert m2["num_predictions"] == m1["num_predictions"] > 0
for kind in ("bbox", "segm"):
    for k, v in m1[kind].items():
        assert v is None and m2[kind][k] is None or abs(m2[kind][k] - v) < 1e-3, (kind, k)
check_optimizer_restores(one, path2)

# Trained on 1 device (continuing the 2-device run) -> loaded on 2.
one_more, path1 = trained(1, 2, start=path2, epochs=2, sub="one")
assert T.read_state(path1)["epochs_done"] == 2
it = int(keras.ops.convert_to_numpy(one_more.keras_model.optimizer.iterations))
assert it == 2, it     # resumed from the 2-device run's optimizer (1 step) + 1 step
det1 = one_more.detect(images)
again = MaskRCNN("inference", rt_config(2, 1), logs)
assert again.distribution.distributed
again.load_weights(path1, by_name=True)
same_weights(again, one_more)
same_detections(again.detect(images), det1)
back = MaskRCNN("training", rt_config(2, 1), logs)
back.load_weights(path1, by_name=True)
check_optimizer_restores(back, path1)
print(json.dumps({"ok": True, "n": [len(r["class_ids"]) for r in det1]}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "tensorflow"])
def test_checkpoint_round_trips_between_one_and_two_devices(backend, tmp_path,
                                                           monkeypatch):
    monkeypatch.setenv("DIST_LOGS", str(tmp_path))
    assert _child(backend, ROUND_TRIP)["ok"]
