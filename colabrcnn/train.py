"""The training workflow behind ``MaskRCNN.train``: layer selection, optimizer and
schedule, the epoch loop (``Model.fit`` with resume inside an epoch), checkpoint and
loss-curve callbacks.

Checkpoint naming, saving, listing and resuming live in :mod:`colabrcnn.checkpoint`;
the names below are re-exported from there for code that used them here.
"""
from __future__ import annotations

import importlib.util
import logging
import math
import os
import re
import time
import warnings

import keras
import numpy as np
from keras import ops

from . import memory, recipe
from .checkpoint import SCHEDULE_NUMBERS
from .checkpoint import (STATE_GROUP, checkpoint_path,  # noqa: F401 (re-exported)
                         find_last, list_checkpoints, parse_checkpoint_name,
                         prune_checkpoints, read_state, restore_optimizer, save_checkpoint)
from .data.loader import DataGenerator
from .errors import AnnotationError, ConfigError
from .model.spec import LAYER_REGEX
from .visualize import plot_history

logger = logging.getLogger(__name__)


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
        logger.info("Trainable layers (%d): %s", len(trainable), ", ".join(trainable))
    return trainable


# ------------------------------------------------------------------ learning rate
@keras.saving.register_keras_serializable(package="colabrcnn")
class LearningRateSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Learning rate at a given batch (the optimizer's iteration counter).

    kind: "constant", "step" (x step_factor at each epoch in step_epochs) or "cosine"
    (to 0 at end_epoch), times a linear warm-up over warmup_steps. The position comes
    from the optimizer's counter, which checkpoints restore, so a resumed run continues
    the same curve.

    After :meth:`attach`, the numbers (base rate, lengths, factor, epochs) are read from
    a variable of the optimizer instead of being traced into the compiled step as
    constants: a later ``train()`` call with another epoch count or rate only assigns
    them (:meth:`assign_numbers`) and keeps the compiled step. Only the formula's shape
    (:meth:`structure`) is compiled in.
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
        self.numbers_variable = None

    def structure(self) -> tuple:
        """What the traced formula depends on besides the numbers."""
        return (self.kind, self.warmup_steps > 0,
                len(self.step_epochs) if self.kind == "step" else 0)

    def numbers(self) -> list[float]:
        """[base_lr, steps_per_epoch, end_epoch, warmup_steps, step_factor, *step_epochs]"""
        return [self.base_lr, float(self.steps_per_epoch), float(self.end_epoch),
                float(self.warmup_steps), self.step_factor,
                *[float(e) for e in self.step_epochs]]

    def attach(self, optimizer: keras.optimizers.Optimizer) -> None:
        """Keep the numbers in a new variable of ``optimizer`` (before it is built),
        which the compiled step reads (and JAX passes in with the optimizer's state)."""
        numbers = self.numbers()
        self.numbers_variable = optimizer.add_variable(
            (len(numbers),), dtype="float32", aggregation="only_first_replica",
            name=SCHEDULE_NUMBERS)
        self.numbers_variable.assign(np.asarray(numbers, "float32"))
        optimizer.colabrcnn_lr_schedule = self  # see schedule_of()

    def assign_numbers(self, other: "LearningRateSchedule") -> None:
        """Take ``other``'s numbers (same structure) into this attached schedule."""
        if other.structure() != self.structure() or self.numbers_variable is None:
            raise ValueError("assign_numbers needs an attached schedule of the same "
                             f"structure ({self.structure()} vs {other.structure()})")
        for name in ("base_lr", "steps_per_epoch", "end_epoch", "warmup_steps",
                     "step_epochs", "step_factor"):
            setattr(self, name, getattr(other, name))
        self.numbers_variable.assign(np.asarray(self.numbers(), "float32"))

    def __call__(self, step):
        step = ops.cast(step, "float32")
        n = (self.numbers_variable if self.numbers_variable is not None
             else ops.convert_to_tensor(np.asarray(self.numbers(), "float32")))
        # n: see numbers(); indexing a variable reads its current value.
        lr = n[0]
        if self.kind == "step" and self.step_epochs:
            epoch = ops.floor(step / n[1])
            drops = sum(ops.cast(epoch >= n[5 + i], "float32")
                        for i in range(len(self.step_epochs)))
            lr = lr * ops.power(n[4], drops)
        elif self.kind == "cosine":
            total = ops.maximum(1.0, n[2] * n[1])
            progress = ops.clip(step / total, 0.0, 1.0)
            lr = lr * 0.5 * (1.0 + ops.cos(math.pi * progress))
        if self.warmup_steps > 0:
            lr = lr * ops.minimum(1.0, (step + 1.0) / n[3])
        return lr

    def get_config(self):
        return {"base_lr": self.base_lr, "kind": self.kind,
                "steps_per_epoch": self.steps_per_epoch, "end_epoch": self.end_epoch,
                "warmup_steps": self.warmup_steps, "step_epochs": self.step_epochs,
                "step_factor": self.step_factor}


def schedule_of(optimizer) -> LearningRateSchedule | None:
    """The attached LearningRateSchedule of an optimizer made by make_optimizer
    (looked through Keras' LossScaleOptimizer), or None."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    return getattr(inner, "colabrcnn_lr_schedule", None)


def make_optimizer(config, learning_rate, end_epoch=1, momentum=None, from_scratch=False):
    """The optimizer of ``config`` with clipping, schedule and gradient accumulation.

    By default matterport's SGD (momentum LEARNING_MOMENTUM) at ``learning_rate`` with the
    LR_* schedule, or the optimizer that OPTIMIZER names. from_scratch: the SCRATCH_*
    recipe instead (its optimizer, learning rate, warm-up and schedule), which
    ``train()`` picks for a random backbone (see colabrcnn.recipe).
    """
    if from_scratch:
        kind, base = config.SCRATCH_OPTIMIZER, config.SCRATCH_LEARNING_RATE
        schedule, warmup = config.SCRATCH_LR_SCHEDULE, config.SCRATCH_LR_WARMUP_STEPS
    else:
        kind = "sgd" if config.OPTIMIZER == "auto" else config.OPTIMIZER
        base, schedule, warmup = learning_rate, config.LR_SCHEDULE, config.LR_WARMUP_STEPS
    lr = base
    if schedule != "constant" or warmup:
        lr = LearningRateSchedule(base, schedule, config.STEPS_PER_EPOCH, end_epoch, warmup,
                                  config.LR_STEP_EPOCHS, config.LR_STEP_FACTOR)
    k = int(config.GRADIENT_ACCUMULATION_STEPS)
    common = dict(learning_rate=lr, clipnorm=config.GRADIENT_CLIP_NORM,
                  gradient_accumulation_steps=k if k > 1 else None)
    if kind == "adam":
        optimizer = keras.optimizers.Adam(**common)
    elif kind == "adamw":
        optimizer = keras.optimizers.AdamW(**common)
    else:
        optimizer = keras.optimizers.SGD(
            momentum=config.LEARNING_MOMENTUM if momentum is None else momentum, **common)
    if isinstance(lr, LearningRateSchedule):
        lr.attach(optimizer)
    return optimizer



# --------------------------------------------------------------------- callbacks
class CheckpointCallback(keras.callbacks.Callback):
    """Checkpoint every epoch and every ``every_minutes``; keep the best by val_loss.

    owner: the MaskRCNN being trained (its ``checkpointer``, ``keras_model``, ``config``
    and ``epoch`` counter).
    """

    def __init__(self, owner, layers, every_minutes=None, keep=3, first_epoch_offset=0):
        super().__init__()
        self.owner = owner
        self.checkpointer = owner.checkpointer
        self.layers = layers
        self.every = None if every_minutes is None else every_minutes * 60.0
        self.keep = keep
        self.last = time.time()
        self.epoch = 0
        # Steps already done in the current epoch before this fit() (partial epoch).
        self.offset = first_epoch_offset
        self.best = self.checkpointer.best_val_loss()

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
            self.checkpointer.save_best(path)
        self.owner.epoch = epoch + 1

    def _save(self, epochs_done, step, logs):
        o = self.owner
        path = self.checkpointer.save(o.keras_model, epochs_done, step,
                                      optimizer=o.keras_model.optimizer, config=o.config,
                                      layers=self.layers, logs=logs,
                                      origin=getattr(o, "weights_origin", None))
        self.last = time.time()
        self.checkpointer.prune(self.keep)
        return path


class LossPlotCallback(keras.callbacks.Callback):
    """Redraw ``loss.png`` from the run's log.csv after every epoch."""

    def __init__(self, log_dir):
        super().__init__()
        self.log_dir = log_dir

    def on_epoch_end(self, epoch, logs=None):
        try:
            import matplotlib.pyplot as plt  # optional, heavy: imported when drawing

            fig = plot_history(os.path.join(self.log_dir, "log.csv"),
                               os.path.join(self.log_dir, "loss.png"))
            plt.close(fig)
        except Exception as e:  # a plot must never stop training
            warnings.warn(f"could not draw the loss curves: {e}")


# ------------------------------------------------------------------ the loop
def _class_names(dataset) -> list[str] | None:
    names = getattr(dataset, "class_names", None)
    return None if names is None else [str(n) for n in names]


def check_datasets(config, train_dataset, val_dataset=None) -> None:
    """Stop before training when class ids would mean different classes.

    The validation dataset must have the training dataset's class list (same names,
    same order: a class id is a position in it), and neither may have more classes
    than NUM_CLASSES (the heads have NUM_CLASSES outputs).
    """
    train_names = _class_names(train_dataset)
    val_names = _class_names(val_dataset) if val_dataset is not None else None
    if train_names is not None and val_names is not None and train_names != val_names:
        diff = [f"id {i}: training '{a}', validation '{b}'" for i, (a, b) in enumerate(
            zip(train_names, val_names)) if a != b]
        diff += [f"id {i}: training '{a}', validation (none)"
                 for i, a in enumerate(train_names[len(val_names):], len(val_names))]
        diff += [f"id {i}: training (none), validation '{b}'"
                 for i, b in enumerate(val_names[len(train_names):], len(train_names))]
        raise AnnotationError(
            "the validation dataset's classes differ from the training dataset's, so the "
            "same class id would mean different classes:\n  " + "\n  ".join(diff) +
            f"\ntraining classes: {train_names[1:]}\nvalidation classes: {val_names[1:]}"
            "\nLoad both with the same class list (e.g. data.load(..., classes=[...]) "
            "with the training names) or split one dataset with train_val_split.",
            field="class_names")
    for what, dataset, names in (("training", train_dataset, train_names),
                                 ("validation", val_dataset, val_names)):
        count = getattr(dataset, "num_classes", None) if dataset is not None else None
        if count is None or count <= config.NUM_CLASSES:
            continue
        extra = (names or [])[config.NUM_CLASSES:]
        raise ConfigError(
            f"the {what} dataset has {count} classes (background included) but "
            f"NUM_CLASSES is {config.NUM_CLASSES}: classes {extra} would have no output "
            f"of the model. Set NUM_CLASSES = {count} in the Config (BG + "
            f"{count - 1} classes: {(names or [])[1:]}).")


def train(model, train_dataset, val_dataset, learning_rate, epochs, layers,
          augmentation=None, custom_callbacks=None, no_augmentation_sources=None,
          resume="auto", on_oom="raise", optimizer=None, verbose=1, seed=None,
          cache="ram", workers=2, use_multiprocessing=False, cache_dir=None):
    """``MaskRCNN.train`` (see its docstring): train ``model`` up to epoch ``epochs``,
    handling out-of-memory as ``on_oom`` says."""
    if model.mode != "training":
        raise ConfigError("create the model with mode='training' to train")
    if on_oom not in ("raise", "reduce"):
        raise ConfigError(f"on_oom must be 'raise' or 'reduce', got {on_oom!r}")
    check_datasets(model.config, train_dataset, val_dataset)
    loader_options = dict(cache=cache, cache_dir=cache_dir, workers=workers,
                          use_multiprocessing=use_multiprocessing)
    attempts = 0
    while True:
        try:
            with model.scope():
                return _train(model, train_dataset, val_dataset, learning_rate, epochs,
                              layers, augmentation, custom_callbacks,
                              no_augmentation_sources, resume, optimizer, verbose, seed,
                              loader_options)
        except Exception as e:  # noqa: BLE001 - only OOM is handled, others re-raised
            if not memory.is_oom_error(e):
                raise
            if on_oom == "reduce" and attempts < 4 and optimizer is None:
                attempts += 1
                new, why = memory.reduced_config(model.config, layers, explain=True)
                logger.info("Out of GPU memory: %s Continuing from the last checkpoint.", why)
                model.rebuild(new)
                resume = "auto"
                continue
            memory.raise_gpu_memory_error(e, model.config, layers)


def _train(model, train_dataset, val_dataset, learning_rate, epochs, layers,
           augmentation, custom_callbacks, no_augmentation_sources, resume, optimizer,
           verbose, seed, loader_options):
    c = model.config
    path, done, step = model.checkpointer.resume_point(resume, model.epoch)
    if path is not None:
        model.load_weights(path, by_name=True)
        model.log_dir = os.path.dirname(os.path.abspath(path))
        model.set_log_dir(path)
        model.epoch = done
        if verbose:
            where = f"epoch {done}" + (f", step {step} of epoch {done + 1}" if step else "")
            logger.info("Resuming from %s (%s). Pass resume=False to start over.", path, where)
    origin = model.weights_origin
    recipe.warn_frozen_random_backbone(layers, origin)
    if model.epoch >= epochs:
        if verbose:
            logger.info("Already trained to epoch %d (asked for %d): nothing to do. Raise "
                        "epochs to train further.", model.epoch, epochs)
        return None

    model.set_trainable(layers, verbose=verbose > 1)
    train_bn = model.apply_batchnorm()
    if train_bn and c.REMAT and keras.backend.backend() == "jax":
        raise ConfigError(
            "REMAT with trained BatchNorm fails on JAX (the statistics updates escape the "
            "recomputed blocks), and BatchNorm trains here because "
            + ("TRAIN_BN = True" if c.TRAIN_BN is True else
               "the backbone has random weights (TRAIN_BN = 'auto')")
            + ": set REMAT = False, load pretrained weights (BatchNorm then stays frozen) "
              "or use the TensorFlow backend, where REMAT works with trained BatchNorm.")
    scratch = recipe.use_scratch_recipe(c, origin, optimizer)
    if scratch and verbose:
        logger.info(recipe.describe_scratch_recipe(c))
    model.compile(learning_rate, optimizer=optimizer, end_epoch=epochs, from_scratch=scratch)
    saved_optimizer = model.take_optimizer_state()
    if saved_optimizer is not None:
        restored = restore_optimizer(model.keras_model.optimizer, saved_optimizer,
                                     model.keras_model.trainable_variables)
        if verbose and restored != "all":
            logger.info("Optimizer state restored: %s (trained layers changed?)", restored)

    train_gen = DataGenerator(train_dataset, c, shuffle=True, augmentation=augmentation,
                              seed=seed, steps=c.STEPS_PER_EPOCH,
                              no_augmentation_sources=no_augmentation_sources,
                              **loader_options)
    val_gen = None
    if val_dataset is not None:
        val_gen = DataGenerator(val_dataset, c, shuffle=True, seed=seed,
                                steps=c.VALIDATION_STEPS, **loader_options)
    try:
        return _run_epochs(model, train_gen, val_gen, step, epochs, layers, learning_rate,
                           custom_callbacks, verbose)
    finally:  # free the RAM cache and shared-memory folders of the loader
        for gen in (train_gen, val_gen):
            if gen is not None and hasattr(gen, "close"):
                gen.close()


def _run_epochs(model, train_gen, val_gen, step, epochs, layers, learning_rate,
                custom_callbacks, verbose):
    model.checkpointer.write_config(model.config)
    if verbose:
        logger.info("\nStarting at epoch %d. LR=%s\nCheckpoint path: %s", model.epoch,
                    learning_rate, model.checkpoint_path)
    history = None
    if step and step >= len(train_gen):
        # A timed checkpoint on the epoch's last step, and the session ended before the
        # epoch-end one: every batch of that epoch was trained, go on with the next.
        logger.info("Epoch %d had finished its %d steps; continuing with epoch %d.",
                    model.epoch + 1, len(train_gen), model.epoch + 2)
        model.epoch += 1
        step = 0
    if step:
        # Finish the interrupted epoch first: the same batches it would have had.
        _start_epoch(train_gen, model.epoch)
        history = _fit(model, _Offset(train_gen, step), val_gen, model.epoch,
                       model.epoch + 1, layers, custom_callbacks, verbose, offset=step)
        model.epoch += 1
    if model.epoch < epochs:
        _start_epoch(train_gen, model.epoch)
        history = _fit(model, train_gen, val_gen, model.epoch, epochs, layers,
                       custom_callbacks, verbose)
    model.epoch = max(model.epoch, epochs)
    return history


def _start_epoch(gen, epoch):
    """Put a DataGenerator at ``epoch`` so a resumed run sees the same batch order."""
    gen.set_epoch(epoch)


def _fit(model, train_gen, val_gen, initial_epoch, epochs, layers, custom_callbacks,
         verbose, offset=0):
    c = model.config
    log_dir = model.log_dir
    callbacks = [
        keras.callbacks.CSVLogger(os.path.join(log_dir, "log.csv"), append=True),
        CheckpointCallback(model, layers, every_minutes=c.CHECKPOINT_EVERY_MINUTES,
                           keep=c.CHECKPOINT_KEEP, first_epoch_offset=offset),
        LossPlotCallback(log_dir),
    ]
    # TensorBoard logs need TensorFlow's summary writer: on the TF backend only (on
    # JAX/torch it would start TensorFlow next to them on the GPU).
    if keras.backend.backend() == "tensorflow" and importlib.util.find_spec("tensorboard"):
        callbacks.append(keras.callbacks.TensorBoard(log_dir, write_graph=False))
    callbacks += list(custom_callbacks or [])
    if model.distribution.distributed and model.distribution.backend == "tensorflow":
        # Keras' TF trainer averages a first batch across replicas to build the model
        # (_maybe_symbolic_build), which fails on bool tensors: send the masks as uint8.
        train_gen = _BoolAsUint8(train_gen)
        val_gen = None if val_gen is None else _BoolAsUint8(val_gen)
    # shuffle=False: the generator shuffles itself, seeded (Keras would reorder the
    # batches with Python's global random).
    return model.keras_model.fit(train_gen, initial_epoch=initial_epoch, epochs=epochs,
                                 validation_data=val_gen, callbacks=callbacks,
                                 verbose=verbose, shuffle=False)


class _Offset(keras.utils.PyDataset):
    """The batches of ``base`` from ``start`` on: the rest of an interrupted epoch."""

    def __init__(self, base, start):
        super().__init__()
        self.base = base
        self.start = int(start)

    def __len__(self):
        return max(0, len(self.base) - self.start)

    def __getitem__(self, index):
        return self.base[index + self.start]

    def on_epoch_end(self):
        self.base.on_epoch_end()


class _BoolAsUint8(keras.utils.PyDataset):
    """``base``'s batches with bool arrays as uint8 (the model casts them back)."""

    def __init__(self, base):
        super().__init__(workers=getattr(base, "workers", 1),
                         use_multiprocessing=getattr(base, "use_multiprocessing", False),
                         max_queue_size=getattr(base, "max_queue_size", 10))
        self.base = base

    def __len__(self):
        return len(self.base)

    def __getitem__(self, index):
        return keras.tree.map_structure(
            lambda a: a.astype(np.uint8) if getattr(a, "dtype", None) == bool else a,
            self.base[index])

    def on_epoch_end(self):
        self.base.on_epoch_end()
