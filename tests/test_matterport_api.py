"""matterport's public names under ``colabrcnn.``: the README's migration table agrees
with the package (each name works, or raises NotProvidedError naming its replacement),
signatures and defaults are matterport's, imports stay light, and the helpers added
for migration compute what matterport's did."""
import inspect
import os
import re
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def migration_table():
    """(module, name, status) for every row of the README's migration tables."""
    with open(os.path.join(REPO, "README.md"), encoding="utf8") as f:
        text = f.read()
    section = text.split("## Migrating from matterport", 1)[1].split("\n## ", 1)[0]
    rows = []
    module = None
    for line in section.splitlines():
        m = re.match(r"\*\*`(\w+)`", line)
        if m:
            module = m.group(1)
        if line.startswith("| `") and module:
            cells = [c.strip() for c in line.strip("|").split("|")]
            for name in re.findall(r"`([^`]+)`", cells[0]):
                rows.append((module, name.split("(")[0], cells[1]))
    return rows


def test_readme_table_covers_matterports_modules():
    rows = migration_table()
    by_module = {}
    for module, name, status in rows:
        by_module.setdefault(module, set()).add(name)
        assert status in ("works", "added", "not provided"), (module, name, status)
    assert len(by_module["utils"]) == 28 and len(by_module["visualize"]) == 13
    assert len(by_module["model"]) == 41
    assert {"run_graph", "ancestor", "detect_molded"} <= by_module["MaskRCNN"]


@pytest.mark.parametrize("module,name,status", migration_table())
def test_each_name_of_the_table_resolves_or_says_what_replaces_it(module, name, status):
    import importlib
    from colabrcnn.errors import NotProvidedError
    if module == "MaskRCNN":
        from colabrcnn.model import MaskRCNN
        # keras_model's weight methods: test_keras_model_weight_files_...
        if name != "MaskRCNN" and not name.startswith("keras_model"):
            assert callable(getattr(MaskRCNN, name)), name
        return
    mod = importlib.import_module(f"colabrcnn.{module}")
    if status == "not provided":
        with pytest.raises(NotProvidedError) as info:
            getattr(mod, name)
        assert isinstance(info.value, AttributeError)
        assert name in str(info.value) and "instead" in str(info.value)
        assert not hasattr(mod, name)
    else:
        assert getattr(mod, name) is not None


# matterport's signatures: parameter names in order, and their defaults.
SIGNATURES = {
    "utils.non_max_suppression": "boxes, scores, threshold",
    "utils.compute_iou": "box, boxes, box_area, boxes_area",
    "utils.compute_recall": "pred_boxes, gt_boxes, iou",
    "utils.batch_slice": "inputs, graph_fn, batch_size, names=None",
    "utils.download_trained_weights": "coco_model_path, verbose=1",
    "utils.resize": "image, output_shape, order=1, mode='constant', cval=0, clip=True, "
                    "preserve_range=False, anti_aliasing=False, anti_aliasing_sigma=None",
    "utils.compute_ap_range": "gt_box, gt_class_id, gt_mask, pred_box, pred_class_id, "
                              "pred_score, pred_mask, iou_thresholds=None, verbose=1",
    "model.log": "text, array=None",
    "model.load_image_gt": "dataset, config, image_id, augment=False, augmentation=None, "
                           "use_mini_mask=False",
    "model.data_generator": "dataset, config, shuffle=True, augment=False, "
                            "augmentation=None, random_rois=0, batch_size=1, "
                            "detection_targets=False, no_augmentation_sources=None",
    "model.build_rpn_targets": "image_shape, anchors, gt_class_ids, gt_boxes, config",
    "model.resnet_graph": "input_image, architecture, stage5=False, train_bn=True",
    "model.build_rpn_model": "anchor_stride, anchors_per_location, depth",
    "model.MaskRCNN.detect": "self, images, verbose=0",
    "model.MaskRCNN.detect_molded": "self, molded_images, image_metas, verbose=0",
    "model.MaskRCNN.load_weights": "self, filepath, by_name=False, exclude=None",
    "model.MaskRCNN.train": "self, train_dataset, val_dataset, learning_rate, epochs, "
                            "layers, augmentation=None, custom_callbacks=None, "
                            "no_augmentation_sources=None",
    "model.MaskRCNN.run_graph": "self, images, outputs, image_metas=None",
    "model.MaskRCNN.ancestor": "self, tensor, name, checked=None",
    "model.MaskRCNN.set_trainable": "self, layer_regex, keras_model=None, indent=0",
    "model.MaskRCNN.set_log_dir": "self, model_path=None",
    "model.MaskRCNN.get_anchors": "self, image_shape",
    "visualize.draw_boxes": "image, boxes=None, refined_boxes=None, masks=None, "
                            "captions=None, visibilities=None, title='', ax=None",
    "visualize.plot_overlaps": "gt_class_ids, pred_class_ids, pred_scores, overlaps, "
                               "class_names, threshold=0.5",
    "visualize.draw_rois": "image, rois, refined_rois, mask, class_ids, class_names, "
                           "limit=10",
}


