"""Inference speed and peak memory of one configuration on one backend (not a test).

    python benchmarks/detect.py --backend jax --preset matterport --batch 1
    python benchmarks/detect.py --preset shapes

Times the compiled inference graph on molded batches (``predict_on_batch``) and,
separately, the whole ``detect()`` call including NumPy pre/post-processing.
"""
import time

from common import (base_parser, device_name, fmt_bytes, make_config, peak_memory,
                    select_backend)


def main():
    args = base_parser(__doc__).parse_args()
    select_backend(args)
    import keras
    import numpy as np

    from colabrcnn import MaskRCNN
    from colabrcnn.data import shapes

    keras.utils.set_random_seed(0)
    config = make_config(args, DETECTION_MIN_CONFIDENCE=0.0)
    size = int(config.IMAGE_SHAPE[0])
    model = MaskRCNN("inference", config, model_dir="/tmp/colabrcnn-bench")
    ds = shapes(config.BATCH_SIZE, size, seed=0)
    images = [ds.load_image(i) for i in ds.image_ids]
    molded, metas, _ = model.mold_inputs(images)
    inputs = {"input_image": molded, "input_image_meta": metas}

    graph = model.keras_model
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        graph.predict_on_batch(inputs)
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(args.steps):
        out = graph.predict_on_batch(inputs)
    np.asarray(out["detections"])
    graph_s = (time.perf_counter() - t0) / args.steps
    t0 = time.perf_counter()
    for _ in range(args.steps):
        model.detect(images)
    full_s = (time.perf_counter() - t0) / args.steps
    device_peak, rss = peak_memory()
    n = config.BATCH_SIZE
    print(f"backend={keras.backend.backend()} device={device_name()} preset={args.preset} "
          f"backbone={config.BACKBONE} image={size} batch={n}")
    print(f"warm-up {args.warmup} batches: {warm:.1f} s")
    print(f"network: {n / graph_s:.2f} img/s ({graph_s * 1000:.0f} ms/batch); "
          f"detect() end to end: {n / full_s:.2f} img/s")
    print(f"peak device memory: {fmt_bytes(device_peak)}; peak process RSS: {fmt_bytes(rss)}")


if __name__ == "__main__":
    main()
