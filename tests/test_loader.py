"""The training loader: shapes the model takes, caches, determinism with workers,
augmentation alignment, vanished and surplus instances, errors, and the optimised
NumPy helpers it relies on (same results as the straightforward versions)."""
import glob
import json
import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from colabrcnn import utils  # noqa: E402
from colabrcnn.data import Dataset, load  # noqa: E402
from colabrcnn.data.augment import augmentation_callable, default_augmentation  # noqa: E402
from colabrcnn.data.formats import AnnotatedDataset  # noqa: E402
from colabrcnn.data.cache import DiskCache, make_cache  # noqa: E402
from colabrcnn.data.loader import DataGenerator  # noqa: E402
from colabrcnn.data.sample import (INPUT_NAMES, SampleBuilder,  # noqa: E402
                                   build_training_sample, pack_masks)
from colabrcnn.errors import AnnotationError  # noqa: E402
from colabrcnn.model import transform  # noqa: E402
from tiny_model import tiny_config  # noqa: E402


def small_config(**overrides):
    """The shared tiny config with images scaled to 64..128 px (so the loader resizes and
    pads, not only pads) and at most 6 instances."""
    return tiny_config(128, **{"IMAGE_MIN_DIM": 64, "MAX_GT_INSTANCES": 6, **overrides})


# ------------------------------------------------------------------------- datasets
def write_jpeg_dataset(folder, count=6, seed=0):
    """Small noisy JPEGs (about 200 x 150, so the loader resizes) with polygons, as VIA."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    meta = {}
    for i in range(count):
        h, w = 150 + 10 * (i % 3), 200
        img = rng.integers(0, 255, (h, w, 3)).astype(np.uint8)
        img = cv2.GaussianBlur(img, (5, 5), 0)
        name = f"im{i}.jpg"
        cv2.imwrite(os.path.join(folder, name), img)
        regions = []
        for k in range(i % 4 + 1 if i else 0):  # image 0 has no instances
            cx, cy, r = rng.uniform(30, w - 30), rng.uniform(30, h - 30), rng.uniform(8, 25)
            t = np.linspace(0, 2 * np.pi, 12, endpoint=False)
            regions.append({"shape_attributes": {
                "name": "polygon", "all_points_x": (cx + r * np.cos(t)).round(1).tolist(),
                "all_points_y": (cy + r * np.sin(t)).round(1).tolist()},
                "region_attributes": {"class": ["a", "b", "c"][k % 3]}})
        size = os.path.getsize(os.path.join(folder, name))
        meta[f"{name}{size}"] = {"filename": name, "size": size, "regions": regions,
                                 "file_attributes": {}}
    path = os.path.join(folder, "via.json")
    with open(path, "w") as f:
        json.dump(meta, f)
    return path


class CountingDataset(AnnotatedDataset):
    """Counts image decodes (in this process)."""
    decodes = 0

    def load_image(self, image_id):
        CountingDataset.decodes += 1
        return super().load_image(image_id)


@pytest.fixture(scope="module")
def jpeg_path(tmp_path_factory):
    return write_jpeg_dataset(str(tmp_path_factory.mktemp("jpegs")))


def jpeg_dataset(path):
    ds = load(path)
    ds.__class__ = CountingDataset
    return ds


PH, PW = 96, 128  # position images: no resize at small_config's scale


def position_image():
    """Each pixel's colour says where it came from: R = 2x, G = 2y, B = 255."""
    y, x = np.mgrid[0:PH, 0:PW]
    return np.stack([x * 2, y * 2, np.full_like(x, 255)], -1).astype(np.uint8)


def decode_position(image):
    """(x, y, valid) of every pixel of an unmolded position image."""
    return image[..., 0].astype(int) // 2, image[..., 1].astype(int) // 2, image[..., 2] == 255


class PositionDataset(Dataset):
    """Position images with given instances (list of (class_id, mask)) per image."""

    def __init__(self, instances_per_image, sources=None):
        super().__init__()
        for c in range(1, 4):
            self.add_class("pos", c, f"c{c}")
            self.add_class("other", c, f"c{c}")
        for i, inst in enumerate(instances_per_image):
            self.add_image(sources[i] if sources else "pos", image_id=i, path=None,
                           width=PW, height=PH, instances=inst)
        self.prepare()

    def load_image(self, image_id):
        return position_image()

    def load_mask(self, image_id):
        inst = self.image_info[image_id]["instances"]
        if not inst:
            return np.zeros((PH, PW, 0), bool), np.zeros((0,), np.int32)
        return (np.stack([m for _, m in inst], -1),
                np.array([c for c, _ in inst], np.int32))


