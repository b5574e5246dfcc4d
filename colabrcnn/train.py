"""The training workflow: layer selection, optimizer and schedule, disconnect-proof
checkpoints, resume, logs and pictures of the curves.

Checkpoint files live in the run folder ``<model_dir>/<name><YYYYmmddTHHMM>/``:

    mask_rcnn_<name>_0003.h5           after epoch 3 (matterport's naming)
    mask_rcnn_<name>_0004_s00120.h5    during epoch 4, after its 120th step
    mask_rcnn_<name>_best.h5           lowest validation loss so far

Each is the Keras-2 HDF5 weights layout (loadable by name anywhere) plus a
``training_state`` group: optimizer variables, epochs done, steps into the epoch,
the config and the trained layers. A file is written under a temporary name and
renamed when complete, so a Colab disconnect or a SIGKILL never leaves a half
checkpoint under a checkpoint name.
"""
from __future__ import annotations

import glob
import json
import math
import os
import re
import shutil
import time
import warnings

import keras
import numpy as np
from keras import ops

from .model.spec import LAYER_REGEX

STATE_GROUP = "training_state"
_CKPT_RE = re.compile(r"mask_rcnn_(?P<name>[\w-]+?)_(?P<epoch>\d{4})(?:_s(?P<step>\d+))?\.h5$")


# ----------------------------------------------------------------- layer selection
def set_trainable(keras_model, layers, verbose=0):
    """Make layers whose names fully match ``layers`` (preset or regex) trainable.

    Nested models are walked (``rpn_model`` counts as one layer, as in matterport's
    files). Returns the names of the trainable layers.
    """
    regex = LAYER_REGEX.get(layers, layers)
    pattern = re.compile(regex)
    trainable = []

    def visit(layer):
        sub = getattr(layer, "layers", None)
        if sub is not None and layer.name != "rpn_model":
            layer.trainable = True
            for s in sub:
                visit(s)
            return
        if not layer.weights:
            return
        on = bool(pattern.fullmatch(layer.name))
        layer.trainable = on
        if on:
            trainable.append(layer.name)

    for layer in keras_model.layers:
        visit(layer)
    if verbose:
        print(f"Trainable layers ({len(trainable)}): {', '.join(trainable)}")
    return trainable


