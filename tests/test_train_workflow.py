"""Training workflow: checkpoints, resume after a kill, schedules, accumulation,
mixed precision and out-of-memory handling (TensorFlow backend, tiny CPU models)."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import h5py
import keras
import numpy as np
import pytest

from colabrcnn import GPUMemoryError, MaskRCNN
from colabrcnn import checkpoint as C
from colabrcnn import train as T
from colabrcnn.data import shapes
from colabrcnn.demo import ShapesConfig
from conftest import run_in_backend

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class TinyConfig(ShapesConfig):
    NAME = "tiny"
    IMAGE_MIN_DIM = 64
    IMAGE_MAX_DIM = 64
    TRAIN_ROIS_PER_IMAGE = 16
    POST_NMS_ROIS_TRAINING = 64
    POST_NMS_ROIS_INFERENCE = 32
    PRE_NMS_LIMIT = 256
    TOP_DOWN_PYRAMID_SIZE = 32
    FPN_CLASSIF_FC_LAYERS_SIZE = 64
    MAX_GT_INSTANCES = 4
    RPN_TRAIN_ANCHORS_PER_IMAGE = 32
    MINI_MASK_SHAPE = (14, 14)
    STEPS_PER_EPOCH = 3
    VALIDATION_STEPS = 1
    CHECKPOINT_EVERY_MINUTES = None
    MIXED_PRECISION = False


# ------------------------------------------------------------------ checkpoint files
def test_checkpoint_names_round_trip_and_order(tmp_path):
    assert C.parse_checkpoint_name("a/mask_rcnn_x_0003.h5") == ("x", 3, 0)
    assert C.parse_checkpoint_name("mask_rcnn_x_0004_s00120.h5") == ("x", 3, 120)
    assert C.parse_checkpoint_name("mask_rcnn_x_best.h5") is None
    assert C.parse_checkpoint_name(C.checkpoint_path(".", "x", 3, 120)) == ("x", 3, 120)
    run = tmp_path / "x20260101T0000"
    run.mkdir()
    model = MaskRCNN("inference", TinyConfig(NAME="x"), str(tmp_path))
    for done, step in [(2, 0), (2, 5), (3, 0)]:
        C.save_checkpoint(model.keras_model, C.checkpoint_path(str(run), "x", done, step),
                          epochs_done=done, step=step)
    names = [os.path.basename(p) for p in C.list_checkpoints(str(run), "x")]
    # Mid-epoch 3 (2 done + 5 steps) sorts between epoch 2 and epoch 3.
    assert names == ["mask_rcnn_x_0002.h5", "mask_rcnn_x_0003_s00005.h5",
                     "mask_rcnn_x_0003.h5"]
    assert os.path.basename(C.find_last(str(tmp_path), "x")) == "mask_rcnn_x_0003.h5"
    # A truncated newest file is skipped, not returned.
    with open(run / "mask_rcnn_x_0004.h5", "wb") as f:
        f.write(b"\x89HDF\r\n\x1a\n" + b"\0" * 50)
    assert os.path.basename(C.find_last(str(tmp_path), "x")) == "mask_rcnn_x_0003.h5"
    state = C.read_state(str(run / "mask_rcnn_x_0003_s00005.h5"))
    assert state["epochs_done"] == 2 and state["step"] == 5 and state["complete"] == 1


def test_prune_keeps_newest_k_and_drops_stale_partials(tmp_path):
    run = str(tmp_path)
    for done in range(1, 6):
        open(C.checkpoint_path(run, "x", done), "w").close()
    open(C.checkpoint_path(run, "x", 2, 7), "w").close()     # older than epoch 5: stale
    open(C.checkpoint_path(run, "x", 5, 3), "w").close()     # newest mid-epoch: kept
    open(os.path.join(run, "mask_rcnn_x_0006.h5.partial999999"), "w").close()
    C.prune_checkpoints(run, "x", keep=2)
    assert sorted(os.listdir(run)) == ["mask_rcnn_x_0004.h5", "mask_rcnn_x_0005.h5",
                                       "mask_rcnn_x_0006_s00003.h5"]


# -------------------------------------------------------------------- learning rate
def test_learning_rate_schedules():
    def lr(**kw):
        s = T.LearningRateSchedule(0.1, steps_per_epoch=10, **kw)
        return [float(keras.ops.convert_to_numpy(s(i))) for i in (0, 9, 10, 25, 39, 40)]

    assert lr(kind="constant") == pytest.approx([0.1] * 6)
    assert lr(kind="step", step_epochs=[1, 3]) == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    cos = lr(kind="cosine", end_epoch=4)
    assert cos[0] == pytest.approx(0.1) and cos[-1] == pytest.approx(0.0, abs=1e-7)
    assert cos[3] == pytest.approx(0.05 * (1 + np.cos(np.pi * 25 / 40)))
    warm = lr(kind="constant", warmup_steps=20)
    assert warm[0] == pytest.approx(0.1 / 20) and warm[3] == pytest.approx(0.1)
    assert warm[1] == pytest.approx(0.1 * 10 / 20)


SCHEDULE_IN_STEP = """
import json
import keras, numpy as np
from colabrcnn import train as T
from colabrcnn.config import Config

