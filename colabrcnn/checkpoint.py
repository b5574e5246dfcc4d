"""Checkpoints and run folders: one home for naming, saving, finding and loading them.

In the style of detectron2's ``Checkpointer``: a :class:`Checkpointer` owns one run
folder and knows how its files are named, written, listed, pruned and resumed from;
the module functions answer the questions asked from outside a run ("where is the
newest checkpoint of this NAME?", "give me an inference model for this file").

Layout (matterport's names)::

    <model_dir>/<name><YYYYmmddTHHMM>/      a run folder (set_log_dir)
        config.json                         the Config (side-car, Config.to_json())
        mask_rcnn_<name>_0003.h5            after epoch 3
        mask_rcnn_<name>_0004_s00120.h5     during epoch 4, after its 120th step
        mask_rcnn_<name>_best.h5            lowest validation loss so far

Each checkpoint is the Keras-2 HDF5 weights layout (loadable by name anywhere) plus a
``training_state`` group: optimizer variables, epochs done, steps into the epoch, the
config and the trained layers, and ``complete=1`` written last. A file is written under a
temporary name and renamed when complete, so a disconnect never leaves a half checkpoint
under a checkpoint name; a file that is truncated anyway (a Drive sync cut short) is not
readable HDF5 and is skipped wherever checkpoints are looked up.

The newest run: run folders are ordered by the timestamp in their name (then by name);
within a run, checkpoints by (epochs done, step). The newest checkpoint is the last
complete checkpoint of the newest run that has one. File modification times are not
used (Drive copies and syncs change them).

Just over 500 lines: naming, saving, finding and loading checkpoints are one concern
and stay in one file.
"""
from __future__ import annotations

import datetime
import glob
import json
import logging
import os
import re
import shutil
import time

import numpy as np

from . import recipe
from .config import Config
from .errors import CheckpointNotFoundError, ColabRCNNError, ConfigError

logger = logging.getLogger(__name__)

STATE_GROUP = "training_state"
CONFIG_FILE = "config.json"
_CKPT_RE = re.compile(r"mask_rcnn_(?P<name>[\w-]+?)_(?P<epoch>\d{4})(?:_s(?P<step>\d+))?\.h5$")
_RUN_RE = re.compile(r"(?P<name>[\w-]*?)(?P<stamp>\d{8}T\d{4})")

__all__ = ["Checkpointer", "STATE_GROUP", "CONFIG_FILE", "run_dir_name", "is_run_dir",
           "run_dirs", "parse_checkpoint_name", "checkpoint_path", "best_path",
           "save_checkpoint", "read_state", "is_complete", "restore_optimizer",
           "list_checkpoints", "prune_checkpoints", "newest_checkpoint", "find_last",
           "require_last",
           "resume_point", "write_config", "read_config", "config_from_json",
           "load_inference"]


# ------------------------------------------------------------------------ naming
def run_dir_name(name: str, now: datetime.datetime | None = None) -> str:
    """matterport's run folder name ``<name><YYYYmmddTHHMM>``."""
    now = now or datetime.datetime.now()
    return f"{name}{now:%Y%m%dT%H%M}"


def is_run_dir(path, name: str | None = None) -> bool:
    """True for a folder named ``<name><YYYYmmddTHHMM>`` (any name when None)."""
    m = _RUN_RE.fullmatch(os.path.basename(os.path.normpath(os.fspath(path))))
    return bool(m) and (name is None or m.group("name") == name)


def run_dirs(model_dir, name: str | None = None) -> list[str]:
    """Run folders under ``model_dir``, oldest first by the timestamp in their name."""
    found = []
    for d in glob.glob(os.path.join(glob.escape(os.fspath(model_dir)), "*")):
        m = _RUN_RE.fullmatch(os.path.basename(d))
        if m and os.path.isdir(d) and (name is None or m.group("name") == name):
            found.append((m.group("stamp"), m.group("name"), d))
    return [d for *_, d in sorted(found)]


def parse_checkpoint_name(path) -> tuple[str, int, int] | None:
    """-> (name, epochs_done, step_in_next_epoch) or None for other files.

    ``mask_rcnn_x_0003.h5`` is (x, 3, 0); ``mask_rcnn_x_0004_s00120.h5`` is (x, 3, 120).
    """
    m = _CKPT_RE.search(os.path.basename(str(path)))
    if not m:
        return None
    epoch = int(m.group("epoch"))
    step = int(m.group("step") or 0)
    return m.group("name"), (epoch - 1 if step else epoch), step