# ------------------------------------------------------------------ learning rate
@keras.saving.register_keras_serializable(package="colabrcnn")
class LearningRateSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Learning rate at a given batch (the optimizer's iteration counter).

    kind: "constant", "step" (x step_factor at each epoch in step_epochs) or "cosine"
    (to 0 at end_epoch), times a linear warm-up over warmup_steps. The position comes
    from the optimizer's counter, which checkpoints restore, so a resumed run continues
    the same curve.
    """

    def __init__(self, base_lr, kind="constant", steps_per_epoch=1, end_epoch=1,
                 warmup_steps=0, step_epochs=(), step_factor=0.1):
        self.base_lr = float(base_lr)
        self.kind = kind
        self.steps_per_epoch = int(steps_per_epoch)
        self.end_epoch = int(end_epoch)
        self.warmup_steps = int(warmup_steps)
        self.step_epochs = [int(e) for e in step_epochs]
        self.step_factor = float(step_factor)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        lr = ops.convert_to_tensor(self.base_lr, "float32")
        if self.kind == "step" and self.step_epochs:
            epoch = ops.floor(step / self.steps_per_epoch)
            drops = sum(ops.cast(epoch >= e, "float32") for e in self.step_epochs)
            lr = lr * ops.power(self.step_factor, drops)
        elif self.kind == "cosine":
            total = float(max(1, self.end_epoch * self.steps_per_epoch))
            progress = ops.clip(step / total, 0.0, 1.0)
            lr = lr * 0.5 * (1.0 + ops.cos(math.pi * progress))
        if self.warmup_steps > 0:
            lr = lr * ops.minimum(1.0, (step + 1.0) / float(self.warmup_steps))
        return lr

    def get_config(self):
        return {"base_lr": self.base_lr, "kind": self.kind,
                "steps_per_epoch": self.steps_per_epoch, "end_epoch": self.end_epoch,
                "warmup_steps": self.warmup_steps, "step_epochs": self.step_epochs,
                "step_factor": self.step_factor}


def make_optimizer(config, learning_rate, end_epoch=1, momentum=None):
    """matterport's SGD with clipping, plus the schedule and gradient accumulation."""
    lr = learning_rate
    if config.LR_SCHEDULE != "constant" or config.LR_WARMUP_STEPS:
        lr = LearningRateSchedule(learning_rate, config.LR_SCHEDULE, config.STEPS_PER_EPOCH,
                          end_epoch, config.LR_WARMUP_STEPS, config.LR_STEP_EPOCHS,
                          config.LR_STEP_FACTOR)
    k = int(config.GRADIENT_ACCUMULATION_STEPS)
    return keras.optimizers.SGD(
        learning_rate=lr,
        momentum=config.LEARNING_MOMENTUM if momentum is None else momentum,
        clipnorm=config.GRADIENT_CLIP_NORM,
        gradient_accumulation_steps=k if k > 1 else None)


# --------------------------------------------------------------------- checkpoints
def parse_checkpoint_name(path):
    """-> (name, epochs_done, step_in_next_epoch) or None for other files.

    ``mask_rcnn_x_0003.h5`` is (x, 3, 0); ``mask_rcnn_x_0004_s00120.h5`` is (x, 3, 120).
    """
    m = _CKPT_RE.search(os.path.basename(str(path)))
    if not m:
        return None
    epoch = int(m.group("epoch"))
    step = int(m.group("step") or 0)
    return m.group("name"), (epoch - 1 if step else epoch), step


def checkpoint_path(log_dir, name, epochs_done, step=0):
    if step:
        return os.path.join(log_dir, f"mask_rcnn_{name}_{epochs_done + 1:04d}_s{step:05d}.h5")
    return os.path.join(log_dir, f"mask_rcnn_{name}_{epochs_done:04d}.h5")


def save_checkpoint(model, path, optimizer=None, epochs_done=0, step=0, config=None,
                    layers=None, logs=None):
    """Weights + optimizer state + position, written atomically to ``path``."""
    import h5py

    from . import weights
    partial = f"{path}.partial{os.getpid()}"
    weights.save_weights(model, partial)
    with h5py.File(partial, "a") as f:
        g = f.create_group(STATE_GROUP)
        g.attrs["epochs_done"] = int(epochs_done)
        g.attrs["step"] = int(step)
        g.attrs["time"] = time.time()
        g.attrs["layers"] = str(layers or "")
        g.attrs["config_json"] = config.to_json() if config is not None else "{}"
        g.attrs["logs_json"] = json.dumps({k: float(v) for k, v in (logs or {}).items()
                                           if np.isscalar(v) or np.ndim(v) == 0})
        if optimizer is not None and getattr(optimizer, "built", False):
            og = g.create_group("optimizer")
            for i, v in enumerate(optimizer.variables):
                ds = og.create_dataset(f"{i:05d}", data=np.asarray(keras.ops.convert_to_numpy(v)))
                ds.attrs["path"] = v.path
            og.attrs["count"] = len(optimizer.variables)
        g.attrs["complete"] = 1
    os.replace(partial, path)
    return path


def read_state(path):
    """The training_state of a checkpoint (dict), or None for plain weight files."""
    import h5py
    try:
        with h5py.File(path, "r") as f:
            if STATE_GROUP not in f:
                return None
            g = f[STATE_GROUP]
            state = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in g.attrs.items()}
            state["has_optimizer"] = "optimizer" in g
            return state
    except OSError:
        return None


def restore_optimizer(optimizer, path, trainable_variables):
    """Load optimizer variables saved by save_checkpoint; returns what was restored.

    The optimizer is built for ``trainable_variables`` first. When the saved state
    does not match (other layers trained), only the iteration counter is restored.
    """
    import h5py
    optimizer.build(trainable_variables)
    with h5py.File(path, "r") as f:
        og = f.get(f"{STATE_GROUP}/optimizer")
        if og is None:
            return "none"
        saved = [np.asarray(og[k]) for k in sorted(og.keys())]
    variables = optimizer.variables
    if len(saved) == len(variables) and all(
            tuple(s.shape) == tuple(v.shape) for s, v in zip(saved, variables)):
        for v, s in zip(variables, saved):
            v.assign(s.astype(v.dtype))
        return "all"
    # Different trainable set: keep the position of the schedule at least.
    for v, s in zip(variables, saved):
        if v.path.endswith("iteration") or v.name == "iteration":
            if s.shape == ():
                v.assign(s.astype(v.dtype))
            return "iterations"
    return "none"


def list_checkpoints(log_dir, name=None):
    """Complete checkpoints of a run folder, oldest first by (epochs_done, step)."""
    out = []
    for path in glob.glob(os.path.join(log_dir, "mask_rcnn_*.h5")):
        parsed = parse_checkpoint_name(path)
        if parsed is None or (name is not None and parsed[0] != name):
            continue
        out.append(((parsed[1], parsed[2]), path))
    return [p for _, p in sorted(out)]


