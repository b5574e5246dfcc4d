"""colabrcnn.checkpoint: run folder and file naming, the newest-run rule, half-written
files, the config side-car, resume points and optimizer state (no Mask R-CNN built)."""
import datetime
import json
import os

import h5py
import keras
import numpy as np
import pytest

from colabrcnn import Config
from colabrcnn import checkpoint as C
from colabrcnn import train as T
from colabrcnn.errors import ColabRCNNError, ConfigError


def fake(path, epochs_done=0, step=0, complete=1, config=None, logs=None):
    """A small HDF5 file with a training_state group, as save_checkpoint writes it."""
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with h5py.File(path, "w") as f:
        g = f.create_group(C.STATE_GROUP)
        g.attrs["epochs_done"] = epochs_done
        g.attrs["step"] = step
        g.attrs["config_json"] = config.to_json() if config is not None else "{}"
        g.attrs["logs_json"] = json.dumps(logs or {})
        g.attrs["complete"] = complete
    return str(path)


def truncated(path):
    """The first bytes of an HDF5 file and nothing more (a sync cut short)."""
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"\x89HDF\r\n\x1a\n" + b"\0" * 40)
    return str(path)


# ------------------------------------------------------------------------ naming
def test_run_folder_and_checkpoint_names():
    when = datetime.datetime(2026, 3, 4, 5, 6)
    assert C.run_dir_name("balloon", when) == "balloon20260304T0506"
    assert C.is_run_dir("/a/balloon20260304T0506", "balloon")
    assert C.is_run_dir("/a/balloon20260304T0506/")
    assert not C.is_run_dir("/a/balloon20260304T0506", "ball")
    assert not C.is_run_dir("/a/balloon_run")
    assert C.is_run_dir("run220260304T0506", "run2")     # digits in the NAME
    assert C.checkpoint_path("r", "x", 3) == os.path.join("r", "mask_rcnn_x_0003.h5")
    assert C.checkpoint_path("r", "x", 3, 120) == os.path.join("r",
                                                              "mask_rcnn_x_0004_s00120.h5")
    assert C.best_path("r", "x") == os.path.join("r", "mask_rcnn_x_best.h5")
    assert C.parse_checkpoint_name(C.best_path("r", "x")) is None
    assert C.parse_checkpoint_name(C.checkpoint_path("r", "x-y_z", 3, 120)) == ("x-y_z", 3, 120)
    ckpt = C.Checkpointer("logs", "x")
    assert C.is_run_dir(ckpt.log_dir, "x") and os.path.dirname(ckpt.log_dir) == "logs"
    assert ckpt.path_template.format(epoch=7) == ckpt.path(7)
    assert ckpt.best_path == C.best_path(ckpt.log_dir, "x")


def test_set_log_dir_rule_reuses_a_run_folder_only(tmp_path):
    run = tmp_path / "x20260101T0000"
    path = fake(C.checkpoint_path(str(run), "x", 4, 10), 4, 10)
    log_dir, epoch = C.Checkpointer.run_for(str(tmp_path), "x", path)
    assert (log_dir, epoch) == (str(run), 4)
    # Outside a run folder (a downloaded file): a new run, from epoch 0.
    loose = fake(tmp_path / "weights" / "mask_rcnn_x_0009.h5", 9)
    log_dir, epoch = C.Checkpointer.run_for(str(tmp_path), "x", loose)
    assert epoch == 0 and C.is_run_dir(log_dir, "x") and log_dir != str(run)
    # A file that is not a checkpoint name (matterport's COCO weights).
    log_dir, epoch = C.Checkpointer.run_for(str(tmp_path), "x",
                                            str(run / "mask_rcnn_coco.h5"))
    assert epoch == 0 and log_dir != str(run)


# ------------------------------------------------------------------ newest run rule
def test_newest_run_is_the_latest_folder_timestamp_not_file_times(tmp_path):
    old, new = tmp_path / "x20250101T0000", tmp_path / "x20260101T0000"
    newer_name = tmp_path / "y20270101T0000"   # another NAME
    fake(C.checkpoint_path(str(old), "x", 5), 5)
    fake(C.checkpoint_path(str(new), "x", 1), 1)
    fake(C.checkpoint_path(str(newer_name), "y", 1), 1)
    # The old run's file was written last: file times must not decide.
    os.utime(C.checkpoint_path(str(new), "x", 1), (1, 1))
    assert [os.path.basename(d) for d in C.run_dirs(str(tmp_path), "x")] == [
        "x20250101T0000", "x20260101T0000"]
    want = C.checkpoint_path(str(new), "x", 1)
    assert C.find_last(str(tmp_path), "x") == want
    assert C.newest_checkpoint(str(tmp_path), "x") == want
    # Any NAME: the latest timestamp of all.
    assert C.newest_checkpoint(str(tmp_path)) == C.checkpoint_path(str(newer_name), "y", 1)
    # A run folder given directly is its own newest run.
    assert C.newest_checkpoint(str(old)) == C.checkpoint_path(str(old), "x", 5)
    # Folders that are not run folders of the NAME are not runs of it.
    fake(C.checkpoint_path(str(tmp_path / "x_backup"), "x", 9), 9)
    assert C.find_last(str(tmp_path), "x") == want


