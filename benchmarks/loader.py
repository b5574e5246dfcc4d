"""Training-loader throughput: images/s of DataGenerator as Model.fit consumes it.

    python benchmarks/loader.py                       # 1024 px, medium augmentation,
                                                      # workers=2 processes, caches off/ram/disk
    python benchmarks/loader.py --profile             # also where one process spends its time
    python benchmarks/loader.py --threads --steps 32  # worker threads, longer epochs
    python benchmarks/loader.py --data path/to/annotations.json --size 512

Without --data it writes ``--images`` JPEGs of about 1500 x 1000 (scikit-image sample
pictures, resized, with sensor-like noise so they do not compress to nothing) with 3-8
polygon instances each and a VIA 2 project, into a temporary folder, and reads them back
through ``colabrcnn.data.load`` as a user's annotations would be.

Each configuration runs ``--epochs`` epochs through Keras' own PyDataset adapter (the
code path of ``Model.fit``: worker pool, ordered queue); epoch 1 fills the cache, later
epochs read it. The main process only receives the batches: no model runs, so these are
upper bounds of what the loader can feed. Besides images/s it prints the CPU time per
image of the worker processes and of the main process, which depends much less on other
load than wall-clock rates do. Numbers on a shared machine are noisy.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402


def write_jpeg_dataset(folder, count=16, height=1000, width=1500, seed=0):
    """``count`` noisy RGB JPEGs with 3-8 polygon instances each + a VIA 2 project.

    Returns the path of the VIA JSON.
    """
    import cv2
    from skimage import data as sk

    sources = [sk.astronaut(), sk.coffee(), sk.chelsea(), sk.rocket(),
               np.dstack([sk.coins()] * 3), sk.immunohistochemistry()]
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    meta = {}
    for i in range(count):
        src = sources[i % len(sources)]
        img = cv2.resize(src, (width, height), interpolation=cv2.INTER_CUBIC)
        img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
        name = f"img{i:03d}.jpg"
        cv2.imwrite(os.path.join(folder, name), img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
        regions = []
        for k in range(int(rng.integers(3, 9))):
            cx = rng.uniform(0.07, 0.93) * width
            cy = rng.uniform(0.1, 0.9) * height
            r = rng.uniform(0.02, 0.13) * width
            t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
            rr = r * rng.uniform(0.7, 1.0, t.size)
            xs = np.clip(cx + rr * np.cos(t), 0, width - 1)
            ys = np.clip(cy + rr * np.sin(t), 0, height - 1)
            regions.append({"shape_attributes": {"name": "polygon",
                                                 "all_points_x": xs.round(1).tolist(),
                                                 "all_points_y": ys.round(1).tolist()},
                            "region_attributes": {"class": ["cell", "blob"][k % 2]}})
        size = os.path.getsize(os.path.join(folder, name))
        meta[f"{name}{size}"] = {"filename": name, "size": size, "regions": regions,
                                 "file_attributes": {}}
    path = os.path.join(folder, "via_region_data.json")
    with open(path, "w") as f:
        json.dump(meta, f)
    return path


def make_config(args, num_classes):
    from colabrcnn import Config

    class BenchConfig(Config):
        NAME = "loader_bench"
        NUM_CLASSES = num_classes
        BACKBONE = "resnet50"
        IMAGES_PER_GPU = args.batch
        IMAGE_MAX_DIM = args.size
        IMAGE_MIN_DIM = min(800, args.size)
        IMAGE_RESIZE_MODE = "square"
        USE_MINI_MASK = True
    return BenchConfig()


def _children_cpu():
    """CPU seconds of this process's finished (reaped) child processes."""
    import resource
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _reap_workers(timeout=10.0):
    """Wait until the epoch's worker processes have exited (their CPU time counts)."""
    import multiprocessing
    t0 = time.perf_counter()
    while multiprocessing.active_children() and time.perf_counter() - t0 < timeout:
        time.sleep(0.05)


def run_epochs(gen, epochs):
    """Per epoch: (wall seconds, main-process CPU s, worker CPU s), consuming batches
    as Model.fit does (Keras' adapter)."""
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter
    adapter = PyDatasetAdapter(gen, shuffle=False)
    out = []
    for _ in range(epochs):
        _reap_workers()
        c0, m0, t0 = _children_cpu(), time.process_time(), time.perf_counter()
        adapter.on_epoch_begin()
        for batch in adapter.get_numpy_iterator():
            assert batch["input_image"].shape[0] == gen.batch_size
        adapter.on_epoch_end()
        wall, main_cpu = time.perf_counter() - t0, time.process_time() - m0
        _reap_workers()
        out.append((wall, main_cpu, _children_cpu() - c0))
    return out


