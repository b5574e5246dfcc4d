"""Training from random weights (issue 16): where the weights came from, TRAIN_BN="auto",
the from-scratch recipe, near-neutral first losses, and a real-data run that learns."""
import logging
import math
import os
import sys
import warnings

import keras
import numpy as np
import pytest

from colabrcnn import MaskRCNN, checkpoint, recipe
from colabrcnn import train as T
from colabrcnn.config import Config
from colabrcnn.data import shapes
from colabrcnn.data.loader import DataGenerator
from tiny_model import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _auto(**overrides):
    return tiny_config(TRAIN_BN="auto", **overrides)


def _bn_flags(model):
    return {layer.train_bn for layer in recipe.batchnorm_layers(model.keras_model)}


def _saved_weights(tmp_path, name="other.h5"):
    source = MaskRCNN("training", _auto(), str(tmp_path / "src"))
    return source.save_weights(str(tmp_path / name))


# ------------------------------------------------------------------ TRAIN_BN="auto"
def test_train_bn_auto_trains_batchnorm_of_a_random_model_and_freezes_a_loaded_one(tmp_path):
    keras.utils.set_random_seed(0)
    model = MaskRCNN("training", _auto(), str(tmp_path))
    assert model.weights_origin["source"] == "random"
    assert _bn_flags(model) == {True}

    path = _saved_weights(tmp_path)
    model.load_weights(path, by_name=True)
    assert model.weights_origin["backbone_loaded"] is True
    assert model.weights_origin["source"] == "weights file"
    assert _bn_flags(model) == {False}

    # Heads only (the backbone excluded): the backbone is still random.
    fresh = MaskRCNN("training", _auto(), str(tmp_path))
    fresh.load_weights(path, by_name=True, exclude=[r"(?!(mrcnn_|rpn_|fpn_)).*"])
    assert fresh.weights_origin["backbone_loaded"] is False
    assert _bn_flags(fresh) == {True}

    # True / False still force it, whatever was loaded.
    forced = MaskRCNN("training", tiny_config(TRAIN_BN=True), str(tmp_path))
    forced.load_weights(path, by_name=True)
    assert _bn_flags(forced) == {True}
    frozen = MaskRCNN("training", tiny_config(TRAIN_BN=False), str(tmp_path))
    assert _bn_flags(frozen) == {False}


@pytest.mark.parametrize("started_from", ["random", "weights file"])
def test_train_bn_auto_of_a_resumed_run_follows_how_that_run_started(tmp_path, started_from):
    keras.utils.set_random_seed(0)
    run = MaskRCNN("training", _auto(), str(tmp_path))
    if started_from != "random":
        run.load_weights(_saved_weights(tmp_path), by_name=True)
    path = checkpoint.save_checkpoint(run.keras_model, str(tmp_path / "mask_rcnn_tiny_0001.h5"),
                                      epochs_done=1, config=run.config,
                                      origin=run.weights_origin)
    resumed = MaskRCNN("training", _auto(), str(tmp_path))
    resumed.load_weights(path, by_name=True)
    assert resumed.weights_origin["source"] == "checkpoint"
    scratch = started_from == "random"
    assert recipe.from_scratch(resumed.weights_origin) is scratch
    assert _bn_flags(resumed) == {scratch}


# ------------------------------------------------------------- the scratch recipe
def test_scratch_recipe_only_when_no_optimizer_setting_was_given():
    random, loaded = recipe.random_origin(), {"source": "coco", "backbone_loaded": True}
    config = _auto()
    assert recipe.use_scratch_recipe(config, random)
    assert not recipe.use_scratch_recipe(config, loaded)
    assert not recipe.use_scratch_recipe(config, random, optimizer=keras.optimizers.SGD())
    for setting, value in [("OPTIMIZER", "sgd"), ("LR_SCHEDULE", "cosine"),
                           ("LR_WARMUP_STEPS", 10), ("LEARNING_MOMENTUM", 0.8)]:
        chosen = _auto(**{setting: value})
        assert recipe.explicit_optimizer_settings(chosen) == [setting]
        assert not recipe.use_scratch_recipe(chosen, random), setting

    config = _auto(SCRATCH_OPTIMIZER="adamw", SCRATCH_LR_WARMUP_STEPS=10)
    scratch = T.make_optimizer(config, 0.02, end_epoch=4, from_scratch=True)
    assert isinstance(scratch, keras.optimizers.AdamW)
    schedule = scratch.get_config()["learning_rate"]["config"]
    assert (schedule["base_lr"], schedule["kind"], schedule["warmup_steps"],
            schedule["end_epoch"]) == (config.SCRATCH_LEARNING_RATE, "cosine", 10, 4)
    # First step of the warm-up: base / warm-up steps; the learning_rate given is unused.
    assert float(np.asarray(scratch.learning_rate)) == pytest.approx(
        config.SCRATCH_LEARNING_RATE / 10)
    assert scratch.clipnorm == config.GRADIENT_CLIP_NORM
    default = T.make_optimizer(_auto(), 0.02, end_epoch=4, from_scratch=True)
    assert isinstance(default, keras.optimizers.Adam)
    assert not isinstance(default, keras.optimizers.AdamW)
    assert float(np.asarray(default.learning_rate)) == pytest.approx(Config.SCRATCH_LEARNING_RATE)
    pretrained = T.make_optimizer(config, 0.02, end_epoch=4, from_scratch=False)
    assert isinstance(pretrained, keras.optimizers.SGD)
    assert float(np.asarray(pretrained.learning_rate)) == pytest.approx(0.02)
    assert isinstance(T.make_optimizer(_auto(OPTIMIZER="adam"), 0.01, 1), keras.optimizers.Adam)
    # matterport's defaults for a loaded backbone are untouched.
    assert (Config.LEARNING_RATE, Config.LEARNING_MOMENTUM, Config.LR_SCHEDULE) == \
        (0.001, 0.9, "constant")