def rect(y1, x1, y2, x2):
    m = np.zeros((PH, PW), bool)
    m[y1:y2, x1:x2] = True
    return m


def disc(cy, cx, r):
    y, x = np.mgrid[0:PH, 0:PW]
    return (y - cy) ** 2 + (x - cx) ** 2 < r * r


def three_instances():
    return [(1, rect(10, 10, 30, 40)), (2, disc(60, 60, 15)), (3, rect(40, 110, 80, 126))]


def assert_instances_aligned(sample, config, originals):
    """Every GT mask pixel shows image content from inside its original instance, whose
    class it has; boxes are the masks' tight boxes; padding rows are empty."""
    image = utils.unmold_image(sample["input_image"], config)
    x, y, valid = decode_position(image)
    ids = sample["input_gt_class_ids"]
    n = int((ids > 0).sum())
    assert np.all(ids[n:] == 0) and np.all(sample["input_gt_boxes"][n:] == 0)
    assert not sample["input_gt_masks"][..., n:].any()
    for k in range(n):
        mask = sample["input_gt_masks"][..., k]
        assert mask.any()
        np.testing.assert_array_equal(sample["input_gt_boxes"][k],
                                      utils.extract_bboxes(mask[..., None])[0])
        ys, xs = np.nonzero(mask)
        assert valid[ys, xs].all(), "mask pixels over padding / fill"
        hits = [j for j, (c, m) in enumerate(originals) if m[y[ys, xs], x[ys, xs]].all()]
        assert hits, f"GT {k} does not come from one original instance"
        assert any(originals[j][0] == ids[k] for j in hits), "class id misaligned"
    return n


def batches_equal(a, b):
    return all(np.array_equal(a[k], b[k]) for k in INPUT_NAMES)


# ------------------------------------------------------------------------- shapes
@pytest.fixture(scope="module")
def model_inputs():
    from colabrcnn import MaskRCNN
    import tempfile
    model = MaskRCNN("training", small_config(), tempfile.mkdtemp())
    return {i.name: (tuple(i.shape[1:]), str(i.dtype)) for i in model.keras_model.inputs}


@pytest.mark.parametrize("mini", [True, False])
def test_batch_shapes_and_dtypes_match_the_model(model_inputs, jpeg_path, mini):
    config = small_config(USE_MINI_MASK=mini)
    gen = DataGenerator(jpeg_dataset(jpeg_path), config, seed=0,
                        augmentation=default_augmentation("medium", seed=0))
    batch = gen[0]
    assert list(batch) == list(INPUT_NAMES)
    for name, (shape, dtype) in model_inputs.items():
        if name == "input_gt_masks" and not mini:
            shape = tuple(config.IMAGE_SHAPE[:2]) + (config.MAX_GT_INSTANCES,)
        assert batch[name].shape == (config.BATCH_SIZE,) + shape, name
        assert str(batch[name].dtype) == dtype, name
    assert len(gen) == 3


def test_images_without_instances_are_allowed(jpeg_path):
    config = small_config()
    ds = jpeg_dataset(jpeg_path)
    assert ds.load_mask(0)[0].shape[-1] == 0
    s = build_training_sample(ds, config, 0, None, np.random.default_rng(0))
    assert not s["input_gt_class_ids"].any() and not s["input_gt_masks"].any()
    match = s["input_rpn_match"][:, 0]
    assert (match == 1).sum() == 0
    assert (match == -1).sum() == config.RPN_TRAIN_ANCHORS_PER_IMAGE