def profile_stages(dataset, config, augmentation, n=None):
    """Mean ms per image of each stage, in this process, no cache (after a warm-up)."""
    from colabrcnn.model import anchors as utils  # where the loader finds build_rpn_targets
    from colabrcnn.data import sample as loader  # the sample builder the loader uses

    spent = {}

    def timed(name, fn):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - t0
        return wrapper

    saved = (dataset.load_image, dataset.load_mask, loader.decode_sample,
             loader.Augmenter.__call__, utils.build_rpn_targets, loader.SampleBuilder.build)
    dataset.load_image = timed("decode JPEG", dataset.load_image)
    dataset.load_mask = timed("rasterise masks", dataset.load_mask)
    loader.decode_sample = timed("stage 1 total", loader.decode_sample)
    loader.Augmenter.__call__ = timed("augmentation", loader.Augmenter.__call__)
    utils.build_rpn_targets = timed("RPN targets", utils.build_rpn_targets)
    loader.SampleBuilder.build = timed("sample total", loader.SampleBuilder.build)
    try:
        builder = loader.SampleBuilder(dataset, config, augmentation, None)
        ids = list(dataset.image_ids)[:n] if n else list(dataset.image_ids)
        builder.build(ids[0], np.random.default_rng(0))  # warm-up: anchors, imports
        spent.clear()
        for i in ids:
            builder.build(i, np.random.default_rng(i))
    finally:
        (dataset.load_image, dataset.load_mask, loader.decode_sample,
         loader.Augmenter.__call__, utils.build_rpn_targets,
         loader.SampleBuilder.build) = saved
        del dataset.load_image, dataset.load_mask  # back to the class's methods
    stage1_rest = spent["stage 1 total"] - spent["decode JPEG"] - spent["rasterise masks"]
    spent["resize + compact masks"] = stage1_rest
    spent["pad, mold, mini-masks, rest"] = (spent["sample total"] - spent["stage 1 total"]
                                            - spent.get("augmentation", 0)
                                            - spent["RPN targets"])
    order = ["decode JPEG", "rasterise masks", "resize + compact masks", "augmentation",
             "RPN targets", "pad, mold, mini-masks, rest", "sample total"]
    return {k: 1000 * spent.get(k, 0.0) / len(ids) for k in order}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", help="annotations to read instead of the generated JPEGs")
    p.add_argument("--images", type=int, default=16, help="generated images")
    p.add_argument("--size", type=int, default=1024, help="IMAGE_MAX_DIM")
    p.add_argument("--batch", type=int, default=2, help="IMAGES_PER_GPU")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--steps", type=int, default=None,
                   help="batches per epoch (default: one pass over the images); Keras "
                        "starts new worker processes every epoch, longer epochs amortise it")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", action="store_true",
                   help="use_multiprocessing=False (threads instead of processes)")
    p.add_argument("--augmentation", default="medium", choices=["none", "light", "medium"])
    p.add_argument("--caches", default="none,ram,disk",
                   help="comma-separated: none, ram, disk")
    p.add_argument("--profile", action="store_true", help="per-stage times, one process")
    args = p.parse_args(argv)

    from colabrcnn.data import load
    from colabrcnn.data.augment import default_augmentation
    from colabrcnn.data.loader import DataGenerator

    tmp = tempfile.mkdtemp(prefix="colabrcnn_loader_bench_")
    try:
        path = args.data or write_jpeg_dataset(os.path.join(tmp, "data"), args.images)
        dataset = load(path)
        config = make_config(args, dataset.num_classes)
        aug = default_augmentation(args.augmentation, seed=0)
        print(f"{len(dataset.image_ids)} images from {path}; IMAGE_MAX_DIM={args.size} "
              f"square, mini-masks, batch {args.batch}, augmentation {args.augmentation}, "
              f"workers={args.workers} "
              f"({'threads' if args.threads else 'processes'}), {os.cpu_count()} CPUs "
              f"(load average {os.getloadavg()[0]:.1f}: shared CPUs make these noisy)")
        if args.profile:
            print("\nms per image in one process, no cache:")
            for name, ms in profile_stages(dataset, config, aug).items():
                print(f"  {name:30s} {ms:7.1f}")
        print()
        steps = args.steps or max(1, len(dataset.image_ids) // args.batch)
        for kind in args.caches.split(","):
            cache = None if kind == "none" else kind
            gen = DataGenerator(dataset, config, shuffle=True, augmentation=aug, seed=0,
                                steps=steps, cache=cache,
                                cache_dir=os.path.join(tmp, "cache") if kind == "disk"
                                else None, workers=args.workers,
                                use_multiprocessing=not args.threads)
            runs = run_epochs(gen, args.epochs)
            gen.close()
            n = steps * args.batch
            rates = [n / wall for wall, _, _ in runs]
            later = runs[1:] or runs
            main_ms = 1000 * np.mean([m for _, m, _ in later]) / n
            work_ms = 1000 * np.mean([w for _, _, w in later]) / n
            print(f"cache={kind:5s} epoch 1: {rates[0]:5.1f} images/s; later epochs: "
                  f"{np.mean(rates[1:] or rates):5.1f} images/s "
                  f"({', '.join(f'{r:.1f}' for r in rates)}); CPU per image in later "
                  f"epochs: workers {work_ms:.0f} ms, main process {main_ms:.0f} ms")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
