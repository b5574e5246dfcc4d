"""matterport's nucleus sample (samples/nucleus/nucleus.py), transcribed with only its
imports changed (``mrcnn`` -> ``colabrcnn``, NumPy 2's ``np.bool`` -> ``bool``), on tiny
CPU settings: a Kaggle-2018-layout folder (``<id>/images/<id>.png`` and one PNG per
nucleus in ``<id>/masks/``), training with random crops and augmentation, then the
sample's ``detect`` writing an RLE submission and pictures with ``pad64`` inference.

Not in the sample: the tiny settings (marked), the data written here, VAL_IMAGE_IDS
naming that data, a stand-in COCO weights file, ``main(argv)`` wrapping the sample's
``__main__`` block, the asserts, and one change beyond imports: imgaug (which does not
import under NumPy 2) is replaced by the same augmentation written with albumentations.
"""
import glob
import os

import numpy as np
import skimage.io

from matterport_fixtures import coco_weights  # noqa: F401 (a fixture)


def write_nuclei(root, ids, rng, size=64):
    """Kaggle DSB 2018 layout: RGBA image PNGs, one 0/255 PNG mask per nucleus."""
    truth = {}
    for image_id in ids:
        os.makedirs(os.path.join(root, image_id, "images"))
        os.makedirs(os.path.join(root, image_id, "masks"))
        image = np.zeros((size, size, 4), np.uint8)
        image[..., 3] = 255
        image[..., :3] = rng.integers(0, 30, (size, size, 1))
        yy, xx = np.mgrid[:size, :size]
        count = int(rng.integers(2, 4))
        for k in range(count):
            cy, cx = rng.integers(10, size - 10, 2)
            r = int(rng.integers(4, 8))
            disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            image[disk, :3] = 200
            skimage.io.imsave(os.path.join(root, image_id, "masks", f"m{k}.png"),
                              (disk * 255).astype(np.uint8), check_contrast=False)
        skimage.io.imsave(os.path.join(root, image_id, "images", f"{image_id}.png"), image,
                          check_contrast=False)
        truth[image_id] = count
    return truth