def test_newest_checkpoint_best_and_missing(tmp_path):
    assert C.find_last(str(tmp_path / "missing"), "x") is None
    assert C.newest_checkpoint(str(tmp_path / "missing")) is None
    assert C.find_last(str(tmp_path), "x") is None
    run = tmp_path / "x20260101T0000"
    last = fake(C.checkpoint_path(str(run), "x", 2), 2)
    assert C.newest_checkpoint(str(tmp_path), "x", "best") == last   # no best: the last
    best = fake(C.best_path(str(run), "x"), 1, logs={"val_loss": 0.5})
    assert C.newest_checkpoint(str(tmp_path), "x", "best") == best
    assert C.Checkpointer(str(tmp_path), "x", last).best_val_loss() == 0.5
    with pytest.raises(ColabRCNNError):
        C.newest_checkpoint(str(tmp_path), "x", "first")


# ------------------------------------------------------------- half-written files
@pytest.mark.parametrize("broken", ["truncated", "incomplete", "empty", "text"])
def test_half_written_checkpoints_are_ignored(tmp_path, broken):
    run = tmp_path / "x20260101T0000"
    good = fake(C.checkpoint_path(str(run), "x", 2), 2)
    bad = C.checkpoint_path(str(run), "x", 3)
    if broken == "truncated":
        truncated(bad)
    elif broken == "incomplete":
        fake(bad, 3, complete=0)
    elif broken == "empty":
        open(bad, "w").close()
    else:
        with open(bad, "w") as f:
            f.write("<html>Drive quota exceeded</html>")
    assert not C.is_complete(bad) and C.is_complete(good)
    assert C.list_checkpoints(str(run), "x") == [good, bad]
    assert C.list_checkpoints(str(run), "x", complete=True) == [good]
    assert C.find_last(str(tmp_path), "x") == good
    assert C.newest_checkpoint(str(tmp_path), "x") == good
    assert C.Checkpointer(str(tmp_path), "x", good).last() == good


def test_a_run_with_only_broken_files_is_skipped(tmp_path):
    old = fake(C.checkpoint_path(str(tmp_path / "x20250101T0000"), "x", 4), 4)
    truncated(C.checkpoint_path(str(tmp_path / "x20260101T0000"), "x", 1))
    assert C.find_last(str(tmp_path), "x") == old
    assert C.newest_checkpoint(str(tmp_path)) == old


def test_prune_removes_partial_files_of_dead_processes(tmp_path):
    run = str(tmp_path)
    for done in range(1, 5):
        fake(C.checkpoint_path(run, "x", done), done)
    open(os.path.join(run, "mask_rcnn_x_0005.h5.partial999999"), "w").close()
    mine = os.path.join(run, f"mask_rcnn_x_0005.h5.partial{os.getpid()}")
    open(mine, "w").close()
    C.prune_checkpoints(run, "x", keep=3)
    assert sorted(os.listdir(run)) == sorted(
        ["mask_rcnn_x_0002.h5", "mask_rcnn_x_0003.h5", "mask_rcnn_x_0004.h5",
         os.path.basename(mine)])


# ------------------------------------------------------------------------ resume
def test_resume_point(tmp_path):
    run = tmp_path / "x20260101T0000"
    mid = fake(C.checkpoint_path(str(run), "x", 3, 7), 3, 7)
    other = tmp_path / "x20260102T0000"      # the current, still empty run folder
    assert C.resume_point(False, str(other), str(tmp_path), "x", 0) == (None, 0, 0)
    assert C.resume_point("auto", str(other), str(tmp_path), "x", 0) == (mid, 3, 7)
    assert C.resume_point(True, str(other), str(tmp_path), "x", 0) == (mid, 3, 7)
    # Not further along than the model already is: nothing to resume.
    assert C.resume_point("auto", str(other), str(tmp_path), "x", 4) == (None, 4, 0)
    # In the current run folder, its own newest file comes first.
    here = fake(C.checkpoint_path(str(other), "x", 1), 1)
    assert C.resume_point("auto", str(other), str(tmp_path), "x", 0) == (here, 1, 0)
    # An explicit path.
    assert C.resume_point(mid, str(other), str(tmp_path), "x", 0) == (mid, 3, 7)


