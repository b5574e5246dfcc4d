"""The model really learns: overfit the built-in shapes on CPU (TensorFlow backend), then
detect, save, reload into an inference model and find the checkpoint again."""
import os

import keras
import numpy as np
import pytest

from colabrcnn import MaskRCNN, utils
from colabrcnn.demo import ShapesConfig
from colabrcnn.data import shapes
from colabrcnn.errors import WeightsError


class OverfitConfig(ShapesConfig):
    """The demo's small model; the overfit test trains and scores on the same images.

    A cosine decay makes the last epochs settle: at a constant rate, runs of the same
    length ended anywhere between AP50 0.81 and 1.0 depending on the random init.
    """
    VALIDATION_STEPS = 2
    LR_SCHEDULE = "cosine"


EPOCHS = 20


def mask_ap50(dataset, results):
    aps = []
    for image_id, r in zip(dataset.image_ids, results):
        gt_masks, gt_ids = dataset.load_mask(image_id)
        ap, *_ = utils.compute_ap(utils.extract_bboxes(gt_masks), gt_ids, gt_masks,
                                  r["rois"], r["class_ids"], r["scores"], r["masks"])
        aps.append(ap)
    return float(np.mean(aps))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model_dir = str(tmp_path_factory.mktemp("logs"))
    dataset = shapes(8, 128, seed=0)
    model = MaskRCNN("training", OverfitConfig(), model_dir)
    # matterport's SGD (the default optimizer) at a from-scratch learning rate, cosine.
    history = model.train(dataset, dataset, learning_rate=0.02, epochs=EPOCHS, layers="all",
                          seed=0, verbose=0)
    return model, dataset, history, model_dir


@pytest.mark.slow
def test_overfit_shapes_loss_drops_and_masks_recovered(trained):
    model, dataset, history, _ = trained
    losses = history.history["loss"]
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.3 * losses[0]
    for name in ("rpn_class_loss", "rpn_bbox_loss", "mrcnn_class_loss", "mrcnn_bbox_loss",
                 "mrcnn_mask_loss"):
        assert history.history[name][-1] < history.history[name][0], name
    assert "val_loss" in history.history
    results = model.detect([dataset.load_image(i) for i in dataset.image_ids])
    for image_id, r in zip(dataset.image_ids, results):
        image = dataset.load_image(image_id)
        n = len(r["class_ids"])
        assert r["rois"].shape == (n, 4) and r["scores"].shape == (n,)
        assert r["masks"].shape == image.shape[:2] + (n,) and r["masks"].dtype == bool
    assert mask_ap50(dataset, results) >= 0.9


@pytest.mark.slow
def test_checkpoints_reload_into_inference_model_with_same_detections(trained):
    model, dataset, _, model_dir = trained
    last = model.find_last()
    assert os.path.basename(last) == f"mask_rcnn_shapes_{EPOCHS:04d}.h5"
    kept = sorted(f for f in os.listdir(os.path.dirname(last)) if f.endswith(".h5"))
    # The newest CHECKPOINT_KEEP epochs and the best by validation loss.
    assert kept[:3] == [f"mask_rcnn_shapes_{e:04d}.h5" for e in (EPOCHS - 2, EPOCHS - 1, EPOCHS)]
    assert kept[3:] == ["mask_rcnn_shapes_best.h5"]
    assert os.path.exists(os.path.join(os.path.dirname(last), "log.csv"))

    images = [dataset.load_image(i) for i in dataset.image_ids[:3]]
    expected = model.detect(images)
    infer = MaskRCNN("inference", OverfitConfig(), model_dir)
    report = infer.load_weights(infer.find_last(), by_name=True)
    assert not report["missing"] and "rpn_model" in report["loaded"]
    assert infer.epoch == EPOCHS
    got = infer.detect(images)
    for a, b in zip(expected, got):
        np.testing.assert_array_equal(a["class_ids"], b["class_ids"])
        np.testing.assert_allclose(a["scores"], b["scores"], rtol=1e-5)
        np.testing.assert_array_equal(a["rois"], b["rois"])
        assert (a["masks"] != b["masks"]).mean() < 1e-3


def test_unmold_detections_maps_back_to_a_non_square_original(tmp_path):
    model = MaskRCNN("inference", OverfitConfig(), str(tmp_path))
    # A 64x256 original is scaled by 0.5 to 32x128 and padded to 128x128 (rows 48..80).
    original = np.zeros((64, 256, 3), np.uint8)
    molded, metas, windows = model.mold_inputs([original])
    np.testing.assert_array_equal(windows[0], [48, 0, 80, 128])
    assert molded.shape == (1, 128, 128, 3)
    det = np.zeros((16, 6), np.float32)
    # One detection covering molded pixels rows 56..72, cols 32..64 (y2/x2 exclusive).
    det[0, :4] = utils.norm_boxes(np.array([[56, 32, 72, 64]]), (128, 128))[0]
    det[0, 4:] = [2, 0.9]
    masks = np.zeros((16, 28, 28, 4), np.float32)
    masks[0, :, :14, 2] = 1.0  # left half of the box, for class 2
    rois, ids, scores, full = model.unmold_detections(det, masks, original.shape,
                                                      molded[0].shape, windows[0])
    np.testing.assert_array_equal(ids, [2])
    np.testing.assert_allclose(scores, [0.9])
    # matterport's normalized-coordinate convention can be off by one pixel.
    np.testing.assert_allclose(rois, [[16, 64, 48, 128]], atol=1)
    assert full.shape == (64, 256, 1)
    ys, xs = np.where(full[..., 0])
    assert ys.min() == 16 and ys.max() == 47 and xs.min() == 64 and 93 <= xs.max() <= 97


def test_layer_selection_presets_freeze_the_right_layers(tmp_path):
    model = MaskRCNN("training", OverfitConfig(), str(tmp_path))
    names = set(model.set_trainable("heads"))
    assert "mrcnn_mask" in names and "rpn_model" in names and "fpn_p2" in names
    assert not any(n.startswith(("res", "bn", "conv1")) for n in names)
    names = set(model.set_trainable("4+"))
    assert "res4a_branch2a" in names and "res5b_branch2b" in names
    assert "res3a_branch2a" not in names and "bn_conv1" not in names
    names = set(model.set_trainable("all"))
    assert {"conv1", "bn_conv1", "res2a_branch2a", "mrcnn_class_logits"} <= names
    # Frozen layers really are frozen in the Keras model.
    model.set_trainable("heads")
    trainable = {w.path for w in model.keras_model.trainable_weights}
    assert not any("res2a" in p for p in trainable)
    assert any("mrcnn_mask_conv1" in p for p in trainable)


def test_loading_weights_for_another_class_count(tmp_path):
    model = MaskRCNN("training", OverfitConfig(), str(tmp_path))
    path = model.save_weights(str(tmp_path / "w.h5"))
    other = MaskRCNN("inference", OverfitConfig(NUM_CLASSES=3), str(tmp_path))
    with pytest.raises(WeightsError, match="NUM_CLASSES"):
        other.load_weights(path, by_name=True)
    from colabrcnn import weights
    report = other.load_weights(path, by_name=True, exclude=weights.HEADS)
    assert set(report["skipped"]) == {"mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_mask"}
    a = model.keras_model.get_layer("backbone_fpn").get_layer("res3a_branch2a").get_weights()
    b = other.keras_model.get_layer("backbone_fpn").get_layer("res3a_branch2a").get_weights()
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