def checkpoint_path(log_dir, name: str, epochs_done: int, step: int = 0) -> str:
    """Path of the checkpoint after ``epochs_done`` epochs (+ ``step`` steps)."""
    if step:
        return os.path.join(log_dir, f"mask_rcnn_{name}_{epochs_done + 1:04d}_s{step:05d}.h5")
    return os.path.join(log_dir, f"mask_rcnn_{name}_{epochs_done:04d}.h5")


def best_path(log_dir, name: str = "*") -> str:
    """Path of a run's best checkpoint (``name="*"``: a glob pattern for any name)."""
    return os.path.join(log_dir, f"mask_rcnn_{name}_best.h5")


# ---------------------------------------------------------------- saving / reading
def save_checkpoint(model, path, optimizer=None, epochs_done=0, step=0, config=None,
                    layers=None, logs=None, origin=None) -> str:
    """Weights + optimizer state + position, written atomically to ``path``.

    origin: the trained model's ``weights_origin`` (colabrcnn.recipe); saved as
    ``weights_origin`` = "random" for a run that started from random weights, so that
    resuming it keeps the from-scratch recipe.
    """
    import h5py  # optional heavy dependencies, imported when a checkpoint is written
    import keras

    from . import weights  # lazy: weights imports Keras
    partial = f"{path}.partial{os.getpid()}"
    weights.save_weights(model, partial)
    with h5py.File(partial, "a") as f:
        g = f.create_group(STATE_GROUP)
        g.attrs["epochs_done"] = int(epochs_done)
        g.attrs["step"] = int(step)
        g.attrs["time"] = time.time()
        g.attrs["layers"] = str(layers or "")
        if origin is not None:
            g.attrs["weights_origin"] = ("random" if recipe.from_scratch(origin)
                                         else str(origin.get("source", "")))
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


def read_state(path) -> dict | None:
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


def is_complete(path) -> bool:
    """True for a readable HDF5 file: a plain weights file, or a checkpoint whose
    training state was written to the end. False for truncated or unreadable files."""
    import h5py
    try:
        with h5py.File(path, "r") as f:
            state = f.get(STATE_GROUP)
            return state is None or int(state.attrs.get("complete", 0)) == 1
    except OSError:
        return False


# Optimizer variables that hold the learning rate given to train(), not training state
# (the constant rate's, and train.LearningRateSchedule's numbers).
SCHEDULE_NUMBERS = "lr_schedule_numbers"
_RATE_VARIABLES = ("learning_rate", SCHEDULE_NUMBERS)


def restore_optimizer(optimizer, path, trainable_variables) -> str:
    """Load optimizer variables saved by save_checkpoint; returns what was restored.

    The optimizer is built for ``trainable_variables`` first. When the saved state
    does not match (other layers trained), only the iteration counter is restored.
    The learning rate (a constant's variable, a schedule's numbers) is not restored:
    it is the one this ``train()`` call was given; so a run resumed with a schedule
    where it had a constant rate (or a checkpoint from before schedules kept their
    numbers in a variable) still gets its momentum back.
    """
    import h5py
    if not optimizer.built:  # LossScaleOptimizer.build would add its variables twice
        optimizer.build(trainable_variables)
    with h5py.File(path, "r") as f:
        og = f.get(f"{STATE_GROUP}/optimizer")
        if og is None:
            return "none"
        saved = [(str(og[k].attrs.get("path", "")), np.asarray(og[k]))
                 for k in sorted(og.keys())]
    saved = [value for name, value in saved if not _is_rate_variable(name)]
    variables = [v for v in optimizer.variables if not _is_rate_variable(v.path)]
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


def _is_rate_variable(path: str) -> bool:
    return path.rsplit("/", 1)[-1] in _RATE_VARIABLES


