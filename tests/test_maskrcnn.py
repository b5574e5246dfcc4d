"""The assembly (model/maskrcnn.py): what the training graph computes, on a tiny model."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from colabrcnn import train as T
from colabrcnn import utils
from colabrcnn.data import shapes
from colabrcnn.data.loader import DataGenerator
from colabrcnn.model.losses import MRCNNMaskLoss
from colabrcnn.model.spec import positive_count
from layer_checks import to_numpy
from tiny_model import tiny_model


def _training_batch(config, rng):
    """Random images with two square instances each, as the loader would send them."""
    b, g = config.BATCH_SIZE, config.MAX_GT_INSTANCES
    h, w = config.IMAGE_SHAPE[:2]
    anchors = utils.get_anchors(config)
    batch = {
        "input_image": rng.normal(0, 50, (b, h, w, 3)).astype(np.float32),
        "input_image_meta": np.stack([utils.compose_image_meta(
            i, (h, w, 3), (h, w, 3), (0, 0, h, w), 1.0, np.ones(config.NUM_CLASSES))
            for i in range(b)]),
        "input_rpn_match": np.zeros((b, len(anchors), 1), np.int32),
        "input_rpn_bbox": np.zeros((b, config.RPN_TRAIN_ANCHORS_PER_IMAGE, 4), np.float32),
        "input_gt_class_ids": np.zeros((b, g), np.int32),
        "input_gt_boxes": np.zeros((b, g, 4), np.float32),
        "input_gt_masks": np.zeros((b,) + tuple(config.MINI_MASK_SHAPE) + (g,), bool),
    }
    for i in range(b):
        for j, (y, x, s) in enumerate([(5, 7, 20), (30, 28, 26)]):
            batch["input_gt_class_ids"][i, j] = j + 1
            batch["input_gt_boxes"][i, j] = [y, x, y + s, x + s]
            batch["input_gt_masks"][i, 4:24, 6:20, j] = True
    return batch


def test_mask_head_trains_on_positive_slots_with_the_all_rois_loss(tmp_path):
    # BatchNorm in inference mode (matterport's default TRAIN_BN=False): the mask head is
    # then per-ROI, so the loss must not change. (With TRAIN_BN=True its batch
    # statistics now come from the positive slots.)
    model = tiny_model(tmp_path, mode="training", TRAIN_BN=False)
    c = model.config
    km = model.keras_model
    n_pos = positive_count(c.TRAIN_ROIS_PER_IMAGE, c.ROI_POSITIVE_RATIO)
    mask_align = km.get_layer("roi_align_mask")
    assert mask_align.output.shape[1] == n_pos < c.TRAIN_ROIS_PER_IMAGE
    assert km.get_layer("mrcnn_mask_conv1") is model.mask_head.convs[0]

    # One forward pass giving the loss and the very sample it was computed on.
    targets = km.get_layer("proposal_targets").output
    fmaps = mask_align.input[1:]
    probe = keras.Model(km.inputs, [km.output["mrcnn_mask_loss"], targets[0], targets[1],
                                    targets[3]] + list(fmaps))
    batch = _training_batch(c, np.random.default_rng(0))
    loss, rois, class_ids, target_masks, *maps = probe(batch, training=False)
    assert (to_numpy(class_ids)[:, :n_pos] > 0).any()          # there are positives
    assert (to_numpy(class_ids)[:, n_pos:] == 0).all()         # and only up front

    # The same loss from the mask head run on every one of the T sampled ROIs.
    all_logits = model.mask_head(mask_align(rois, *maps), c.TRAIN_ROIS_PER_IMAGE)
    assert all_logits.shape[1] == c.TRAIN_ROIS_PER_IMAGE
    all_loss = MRCNNMaskLoss()(target_masks, class_ids, all_logits)
    assert float(to_numpy(loss)) > 0
    np.testing.assert_allclose(to_numpy(loss), to_numpy(all_loss), rtol=1e-5)


def test_a_second_compile_with_the_same_layers_keeps_the_compiled_step(tmp_path):
    model = tiny_model(tmp_path, mode="training")
    km = model.keras_model
    model.set_trainable("heads")
    model.compile(0.01)
    km.make_train_function()
    step, optimizer = km.train_function, km.optimizer
    assert step is not None
    # Same layers and settings, another constant learning rate: kept, rate set.
    model.set_trainable("heads")
    model.compile(0.002)
    assert km.train_function is step and km.optimizer is optimizer
    assert float(to_numpy(km.optimizer.learning_rate)) == np.float32(0.002)
    # Other trainable layers: compiled anew.
    model.set_trainable("all")
    model.compile(0.002)
    assert km.train_function is None and km.optimizer is not optimizer
    # Another momentum: compiled anew too.
    km.make_train_function()
    model.compile(0.002, momentum=0.5)
    assert km.train_function is None
    # The from-scratch recipe (a warmed-up cosine over the call's epochs): a later call
    # with another epoch count keeps the step and sets the schedule's length.
    model.compile(0.002, from_scratch=True, end_epoch=1)
    km.make_train_function()
    step = km.train_function
    warm = model.config.SCRATCH_LR_WARMUP_STEPS
    model.compile(0.002, from_scratch=True, end_epoch=3)
    assert km.train_function is step
    schedule = T.schedule_of(km.optimizer)
    assert (schedule.end_epoch, schedule.warmup_steps) == (3, warm)
    km.optimizer.iterations.assign(model.config.STEPS_PER_EPOCH)  # end of epoch 1 of 3
    expected = model.config.SCRATCH_LEARNING_RATE * 0.5 * (1 + np.cos(np.pi / 3))
    assert float(to_numpy(km.optimizer.learning_rate)) == \
        pytest.approx(expected * min(1.0, (model.config.STEPS_PER_EPOCH + 1) / max(1, warm)))


def test_the_first_training_step_creates_no_variables(tmp_path):
    # The optimizer's slots exist after compile(): a variable created inside the first
    # step makes TensorFlow trace the whole step twice.
    model = tiny_model(tmp_path, mode="training")
    model.set_trainable("heads")
    model.compile(0.01, momentum=0.9)
    km = model.keras_model
    assert km.optimizer.built
    batch = DataGenerator(shapes(2, 64, seed=0), model.config, shuffle=False, seed=0)[0]
    created = []

    def record(next_creator, **kwargs):
        created.append(kwargs.get("name"))
        return next_creator(**kwargs)

    with tf.variable_creator_scope(record):
        km.train_on_batch(batch)
    assert created == []
    momentum = [v for v in km.optimizer.variables if v.name.endswith("_momentum")]
    assert len(momentum) == len(km.trainable_variables)
    assert any(np.abs(to_numpy(v)).max() > 0 for v in momentum)  # the step used them