def find_last(model_dir, name):
    """Newest checkpoint (by epoch and step) of the newest run of ``name``, or None.

    Works on our checkpoints and on matterport-style ``mask_rcnn_<name>_<epoch>.h5``.
    A run folder whose files are all unreadable is skipped.
    """
    runs = sorted(d for d in glob.glob(os.path.join(model_dir, name + "*"))
                  if os.path.isdir(d) and re.fullmatch(re.escape(name) + r"\d{8}T\d{4}",
                                                       os.path.basename(d)))
    for run in reversed(runs):
        for path in reversed(list_checkpoints(run, name)):
            if _readable(path):
                return path
    return None


def _readable(path):
    import h5py
    try:
        with h5py.File(path, "r") as f:
            state = f.get(STATE_GROUP)
            return state is None or int(state.attrs.get("complete", 0)) == 1
    except OSError:
        return False


def prune_checkpoints(log_dir, name, keep):
    """Keep the newest ``keep`` epoch checkpoints; drop mid-epoch files older than the
    newest epoch checkpoint, and stray partial files of dead processes."""
    paths = list_checkpoints(log_dir, name)
    epoch_files = [p for p in paths if parse_checkpoint_name(p)[2] == 0]
    for p in epoch_files[:-keep] if keep else []:
        _remove(p)
    if epoch_files:
        newest = parse_checkpoint_name(epoch_files[-1])[1]
        for p in paths:
            _, done, step = parse_checkpoint_name(p)
            if step and done < newest:
                _remove(p)
    mids = [p for p in list_checkpoints(log_dir, name) if parse_checkpoint_name(p)[2]]
    for p in mids[:-1]:
        _remove(p)
    for p in glob.glob(os.path.join(log_dir, "*.partial*")):
        pid = p.rsplit(".partial", 1)[-1]
        if not pid.isdigit() or int(pid) != os.getpid():
            _remove(p)


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


class CheckpointCallback(keras.callbacks.Callback):
    """Checkpoint every epoch and every ``every_minutes``; keep the best by val_loss."""

    def __init__(self, owner, layers, every_minutes=None, keep=3, first_epoch_offset=0):
        super().__init__()
        self.owner = owner
        self.layers = layers
        self.every = None if every_minutes is None else every_minutes * 60.0
        self.keep = keep
        self.last = time.time()
        self.epoch = 0
        # Steps already done in the current epoch before this fit() (partial epoch).
        self.offset = first_epoch_offset
        self.best = _best_val_loss(owner.log_dir)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.every is not None and time.time() - self.last >= self.every:
            self._save(self.epoch, batch + 1 + self.offset, logs)

    def on_epoch_end(self, epoch, logs=None):
        self.offset = 0
        path = self._save(epoch + 1, 0, logs)
        val = (logs or {}).get("val_loss")
        if val is not None and np.isfinite(val) and (self.best is None or val < self.best):
            self.best = float(val)
            best = os.path.join(self.owner.log_dir,
                                f"mask_rcnn_{self.owner.run_name}_best.h5")
            tmp = best + f".partial{os.getpid()}"
            shutil.copyfile(path, tmp)
            os.replace(tmp, best)
        self.owner.epoch = epoch + 1

    def _save(self, epochs_done, step, logs):
        o = self.owner
        path = checkpoint_path(o.log_dir, o.run_name, epochs_done, step)
        save_checkpoint(o.keras_model, path, optimizer=o.keras_model.optimizer,
                        epochs_done=epochs_done, step=step, config=o.config,
                        layers=self.layers, logs=logs)
        self.last = time.time()
        prune_checkpoints(o.log_dir, o.run_name, self.keep)
        return path



def _best_val_loss(log_dir):
    best = os.path.join(log_dir, "mask_rcnn_*_best.h5")
    for path in glob.glob(best):
        state = read_state(path)
        if state:
            val = json.loads(state.get("logs_json", "{}")).get("val_loss")
            if val is not None:
                return float(val)
    return None


class LossPlotCallback(keras.callbacks.Callback):
    """Redraw ``loss.png`` from the run's log.csv after every epoch."""

    def __init__(self, log_dir):
        super().__init__()
        self.log_dir = log_dir

    def on_epoch_end(self, epoch, logs=None):
        try:
            import matplotlib.pyplot as plt

            from .visualize import plot_history
            fig = plot_history(os.path.join(self.log_dir, "log.csv"),
                               os.path.join(self.log_dir, "loss.png"))
            plt.close(fig)
        except Exception as e:  # a plot must never stop training
            warnings.warn(f"could not draw the loss curves: {e}")