# ------------------------------------------------------------ listing / finding
def list_checkpoints(log_dir, name: str | None = None, complete: bool = False) -> list[str]:
    """Checkpoints of a run folder, oldest first by (epochs_done, step).

    complete: only files that are readable to the end (see :func:`is_complete`).
    """
    out = []
    for path in glob.glob(os.path.join(glob.escape(os.fspath(log_dir)), "mask_rcnn_*.h5")):
        parsed = parse_checkpoint_name(path)
        if parsed is None or (name is not None and parsed[0] != name):
            continue
        out.append(((parsed[1], parsed[2]), path))
    paths = [p for _, p in sorted(out)]
    return [p for p in paths if is_complete(p)] if complete else paths


def newest_checkpoint(model_dir, name: str | None = None, which: str = "last") -> str | None:
    """The newest complete checkpoint under ``model_dir`` (a folder of runs or one run
    folder), or None. which: "last", or "best" (the newest run's best checkpoint; its
    last when no best was kept). name: the Config NAME (default: any)."""
    if which not in ("last", "best"):
        raise ColabRCNNError(f"which must be 'last' or 'best', got {which!r}")
    model_dir = os.fspath(model_dir)
    if not os.path.isdir(model_dir):
        return None
    for run in reversed([model_dir] + run_dirs(model_dir, name)):
        ckpts = list_checkpoints(run, name, complete=True)
        if not ckpts:
            continue
        if which == "best":
            best = sorted(p for p in glob.glob(best_path(glob.escape(run), name or "*"))
                          if is_complete(p))
            if best:
                return best[-1]
        return ckpts[-1]
    return None


def find_last(model_dir, name: str) -> str | None:
    """Newest complete checkpoint of the newest run of ``name``, or None.

    Works on our checkpoints and on matterport-style ``mask_rcnn_<name>_<epoch>.h5``.
    A run folder whose files are all unreadable is skipped.
    """
    model_dir = os.fspath(model_dir)
    if not os.path.isdir(model_dir):
        return None
    for run in reversed(run_dirs(model_dir, name)):
        ckpts = list_checkpoints(run, name, complete=True)
        if ckpts:
            return ckpts[-1]
    return None


def require_last(model_dir, name: str) -> str:
    """:func:`find_last`, raising CheckpointNotFoundError (a FileNotFoundError too, as
    matterport code expects) that says why when there is none."""
    path = find_last(model_dir, name)
    if path is not None:
        return path
    model_dir = os.fspath(model_dir)
    if not os.path.isdir(model_dir):
        why = "the folder does not exist (is Drive mounted? is model_dir right?)"
    else:
        broken = [p for run in run_dirs(model_dir, name)
                  for p in list_checkpoints(run, name) if not is_complete(p)]
        others = sorted({os.path.basename(d) for d in run_dirs(model_dir)} -
                        {os.path.basename(d) for d in run_dirs(model_dir, name)})
        if broken:
            why = (f"{len(broken)} checkpoint file(s) there are half-written or unreadable "
                   f"({', '.join(broken[:3])})")
        elif others:
            why = (f"it holds runs of other NAMEs only ({', '.join(others[:5])}); set "
                   f"config.NAME to the one you trained")
        else:
            why = f"it holds no run folder {name}<YYYYmmddTHHMM> with a checkpoint"
    raise CheckpointNotFoundError(
        f"no checkpoint of '{name}' under {os.path.abspath(model_dir)}: {why}. Train "
        f"first, or pass the weights file path to load_weights()")


def prune_checkpoints(log_dir, name: str, keep: int) -> None:
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
    for p in glob.glob(os.path.join(glob.escape(os.fspath(log_dir)), "*.partial*")):
        pid = p.rsplit(".partial", 1)[-1]
        if not pid.isdigit() or int(pid) != os.getpid():
            _remove(p)


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


