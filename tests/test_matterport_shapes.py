"""matterport's shapes notebook (samples/shapes/train_shapes.ipynb), transcribed with only
its imports changed (``mrcnn`` -> ``colabrcnn``, NumPy 2's ``np.bool`` -> ``bool``), on
tiny CPU settings; then the inspection calls of its inspect_model / inspect_weights
notebooks on the trained model. Each call must work and give matterport's shapes and
dtypes.

Not in the notebook: the tiny settings in the Config classes (marked), a stand-in for
the COCO weights download (``weights.fetch`` is pointed at a local file), and the
asserts.
"""
import os
import random

import numpy as np
import pytest

from matterport_fixtures import coco_weights, find_layer  # noqa: F401 (a fixture)


@pytest.fixture
def offline_coco(coco_weights, monkeypatch):  # noqa: F811
    """``utils.download_trained_weights`` fetches from the weights registry: serve the
    stand-in file instead of the network."""
    from colabrcnn import weights
    path, _ = coco_weights
    monkeypatch.setattr(weights, "fetch", lambda name, *a, **k: path)
    return coco_weights


def test_shapes_notebook(tmp_path, offline_coco, capsys):
    import keras
    keras.utils.set_random_seed(0)
    random.seed(0)
    np.random.seed(0)
    coco_path, coco_conv1 = offline_coco

    # ---------------------------------------------------------------- first cell
    import math
    import cv2
    import matplotlib.pyplot as plt

    from colabrcnn.config import Config
    from colabrcnn import utils
    import colabrcnn.model as modellib
    from colabrcnn import visualize
    from colabrcnn.model import log

    ROOT_DIR = str(tmp_path)
    MODEL_DIR = os.path.join(ROOT_DIR, "logs")
    COCO_MODEL_PATH = os.path.join(ROOT_DIR, "mask_rcnn_coco.h5")
    if not os.path.exists(COCO_MODEL_PATH):
        utils.download_trained_weights(COCO_MODEL_PATH)
    assert os.path.getsize(COCO_MODEL_PATH) == os.path.getsize(coco_path)

    # ------------------------------------------------------------ configurations
    class ShapesConfig(Config):
        NAME = "shapes"
        GPU_COUNT = 1
        IMAGES_PER_GPU = 2                      # tiny (notebook: 8)
        NUM_CLASSES = 1 + 3
        IMAGE_MIN_DIM = 128
        IMAGE_MAX_DIM = 128
        RPN_ANCHOR_SCALES = (8, 16, 32, 64, 128)
        TRAIN_ROIS_PER_IMAGE = 32
        STEPS_PER_EPOCH = 2                     # tiny (notebook: 100)
        VALIDATION_STEPS = 1                    # tiny (notebook: 5)
        # --- tiny CPU settings (not in the notebook) ---
        BACKBONE = "resnet18"
        TOP_DOWN_PYRAMID_SIZE = 32
        FPN_CLASSIF_FC_LAYERS_SIZE = 64
        PRE_NMS_LIMIT = 256
        POST_NMS_ROIS_TRAINING = 64
        POST_NMS_ROIS_INFERENCE = 32
        RPN_TRAIN_ANCHORS_PER_IMAGE = 32
        DETECTION_MAX_INSTANCES = 8
        MAX_GT_INSTANCES = 8
        CHECKPOINT_EVERY_MINUTES = None

    config = ShapesConfig()
    config.display()
    assert "IMAGES_PER_GPU" in capsys.readouterr().out
    assert config.BATCH_SIZE == 2 and list(config.IMAGE_SHAPE) == [128, 128, 3]

    def get_ax(rows=1, cols=1, size=8):
        _, ax = plt.subplots(rows, cols, figsize=(size * cols, size * rows))
        return ax

    # ------------------------------------------------------------------- dataset
    class ShapesDataset(utils.Dataset):
        def load_shapes(self, count, height, width):
            self.add_class("shapes", 1, "square")
            self.add_class("shapes", 2, "circle")
            self.add_class("shapes", 3, "triangle")
            for i in range(count):
                bg_color, shapes = self.random_image(height, width)
                self.add_image("shapes", image_id=i, path=None, width=width,
                               height=height, bg_color=bg_color, shapes=shapes)

        def load_image(self, image_id):
            info = self.image_info[image_id]
            bg_color = np.array(info['bg_color']).reshape([1, 1, 3])
            image = np.ones([info['height'], info['width'], 3], dtype=np.uint8)
            image = image * bg_color.astype(np.uint8)
            for shape, color, dims in info['shapes']:
                image = self.draw_shape(image, shape, dims, color)
            return image

        def image_reference(self, image_id):
            info = self.image_info[image_id]
            if info["source"] == "shapes":
                return info["shapes"]
            else:
                super(self.__class__).image_reference(self, image_id)

        def load_mask(self, image_id):
            info = self.image_info[image_id]
            shapes = info['shapes']
            count = len(shapes)
            mask = np.zeros([info['height'], info['width'], count], dtype=np.uint8)
            for i, (shape, _, dims) in enumerate(info['shapes']):
                mask[:, :, i:i + 1] = self.draw_shape(mask[:, :, i:i + 1].copy(),
                                                      shape, dims, 1)
            # Handle occlusions
            occlusion = np.logical_not(mask[:, :, -1]).astype(np.uint8)
            for i in range(count - 2, -1, -1):
                mask[:, :, i] = mask[:, :, i] * occlusion
                occlusion = np.logical_and(occlusion, np.logical_not(mask[:, :, i]))
            class_ids = np.array([self.class_names.index(s[0]) for s in shapes])
            return mask.astype(bool), class_ids.astype(np.int32)

        def draw_shape(self, image, shape, dims, color):
            x, y, s = dims
            if shape == 'square':
                cv2.rectangle(image, (x - s, y - s), (x + s, y + s), color, -1)
            elif shape == "circle":
                cv2.circle(image, (x, y), s, color, -1)
            elif shape == "triangle":
                points = np.array([[(x, y - s),
                                    (x - s / math.sin(math.radians(60)), y + s),
                                    (x + s / math.sin(math.radians(60)), y + s),
                                    ]], dtype=np.int32)
                cv2.fillPoly(image, points, color)
            return image

        def random_shape(self, height, width):
            shape = random.choice(["square", "circle", "triangle"])
            color = tuple([random.randint(0, 255) for _ in range(3)])
            buffer = 20
            y = random.randint(buffer, height - buffer - 1)
            x = random.randint(buffer, width - buffer - 1)
            s = random.randint(buffer, height // 4)
            return shape, color, (x, y, s)

        def random_image(self, height, width):
            bg_color = np.array([random.randint(0, 255) for _ in range(3)])
            shapes = []
            boxes = []
            N = random.randint(1, 4)
            for _ in range(N):
                shape, color, dims = self.random_shape(height, width)
                shapes.append((shape, color, dims))
                x, y, s = dims
                boxes.append([y - s, x - s, y + s, x + s])
            keep_ixs = utils.non_max_suppression(np.array(boxes), np.arange(N), 0.3)
            shapes = [s for i, s in enumerate(shapes) if i in keep_ixs]
            return bg_color, shapes

    dataset_train = ShapesDataset()
    dataset_train.load_shapes(6, config.IMAGE_SHAPE[0], config.IMAGE_SHAPE[1])
    dataset_train.prepare()
    dataset_val = ShapesDataset()
    dataset_val.load_shapes(3, config.IMAGE_SHAPE[0], config.IMAGE_SHAPE[1])
    dataset_val.prepare()
    assert dataset_train.class_names == ["BG", "square", "circle", "triangle"]
    assert list(dataset_train.image_ids) == list(range(6))

    image_ids = np.random.choice(dataset_train.image_ids, 4)
    for image_id in image_ids:
        image = dataset_train.load_image(image_id)
        mask, class_ids = dataset_train.load_mask(image_id)
        visualize.display_top_masks(image, mask, class_ids, dataset_train.class_names)
    assert image.dtype == np.uint8 and mask.dtype == bool and class_ids.dtype == np.int32

    # ------------------------------------------------------------------ training
    model = modellib.MaskRCNN(mode="training", config=config, model_dir=MODEL_DIR)
    init_with = "coco"
    if init_with == "imagenet":
        model.load_weights(model.get_imagenet_weights(), by_name=True)
    elif init_with == "coco":
        model.load_weights(COCO_MODEL_PATH, by_name=True,
                           exclude=["mrcnn_class_logits", "mrcnn_bbox_fc",
                                    "mrcnn_bbox", "mrcnn_mask"])
    elif init_with == "last":
        model.load_weights(model.find_last(), by_name=True)
    loaded = find_layer(model.keras_model, "conv1").get_weights()
    for got, want in zip(loaded, coco_conv1):
        np.testing.assert_array_equal(got, want)

    model.train(dataset_train, dataset_val, learning_rate=config.LEARNING_RATE,
                epochs=1, layers='heads')
    model.train(dataset_train, dataset_val, learning_rate=config.LEARNING_RATE / 10,
                epochs=2, layers="all")
    assert model.epoch == 2

    model_path = os.path.join(MODEL_DIR, "mask_rcnn_shapes.h5")
    model.keras_model.save_weights(model_path)
    trained = [np.array(w) for w in
               find_layer(model.keras_model, "mrcnn_class_logits").get_weights()]

    # ----------------------------------------------------------------- detection
    class InferenceConfig(ShapesConfig):
        GPU_COUNT = 1
        IMAGES_PER_GPU = 1

    inference_config = InferenceConfig()
    model = modellib.MaskRCNN(mode="inference", config=inference_config,
                              model_dir=MODEL_DIR)
    model_path = model.find_last()
    assert os.path.basename(model_path) == "mask_rcnn_shapes_0002.h5"
    model.load_weights(model_path, by_name=True)
    # The file keras_model.save_weights wrote loads by name too, with the same weights.
    model.load_weights(os.path.join(MODEL_DIR, "mask_rcnn_shapes.h5"), by_name=True)
    for got, want in zip(find_layer(model.keras_model, "mrcnn_class_logits").get_weights(),
                         trained):
        np.testing.assert_array_equal(got, want)

    image_id = random.choice(dataset_val.image_ids)
    original_image, image_meta, gt_class_id, gt_bbox, gt_mask = \
        modellib.load_image_gt(dataset_val, inference_config, image_id, use_mini_mask=False)
    log("original_image", original_image)
    log("image_meta", image_meta)
    log("gt_class_id", gt_class_id)
    log("gt_bbox", gt_bbox)
    log("gt_mask", gt_mask)
    n = len(gt_class_id)
    assert original_image.shape == (128, 128, 3) and original_image.dtype == np.uint8
    assert image_meta.shape == (12 + 4,) and image_meta.dtype.kind == "f"
    assert gt_class_id.dtype == np.int32 and n >= 1
    assert gt_bbox.shape == (n, 4) and gt_bbox.dtype == np.int32
    # Full-size masks (use_mini_mask=False), not mini-masks.
    assert gt_mask.shape == (128, 128, n) and gt_mask.dtype == bool
    np.testing.assert_array_equal(gt_bbox, utils.extract_bboxes(gt_mask))
    out = capsys.readouterr().out
    assert "original_image           shape: (128, 128, 3)" in out and "uint8" in out

    visualize.display_instances(original_image, gt_bbox, gt_mask, gt_class_id,
                                dataset_train.class_names, figsize=(8, 8))
    results = model.detect([original_image], verbose=1)
    r = results[0]
    visualize.display_instances(original_image, r['rois'], r['masks'], r['class_ids'],
                                dataset_val.class_names, r['scores'], ax=get_ax())
    k = len(r["class_ids"])
    assert r["rois"].shape == (k, 4) and r["rois"].dtype == np.int32
    assert r["class_ids"].dtype == np.int32 and r["scores"].shape == (k,)
    assert r["scores"].dtype == np.float32
    assert r["masks"].shape == (128, 128, k) and r["masks"].dtype == bool

    # ---------------------------------------------------------------- evaluation
    image_ids = np.random.choice(dataset_val.image_ids, 2)
    APs = []
    for image_id in image_ids:
        image, image_meta, gt_class_id, gt_bbox, gt_mask = \
            modellib.load_image_gt(dataset_val, inference_config, image_id,
                                   use_mini_mask=False)
        molded_images = np.expand_dims(modellib.mold_image(image, inference_config), 0)
        results = model.detect([image], verbose=0)
        r = results[0]
        AP, precisions, recalls, overlaps = \
            utils.compute_ap(gt_bbox, gt_class_id, gt_mask,
                             r["rois"], r["class_ids"], r["scores"], r['masks'])
        APs.append(AP)
    print("mAP: ", np.mean(APs))
    assert molded_images.shape == (1, 128, 128, 3) and molded_images.dtype == np.float32
    assert 0.0 <= np.mean(APs) <= 1.0
    assert overlaps.shape == (len(r["class_ids"]), len(gt_class_id))
    assert precisions.shape == recalls.shape == (len(r["class_ids"]) + 2,)

    # ---------------------------------- inspect_model / inspect_weights notebooks
    config = inference_config
    dataset = dataset_val
    AP, precisions, recalls, overlaps = utils.compute_ap(
        gt_bbox, gt_class_id, gt_mask, r['rois'], r['class_ids'], r['scores'], r['masks'])
    visualize.plot_precision_recall(AP, precisions, recalls)
    visualize.plot_overlaps(gt_class_id, r['class_ids'], r['scores'], overlaps,
                            dataset.class_names)
    visualize.display_differences(image, gt_bbox, gt_class_id, gt_mask, r['rois'],
                                  r['class_ids'], r['scores'], r['masks'],
                                  dataset.class_names, ax=get_ax(), show_box=False,
                                  iou_threshold=0.5, score_threshold=0.5)

    # RPN targets and the anchors of the model's image shape.
    target_rpn_match, target_rpn_bbox = modellib.build_rpn_targets(
        image.shape, model.anchors, gt_class_id, gt_bbox, model.config)
    log("target_rpn_match", target_rpn_match)
    log("target_rpn_bbox", target_rpn_bbox)
    assert target_rpn_match.shape == (model.anchors.shape[0],)
    assert target_rpn_bbox.shape == (config.RPN_TRAIN_ANCHORS_PER_IMAGE, 4)
    positive_anchor_ix = np.where(target_rpn_match[:] == 1)[0]
    positive_anchors = model.anchors[positive_anchor_ix]
    refined_anchors = utils.apply_box_deltas(
        positive_anchors,
        target_rpn_bbox[:positive_anchors.shape[0]] * model.config.RPN_BBOX_STD_DEV)
    visualize.draw_boxes(image, boxes=positive_anchors, refined_boxes=refined_anchors,
                         ax=get_ax())
    assert len(positive_anchor_ix) >= 1

    # Named intermediate outputs of the inference graph.
    rpn = model.run_graph([image], [
        ("rpn_class", model.keras_model.get_layer("rpn_class").output),
        ("rpn_bbox", model.keras_model.get_layer("rpn_bbox").output),
        ("proposals", model.keras_model.get_layer("ROI").output),
    ])
    num_anchors = model.anchors.shape[0]
    assert list(rpn) == ["rpn_class", "rpn_bbox", "proposals"]
    assert rpn["rpn_class"].shape == (1, num_anchors, 2)
    assert rpn["rpn_bbox"].shape == (1, num_anchors, 4)
    assert rpn["proposals"].shape == (1, config.POST_NMS_ROIS_INFERENCE, 4)
    np.testing.assert_allclose(rpn["rpn_class"].sum(-1), 1.0, rtol=1e-5)

    mrcnn = model.run_graph([image], [
        ("proposals", model.keras_model.get_layer("ROI").output),
        ("probs", model.keras_model.get_layer("mrcnn_class").output),
        ("deltas", model.keras_model.get_layer("mrcnn_bbox").output),
        ("masks", model.keras_model.get_layer("mrcnn_mask").output),
        ("detections", model.keras_model.get_layer("mrcnn_detection").output),
    ])
    R, D, C = config.POST_NMS_ROIS_INFERENCE, config.DETECTION_MAX_INSTANCES, 4
    assert mrcnn["probs"].shape == (1, R, C)
    assert mrcnn["deltas"].shape == (1, R, C, 4)
    assert mrcnn["masks"].shape == (1, D, 28, 28, C)
    assert mrcnn["detections"].shape == (1, D, 6)
    # Mask probabilities, as matterport's sigmoid mask layer gives.
    assert 0.0 <= mrcnn["masks"].min() and mrcnn["masks"].max() <= 1.0

    # Layers with weights, unwrapped; the weight table of inspect_weights.
    layers = model.get_trainable_layers()
    names = [layer.name for layer in layers]
    assert "conv1" in names and "mrcnn_class_logits" in names and "mrcnn_mask" in names
    assert all(layer.get_weights() for layer in layers)
    assert model.find_trainable_layer(layers[0]) is layers[0]
    table = visualize.display_weight_stats(model)
    assert len(table) == 1 + sum(len(layer.weights) for layer in layers)
    # ancestor: the producing layer's output upstream of a tensor, found by name.
    pillar = model.keras_model.get_layer("ROI").output
    found = model.ancestor(pillar, "rpn_class")
    assert found is model.keras_model.get_layer("rpn_class").output
    assert model.ancestor(pillar, "no_such_layer") is None
    plt.close("all")
