"""Training speed and peak memory of one configuration on one backend (not a test).

    python benchmarks/train_step.py --backend jax --preset matterport --batch 2
    python benchmarks/train_step.py --preset shapes            # CPU-sized

Builds the training model, feeds the same prepared batch of synthetic shapes (so data
loading is not measured), runs --warmup untimed steps (compilation), then --steps
timed ones. Prints images/s and peak accelerator memory (or process RSS on a CPU).
"""
from common import (base_parser, device_name, fmt_bytes, make_config, peak_memory,
                    select_backend)


def main():
    p = base_parser(__doc__)
    p.add_argument("--layers", default="all", help="heads, 3+, 4+, 5+ or all")
    args = p.parse_args()
    select_backend(args)
    import keras

    from colabrcnn import probe

    config = make_config(args)
    size = int(config.IMAGE_SHAPE[0])
    model, batch = probe.build(config, args.layers, seed=0,
                               model_dir="/tmp/colabrcnn-bench")
    warm = probe.run_steps(model, batch, args.warmup)[0] * max(1, args.warmup)
    seconds, loss = probe.run_steps(model, batch, args.steps)
    elapsed = seconds * args.steps
    device_peak, rss = peak_memory()
    print(f"backend={keras.backend.backend()} device={device_name()} preset={args.preset} "
          f"backbone={config.BACKBONE} image={size} batch={config.BATCH_SIZE} "
          f"layers={args.layers}")
    print(f"warm-up {args.warmup} steps: {warm:.1f} s")
    print(f"train: {args.steps * config.BATCH_SIZE / elapsed:.2f} img/s "
          f"({seconds * 1000:.0f} ms/step), loss {loss:.3f}")
    print(f"peak device memory: {fmt_bytes(device_peak)}; peak process RSS: {fmt_bytes(rss)}")


if __name__ == "__main__":
    main()