# ------------------------------------------------------------------------ resume
def resume_point(resume, log_dir, model_dir, name: str, epoch: int):
    """Where train(resume=...) continues -> (checkpoint path or None, epochs done, steps
    into the next epoch).

    resume: False (start at ``epoch``), a checkpoint path, or True/"auto": the newest
    complete checkpoint of the current run folder ``log_dir``, else of the newest run of
    ``name`` under ``model_dir``; used only when further along than ``epoch``.
    Half-written files (see :func:`is_complete`) are skipped, with a warning.
    """
    if not resume:
        return None, epoch, 0
    if isinstance(resume, (str, os.PathLike)) and resume != "auto":
        path = os.fspath(resume)
    else:
        here = list_checkpoints(log_dir, name) if log_dir and os.path.isdir(log_dir) else []
        complete = [p for p in here if is_complete(p)]
        for p in here[here.index(complete[-1]) + 1:] if complete else here:
            logger.warning("Skipping the half-written checkpoint %s (truncated or "
                           "unreadable); resuming from the newest complete one.", p)
        path = complete[-1] if complete else find_last(model_dir, name)
    if path is None:
        return None, epoch, 0
    parsed = parse_checkpoint_name(path)
    state = read_state(path) or {}
    done = int(state.get("epochs_done", parsed[1] if parsed else 0))
    step = int(state.get("step", parsed[2] if parsed else 0))
    if (done, step) <= (epoch, 0):
        return None, epoch, 0  # the model is already as far along
    return path, done, step


# ------------------------------------------------------------------ config side-car
def write_config(log_dir, config) -> str:
    """Write the run's ``config.json`` (Config.to_json()); returns its path."""
    os.makedirs(log_dir, exist_ok=True)
    path = os.path.join(log_dir, CONFIG_FILE)
    with open(path, "w") as f:
        f.write(config.to_json())
    return path


def _derived_settings():
    """Settings Config.__init__ computes (BATCH_SIZE, IMAGE_SHAPE, ...): not inputs."""
    cfg = Config(NUM_CLASSES=2)
    derived = {k for k in vars(cfg) if k.isupper()} - set(Config.setting_names())
    return derived | {"BATCH_SIZE", "IMAGE_SHAPE", "IMAGE_META_SIZE"}


def config_from_json(source, base=Config):
    """A Config from a JSON file path, a JSON string or a dict of overrides.

    Accepts what ``Config.to_json()`` writes (derived settings such as BATCH_SIZE and
    IMAGE_SHAPE are recomputed, not read) as well as a small file of overrides like
    ``{"NUM_CLASSES": 3, "IMAGE_MAX_DIM": 512}``. Unknown names raise ConfigError.
    """
    if isinstance(source, dict):
        data = dict(source)
    else:
        text = os.fspath(source) if isinstance(source, os.PathLike) else str(source)
        if not text.lstrip().startswith("{"):
            if not os.path.exists(text):
                raise ConfigError(f"config file not found: {text}")
            with open(text) as f:
                text = f.read()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"config JSON is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError("config JSON must be an object of SETTING: value pairs")
    derived = _derived_settings()
    overrides = {k: v for k, v in data.items() if k not in derived}
    for key in ("MINI_MASK_SHAPE", "MASK_SHAPE", "RPN_ANCHOR_SCALES", "RPN_ANCHOR_RATIOS",
                "BACKBONE_STRIDES"):
        if isinstance(overrides.get(key), list):
            overrides[key] = tuple(overrides[key])
    return base(**overrides)


def read_config(checkpoint) -> Config | None:
    """The Config a checkpoint was trained with: the run folder's ``config.json``, else
    the one saved in the checkpoint's training state; None when neither exists."""
    checkpoint = os.fspath(checkpoint)
    beside = os.path.join(os.path.dirname(os.path.abspath(checkpoint)), CONFIG_FILE)
    if os.path.exists(beside):
        return config_from_json(beside)
    text = (read_state(checkpoint) or {}).get("config_json")
    if text and text != "{}":
        return config_from_json(text)
    return None


# ------------------------------------------------------------------- inference
def load_inference(weights, config=None, model_dir=None, **overrides):
    """An inference model from a weights file; the one loader notebooks, export and the
    CLI use.

    weights: a ``.keras`` export, or an ``.h5`` checkpoint / matterport file.
    config: a Config or anything :func:`config_from_json` reads; optional: by default
    the ``.config.json`` beside an export, the run folder's ``config.json`` or the
    config saved in the checkpoint. overrides: settings changed for inference (e.g.
    ``DETECTION_MIN_CONFIDENCE=0.5``). model_dir: default the folder above the run.
    """
    # lazy: the model and export modules import Keras
    from .export import load_exported
    from .model.maskrcnn import MaskRCNN
    weights = os.fspath(weights)
    if weights.endswith(".keras"):
        model = load_exported(weights, config, model_dir)
        if overrides:
            model.config = model.config.copy(**overrides)
        return model
    if config is None:
        config = read_config(weights)
        if config is None:
            raise ConfigError(f"{os.path.basename(weights)} holds weights only and there "
                              f"is no {CONFIG_FILE} beside it: give the Config it was "
                              f"trained with (config=..., or --config config.json as "
                              f"written by Config.to_json())")
    elif not isinstance(config, Config):
        config = config_from_json(config)
    if overrides:
        config = config.copy(**overrides)
    model = MaskRCNN("inference", config,
                     model_dir or os.path.dirname(os.path.dirname(os.path.abspath(weights))))
    model.load_weights(weights, by_name=True)
    return model


