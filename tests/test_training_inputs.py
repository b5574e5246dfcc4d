"""Bad training inputs stop before any step with our errors: class lists that disagree,
more classes than NUM_CLASSES, no checkpoint to find, a half-written newest checkpoint
(TensorFlow backend, a tiny CPU model)."""
import os

import keras
import pytest

from colabrcnn import MaskRCNN
from colabrcnn import checkpoint as C
from colabrcnn import train as T
from colabrcnn.data import shapes
from colabrcnn.errors import (AnnotationError, CheckpointNotFoundError, ColabRCNNError,
                              ConfigError)
from test_train_workflow import TinyConfig


def with_classes(names, count=2, seed=0):
    """A shapes dataset whose class list is ``names`` (BG first)."""
    ds = shapes(count, 64, seed=seed)
    ds.class_info = [{"source": "" if i == 0 else "shapes", "id": i, "name": n}
                     for i, n in enumerate(names)]
    ds.prepare()
    return ds


SHAPES = ["BG", "square", "circle", "triangle"]


# ------------------------------------------------------------- class lists (unit)
@pytest.mark.parametrize("val_names, named", [
    (["BG", "circle", "square", "triangle"], ["circle", "square"]),   # another order
    (["BG", "square", "circle", "star"], ["triangle", "star"]),        # another name
    (["BG", "square", "triangle"], ["circle", "triangle"]),           # one missing: ids shift
    (["BG", "square", "circle", "triangle", "star"], ["star"]),        # one more
])
def test_validation_classes_must_be_the_training_classes(val_names, named):
    config = TinyConfig(NUM_CLASSES=5)
    with pytest.raises(AnnotationError) as e:
        T.check_datasets(config, with_classes(SHAPES), with_classes(val_names))
    for name in named:
        assert name in str(e.value)
    assert "validation" in str(e.value)


@pytest.mark.parametrize("train_names, val_names, num_classes, named", [
    (SHAPES, SHAPES, 3, ["triangle"]),
    (SHAPES + ["star", "moon"], SHAPES + ["star", "moon"], 4, ["star", "moon"]),
    (SHAPES, None, 2, ["circle", "triangle"]),
])
def test_more_classes_than_num_classes(train_names, val_names, num_classes, named):
    config = TinyConfig(NUM_CLASSES=num_classes)
    val = None if val_names is None else with_classes(val_names)
    with pytest.raises(ConfigError) as e:
        T.check_datasets(config, with_classes(train_names), val)
    assert f"NUM_CLASSES = {len(train_names)}" in str(e.value)
    for name in named:
        assert name in str(e.value)


def test_matching_datasets_pass():
    T.check_datasets(TinyConfig(NUM_CLASSES=4), with_classes(SHAPES), with_classes(SHAPES))
    T.check_datasets(TinyConfig(NUM_CLASSES=6), with_classes(SHAPES), None)  # fewer: fine


# ------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def model(tmp_path_factory):
    keras.utils.set_random_seed(0)
    return MaskRCNN("training", TinyConfig(NUM_CLASSES=4),
                    str(tmp_path_factory.mktemp("runs")))


@pytest.mark.parametrize("train_names, val_names, error", [
    (SHAPES, ["BG", "square", "circle", "star"], AnnotationError),
    (SHAPES + ["star"], SHAPES + ["star"], ConfigError),
])
def test_train_stops_before_any_step(model, tmp_path, train_names, val_names, error):
    model.model_dir = str(tmp_path)
    model.set_log_dir()
    with pytest.raises(error, match="star"):
        model.train(with_classes(train_names), with_classes(val_names), 0.01, 1, "heads",
                    verbose=0)
    assert os.listdir(tmp_path) == []          # no run folder, no checkpoint, no log
    assert model.epoch == 0


# ------------------------------------------------------------------- find_last
@pytest.mark.parametrize("layout", ["missing", "empty", "other_name", "broken_only",
                                    "not_a_run_folder"])
def test_find_last_without_a_checkpoint(model, tmp_path, layout):
    root = tmp_path / "runs"
    if layout != "missing":
        root.mkdir()
    if layout == "other_name":
        fake_ckpt(C.checkpoint_path(str(root / "other20260101T0000"), "other", 1))
    elif layout == "broken_only":
        path = C.checkpoint_path(str(root / "tiny20260101T0000"), "tiny", 1)
        os.makedirs(os.path.dirname(path))
        with open(path, "wb") as f:
            f.write(b"\x89HDF\r\n\x1a\n")
    elif layout == "not_a_run_folder":
        fake_ckpt(C.checkpoint_path(str(root / "tiny_copy"), "tiny", 1))
    model.model_dir = str(root)
    with pytest.raises(CheckpointNotFoundError) as e:
        model.find_last()
    assert isinstance(e.value, ColabRCNNError) and isinstance(e.value, FileNotFoundError)
    assert "'tiny'" in str(e.value) and str(root) in str(e.value)
    try:   # matterport code catches FileNotFoundError
        model.find_last()
    except FileNotFoundError:
        pass


def fake_ckpt(path):
    import h5py
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with h5py.File(path, "w"):
        pass
    return path


# ------------------------------------------------- a half-written newest checkpoint
def test_resume_auto_skips_a_half_written_newest_checkpoint(tmp_path, capsys):
    config = TinyConfig(NUM_CLASSES=4, STEPS_PER_EPOCH=2)
    train_ds = shapes(4, 64, seed=1)
    keras.utils.set_random_seed(0)
    again = MaskRCNN("training", config, str(tmp_path))
    again.train(train_ds, None, 0.01, 1, "heads", verbose=0)
    run = again.log_dir
    # Epoch 2's file was cut short (a Drive sync, a kill during an upload).
    broken = C.checkpoint_path(run, "tiny", 2)
    with open(C.checkpoint_path(run, "tiny", 1), "rb") as f:
        head = f.read(2000)
    with open(broken, "wb") as f:
        f.write(head)
    # The notebook's "continue" cell: load the newest checkpoint, train on.
    last = again.find_last()
    assert last == C.checkpoint_path(run, "tiny", 1)
    again.load_weights(last, by_name=True)
    capsys.readouterr()
    again.train(train_ds, None, 0.01, 2, "heads", resume="auto", verbose=1)
    out = capsys.readouterr().out
    assert "mask_rcnn_tiny_0002.h5" in out and "half-written" in out
    assert again.epoch == 2
    state = C.read_state(C.checkpoint_path(run, "tiny", 2))   # written anew, complete
    assert state["epochs_done"] == 2 and state["complete"] == 1
