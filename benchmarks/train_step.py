"""Training speed and peak memory of one configuration on one backend (not a test).

    python benchmarks/train_step.py --backend jax --preset matterport --batch 2
    python benchmarks/train_step.py --preset shapes            # CPU-sized

Builds the training model, feeds the same prepared batch of synthetic shapes (so data
loading is not measured), runs --warmup untimed steps (compilation), then --steps
timed ones. Prints images/s and peak accelerator memory (or process RSS on a CPU).
"""
import time

from common import (base_parser, device_name, fmt_bytes, make_config, peak_memory,
                    select_backend)


def main():
    p = base_parser(__doc__)
    p.add_argument("--layers", default="all", help="heads, 3+, 4+, 5+ or all")
    args = p.parse_args()
    select_backend(args)
    import keras
    import numpy as np

    from colabrcnn import MaskRCNN
    from colabrcnn.data import shapes
    from colabrcnn.data.loader import DataGenerator

    keras.utils.set_random_seed(0)
    config = make_config(args)
    size = int(config.IMAGE_SHAPE[0])
    model = MaskRCNN("training", config, model_dir="/tmp/colabrcnn-bench")
    model.set_trainable(args.layers)
    model.compile(config.LEARNING_RATE, config.LEARNING_MOMENTUM)
    ds = shapes(max(4, config.BATCH_SIZE), size, seed=0)
    batch = DataGenerator(ds, config, shuffle=False, seed=0)[0]

    t0 = time.perf_counter()
    for _ in range(args.warmup):
        model.keras_model.train_on_batch(batch)
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(args.steps):
        logs = model.keras_model.train_on_batch(batch, return_dict=True)
    # Make sure the device finished: read the loss back.
    float(np.asarray(logs["loss"]))
    elapsed = time.perf_counter() - t0
    device_peak, rss = peak_memory()
    print(f"backend={keras.backend.backend()} device={device_name()} preset={args.preset} "
          f"backbone={config.BACKBONE} image={size} batch={config.BATCH_SIZE} "
          f"layers={args.layers}")
    print(f"warm-up {args.warmup} steps: {warm:.1f} s")
    print(f"train: {args.steps * config.BATCH_SIZE / elapsed:.2f} img/s "
          f"({elapsed / args.steps * 1000:.0f} ms/step), loss {float(logs['loss']):.3f}")
    print(f"peak device memory: {fmt_bytes(device_peak)}; peak process RSS: {fmt_bytes(rss)}")


if __name__ == "__main__":
    main()