@pytest.mark.parametrize("dotted", sorted(SIGNATURES))
def test_signatures_start_with_matterports(dotted):
    import importlib
    module, *attrs = dotted.split(".")
    obj = importlib.import_module(f"colabrcnn.{module}")
    for a in attrs:
        obj = getattr(obj, a)
    params = [p.name if p.default is p.empty else f"{p.name}={p.default!r}"
              for p in inspect.signature(obj).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    want = [p.strip() for p in SIGNATURES[dotted].split(",")]
    assert params[:len(want)] == want


def test_importing_the_model_package_and_log_needs_no_keras():
    code = ("import sys, colabrcnn\nimport colabrcnn.model as modellib\n"
            "from colabrcnn.model import log, build_rpn_targets\n"
            "from colabrcnn import utils\nutils.Dataset; utils.non_max_suppression\n"
            "assert 'keras' not in sys.modules, sorted(m for m in sys.modules "
            "if m.startswith('keras'))\nprint('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=REPO), cwd=REPO, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


# ----------------------------------------------------------------- NumPy helpers
def test_log_prints_matterports_summary_line(capsys):
    from colabrcnn.model import log
    log("gt_bbox", np.array([[1, 2, 30, 40]], np.int32))
    log("nothing", np.zeros((0, 4), np.float32))
    log("just text")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ("gt_bbox".ljust(25) + "shape: " + "(1, 4)".ljust(20) + "  min: "
                        "   1.00000  max:   40.00000  int32")
    assert lines[1] == ("nothing".ljust(25) + "shape: " + "(0, 4)".ljust(20) + "  min: "
                        + " " * 10 + "  max: " + " " * 10 + "  float32")
    assert lines[2] == "just text"


def test_non_max_suppression_matches_opencv():
    import cv2
    from colabrcnn import utils
    rng = np.random.default_rng(0)
    for trial in range(20):
        n = int(rng.integers(1, 40))
        yx = rng.uniform(0, 100, (n, 2))
        hw = rng.uniform(5, 40, (n, 2))
        boxes = np.concatenate([yx, yx + hw], axis=1)
        scores = rng.permutation(n).astype(np.float32) / n + 0.01  # no ties
        keep = utils.non_max_suppression(boxes, scores, 0.3)
        # OpenCV takes (x, y, w, h) and also keeps boxes with IoU <= threshold.
        xywh = [[float(b[1]), float(b[0]), float(b[3] - b[1]), float(b[2] - b[0])]
                for b in boxes]
        want = cv2.dnn.NMSBoxes(xywh, scores.tolist(), 0.0, 0.3)
        assert keep.dtype == np.int32
        assert keep.tolist() == np.asarray(want).reshape(-1).tolist()


def test_compute_iou_and_recall():
    from colabrcnn import utils
    boxes = np.array([[0, 0, 10, 10], [5, 5, 15, 15], [20, 20, 30, 30]], np.float32)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    iou = utils.compute_iou(boxes[0], boxes, area[0], area)
    np.testing.assert_allclose(iou, [1.0, 25 / 175, 0.0])
    np.testing.assert_allclose(iou, utils.compute_overlaps(boxes[:1], boxes)[0], rtol=1e-6)
    # Two predictions on GT 0, one on nothing: recall 1/2 at IoU 0.5.
    pred = np.array([[0, 0, 10, 10], [1, 0, 10, 10], [50, 50, 60, 60]], np.float32)
    gt = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
    recall, positive_ids = utils.compute_recall(pred, gt, 0.5)
    assert recall == 0.5 and positive_ids.tolist() == [0, 1]


def test_resize_is_scikit_images_with_matterports_defaults():
    import skimage.transform
    from colabrcnn import utils
    image = np.random.default_rng(0).integers(0, 255, (20, 30, 3)).astype(np.uint8)
    out = utils.resize(image, (10, 15), preserve_range=True)
    want = skimage.transform.resize(image, (10, 15), order=1, mode="constant", cval=0,
                                    clip=True, preserve_range=True, anti_aliasing=False)
    np.testing.assert_array_equal(out, want)


def test_graph_helpers_agree_with_the_numpy_ones():
    import keras  # noqa: F401 - the graph helpers run on the Keras backend
    import colabrcnn.model as modellib
    from colabrcnn import utils
    rng = np.random.default_rng(1)
    yx = rng.uniform(0, 50, (6, 2))
    boxes = np.concatenate([yx, yx + rng.uniform(5, 30, (6, 2))], 1).astype(np.float32)
    deltas = rng.normal(0, 0.2, (6, 4)).astype(np.float32)
    np.testing.assert_allclose(modellib.apply_box_deltas_graph(boxes, deltas),
                               utils.apply_box_deltas(boxes, deltas), rtol=1e-5, atol=1e-4)
    gt = boxes[::-1].copy()
    np.testing.assert_allclose(utils.box_refinement_graph(boxes, gt),
                               utils.box_refinement(boxes, gt), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(modellib.overlaps_graph(boxes, gt),
                               utils.compute_overlaps(boxes, gt), rtol=1e-5, atol=1e-6)
    shape = np.array([64, 80])
    np.testing.assert_allclose(modellib.norm_boxes_graph(boxes, shape),
                               utils.norm_boxes(boxes, (64, 80)), rtol=1e-6)
    normed = utils.norm_boxes(boxes, (64, 80))
    np.testing.assert_array_equal(modellib.denorm_boxes_graph(normed, shape),
                                  utils.denorm_boxes(normed, (64, 80)))
    clipped = np.asarray(modellib.clip_boxes_graph(boxes / 50.0, np.array([0, 0, 1, 1.])))
    np.testing.assert_allclose(clipped, np.clip(boxes / 50.0, 0, 1), rtol=1e-6)
    np.testing.assert_allclose(modellib.log2_graph(np.array([1., 8.])), [0, 3], atol=1e-6)
    np.testing.assert_allclose(modellib.smooth_l1_loss(np.zeros(3), np.array([0.5, -2, 1])),
                               [0.125, 1.5, 0.5])
    meta = utils.compose_image_meta(7, (60, 80, 3), (64, 64, 3), (8, 0, 56, 64), 0.8,
                                    np.array([1, 1, 0]))[None]
    parts = modellib.parse_image_meta_graph(meta)
    for key, value in modellib.parse_image_meta(meta).items():
        np.testing.assert_allclose(np.asarray(parts[key]), value, rtol=1e-6)
    stacked = utils.batch_slice([boxes[:2], deltas[:2]], lambda b, d: b + d, 2)
    np.testing.assert_allclose(stacked, boxes[:2] + deltas[:2])
    a, b = utils.batch_slice(boxes[:3], lambda x: (x * 2, x[:2]), 3)
    assert tuple(a.shape) == (3, 4) and tuple(b.shape) == (3, 2)


def test_build_rpn_targets_with_matterports_signature():
    import colabrcnn.model as modellib
    from colabrcnn import Config, utils

    config = Config(NAME="t", NUM_CLASSES=2, IMAGE_MIN_DIM=64, IMAGE_MAX_DIM=64,
                    RPN_ANCHOR_SCALES=(8, 16, 32, 64, 128), RPN_TRAIN_ANCHORS_PER_IMAGE=64)
    anchors = utils.get_anchors(config)
    gt_boxes = np.array([[10, 10, 30, 40], [35, 5, 60, 30]], np.int32)
    gt_class_ids = np.array([1, 1], np.int32)
    match, bbox = modellib.build_rpn_targets((64, 64, 3), anchors, gt_class_ids, gt_boxes,
                                             config)
    assert match.shape == (anchors.shape[0],) and match.dtype == np.int32
    assert bbox.shape == (64, 4)
    positives = np.where(match == 1)[0]
    ious = utils.compute_overlaps(anchors[positives], gt_boxes).max(1)
    # Every positive is the best anchor of a box or has IoU >= 0.7 (matterport's rule).
    best = utils.compute_overlaps(anchors, gt_boxes).max(0)
    assert all(iou >= 0.7 or np.isclose(iou, best).any() for iou in ious)
    assert np.sum(match == -1) + len(positives) == 64
    refined = utils.apply_box_deltas(anchors[positives],
                                     bbox[:len(positives)] * config.RPN_BBOX_STD_DEV)
    assert utils.compute_overlaps(refined, gt_boxes).max(1).min() > 0.99


# --------------------------------------------------------------- model-level names
def _layer_weights(keras_model, name):
    from matterport_fixtures import find_layer
    return [np.array(w) for w in find_layer(keras_model, name).get_weights()]


def test_keras_model_weight_files_are_by_name_whatever_the_suffix(tmp_path):
    """keras_model.save_weights('x.h5') writes matterport's by-name layout (the file
    MaskRCNN.save_weights writes); '.weights.h5' too; both load by name into the other
    mode's model. A Keras 3 positional '.weights.h5' loads into the graph that wrote it."""
    import h5py
    import keras
    from tiny_model import tiny_model

    train = tiny_model(tmp_path, seed=1, mode="training", IMAGES_PER_GPU=1)
    infer = tiny_model(tmp_path, seed=2, IMAGES_PER_GPU=1)
    want = _layer_weights(train.keras_model, "mrcnn_class_logits")
    assert not np.array_equal(want[0], _layer_weights(infer.keras_model,
                                                      "mrcnn_class_logits")[0])
    for name in ("x.h5", "x.weights.h5"):
        path = str(tmp_path / name)
        train.keras_model.save_weights(path)
        with h5py.File(path, "r") as f:
            names = [n.decode() if isinstance(n, bytes) else n for n in f.attrs["layer_names"]]
        assert "conv1" in names and "mrcnn_class_logits" in names and "rpn_model" in names
        fresh = tiny_model(tmp_path, seed=3, IMAGES_PER_GPU=1)
        fresh.load_weights(path, by_name=True)
        for got, w in zip(_layer_weights(fresh.keras_model, "mrcnn_class_logits"), want):
            np.testing.assert_array_equal(got, w)
        # ... and through the Keras model itself, by name.
        fresh = tiny_model(tmp_path, seed=4, IMAGES_PER_GPU=1)
        fresh.keras_model.load_weights(path)
        np.testing.assert_array_equal(
            _layer_weights(fresh.keras_model, "mrcnn_class_logits")[0], want[0])
    train.save_weights(str(tmp_path / "ours.h5"))
    with h5py.File(str(tmp_path / "ours.h5"), "r") as a, \
            h5py.File(str(tmp_path / "x.h5"), "r") as b:
        assert list(a.attrs["layer_names"]) == list(b.attrs["layer_names"])

    # A positional Keras 3 file (keras.Model's own writer), from the training graph.
    positional = str(tmp_path / "pos.weights.h5")
    keras.Model.save_weights(train.keras_model, positional)
    fresh = tiny_model(tmp_path, seed=5, IMAGES_PER_GPU=1)
    fresh.load_weights(positional, by_name=True)
    np.testing.assert_array_equal(
        _layer_weights(fresh.keras_model, "mrcnn_class_logits")[0], want[0])
    from colabrcnn.errors import WeightsError
    with pytest.raises(WeightsError, match="exclude"):
        fresh.load_weights(positional, by_name=True, exclude=["mrcnn_mask"])


def test_detect_molded_build_and_data_generator(tmp_path, capsys):
    import colabrcnn.model as modellib
    from colabrcnn.data import shapes
    from tiny_model import tiny_model

    model = tiny_model(tmp_path, IMAGES_PER_GPU=1)
    config = model.config
    dataset = shapes(3, size=64, seed=0)
    image, image_meta, class_ids, bbox, mask = modellib.load_image_gt(dataset, config, 0)
    assert mask.shape[:2] == (64, 64)                   # full size by default
    molded = np.expand_dims(modellib.mold_image(image, config), 0)
    r = model.detect_molded(molded, np.expand_dims(image_meta, 0), verbose=1)[0]
    k = len(r["class_ids"])
    assert r["rois"].shape == (k, 4) and r["masks"].shape == (64, 64, k)
    # Same network, same image: detect() on the raw image agrees (no resizing at 64).
    r2 = model.detect([image])[0]
    np.testing.assert_array_equal(r["rois"], r2["rois"])
    assert "molded_images" in capsys.readouterr().out

    keras_model = model.build("inference", config.copy(DETECTION_MAX_INSTANCES=4))
    assert keras_model is model.keras_model
    assert model.keras_model.get_layer("mrcnn_detection").output.shape[1] == 4

    gen = modellib.data_generator(dataset, config, shuffle=True, batch_size=2)
    inputs, outputs = next(gen)
    gen.close()
    assert outputs == [] and len(inputs) == 7
    images, metas, rpn_match, rpn_bbox, gt_class_ids, gt_boxes, gt_masks = inputs
    anchors = model.get_anchors(config.IMAGE_SHAPE)
    assert images.shape == (2, 64, 64, 3) and images.dtype == np.float32
    assert metas.shape == (2, config.IMAGE_META_SIZE)
    assert rpn_match.shape == (2, anchors.shape[0], 1)
    assert rpn_bbox.shape == (2, config.RPN_TRAIN_ANCHORS_PER_IMAGE, 4)
    assert gt_class_ids.shape == (2, config.MAX_GT_INSTANCES)
    assert gt_boxes.shape == (2, config.MAX_GT_INSTANCES, 4)
    assert gt_masks.shape == (2,) + tuple(config.MINI_MASK_SHAPE) + (config.MAX_GT_INSTANCES,)
    assert gt_masks.dtype == bool
    with pytest.raises(Exception, match="random ROIs"):
        next(modellib.data_generator(dataset, config, random_rois=200))


def test_resnet_and_rpn_builders_make_matterports_layers():
    import keras
    import colabrcnn.model as modellib

    x = keras.Input((64, 64, 3))
    c1, c2, c3, c4, c5 = modellib.resnet_graph(x, "resnet50", stage5=False, train_bn=False)
    assert c5 is None and tuple(c4.shape) == (None, 4, 4, 1024)
    y = keras.Input((16, 16, 256))
    out = modellib.identity_block(y, 3, [64, 64, 256], stage=9, block="z")
    out = modellib.conv_block(out, 3, [64, 64, 256], stage=9, block="y")
    model = keras.Model(y, out)
    names = {layer.name for layer in model.layers}
    assert {"res9z_branch2a", "bn9z_branch2c", "res9y_branch1", "res9y_out"} <= names
    assert tuple(out.shape) == (None, 8, 8, 256)
    rpn = modellib.build_rpn_model(1, 3, 256)             # anchor_stride, anchors/loc, depth
    assert rpn.name == "rpn_model" and rpn.get_layer("rpn_class_raw").filters == 6
    logits, probs, bbox = modellib.rpn_graph(y, 3, 1)
    assert tuple(logits.shape) == (None, 16 * 16 * 3, 2) and tuple(bbox.shape)[-1] == 4
