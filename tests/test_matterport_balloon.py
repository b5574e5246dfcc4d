"""matterport's balloon sample (samples/balloon/balloon.py), transcribed with only its
imports changed (``mrcnn`` -> ``colabrcnn``, NumPy 2's ``np.bool`` -> ``bool``), on tiny
CPU settings: the sample's own ``load_balloon`` reads a VIA 1.x ``via_region_data.json``
and rasterises with ``skimage.draw.polygon``; its command line trains from COCO weights,
then splashes an image and a video from the last checkpoint.

Not in the sample: the tiny settings (marked), a stand-in COCO weights file, the data
written here (VIA 1.x JSON, JPEG images, a short video), ``main(argv)`` wrapping the
sample's ``__main__`` block, and the asserts.
"""
import glob
import json
import os

import cv2
import numpy as np
import pytest

from matterport_fixtures import coco_weights  # noqa: F401 (a fixture)


def write_balloons(root, rng):
    """VIA 1.x projects in root/train and root/val: JPEGs with 1-2 polygon balloons
    each, plus one image without regions (the sample skips it)."""
    truth = {}
    for subset, count in (("train", 4), ("val", 2)):
        folder = os.path.join(root, subset)
        os.makedirs(folder)
        project = {}
        for i in range(count + 1):
            h, w = (72, 96) if i % 2 else (96, 80)
            image = np.full((h, w, 3), rng.integers(40, 200, 3), np.uint8)
            regions = {}
            if i < count:
                for k in range(1 + i % 2):
                    cy, cx = rng.integers(25, h - 25), rng.integers(25, w - 25)
                    ry, rx = rng.integers(10, 20, 2)
                    t = np.linspace(0, 2 * np.pi, 12, endpoint=False)
                    xs = np.round(cx + rx * np.cos(t)).astype(int).tolist()
                    ys = np.round(cy + ry * np.sin(t)).astype(int).tolist()
                    cv2.fillPoly(image, [np.stack([xs, ys], 1).astype(np.int32)],
                                 (230, 30, 30))
                    regions[str(k)] = {"shape_attributes": {"name": "polygon",
                                                            "all_points_x": xs,
                                                            "all_points_y": ys},
                                       "region_attributes": {}}
            name = f"{subset}_{i}.jpg"
            cv2.imwrite(os.path.join(folder, name), image[..., ::-1])
            size = os.path.getsize(os.path.join(folder, name))
            project[f"{name}{size}"] = {"filename": name, "size": size,
                                        "regions": regions, "file_attributes": {}}
            truth[name] = len(regions)
        with open(os.path.join(folder, "via_region_data.json"), "w") as f:
            json.dump(project, f)
    return truth


def write_video(path, frames):
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 5.0,
                             (frames[0].shape[1], frames[0].shape[0]))
    for frame in frames:
        writer.write(frame[..., ::-1])
    writer.release()