# --------------------------------------------------------------------------- caches
@pytest.mark.parametrize("kind", ["ram", "disk"])
@pytest.mark.parametrize("augment", [False, True])
def test_cache_gives_identical_batches_and_skips_decoding(jpeg_path, tmp_path, kind, augment):
    config = small_config()

    def run(cache):
        aug = default_augmentation("medium", seed=0) if augment else None
        gen = DataGenerator(jpeg_dataset(jpeg_path), config, seed=3, augmentation=aug,
                            cache=cache, cache_dir=str(tmp_path / "cache"))
        out = []
        for _ in range(2):
            out += [gen[i] for i in range(len(gen))]
            gen.on_epoch_end()
        return out, gen

    plain, _ = run(None)
    CountingDataset.decodes = 0
    cached, gen = run(kind)
    assert CountingDataset.decodes == 6  # each image decoded once, in the first epoch
    assert gen.cache_info()["hits"] == 6 and gen.cache_info()["entries"] == 6
    assert all(batches_equal(a, b) for a, b in zip(plain, cached))


def test_disk_cache_survives_a_new_generator_and_rebuilds_damaged_files(jpeg_path,
                                                                        tmp_path):
    config = small_config()
    folder = str(tmp_path / "cache")

    def epoch():
        gen = DataGenerator(jpeg_dataset(jpeg_path), config, seed=1, cache="disk",
                            cache_dir=folder, augmentation=default_augmentation("light"))
        return [gen[i] for i in range(len(gen))], gen

    CountingDataset.decodes = 0
    first, _ = epoch()
    assert CountingDataset.decodes == 6
    CountingDataset.decodes = 0
    second, _ = epoch()
    assert CountingDataset.decodes == 0, "a new DataGenerator decoded again"
    assert all(batches_equal(a, b) for a, b in zip(first, second))

    files = sorted(glob.glob(os.path.join(folder, "*.npz")))
    assert len(files) == 6
    with open(files[0], "r+b") as f:   # cut short, as by a crash mid-write
        f.truncate(os.path.getsize(files[0]) // 2)
    with open(files[1], "wb") as f:    # garbage
        f.write(b"not a cache file")
    with open(files[2], "r+b") as f:   # one flipped byte inside the image data
        f.seek(os.path.getsize(files[2]) // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0xFF]))
    CountingDataset.decodes = 0
    third, gen = epoch()
    assert CountingDataset.decodes == 3 and gen.cache_info()["rebuilt"] == 3
    assert all(batches_equal(a, b) for a, b in zip(first, third))
    assert not glob.glob(os.path.join(folder, "*.tmp"))
    CountingDataset.decodes = 0
    epoch()
    assert CountingDataset.decodes == 0  # the rebuilt files are good


def test_disk_cache_key_follows_the_annotations(jpeg_path, tmp_path):
    """Editing an image's instances gives a new cache entry, not stale masks."""
    config = small_config()
    cache = DiskCache(str(tmp_path / "c"))
    ds = jpeg_dataset(jpeg_path)
    SampleBuilder(ds, config, cache=cache).build(2, np.random.default_rng(0))
    ds.image_info[2]["instances"] = ds.image_info[2]["instances"][:1]
    CountingDataset.decodes = 0
    s = SampleBuilder(ds, config, cache=cache).build(2, np.random.default_rng(0))
    assert CountingDataset.decodes == 1 and len(cache) == 2
    assert (s["input_gt_class_ids"] > 0).sum() == 1


# ---------------------------------------------------------------------- determinism
def consume(gen, epochs=2):
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter
    adapter = PyDatasetAdapter(gen, shuffle=False)
    out = []
    for _ in range(epochs):
        adapter.on_epoch_begin()
        out += [dict(b) for b in adapter.get_numpy_iterator()]
        adapter.on_epoch_end()
    return out


@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")  # keras imports jax (unused)
@pytest.mark.parametrize("multiprocessing,cache", [(False, None), (True, None),
                                                   (True, "ram")])
def test_workers_give_the_same_batches_as_one_process(jpeg_path, multiprocessing, cache):
    config = small_config()
    aug = default_augmentation("medium", seed=5)

    def gen(**kw):
        return DataGenerator(jpeg_dataset(jpeg_path), config, seed=7, augmentation=aug,
                             steps=3, **kw)

    reference = consume(gen(workers=0))
    g = gen(workers=2, use_multiprocessing=multiprocessing, cache=cache)
    parallel = consume(g)
    if cache == "ram" and multiprocessing:
        folder = g.cache.folder
        assert len(os.listdir(folder)) == 6  # workers shared one cache folder
        g.close()
        assert not os.path.exists(folder)
    assert len(reference) == len(parallel) == 6
    assert all(batches_equal(a, b) for a, b in zip(reference, parallel))
    assert not batches_equal(reference[0], reference[3])  # epochs differ
    g.close()


# --------------------------------------------------------------------- augmentation
@pytest.mark.parametrize("aug", [
    A.Compose([A.HorizontalFlip(p=1), A.RandomRotate90(p=1)], seed=1),
    A.Compose([A.Affine(rotate=(-25, 25), scale=(0.9, 1.2), interpolation=cv2.INTER_NEAREST,
                        p=1), A.RandomBrightnessContrast(p=0)], seed=2),
    augmentation_callable(A.Compose([A.Transpose(p=1), A.VerticalFlip(p=0.5)], seed=3)),
])
@pytest.mark.parametrize("mini", [False, True])
def test_albumentations_keeps_masks_aligned(aug, mini):
    originals = three_instances()
    ds = PositionDataset([originals])
    config = small_config(USE_MINI_MASK=mini)
    builder = SampleBuilder(ds, config, aug)
    assert builder.augmenter.packed  # these pipelines take the bit-packed path
    unpacked = SampleBuilder(ds, config, aug)
    unpacked.augmenter.packed = False
    for seed in range(4):
        s = builder.build(0, np.random.default_rng(seed))
        if not mini:
            assert assert_instances_aligned(s, config, originals) >= 2
        # one mask per instance through albumentations gives the very same sample
        assert batches_equal(s, unpacked.build(0, np.random.default_rng(seed)))


def test_vanished_instances_are_removed_consistently():
    originals = three_instances()
    ds = PositionDataset([originals])
    config = small_config(USE_MINI_MASK=False)
    shift = A.Compose([A.Affine(translate_px={"x": 30, "y": 0}, interpolation=cv2.INTER_NEAREST,
                                p=1)], seed=0)  # pushes the right-hand rectangle out
    s = build_training_sample(ds, config, 0, shift, np.random.default_rng(0))
    assert assert_instances_aligned(s, config, originals) == 2
    assert list(s["input_gt_class_ids"][:2]) == [1, 2]


def test_plain_callable_and_rng_argument():
    originals = three_instances()
    ds = PositionDataset([originals])
    config = small_config(USE_MINI_MASK=False)
    seen = []

    def flip(image, masks, class_ids, rng):
        seen.append(rng.integers(1000))
        return image[:, ::-1], masks[:, ::-1], class_ids

    s = build_training_sample(ds, config, 0, flip, np.random.default_rng(0))
    assert len(seen) == 1 and assert_instances_aligned(s, config, originals) == 3
    with pytest.raises(TypeError, match="albumentations"):
        build_training_sample(ds, config, 0, "flip")


def test_no_augmentation_sources():
    inst = three_instances()
    ds = PositionDataset([inst, inst], sources=["pos", "other"])
    config = small_config()
    flip = A.Compose([A.HorizontalFlip(p=1)], seed=0)
    plain = SampleBuilder(ds, config, None)
    builder = SampleBuilder(ds, config, flip, no_augmentation_sources=["other"])
    rng = np.random.default_rng
    assert batches_equal(builder.build(1, rng(0)), plain.build(1, rng(0)))
    assert not batches_equal(builder.build(0, rng(0)), plain.build(0, rng(0)))


def test_more_instances_than_max_gt_gives_a_consistent_subset():
    originals = [(1 + k % 3, rect(8 + 20 * (k // 4), 6 + 30 * (k % 4), 20 + 20 * (k // 4),
                                  26 + 30 * (k % 4))) for k in range(12)]
    ds = PositionDataset([originals])
    config = small_config(USE_MINI_MASK=False, MAX_GT_INSTANCES=5)
    chosen = set()
    for seed in range(3):
        s = build_training_sample(ds, config, 0, None, np.random.default_rng(seed))
        assert assert_instances_aligned(s, config, originals) == 5
        chosen.add(tuple(s["input_gt_boxes"][:, 0]))
        # The RPN still sees every instance: 12 boxes' best anchors are positives.
        assert (s["input_rpn_match"] == 1).sum() >= 12
    assert len(chosen) > 1  # a different subset on different draws
    mini = build_training_sample(ds, small_config(MAX_GT_INSTANCES=5), 0)
    assert mini["input_gt_masks"].shape[-1] == 5 and mini["input_gt_masks"].any(axis=(0, 1)).all()


def test_crop_mode_cuts_instances_consistently():
    originals = three_instances()
    ds = PositionDataset([originals])
    config = small_config(IMAGE_RESIZE_MODE="crop", IMAGE_MIN_DIM=64, USE_MINI_MASK=False)
    for seed in range(6):
        s = build_training_sample(ds, config, 0, None, np.random.default_rng(seed))
        assert s["input_image"].shape == (64, 64, 3)
        assert_instances_aligned(s, config, originals)


# --------------------------------------------------------------------------- errors
class BrokenDataset(PositionDataset):
    def load_mask(self, image_id):
        if image_id == 0:
            return np.zeros((10, 10, 1), bool), np.array([1], np.int32)
        raise RuntimeError("disk on fire")


def test_errors_name_the_image(tmp_path):
    ds = BrokenDataset([three_instances(), three_instances()])
    ds.image_info[0]["path"] = "pictures/first.jpg"
    ds.image_info[1]["path"] = "pictures/second.jpg"
    with pytest.raises(AnnotationError, match="first.jpg.*masks of shape"):
        DataGenerator(ds, small_config(), shuffle=False)[0]
    with pytest.raises(AnnotationError, match="second.jpg.*disk on fire") as e:
        build_training_sample(ds, small_config(), 1)
    assert isinstance(e.value.__cause__, RuntimeError)
    missing = write_jpeg_dataset(str(tmp_path / "m"), count=2)
    os.remove(os.path.join(os.path.dirname(missing), "im1.jpg"))
    with pytest.raises(AnnotationError, match="im1.jpg"):
        build_training_sample(load(missing), small_config(), 1)
    with pytest.raises(ValueError, match="cache"):
        DataGenerator(ds, small_config(), cache="gpu")
    with pytest.raises(ValueError, match="cache object"):
        build_training_sample(ds, small_config(), 0, cache="ram")


def test_old_positional_api():
    ds = PositionDataset([three_instances()] * 3)
    config = small_config()
    gen = DataGenerator(ds, config, False, None, 0, 4)
    assert len(gen) == 4 and gen[3]["input_image"].shape[0] == 2
    s = build_training_sample(ds, config, 0, None, np.random.default_rng(0))
    assert set(s) == set(INPUT_NAMES)
    assert make_cache(None) is None


# ------------------------------------------------------------------ helpers vs references
def reference_rpn_targets(anchors, gt_class_ids, gt_boxes, config, rng):
    """matterport's build_rpn_targets over the full IoU matrix (the reference)."""
    rpn_match = np.zeros([anchors.shape[0]], dtype=np.int32)
    rpn_bbox = np.zeros((config.RPN_TRAIN_ANCHORS_PER_IMAGE, 4), dtype=np.float32)
    crowd_ix = np.where(gt_class_ids < 0)[0]
    if crowd_ix.shape[0] > 0:
        crowd = utils.compute_overlaps(anchors, gt_boxes[crowd_ix])
        no_crowd_bool = np.amax(crowd, axis=1) < 0.001
        keep = np.where(gt_class_ids > 0)[0]
        gt_class_ids, gt_boxes = gt_class_ids[keep], gt_boxes[keep]
    else:
        no_crowd_bool = np.ones([anchors.shape[0]], dtype=bool)
    if gt_boxes.shape[0] == 0:
        rpn_match[no_crowd_bool] = -1
    else:
        overlaps = utils.compute_overlaps(anchors, gt_boxes)
        arg = np.argmax(overlaps, axis=1)
        top = overlaps[np.arange(overlaps.shape[0]), arg]
        rpn_match[(top < 0.3) & no_crowd_bool] = -1
        gt_max = np.max(overlaps, axis=0)
        rpn_match[np.argwhere((overlaps == gt_max[None]) & (gt_max[None] > 0))[:, 0]] = 1
        rpn_match[top >= 0.7] = 1
    ids = np.where(rpn_match == 1)[0]
    extra = len(ids) - config.RPN_TRAIN_ANCHORS_PER_IMAGE // 2
    if extra > 0:
        rpn_match[rng.choice(ids, extra, replace=False)] = 0
    ids = np.where(rpn_match == -1)[0]
    extra = len(ids) - (config.RPN_TRAIN_ANCHORS_PER_IMAGE - np.sum(rpn_match == 1))
    if extra > 0:
        rpn_match[rng.choice(ids, extra, replace=False)] = 0
    ids = np.where(rpn_match == 1)[0]
    if len(ids) and gt_boxes.shape[0]:
        rpn_bbox[:len(ids)] = utils.box_refinement(anchors[ids], gt_boxes[arg[ids]]) \
            / config.RPN_BBOX_STD_DEV
    return rpn_match, rpn_bbox


@pytest.mark.parametrize("dim", [64, 128])
def test_fast_rpn_targets_equal_the_full_iou_reference(dim):
    rng = np.random.default_rng(dim)
    config = small_config(IMAGE_MAX_DIM=dim, IMAGE_MIN_DIM=dim)
    grid = utils.get_anchors(config)
    jittered = (grid + rng.normal(0, 2, grid.shape)).astype(np.float32)  # not a grid
    for anchors in (grid, jittered):
        for t in range(150):
            n = int(rng.integers(0, 10))
            y1, x1 = rng.uniform(-20, dim + 5, (2, n))
            h, w = rng.choice([0, 1, 3, 8, 20, 50, dim], (2, n)) * rng.uniform(0.5, 1.5, (2, n))
            boxes = np.stack([y1, x1, y1 + h, x1 + w], 1).round().astype(np.int32)
            if t % 4 == 0 and n > 1:
                boxes[0] = boxes[1]  # ties
            ids = rng.choice([-1, 1, 2, 3], n).astype(np.int32)
            seed = int(rng.integers(1000))
            got = utils.build_rpn_targets(anchors, ids, boxes, config,
                                          rng=np.random.default_rng(seed))
            want = reference_rpn_targets(anchors, ids, boxes, config,
                                         np.random.default_rng(seed))
            np.testing.assert_array_equal(got[0], want[0])
            np.testing.assert_array_equal(got[1], want[1])


def reference_load_image_gt(dataset, config, image_id, rng):
    """matterport's load_image_gt without augmentation, from the NumPy helpers:
    resize_image + resize_mask + pad_to_shape + extract_bboxes (+ minimize_mask)."""
    image = dataset.load_image(image_id)
    mask, class_ids = dataset.load_mask(image_id)
    original_shape = image.shape
    image, window, scale, padding, crop = utils.resize_image(
        image, min_dim=config.IMAGE_MIN_DIM, max_dim=config.IMAGE_MAX_DIM,
        min_scale=config.IMAGE_MIN_SCALE, mode=config.IMAGE_RESIZE_MODE, rng=rng)
    mask = utils.resize_mask(np.asarray(mask, bool), scale, padding, crop)
    image = utils.pad_to_shape(image, config.IMAGE_SHAPE)
    mask = utils.pad_to_shape(mask, config.IMAGE_SHAPE)
    keep = np.where(np.sum(mask, axis=(0, 1)) > 0)[0]
    mask, class_ids = mask[:, :, keep], np.asarray(class_ids, np.int32)[keep]
    bbox = utils.extract_bboxes(mask)
    active = np.zeros([config.NUM_CLASSES], np.int32)
    active[[c for c in dataset.source_class_ids[dataset.image_info[image_id]["source"]]
            if c < config.NUM_CLASSES]] = 1
    meta = utils.compose_image_meta(image_id, original_shape, image.shape, window, scale,
                                    active)
    return image, meta, class_ids, bbox, mask


def test_load_image_gt_and_loader_match_the_numpy_reference(jpeg_path):
    """load_image_gt (matterport's signature, full-size masks by default) and the
    loader's samples equal resize_image/resize_mask/extract_bboxes's result."""
    ds = jpeg_dataset(jpeg_path)
    for mode in ("square", "pad64", "crop"):
        config = small_config(IMAGE_RESIZE_MODE=mode,
                             IMAGE_MAX_DIM=256 if mode == "pad64" else 128)
        for image_id in ds.image_ids:
            want = reference_load_image_gt(ds, config, image_id,
                                           np.random.default_rng(image_id))
            image, meta, ids, boxes, masks = utils.load_image_gt(
                ds, config, image_id, rng=np.random.default_rng(image_id))
            for got, ref in zip((image, meta, ids, boxes, masks), want):
                np.testing.assert_array_equal(got, ref)
            assert image.dtype == np.uint8 and masks.dtype == bool
            if mode != "crop":  # matterport's positional call, no rng
                _, _, ids2, _, mini = utils.load_image_gt(ds, config, image_id, False, None,
                                                          True)
                np.testing.assert_array_equal(ids2, ids)
                np.testing.assert_array_equal(
                    mini, utils.minimize_mask(boxes, masks, config.MINI_MASK_SHAPE))
            s = build_training_sample(ds, config, image_id, None,
                                      np.random.default_rng(image_id))
            np.testing.assert_array_equal(s["input_image"], utils.mold_image(image, config))
            np.testing.assert_array_equal(s["input_image_meta"], meta)
            n = len(ids)
            np.testing.assert_array_equal(s["input_gt_class_ids"][:n], ids)
            np.testing.assert_array_equal(s["input_gt_boxes"][:n], boxes)
            np.testing.assert_array_equal(s["input_gt_masks"][..., :n],
                                          utils.minimize_mask(boxes, masks,
                                                              config.MINI_MASK_SHAPE))


def test_load_image_gt_augment_flag_flips_like_matterport(jpeg_path):
    """augment=True flips left/right half of the time, masks and boxes with the image."""
    ds = jpeg_dataset(jpeg_path)
    config = small_config()
    plain = utils.load_image_gt(ds, config, 3)
    flips = 0
    for seed in range(8):
        image, _, ids, boxes, masks = utils.load_image_gt(ds, config, 3, augment=True,
                                                          rng=np.random.default_rng(seed))
        np.testing.assert_array_equal(ids, plain[2])
        w0, w1 = int(plain[1][8]), int(plain[1][10])  # window x1, x2: mirrored inside
        if np.array_equal(image, plain[0]):
            np.testing.assert_array_equal(masks, plain[4])
            continue
        flips += 1
        np.testing.assert_array_equal(image[:, w0:w1], plain[0][:, w0:w1][:, ::-1])
        np.testing.assert_array_equal(masks[:, w0:w1], plain[4][:, w0:w1][:, ::-1])
        np.testing.assert_array_equal(boxes, utils.extract_bboxes(masks))
    assert 0 < flips < 8


def test_pack_masks_is_packbits_for_any_layout():
    rng = np.random.default_rng(0)
    for n in (1, 7, 8, 9, 17):
        m = rng.random((13, 21, n)) < 0.4
        for layout in (m, np.asfortranarray(m), np.ascontiguousarray(
                m.transpose(2, 0, 1)).transpose(1, 2, 0), m.astype(np.uint8) * 255):
            np.testing.assert_array_equal(pack_masks(layout),
                                          np.packbits(layout != 0, axis=-1, bitorder="little"))


@pytest.mark.parametrize("min_dim, window", [(96, (0, 0, 96, 128)),  # not resized
                                             (64, (0, 0, 64, 85))])   # scale 2/3, floored
def test_torchvision_style_training_samples_are_placed_as_inference_molds(min_dim, window):
    # DETECTOR_STYLE="torchvision": torchvision's scale rule, the image at the top-left,
    # padding 0 once molded (its mean colour), the same pixels as mold_inputs gives.
    originals = three_instances()
    ds = PositionDataset([originals])
    config = small_config(DETECTOR_STYLE="torchvision", IMAGE_MIN_DIM=min_dim,
                          USE_MINI_MASK=False, PIXEL_STD=[58.395, 57.12, 57.375])
    s = build_training_sample(ds, config, 0, None, np.random.default_rng(0))
    meta = utils.parse_image_meta(s["input_image_meta"][None])
    np.testing.assert_array_equal(meta["window"][0], window)
    molded, _, windows = transform.mold_inputs([position_image()], config)
    np.testing.assert_array_equal(windows[0], window)
    np.testing.assert_array_equal(s["input_image"], molded[0])
    y2, x2 = window[2:]
    assert not s["input_image"][y2:].any() and not s["input_image"][:, x2:].any()
    if min_dim == 96:  # (resized, the position colours blend: no exact decoding)
        assert assert_instances_aligned(s, config, originals) == 3
    boxes = s["input_gt_boxes"][:3]
    assert boxes[:, 2].max() <= y2 and boxes[:, 3].max() <= x2
    image, *_ = utils.load_image_gt(ds, config, 0, rng=np.random.default_rng(0))
    assert (image[y2:] == np.round(config.MEAN_PIXEL).astype(np.uint8)).all()
