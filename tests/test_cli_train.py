"""``colabrcnn train``: config overrides, data and weights handling, and a real (tiny)
training run that writes a checkpoint and resumes from it when run again."""
import glob
import json
import os

import pytest

from colabrcnn import ConfigError
from colabrcnn.cli import main
from colabrcnn.cli.train import _data_name, parse_config_overrides

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COINS = os.path.join(REPO, "datasets", "coins")

# A tiny model (the settings of tests/test_train_workflow.py's TinyConfig).
TINY = {"IMAGE_MIN_DIM": 64, "IMAGE_MAX_DIM": 64, "TRAIN_ROIS_PER_IMAGE": 16,
        "POST_NMS_ROIS_TRAINING": 64, "POST_NMS_ROIS_INFERENCE": 32, "PRE_NMS_LIMIT": 256,
        "TOP_DOWN_PYRAMID_SIZE": 32, "FPN_CLASSIF_FC_LAYERS_SIZE": 64,
        "MAX_GT_INSTANCES": 4, "RPN_TRAIN_ANCHORS_PER_IMAGE": 32,
        "MINI_MASK_SHAPE": [14, 14], "STEPS_PER_EPOCH": 2, "VALIDATION_STEPS": 1,
        "CHECKPOINT_EVERY_MINUTES": None, "MIXED_PRECISION": False}


@pytest.fixture
def tiny_json(tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY))
    return str(path)


# ------------------------------------------------------------------ overrides
def test_config_overrides_from_pairs_json_and_files(tmp_path):
    f = tmp_path / "c.json"
    # What Config.to_json() writes includes derived settings: they are not inputs.
    f.write_text(json.dumps({"IMAGE_MAX_DIM": 256, "BATCH_SIZE": 8, "IMAGE_SHAPE": [1, 2, 3]}))
    got = parse_config_overrides([str(f), "IMAGE_MAX_DIM=512", "backbone=resnet50",
                                  "MINI_MASK_SHAPE=[28,28]", "REMAT=true", "TRAIN_BN=False",
                                  "CHECKPOINT_EVERY_MINUTES=null", '{"NAME": "x"}'])
    assert got == {"IMAGE_MAX_DIM": 512, "BACKBONE": "resnet50", "MINI_MASK_SHAPE": (28, 28),
                   "REMAT": True, "TRAIN_BN": False, "CHECKPOINT_EVERY_MINUTES": None,
                   "NAME": "x"}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_config_overrides(["not-a-setting"])
    with pytest.raises(ConfigError, match="not valid JSON"):
        parse_config_overrides(["{broken"])


def test_run_name_comes_from_the_data_folder(tmp_path):
    (tmp_path / "balloon" / "train").mkdir(parents=True)
    ann = tmp_path / "balloon" / "train" / "via_region_data.json"
    ann.write_text("{}")
    assert _data_name(str(ann)) == "balloon"
    assert _data_name(str(tmp_path / "balloon")) == "balloon"
    assert _data_name(COINS) == "coins"


def test_bad_arguments_are_errors_with_a_message(tmp_path, tiny_json, capsys):
    base = ["train", "--shapes", "2", "--config", tiny_json, "--model-dir", str(tmp_path)]
    assert main(base + ["--resume", str(tmp_path / "missing.h5")]) == 1
    assert "no such checkpoint" in capsys.readouterr().err
    assert main(base + ["--config", "NOT_A_SETTING=1"]) == 1
    assert "Unknown Config setting 'NOT_A_SETTING'" in capsys.readouterr().err
    assert main(base + ["--config", "NUM_CLASSES=7"]) == 1
    assert "read from the data" in capsys.readouterr().err


# ------------------------------------------------------------------- weights
def test_annotations_with_weights_file_excluding_heads(tmp_path, tiny_json, capsys):
    """Your data + a pretrained file with another class count: the heads are left out
    (--exclude-heads), everything else loads. --epochs 0 builds and loads, no training."""
    from colabrcnn import Config, MaskRCNN
    settings = dict(TINY, BACKBONE="resnet18", MINI_MASK_SHAPE=(14, 14))
    other = MaskRCNN("inference", Config(NAME="other", NUM_CLASSES=81, **settings),
                     str(tmp_path / "other"))
    weights = other.save_weights(str(tmp_path / "pretrained.h5"))
    args = ["train", "--annotations", COINS, "--config", tiny_json, "BACKBONE=resnet18",
            "--weights", weights, "--epochs", "0", "--model-dir", str(tmp_path / "runs")]
    assert main(args) == 1
    assert "exclude" in capsys.readouterr().err        # the heads do not fit: say so
    assert main(args + ["--exclude-heads"]) == 0
    out = capsys.readouterr().out
    assert "1 training images, 1 validation images; classes: coin" in out
    assert "Starting from" in out and "Already trained to epoch 0" in out


# ------------------------------------------------------------ train + resume
def test_train_writes_a_checkpoint_and_a_second_run_resumes(tmp_path, tiny_json, capsys):
    runs = str(tmp_path / "runs")
    # No validation (--val-fraction 0) and one step per epoch keep it quick.
    args = ["train", "--shapes", "4", "--config", tiny_json, "STEPS_PER_EPOCH=1",
            "--val-fraction", "0", "--model-dir", runs, "--seed", "0", "--quiet"]
    assert main(args + ["--epochs", "1"]) == 0
    out = capsys.readouterr().out
    first = glob.glob(os.path.join(runs, "shapes*", "mask_rcnn_shapes_0001.h5"))
    assert len(first) == 1, out
    run = os.path.dirname(first[0])
    with open(os.path.join(run, "class_names.json")) as f:
        assert json.load(f) == ["BG", "square", "circle", "triangle"]
    with open(os.path.join(run, "config.json")) as f:
        saved = json.load(f)
    assert saved["IMAGE_MAX_DIM"] == 64 and saved["NAME"] == "shapes"
    assert f"Last checkpoint: {first[0]}" in out and "colabrcnn evaluate" in out

    # The same command with more epochs continues the same run from epoch 1.
    assert main(args + ["--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "Resuming from" in out and "mask_rcnn_shapes_0001.h5" in out
    assert os.path.exists(os.path.join(run, "mask_rcnn_shapes_0002.h5"))
    assert len(glob.glob(os.path.join(runs, "shapes*"))) == 1