# ------------------------------------------------------------- config side-car
def test_config_side_car_and_saved_state(tmp_path):
    config = Config(NAME="x", NUM_CLASSES=3, IMAGE_MIN_DIM=128, IMAGE_MAX_DIM=128)
    run = tmp_path / "x20260101T0000"
    inside = fake(C.checkpoint_path(str(run), "x", 1), 1, config=config)
    assert C.read_config(inside).to_dict() == config.to_dict()   # from the state
    C.write_config(str(run), config.copy(NUM_CLASSES=5))
    assert C.read_config(inside).NUM_CLASSES == 5                 # side-car first
    assert C.read_config(fake(tmp_path / "plain" / "w.h5")) is None
    with pytest.raises(ConfigError, match="Config"):
        C.load_inference(str(tmp_path / "plain" / "w.h5"))


# ------------------------------------------------------------ save / optimizer
def test_save_and_restore_weights_and_optimizer(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="dense_a")])
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
    x, y = np.ones((4, 3), "float32"), np.zeros((4, 2), "float32")
    model.fit(x, y, epochs=1, verbose=0)
    config = Config(NAME="x", NUM_CLASSES=2)
    ckpt = C.Checkpointer(str(tmp_path), "x")
    path = ckpt.save(model, 2, 5, optimizer=model.optimizer, config=config, layers="heads",
                     logs={"loss": np.float32(1.5), "per_image": [1, 2]})
    assert path == ckpt.path(2, 5) and C.is_complete(path)
    assert not [f for f in os.listdir(ckpt.log_dir) if ".partial" in f]
    state = C.read_state(path)
    assert (state["epochs_done"], state["step"], state["layers"]) == (2, 5, "heads")
    assert state["has_optimizer"] and json.loads(state["logs_json"]) == {"loss": 1.5}
    assert C.read_config(path).to_dict() == config.to_dict()
    fresh = keras.optimizers.SGD(0.1, momentum=0.9)
    assert C.restore_optimizer(fresh, path, model.trainable_variables) == "all"
    for a, b in zip(fresh.variables, model.optimizer.variables):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a),
                                      keras.ops.convert_to_numpy(b))
    # Resumed with a schedule (no rate variable, the schedule's numbers instead): the
    # momentum and the counter come back, the rate is the schedule's.
    scheduled = T.make_optimizer(Config(NAME="x", NUM_CLASSES=2, LR_SCHEDULE="cosine",
                                        GRADIENT_CLIP_NORM=None), 0.01, end_epoch=3)
    assert [v.name for v in scheduled.variables][:2] == ["iteration", "lr_schedule_numbers"]
    assert C.restore_optimizer(scheduled, path, model.trainable_variables) == "all"
    state = [v for v in model.optimizer.variables if v.name != "learning_rate"]
    assert len(state) == len(scheduled.variables) - 1
    for a, b in zip([v for v in scheduled.variables if v.name != "lr_schedule_numbers"],
                    state):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a),
                                      keras.ops.convert_to_numpy(b))
    numbers = keras.ops.convert_to_numpy(T.schedule_of(scheduled).numbers_variable)
    np.testing.assert_allclose(numbers[:3], [0.01, Config.STEPS_PER_EPOCH, 3])
    # A different trainable set keeps only the iteration counter.
    other = keras.optimizers.SGD(0.1, momentum=0.9)
    assert C.restore_optimizer(other, path, model.trainable_variables[:1]) == "iterations"
    assert int(keras.ops.convert_to_numpy(other.iterations)) == 1
    best = ckpt.save_best(path)
    assert best == ckpt.best_path and C.read_state(best)["step"] == 5


@pytest.mark.parametrize("broken", ["truncated", "incomplete", "empty", "mid_epoch"])
def test_resume_auto_skips_half_written_files_and_says_so(tmp_path, capsys, broken):
    run = tmp_path / "x20260101T0000"
    good = fake(C.checkpoint_path(str(run), "x", 2), 2)
    bad = C.checkpoint_path(str(run), "x", *((2, 9) if broken == "mid_epoch" else (3,)))
    if broken in ("truncated", "mid_epoch"):
        truncated(bad)
    elif broken == "incomplete":
        fake(bad, 3, complete=0)
    else:
        open(bad, "w").close()
    capsys.readouterr()
    # After load_weights(find_last()) the model is at epoch 2 in this run folder.
    assert C.find_last(str(tmp_path), "x") == good
    assert C.resume_point("auto", str(run), str(tmp_path), "x", 2) == (None, 2, 0)
    out = capsys.readouterr().out
    assert os.path.basename(bad) in out and "half-written" in out
    # From scratch (epoch 0) it resumes from the complete file.
    assert C.resume_point("auto", str(run), str(tmp_path), "x", 0) == (good, 2, 0)