# loss = mean(output): the bias gradient is 1 whatever the weights, so each step moves
# the bias by exactly -lr (SGD without momentum or clipping).
keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
cfg = Config(NAME="t", NUM_CLASSES=2, STEPS_PER_EPOCH=4, LR_SCHEDULE="cosine",
             LEARNING_MOMENTUM=0.0, GRADIENT_CLIP_NORM=None)
opt = T.make_optimizer(cfg, 0.1, end_epoch=2)
model.compile(optimizer=opt, loss=lambda y, p: keras.ops.mean(p),
              jit_compile=keras.backend.backend() != "torch")
x, y = np.ones((2, 3), "float32"), np.zeros((2, 1), "float32")
schedule = T.schedule_of(opt)
moves = []
for numbers in [None, (0.0, 2), (0.1, 1)]:
    if numbers is not None:  # a later train() call: new numbers, same compiled step
        schedule.assign_numbers(T.LearningRateSchedule(numbers[0], "cosine", 4, numbers[1]))
    before = float(model.layers[0].bias.numpy()[0])
    model.fit(x, y, batch_size=2, epochs=1, verbose=0, shuffle=False)
    moves.append(before - float(model.layers[0].bias.numpy()[0]))
print(json.dumps(moves))
"""


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_compiled_step_reads_the_schedule_numbers_assigned_later(backend):
    """A schedule's numbers live in an optimizer variable: assigning new ones (as a
    second train() call does) changes the rate the already-compiled step uses."""
    moves = json.loads(run_in_backend(backend, SCHEDULE_IN_STEP).strip().splitlines()[-1])
    # Step 0 at 0.1 (cosine start); step 1 at base 0; step 2 at 0.1 with the cosine
    # now over 1 epoch of 4 steps: 0.1 * (1 + cos(pi * 2 / 4)) / 2 = 0.05.
    np.testing.assert_allclose(moves, [0.1, 0.0, 0.05], atol=1e-6)


def test_gradient_accumulation_equals_a_larger_batch():
    """k accumulated steps of batch b give the same update as one step of batch k*b."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 5)).astype("float32")
    y = rng.normal(size=(4, 1)).astype("float32")

    def trained(k, batch):
        keras.utils.set_random_seed(1)
        model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3, activation="tanh"),
                                  keras.layers.Dense(1)])
        cfg = TinyConfig(GRADIENT_ACCUMULATION_STEPS=k, GRADIENT_CLIP_NORM=None,
                         LEARNING_MOMENTUM=0.0)
        opt = T.make_optimizer(cfg, 0.1)
        assert (opt.gradient_accumulation_steps or 1) == k
        model.compile(optimizer=opt, loss="mse")
        model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0)
        return model.get_weights()

    for a, b in zip(trained(2, 2), trained(1, 4)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------- train / resume
def test_train_writes_checkpoints_logs_and_plot_and_resume_auto_skips(tmp_path):
    keras.utils.set_random_seed(0)
    ds = shapes(4, 64, seed=0)
    model = MaskRCNN("training", TinyConfig(CHECKPOINT_KEEP=2), str(tmp_path))
    history = model.train(ds, ds, learning_rate=0.01, epochs=3, layers="heads", seed=0,
                          verbose=0)
    assert len(history.history["loss"]) == 3 and model.epoch == 3
    run = model.log_dir
    files = sorted(os.listdir(run))
    assert "mask_rcnn_tiny_0002.h5" in files and "mask_rcnn_tiny_0003.h5" in files
    assert "mask_rcnn_tiny_0001.h5" not in files          # CHECKPOINT_KEEP = 2
    assert "mask_rcnn_tiny_best.h5" in files
    assert {"log.csv", "loss.png", "config.json"} <= set(files)
    assert json.load(open(os.path.join(run, "config.json")))["NAME"] == "tiny"
    state = C.read_state(os.path.join(run, "mask_rcnn_tiny_0003.h5"))
    assert state["epochs_done"] == 3 and state["has_optimizer"] and state["layers"] == "heads"

    # A fresh model (a new Colab session) with resume="auto": nothing left to do.
    again = MaskRCNN("training", TinyConfig(CHECKPOINT_KEEP=2), str(tmp_path))
    assert again.train(ds, ds, learning_rate=0.01, epochs=3, layers="heads", verbose=0) is None
    assert again.epoch == 3 and again.log_dir == run
    # Asking for more epochs continues the same run, with the optimizer state restored.
    h = again.train(ds, ds, learning_rate=0.01, epochs=4, layers="heads", verbose=0)
    assert h.epoch == [3]
    with open(os.path.join(run, "log.csv")) as f:
        assert [line.split(",")[0] for line in f.read().split()[1:]] == ["0", "1", "2", "3"]
    w_resumed = again.keras_model.optimizer.iterations
    assert int(keras.ops.convert_to_numpy(w_resumed)) == 4 * TinyConfig.STEPS_PER_EPOCH


def test_resume_from_a_timed_checkpoint_on_the_last_step_of_an_epoch(tmp_path):
    """A timed checkpoint can land on an epoch's last step, just before the epoch-end
    one; a session that ends between the two resumes with the next epoch (the
    interrupted one has no batch left, which Keras would refuse as an empty dataset)."""
    keras.utils.set_random_seed(0)
    ds = shapes(4, 64, seed=0)
    cfg = TinyConfig(STEPS_PER_EPOCH=2)
    model = MaskRCNN("training", cfg, str(tmp_path))
    model.train(ds, None, learning_rate=0.01, epochs=1, layers="all", seed=0, verbose=0)
    run = model.log_dir
    # What the timed checkpoint wrote at step 2 of 2; the epoch-end file never came.
    on_last_step = C.save_checkpoint(
        model.keras_model, C.checkpoint_path(run, "tiny", 0, 2),
        model.keras_model.optimizer, epochs_done=0, step=2, config=cfg, layers="all",
        origin=model.weights_origin)
    for name in ("mask_rcnn_tiny_0001.h5", "mask_rcnn_tiny_best.h5"):
        if os.path.exists(os.path.join(run, name)):
            os.remove(os.path.join(run, name))
    assert C.resume_point("auto", run, str(tmp_path), "tiny", 0) == (on_last_step, 0, 2)

    again = MaskRCNN("training", cfg, str(tmp_path))
    history = again.train(ds, None, learning_rate=0.01, epochs=2, layers="all", verbose=0)
    assert history.epoch == [1] and again.epoch == 2
    assert os.path.exists(os.path.join(run, "mask_rcnn_tiny_0002.h5"))


KILL_SCRIPT = r"""
import os, sys
import keras
from colabrcnn import MaskRCNN
from colabrcnn.data import shapes
sys.path.insert(0, os.path.join({repo!r}, "tests"))
from test_train_workflow import TinyConfig

keras.utils.set_random_seed(0)
cfg = TinyConfig(CHECKPOINT_EVERY_MINUTES=0.0001, STEPS_PER_EPOCH=4)
model = MaskRCNN("training", cfg, {logs!r})
model.train(shapes(4, 64, seed=0), None, learning_rate=0.01, epochs={epochs}, layers="all",
            seed=0, verbose=2)
print("FINISHED", model.epoch)
"""


def _run_training(logs, epochs, timeout=600):
    code = KILL_SCRIPT.format(repo=REPO, logs=str(logs), epochs=epochs)
    env = dict(os.environ, PYTHONPATH=REPO, KERAS_BACKEND="tensorflow")
    return subprocess.Popen([sys.executable, "-c", code], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


@pytest.mark.slow
def test_sigkill_at_a_random_moment_then_resume(tmp_path):
    rng = random.Random(os.getpid())
    proc = _run_training(tmp_path, epochs=6)
    # Wait for the first checkpoint, then kill at a random moment a little later.
    deadline = time.time() + 300
    while time.time() < deadline and not list(tmp_path.glob("*/mask_rcnn_*.h5")):
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.2)
    assert list(tmp_path.glob("*/mask_rcnn_*.h5")), "no checkpoint appeared"
    time.sleep(rng.uniform(0.5, 4.0))
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

    runs = list(tmp_path.iterdir())
    assert len(runs) == 1
    ckpts = C.list_checkpoints(str(runs[0]), "tiny")
    assert ckpts
    for path in ckpts:  # every file under a checkpoint name is complete and readable
        with h5py.File(path, "r") as f:
            assert int(f["training_state"].attrs["complete"]) == 1
    last = ckpts[-1]
    _, done, step = C.parse_checkpoint_name(last)
    assert done < 6

    proc = _run_training(tmp_path, epochs=6)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    where = f"epoch {done}" + (f", step {step} of epoch {done + 1}" if step else "")
    assert f"Resuming from {last} ({where})" in out, out
    assert "FINISHED 6" in out
    final = C.list_checkpoints(str(runs[0]), "tiny")[-1]
    assert os.path.basename(final) == "mask_rcnn_tiny_0006.h5"
    assert C.read_state(final)["epochs_done"] == 6
    assert not list(runs[0].glob("*.partial*"))


# ------------------------------------------------------------- out of memory, precision
class ResourceExhaustedError(Exception):
    """Named like TensorFlow's OOM error (what the OOM detection looks for)."""


class _OOMOnce(keras.callbacks.Callback):
    def __init__(self, when):
        super().__init__()
        self.when = when
        self.fired = False

    def on_train_batch_end(self, batch, logs=None):
        if not self.fired and batch == self.when:
            self.fired = True
            raise ResourceExhaustedError("OOM when allocating tensor with shape[2,256,256,256]")


def test_out_of_memory_becomes_advice(tmp_path):
    model = MaskRCNN("training", TinyConfig(), str(tmp_path))
    with pytest.raises(GPUMemoryError) as info:
        model.train(shapes(2, 64, seed=0), None, learning_rate=0.01, epochs=1,
                    layers="all", custom_callbacks=[_OOMOnce(0)], verbose=0)
    message = str(info.value)
    assert "IMAGES_PER_GPU" in message and info.value.suggestions
    assert isinstance(info.value.__cause__, ResourceExhaustedError)


def test_out_of_memory_reduce_halves_the_batch_and_continues(tmp_path):
    keras.utils.set_random_seed(0)
    model = MaskRCNN("training", TinyConfig(), str(tmp_path))
    cb = _OOMOnce(1)
    model.train(shapes(4, 64, seed=0), None, learning_rate=0.01, epochs=2, layers="all",
                custom_callbacks=[cb], on_oom="reduce", verbose=0)
    assert cb.fired
    assert model.config.IMAGES_PER_GPU == 1 and model.config.GRADIENT_ACCUMULATION_STEPS == 2
    assert model.epoch == 2
    assert os.path.exists(os.path.join(model.log_dir, "mask_rcnn_tiny_0002.h5"))


def test_mixed_precision_trains_without_nans(tmp_path):
    keras.utils.set_random_seed(0)
    model = MaskRCNN("training", TinyConfig(MIXED_PRECISION="mixed_bfloat16"), str(tmp_path))
    conv = model.keras_model.get_layer("backbone_fpn").get_layer("res3a_branch2a")
    assert conv.dtype_policy.name == "mixed_bfloat16"
    assert keras.config.dtype_policy().name == "float32"  # global policy restored
    h = model.train(shapes(4, 64, seed=0), None, learning_rate=0.01, epochs=2,
                    layers="all", verbose=0)
    assert np.all(np.isfinite(h.history["loss"]))
    r = model.detect([shapes(1, 64, seed=5).load_image(0)])[0]
    assert r["masks"].dtype == bool


def test_remat_gives_the_same_training_steps(tmp_path):
    """REMAT recomputes the backbone blocks in the backward pass: same numbers, and the
    blocks' layers keep their names for weight loading."""
    from colabrcnn.data.loader import DataGenerator
    from colabrcnn.errors import ConfigError
    from colabrcnn.weights import named_layers
    losses, names = {}, {}
    for remat in (False, True):
        keras.utils.set_random_seed(0)
        cfg = TinyConfig(REMAT=remat, TRAIN_BN=False)
        model = MaskRCNN("training", cfg, str(tmp_path))
        model.set_trainable("all")
        model.compile(0.01)
        batch = DataGenerator(shapes(2, 64, seed=0), cfg, shuffle=False, seed=0)[0]
        losses[remat] = [float(model.keras_model.train_on_batch(batch, return_dict=True)["loss"])
                         for _ in range(2)]
        names[remat] = list(named_layers(model.keras_model))
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-5)
    assert sorted(names[True]) == sorted(names[False])
    assert "res3a_branch2a" in names[True]
    with pytest.raises(ConfigError, match="REMAT"):
        TinyConfig(REMAT=True, TRAIN_BN=True)