def test_heads_on_a_random_backbone_warns_and_on_a_loaded_one_does_not(tmp_path):
    ds = shapes(2, 64, seed=0)
    model = MaskRCNN("training", _auto(), str(tmp_path))
    for preset in ("heads", "3+", "4+", "5+"):
        with pytest.warns(UserWarning, match="random weights"):
            model.train(ds, None, 0.001, epochs=0, layers=preset, resume=False)
    model.load_weights(_saved_weights(tmp_path), by_name=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.train(ds, None, 0.001, epochs=0, layers="heads", resume=False)


# ------------------------------------------------------------------ first losses
@pytest.mark.parametrize("backbone,seed", [("resnet18", 0), ("resnet50", 1)])
def test_first_batch_losses_of_a_fresh_model_are_near_neutral(tmp_path, backbone, seed):
    """Logits ~0 at the start: cross-entropies of ln 2 (RPN objectness, masks) and
    ln NUM_CLASSES (classes), within 20%."""
    keras.utils.set_random_seed(seed)
    config = _auto(BACKBONE=backbone, IMAGE_MIN_DIM=128, IMAGE_MAX_DIM=128)
    model = MaskRCNN("training", config, str(tmp_path))
    batch = DataGenerator(shapes(2, 128, seed=seed), config, shuffle=False, seed=seed)[0]
    losses = {k: float(np.asarray(v)) for k, v in model.keras_model(batch, training=True).items()}
    neutral = {"rpn_class_loss": math.log(2), "mrcnn_mask_loss": math.log(2),
               "mrcnn_class_loss": math.log(config.NUM_CLASSES)}
    for name, value in neutral.items():
        assert abs(losses[name] - value) <= 0.2 * value, (name, losses[name], value)


def test_random_bottleneck_blocks_start_as_identity_so_frozen_batchnorm_does_not_explode(
        tmp_path):
    """The last BatchNorm of every bottleneck branch (bn*_branch2c) starts with gamma 0
    ("zero_init_residual"), every other gamma with 1: a random ResNet-50 with frozen
    BatchNorm (statistics mean 0, variance 1: no normalisation) then starts with an RPN
    class loss of 2.9 (seed 1) instead of the 238 measured with all gammas 1."""
    keras.utils.set_random_seed(1)
    config = tiny_config(TRAIN_BN=False, BACKBONE="resnet50", IMAGE_MIN_DIM=128,
                         IMAGE_MAX_DIM=128)
    model = MaskRCNN("training", config, str(tmp_path))
    gammas = {layer.name: np.asarray(layer.gamma)
              for layer in recipe.batchnorm_layers(model.keras_model)
              if layer.name.startswith("bn")}
    last = [n for n in gammas if n.endswith("_branch2c")]
    assert len(last) == 16  # ResNet-50: 3 + 4 + 6 + 3 bottlenecks
    assert all(not gammas[n].any() for n in last)
    assert all((g == 1).all() for n, g in gammas.items() if n not in last)
    batch = DataGenerator(shapes(2, 128, seed=1), config, shuffle=False, seed=1)[0]
    losses = model.keras_model(batch, training=True)
    assert float(np.asarray(losses["rpn_class_loss"])) < 10 * math.log(2)


# --------------------------------------------------------- real annotated images
def _benchmark():
    """benchmarks/learning.py: the real annotated datasets and its training run."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import learning
    finally:
        sys.path.pop(0)
    return learning


def _held_out_mask_ap50(tmp_path, data, recipe_name, steps, backbone):
    """benchmarks/learning.py's run: train from random weights for ``steps`` steps (one
    cosine period), seed 0; the COCO mask AP50 (pycocotools) on the held-out images,
    which training never sees, and what train() logged."""
    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logging.getLogger("colabrcnn").addHandler(handler)
    try:
        points = _benchmark().run(data, recipe_name, steps, steps, 0,
                                  str(tmp_path / recipe_name), verbose=0,
                                  backbone=backbone, eval_at_start=False, train_verbose=1)
    finally:
        logging.getLogger("colabrcnn").removeHandler(handler)
    return points[-1]["mask_AP50"], records


STEPS = 50


def test_real_nuclei_from_random_weights_learn_where_frozen_batchnorm_sgd_does_not(tmp_path):
    """The README's calls from random weights (defaults: TRAIN_BN "auto", the scratch
    recipe, said in one line) against the run of issue 16 (BatchNorm frozen, SGD at
    0.01, no line), 50 steps each with ResNet-50 (a bottleneck ResNet like the default
    ResNet-101) on the human-annotated nuclei (12 training tiles of 128 px, 4 held out):
    held-out mask AP50 0.38 and 0.34 against 0.00 (seed 0, two installs of the
    dependencies), 0.23 against 0.00 with seed 1. After 30 steps the defaults had 0.26
    on one install and 0.13 on another: too close to the floor for a test. The coins
    sample shows it at 192 px and 100 steps (0.83 against 0.26, seed 0), at twice this
    test's cost; on ResNet-18 the two recipes are within noise of each other (README)."""
    ours, said = _held_out_mask_ap50(tmp_path, "nuclei", "default", STEPS, "resnet50")
    assert sum("Training from random weights" in line for line in said) == 1
    theirs, said = _held_out_mask_ap50(tmp_path, "nuclei", "sgd-frozen", STEPS, "resnet50")
    print("held-out mask AP50, defaults against frozen-BN SGD:", ours, theirs)
    assert not any("Training from random weights" in line for line in said)
    assert ours >= 0.15, (ours, theirs)
    assert ours >= theirs + 0.15, (ours, theirs)