# -------------------------------------------------------------------- Checkpointer
class Checkpointer:
    """Saves, lists, prunes and resumes the checkpoints of one run folder.

        ckpt = Checkpointer(model_dir, "balloon")      # a new run folder (not created)
        ckpt = Checkpointer(model_dir, "balloon", path) # the run that holds ``path``
        ckpt.save(keras_model, epochs_done=3, optimizer=..., config=...)
        ckpt.last(), ckpt.best_path, ckpt.prune(keep=3)
    """

    def __init__(self, model_dir, name: str, model_path=None):
        self.model_dir = model_dir
        self.name = name
        self.log_dir, self.epoch = self.run_for(model_dir, name, model_path)

    @staticmethod
    def run_for(model_dir, name: str, model_path=None) -> tuple[str, int]:
        """matterport's set_log_dir rule -> (run folder, epochs done).

        With a checkpoint path inside a run folder (``<name><YYYYmmddTHHMM>/``) that
        folder is reused and the epoch counter read from the file name; otherwise a new
        folder named after the current minute.
        """
        log_dir = os.path.join(model_dir, run_dir_name(name))
        if model_path:
            parsed = parse_checkpoint_name(model_path)
            run_dir = os.path.dirname(os.path.abspath(os.fspath(model_path)))
            if parsed and is_run_dir(run_dir):
                return run_dir, parsed[1]
        return log_dir, 0

    @property
    def path_template(self) -> str:
        """matterport's ``checkpoint_path``; ``{epoch:04d}`` is filled in per file."""
        return os.path.join(self.log_dir, f"mask_rcnn_{self.name}_{{epoch:04d}}.h5")

    @property
    def best_path(self) -> str:
        return best_path(self.log_dir, self.name)

    def path(self, epochs_done: int, step: int = 0) -> str:
        return checkpoint_path(self.log_dir, self.name, epochs_done, step)

    def save(self, keras_model, epochs_done: int, step: int = 0, optimizer=None,
             config=None, layers=None, logs=None, origin=None) -> str:
        os.makedirs(self.log_dir, exist_ok=True)
        return save_checkpoint(keras_model, self.path(epochs_done, step), optimizer,
                               epochs_done, step, config, layers, logs, origin)

    def save_best(self, path) -> str:
        """Copy the checkpoint ``path`` to the best name, atomically."""
        tmp = self.best_path + f".partial{os.getpid()}"
        shutil.copyfile(path, tmp)
        os.replace(tmp, self.best_path)
        return self.best_path

    def best_val_loss(self) -> float | None:
        """Validation loss recorded in this run's best checkpoint, or None."""
        state = read_state(self.best_path) if os.path.exists(self.best_path) else None
        if state:
            val = json.loads(state.get("logs_json", "{}")).get("val_loss")
            if val is not None:
                return float(val)
        return None

    def list(self, complete: bool = False) -> list[str]:
        return list_checkpoints(self.log_dir, self.name, complete) \
            if os.path.isdir(self.log_dir) else []

    def last(self) -> str | None:
        """Newest complete checkpoint of this run, or None."""
        ckpts = self.list(complete=True)
        return ckpts[-1] if ckpts else None

    def prune(self, keep: int) -> None:
        prune_checkpoints(self.log_dir, self.name, keep)

    def write_config(self, config) -> str:
        return write_config(self.log_dir, config)

    def resume_point(self, resume, epoch: int):
        """See :func:`resume_point`."""
        return resume_point(resume, self.log_dir, self.model_dir, self.name, epoch)