def test_balloon_sample(tmp_path, coco_weights, monkeypatch, capsys):  # noqa: F811
    import keras
    keras.utils.set_random_seed(0)
    np.random.seed(0)
    coco_path, coco_conv1 = coco_weights
    truth = write_balloons(str(tmp_path / "balloon"), np.random.default_rng(0))
    monkeypatch.chdir(tmp_path)

    # --------------------------------------------------------------- the sample
    import sys  # noqa: F401
    import datetime
    import skimage.draw

    from colabrcnn.config import Config
    from colabrcnn import model as modellib, utils

    ROOT_DIR = str(tmp_path)
    COCO_WEIGHTS_PATH = coco_path               # where the sample keeps mask_rcnn_coco.h5
    DEFAULT_LOGS_DIR = os.path.join(ROOT_DIR, "logs")

    class BalloonConfig(Config):
        NAME = "balloon"
        IMAGES_PER_GPU = 2
        NUM_CLASSES = 1 + 1
        STEPS_PER_EPOCH = 2                     # tiny (sample: 100)
        DETECTION_MIN_CONFIDENCE = 0.9
        # --- tiny CPU settings (not in the sample) ---
        VALIDATION_STEPS = 1
        IMAGE_MIN_DIM = 64
        IMAGE_MAX_DIM = 64
        RPN_ANCHOR_SCALES = (8, 16, 32, 64, 128)
        BACKBONE = "resnet18"
        TOP_DOWN_PYRAMID_SIZE = 32
        FPN_CLASSIF_FC_LAYERS_SIZE = 64
        PRE_NMS_LIMIT = 256
        POST_NMS_ROIS_TRAINING = 64
        POST_NMS_ROIS_INFERENCE = 32
        TRAIN_ROIS_PER_IMAGE = 16
        RPN_TRAIN_ANCHORS_PER_IMAGE = 32
        MINI_MASK_SHAPE = (14, 14)
        DETECTION_MAX_INSTANCES = 8
        MAX_GT_INSTANCES = 8
        CHECKPOINT_EVERY_MINUTES = None

    class BalloonDataset(utils.Dataset):

        def load_balloon(self, dataset_dir, subset):
            self.add_class("balloon", 1, "balloon")
            assert subset in ["train", "val"]
            dataset_dir = os.path.join(dataset_dir, subset)
            annotations = json.load(open(os.path.join(dataset_dir,
                                                      "via_region_data.json")))
            annotations = list(annotations.values())
            annotations = [a for a in annotations if a['regions']]
            for a in annotations:
                polygons = [r['shape_attributes'] for r in a['regions'].values()]
                image_path = os.path.join(dataset_dir, a['filename'])
                image = skimage.io.imread(image_path)
                height, width = image.shape[:2]
                self.add_image(
                    "balloon",
                    image_id=a['filename'],
                    path=image_path,
                    width=width, height=height,
                    polygons=polygons)

        def load_mask(self, image_id):
            image_info = self.image_info[image_id]
            if image_info["source"] != "balloon":
                return super(self.__class__, self).load_mask(image_id)
            info = self.image_info[image_id]
            mask = np.zeros([info["height"], info["width"], len(info["polygons"])],
                            dtype=np.uint8)
            for i, p in enumerate(info["polygons"]):
                rr, cc = skimage.draw.polygon(p['all_points_y'], p['all_points_x'])
                mask[rr, cc, i] = 1
            return mask.astype(bool), np.ones([mask.shape[-1]], dtype=np.int32)

        def image_reference(self, image_id):
            info = self.image_info[image_id]
            if info["source"] == "balloon":
                return info["path"]
            else:
                super(self.__class__, self).image_reference(image_id)

    def train(model):
        dataset_train = BalloonDataset()
        dataset_train.load_balloon(args.dataset, "train")
        dataset_train.prepare()
        dataset_val = BalloonDataset()
        dataset_val.load_balloon(args.dataset, "val")
        dataset_val.prepare()
        print("Training network heads")
        model.train(dataset_train, dataset_val,
                    learning_rate=config.LEARNING_RATE,
                    epochs=1,                   # tiny (sample: 30)
                    layers='heads')

    def color_splash(image, mask):
        gray = skimage.color.gray2rgb(skimage.color.rgb2gray(image)) * 255
        if mask.shape[-1] > 0:
            mask = (np.sum(mask, -1, keepdims=True) >= 1)
            splash = np.where(mask, image, gray).astype(np.uint8)
        else:
            splash = gray.astype(np.uint8)
        return splash

    def detect_and_color_splash(model, image_path=None, video_path=None):
        assert image_path or video_path
        if image_path:
            print("Running on {}".format(args.image))
            image = skimage.io.imread(args.image)
            r = model.detect([image], verbose=1)[0]
            splash = color_splash(image, r['masks'])
            file_name = "splash_{:%Y%m%dT%H%M%S}.png".format(datetime.datetime.now())
            skimage.io.imsave(file_name, splash)
        elif video_path:
            vcapture = cv2.VideoCapture(video_path)
            width = int(vcapture.get(cv2.CAP_PROP_FRAME_WIDTH))
            height = int(vcapture.get(cv2.CAP_PROP_FRAME_HEIGHT))
            fps = vcapture.get(cv2.CAP_PROP_FPS)
            file_name = "splash_{:%Y%m%dT%H%M%S}.avi".format(datetime.datetime.now())
            vwriter = cv2.VideoWriter(file_name,
                                      cv2.VideoWriter_fourcc(*'MJPG'),
                                      fps, (width, height))
            count = 0
            success = True
            while success:
                print("frame: ", count)
                success, image = vcapture.read()
                if success:
                    image = image[..., ::-1]
                    r = model.detect([image], verbose=0)[0]
                    splash = color_splash(image, r['masks'])
                    splash = splash[..., ::-1]
                    vwriter.write(splash)
                    count += 1
            vwriter.release()
        print("Saved to ", file_name)

    def main(argv):
        # The sample's ``if __name__ == '__main__':`` block, with argv passed in.
        nonlocal args, config
        import argparse
        parser = argparse.ArgumentParser(
            description='Train Mask R-CNN to detect balloons.')
        parser.add_argument("command", metavar="<command>", help="'train' or 'splash'")
        parser.add_argument('--dataset', required=False)
        parser.add_argument('--weights', required=True)
        parser.add_argument('--logs', required=False, default=DEFAULT_LOGS_DIR)
        parser.add_argument('--image', required=False)
        parser.add_argument('--video', required=False)
        args = parser.parse_args(argv)
        if args.command == "train":
            assert args.dataset, "Argument --dataset is required for training"
        elif args.command == "splash":
            assert args.image or args.video, \
                "Provide --image or --video to apply color splash"
        if args.command == "train":
            config = BalloonConfig()
        else:
            class InferenceConfig(BalloonConfig):
                GPU_COUNT = 1
                IMAGES_PER_GPU = 1
            config = InferenceConfig()
        config.display()
        if args.command == "train":
            model = modellib.MaskRCNN(mode="training", config=config,
                                      model_dir=args.logs)
        else:
            model = modellib.MaskRCNN(mode="inference", config=config,
                                      model_dir=args.logs)
        if args.weights.lower() == "coco":
            weights_path = COCO_WEIGHTS_PATH
            if not os.path.exists(weights_path):
                utils.download_trained_weights(weights_path)
        elif args.weights.lower() == "last":
            weights_path = model.find_last()
        elif args.weights.lower() == "imagenet":
            weights_path = model.get_imagenet_weights()
        else:
            weights_path = args.weights
        print("Loading weights ", weights_path)
        if args.weights.lower() == "coco":
            model.load_weights(weights_path, by_name=True, exclude=[
                "mrcnn_class_logits", "mrcnn_bbox_fc",
                "mrcnn_bbox", "mrcnn_mask"])
        else:
            model.load_weights(weights_path, by_name=True)
        if args.command == "train":
            train(model)
        elif args.command == "splash":
            detect_and_color_splash(model, image_path=args.image,
                                    video_path=args.video)
        return model

    args = config = None
    dataset = str(tmp_path / "balloon")

    # ------------------------------------------------------------ the dataset
    ds = BalloonDataset()
    ds.load_balloon(dataset, "train")
    ds.prepare()
    assert ds.class_names == ["BG", "balloon"] and ds.num_images == 4   # 1 skipped
    for image_id in ds.image_ids:
        info = ds.image_info[image_id]
        mask, class_ids = ds.load_mask(image_id)
        image = ds.load_image(image_id)
        n = truth[info["id"]]
        assert image.shape == (info["height"], info["width"], 3)
        assert image.dtype == np.uint8
        assert mask.shape == image.shape[:2] + (n,) and mask.dtype == bool
        assert class_ids.dtype == np.int32 and list(class_ids) == [1] * n
        assert ds.image_reference(image_id) == info["path"]
    # Our own VIA reader draws polygons as this sample does (skimage.draw.polygon):
    # the same pixels, boundary included.
    from colabrcnn import data
    with pytest.warns(UserWarning, match="no class attribute"):   # balloon has none
        ours = data.load(os.path.join(dataset, "train", "via_region_data.json"))
    by_path = {os.path.basename(ours.image_info[i]["path"]): i for i in ours.image_ids}
    for image_id in ds.image_ids:
        mine, _ = ours.load_mask(by_path[ds.image_info[image_id]["id"]])
        theirs = ds.load_mask(image_id)[0]
        np.testing.assert_array_equal(mine, theirs)

    # ------------------------------------------------------ train from COCO
    model = main(["train", f"--dataset={dataset}", "--weights=coco"])
    assert model.epoch == 1
    checkpoints = glob.glob(os.path.join(DEFAULT_LOGS_DIR, "balloon*", "mask_rcnn_*.h5"))
    assert "mask_rcnn_balloon_0001.h5" in [os.path.basename(p) for p in checkpoints]
    assert "Training network heads" in capsys.readouterr().out

    # ------------------------------------------- splash an image and a video
    image_path = os.path.join(dataset, "val", "val_0.jpg")
    model = main(["splash", "--weights=last", f"--image={image_path}"])
    assert model.config.BATCH_SIZE == 1 and model.epoch == 1
    splashes = glob.glob(str(tmp_path / "splash_*.png"))
    assert len(splashes) == 1
    splash = skimage.io.imread(splashes[0])
    assert splash.shape == skimage.io.imread(image_path).shape and splash.dtype == np.uint8
    r = model.detect([skimage.io.imread(image_path)])[0]
    k = len(r["class_ids"])
    assert r["masks"].shape == splash.shape[:2] + (k,) and r["masks"].dtype == bool
    assert r["rois"].shape == (k, 4) and r["rois"].dtype == np.int32

    frames = [skimage.io.imread(os.path.join(dataset, "val", f"val_{i}.jpg"))
              for i in (0, 0, 0)]
    write_video(str(tmp_path / "clip.avi"), frames)
    main(["splash", "--weights=last", f"--video={tmp_path / 'clip.avi'}"])
    assert glob.glob(str(tmp_path / "splash_*.avi"))
    out = capsys.readouterr().out
    assert "frame:  3" in out and "Saved to " in out


@pytest.mark.parametrize("verbose", [0, 1])
def test_download_trained_weights_goes_through_the_weights_cache(tmp_path, monkeypatch,
                                                                 capsys, verbose):
    """``utils.download_trained_weights(path)`` fetches matterport's COCO file through
    ``weights.fetch`` (verified, resumable, Drive-cached) and puts it at ``path``."""
    from colabrcnn import utils, weights
    cached = tmp_path / "cache" / "mask_rcnn_coco.h5"
    cached.parent.mkdir()
    cached.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(range(200)))
    asked = []
    monkeypatch.setattr(weights, "fetch", lambda name, *a, **k: asked.append(name)
                        or str(cached))
    target = tmp_path / "here" / "mask_rcnn_coco.h5"
    utils.download_trained_weights(str(target), verbose=verbose)
    assert asked == ["coco"]
    assert target.read_bytes() == cached.read_bytes()
    out = capsys.readouterr().out
    assert ("Downloading pretrained model to " + str(target) in out) == bool(verbose)
    assert utils.COCO_MODEL_URL.endswith("/mask_rcnn_coco.h5")