def test_nucleus_sample(tmp_path, coco_weights, monkeypatch):  # noqa: F811
    import keras
    keras.utils.set_random_seed(0)
    np.random.seed(0)
    coco_path, _ = coco_weights
    rng = np.random.default_rng(0)
    train_ids = [f"{i:02d}" + "a" * 62 for i in range(4)]
    val_ids = [f"{i:02d}" + "b" * 62 for i in range(2)]
    truth = write_nuclei(str(tmp_path / "data" / "stage1_train"), train_ids + val_ids, rng)
    truth.update(write_nuclei(str(tmp_path / "data" / "stage1_test"), ["cc" * 32], rng))
    monkeypatch.chdir(tmp_path)

    # --------------------------------------------------------------- the sample
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    import sys  # noqa: F401
    import json  # noqa: F401
    import datetime
    # was: from imgaug import augmenters as iaa (imgaug does not import under NumPy 2)
    import albumentations as A

    from colabrcnn.config import Config
    from colabrcnn import utils
    from colabrcnn import model as modellib
    from colabrcnn import visualize

    ROOT_DIR = str(tmp_path)
    COCO_WEIGHTS_PATH = coco_path               # where the sample keeps mask_rcnn_coco.h5
    DEFAULT_LOGS_DIR = os.path.join(ROOT_DIR, "logs")
    RESULTS_DIR = os.path.join(ROOT_DIR, "results/nucleus/")
    VAL_IMAGE_IDS = val_ids                     # the sample lists Kaggle ids here

    class NucleusConfig(Config):
        NAME = "nucleus"
        IMAGES_PER_GPU = 2                      # tiny (sample: 6)
        NUM_CLASSES = 1 + 1
        STEPS_PER_EPOCH = 2                     # tiny (sample: (657 - 25) // 6)
        VALIDATION_STEPS = max(1, len(VAL_IMAGE_IDS) // IMAGES_PER_GPU)
        DETECTION_MIN_CONFIDENCE = 0
        BACKBONE = "resnet18"                   # tiny (sample: resnet50)
        IMAGE_RESIZE_MODE = "crop"
        IMAGE_MIN_DIM = 64                      # tiny (sample: 512)
        IMAGE_MAX_DIM = 128                     # tiny (sample: 512)
        IMAGE_MIN_SCALE = 2.0
        RPN_ANCHOR_SCALES = (8, 16, 32, 64, 128)
        POST_NMS_ROIS_TRAINING = 64             # tiny (sample: 1000)
        POST_NMS_ROIS_INFERENCE = 32            # tiny (sample: 2000)
        RPN_NMS_THRESHOLD = 0.9
        RPN_TRAIN_ANCHORS_PER_IMAGE = 32        # tiny (sample: 64)
        MEAN_PIXEL = np.array([43.53, 39.56, 48.22])
        USE_MINI_MASK = True
        MINI_MASK_SHAPE = (14, 14)              # tiny (sample: 56, 56)
        TRAIN_ROIS_PER_IMAGE = 16               # tiny (sample: 128)
        MAX_GT_INSTANCES = 8                    # tiny (sample: 200)
        DETECTION_MAX_INSTANCES = 8             # tiny (sample: 400)
        # --- tiny CPU settings (not in the sample) ---
        TOP_DOWN_PYRAMID_SIZE = 32
        FPN_CLASSIF_FC_LAYERS_SIZE = 64
        PRE_NMS_LIMIT = 256
        CHECKPOINT_EVERY_MINUTES = None

    class NucleusInferenceConfig(NucleusConfig):
        GPU_COUNT = 1
        IMAGES_PER_GPU = 1
        IMAGE_RESIZE_MODE = "pad64"
        RPN_NMS_THRESHOLD = 0.7

    class NucleusDataset(utils.Dataset):

        def load_nucleus(self, dataset_dir, subset):
            self.add_class("nucleus", 1, "nucleus")
            assert subset in ["train", "val", "stage1_train", "stage1_test", "stage2_test"]
            subset_dir = "stage1_train" if subset in ["train", "val"] else subset
            dataset_dir = os.path.join(dataset_dir, subset_dir)
            if subset == "val":
                image_ids = VAL_IMAGE_IDS
            else:
                image_ids = next(os.walk(dataset_dir))[1]
                if subset == "train":
                    image_ids = list(set(image_ids) - set(VAL_IMAGE_IDS))
            for image_id in image_ids:
                self.add_image(
                    "nucleus",
                    image_id=image_id,
                    path=os.path.join(dataset_dir, image_id,
                                      "images/{}.png".format(image_id)))

        def load_mask(self, image_id):
            info = self.image_info[image_id]
            mask_dir = os.path.join(os.path.dirname(os.path.dirname(info['path'])), "masks")
            mask = []
            for f in next(os.walk(mask_dir))[2]:
                if f.endswith(".png"):
                    m = skimage.io.imread(os.path.join(mask_dir, f)).astype(bool)
                    mask.append(m)
            mask = np.stack(mask, axis=-1)
            return mask, np.ones([mask.shape[-1]], dtype=np.int32)

        def image_reference(self, image_id):
            info = self.image_info[image_id]
            if info["source"] == "nucleus":
                return info["id"]
            else:
                super(self.__class__, self).image_reference(image_id)

    def train(model, dataset_dir, subset):
        dataset_train = NucleusDataset()
        dataset_train.load_nucleus(dataset_dir, subset)
        dataset_train.prepare()
        dataset_val = NucleusDataset()
        dataset_val.load_nucleus(dataset_dir, "val")
        dataset_val.prepare()
        # The sample's imgaug pipeline: iaa.SomeOf((0, 2), [Fliplr(0.5), Flipud(0.5),
        # OneOf([Affine(rotate=90/180/270)]), Multiply((0.8, 1.5)),
        # GaussianBlur(sigma=(0.0, 5.0))]), in albumentations.
        augmentation = A.SomeOf([
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
            A.OneOf([A.Affine(rotate=90, p=1),
                     A.Affine(rotate=180, p=1),
                     A.Affine(rotate=270, p=1)]),
            A.MultiplicativeNoise(multiplier=(0.8, 1.5), p=1),
            A.GaussianBlur(sigma_limit=(0.1, 5.0), p=1),
        ], n=2)
        print("Train network heads")
        model.train(dataset_train, dataset_val,
                    learning_rate=config.LEARNING_RATE,
                    epochs=1,                   # tiny (sample: 20)
                    augmentation=augmentation,
                    layers='heads')
        print("Train all layers")
        model.train(dataset_train, dataset_val,
                    learning_rate=config.LEARNING_RATE,
                    epochs=2,                   # tiny (sample: 40)
                    augmentation=augmentation,
                    layers='all')

    def rle_encode(mask):
        assert mask.ndim == 2, "Mask must be of shape [Height, Width]"
        m = mask.T.flatten()
        g = np.diff(np.concatenate([[0], m, [0]]), n=1)
        rle = np.where(g != 0)[0].reshape([-1, 2]) + 1
        rle[:, 1] = rle[:, 1] - rle[:, 0]
        return " ".join(map(str, rle.flatten()))

    def rle_decode(rle, shape):
        rle = list(map(int, rle.split()))
        rle = np.array(rle, dtype=np.int32).reshape([-1, 2])
        rle[:, 1] += rle[:, 0]
        rle -= 1
        mask = np.zeros([shape[0] * shape[1]], bool)
        for s, e in rle:
            assert 0 <= s < mask.shape[0]
            assert 1 <= e <= mask.shape[0], "shape: {}  s {}  e {}".format(shape, s, e)
            mask[s:e] = 1
        mask = mask.reshape([shape[1], shape[0]]).T
        return mask

    def mask_to_rle(image_id, mask, scores):
        assert mask.ndim == 3, "Mask must be [H, W, count]"
        if mask.shape[-1] == 0:
            return "{},".format(image_id)
        order = np.argsort(scores)[::-1] + 1
        mask = np.max(mask * np.reshape(order, [1, 1, -1]), -1)
        lines = []
        for o in order:
            m = np.where(mask == o, 1, 0)
            if m.sum() == 0.0:
                continue
            rle = rle_encode(m)
            lines.append("{}, {}".format(image_id, rle))
        return "\n".join(lines)

    def detect(model, dataset_dir, subset):
        print("Running on {}".format(dataset_dir))
        if not os.path.exists(RESULTS_DIR):
            os.makedirs(RESULTS_DIR)
        submit_dir = "submit_{:%Y%m%dT%H%M%S}".format(datetime.datetime.now())
        submit_dir = os.path.join(RESULTS_DIR, submit_dir)
        os.makedirs(submit_dir)
        dataset = NucleusDataset()
        dataset.load_nucleus(dataset_dir, subset)
        dataset.prepare()
        submission = []
        for image_id in dataset.image_ids:
            image = dataset.load_image(image_id)
            r = model.detect([image], verbose=0)[0]
            source_id = dataset.image_info[image_id]["id"]
            rle = mask_to_rle(source_id, r["masks"], r["scores"])
            submission.append(rle)
            visualize.display_instances(
                image, r['rois'], r['masks'], r['class_ids'],
                dataset.class_names, r['scores'],
                show_bbox=False, show_mask=False,
                title="Predictions")
            plt.savefig("{}/{}.png".format(submit_dir, dataset.image_info[image_id]["id"]))
        submission = "ImageId,EncodedPixels\n" + "\n".join(submission)
        file_path = os.path.join(submit_dir, "submit.csv")
        with open(file_path, "w") as f:
            f.write(submission)
        print("Saved to ", submit_dir)

    def main(argv):
        # The sample's ``if __name__ == '__main__':`` block, with argv passed in.
        nonlocal config
        import argparse
        parser = argparse.ArgumentParser(
            description='Mask R-CNN for nuclei counting and segmentation')
        parser.add_argument("command", metavar="<command>", help="'train' or 'detect'")
        parser.add_argument('--dataset', required=False)
        parser.add_argument('--weights', required=True)
        parser.add_argument('--logs', required=False, default=DEFAULT_LOGS_DIR)
        parser.add_argument('--subset', required=False)
        args = parser.parse_args(argv)
        if args.command == "train":
            assert args.dataset, "Argument --dataset is required for training"
        elif args.command == "detect":
            assert args.subset, "Provide --subset to run prediction on"
        if args.command == "train":
            config = NucleusConfig()
        else:
            config = NucleusInferenceConfig()
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
            train(model, args.dataset, args.subset)
        elif args.command == "detect":
            detect(model, args.dataset, args.subset)
        return model

    config = None
    dataset_dir = str(tmp_path / "data")

    # ------------------------------------------------------------- the dataset
    ds = NucleusDataset()
    ds.load_nucleus(dataset_dir, "train")
    ds.prepare()
    assert sorted(ds.image_info[i]["id"] for i in ds.image_ids) == sorted(train_ids)
    for image_id in ds.image_ids:
        image = ds.load_image(image_id)
        mask, class_ids = ds.load_mask(image_id)
        n = truth[ds.image_reference(image_id)]
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8   # RGBA -> RGB
        assert mask.shape == (64, 64, n) and mask.dtype == bool
        assert class_ids.dtype == np.int32 and list(class_ids) == [1] * n
    # A random crop of IMAGE_MIN_DIM after scaling by IMAGE_MIN_SCALE, full masks.
    train_config = NucleusConfig()
    image, image_meta, class_ids, bbox, mask = modellib.load_image_gt(
        ds, train_config, ds.image_ids[0], use_mini_mask=False)
    assert image.shape == (64, 64, 3) and mask.shape[:2] == (64, 64)
    assert image_meta[4:7].tolist() == [64, 64, 3] and image_meta[11] == 2.0
    image, image_meta, class_ids, bbox, mask = modellib.load_image_gt(
        ds, train_config, ds.image_ids[0], use_mini_mask=True)
    assert mask.shape == (14, 14, len(class_ids)) and mask.dtype == bool

    # ---------------------------------------------------------------- train
    model = main(["train", f"--dataset={dataset_dir}", "--subset=train", "--weights=coco"])
    assert model.epoch == 2
    assert glob.glob(os.path.join(DEFAULT_LOGS_DIR, "nucleus*", "mask_rcnn_nucleus_0002.h5"))

    # ------------------------------------------------ detect -> submission
    model = main(["detect", f"--dataset={dataset_dir}", "--subset=stage1_test",
                  "--weights=last"])
    submit = glob.glob(os.path.join(RESULTS_DIR, "submit_*", "submit.csv"))
    assert len(submit) == 1
    lines = open(submit[0]).read().splitlines()
    assert lines[0] == "ImageId,EncodedPixels"
    assert all(line.startswith("cc" * 32 + ",") for line in lines[1:])
    pictures = glob.glob(os.path.join(os.path.dirname(submit[0]), "*.png"))
    assert [os.path.basename(p) for p in pictures] == ["cc" * 32 + ".png"]
    # pad64 inference: the 64 px image scaled by 2 to 128, masks at the original size.
    image = skimage.io.imread(os.path.join(dataset_dir, "stage1_test", "cc" * 32, "images",
                                           "cc" * 32 + ".png"))[..., :3]
    r = model.detect([image])[0]
    k = len(r["class_ids"])
    assert r["masks"].shape == (64, 64, k) and r["masks"].dtype == bool
    assert r["rois"].dtype == np.int32 and r["scores"].dtype == np.float32
    # RLE round trip of the sample's own encoder and decoder.
    m = np.zeros((64, 64), bool)
    m[3:9, 40:47] = True
    assert np.array_equal(rle_decode(rle_encode(m), m.shape), m)
    plt.close("all")
