"""Training images/s on 1 device vs N devices: data-parallel scaling (not a test).

    python benchmarks/scaling.py                         # JAX: 1 device and all of them
    python benchmarks/scaling.py --preset matterport --batch 1 --devices 1,2
    python benchmarks/scaling.py --backend tensorflow    # MirroredStrategy instead
    python benchmarks/scaling.py --quick                 # CPU, 2 virtual devices: runs

Each device count runs in its own process (JAX and TF fix their devices at start) with
``GPU_COUNT=N`` and the same IMAGES_PER_GPU, so the global batch grows with N (as when
a Kaggle notebook goes from one T4 to "GPU T4 x2"). Each process trains on one prepared
batch of synthetic shapes fed through ``fit`` (data loading is not measured, the
host-to-device copy and the split over devices are), drops --warmup steps
(compilation) and times --steps. Prints images/s, the speed-up over one device and the
scaling efficiency (speed-up / N).

--quick: 2 virtual CPU devices (XLA_FLAGS / TF logical devices), 64 px, 2 steps: it
shows the machinery works, not how fast anything is (the "devices" share the CPU).
"""
import argparse
import json
import os
import subprocess
import sys
import time

from common import base_parser, make_config, select_backend

HERE = os.path.dirname(os.path.abspath(__file__))


def parser():
    p = base_parser(__doc__)
    p.set_defaults(backend=os.environ.get("KERAS_BACKEND_SCALING", "jax"))
    p.add_argument("--devices", default="1,all",
                   help="device counts to compare, e.g. 1,2,4 ('all': every device)")
    p.add_argument("--layers", default="all", help="heads, 3+, 4+, 5+ or all")
    p.add_argument("--quick", action="store_true",
                   help="CPU with 2 virtual devices, tiny model: a smoke run")
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    return p


# -------------------------------------------------------------------- one count
def child(args):
    """Measure GPU_COUNT=args.child in this process; print a RESULT line."""
    n = args.child
    if args.quick:
        if args.backend == "jax":
            os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
            os.environ["JAX_PLATFORMS"] = "cpu"
        elif args.backend == "tensorflow":
            os.environ["CUDA_VISIBLE_DEVICES"] = ""
            import tensorflow as tf
            cpu = tf.config.list_physical_devices("CPU")[0]
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    select_backend(args)
    import keras
    import numpy as np

    from colabrcnn import distribute, probe

    total = distribute.device_count()
    n = total if n == 0 else n
    extra = {"GPU_COUNT": n}
    if args.quick:
        extra.update(IMAGE_MIN_DIM=64, IMAGE_MAX_DIM=64, TRAIN_ROIS_PER_IMAGE=16,
                     POST_NMS_ROIS_TRAINING=64, PRE_NMS_LIMIT=256, MAX_GT_INSTANCES=4,
                     RPN_TRAIN_ANCHORS_PER_IMAGE=32, MINI_MASK_SHAPE=(14, 14),
                     TOP_DOWN_PYRAMID_SIZE=32, FPN_CLASSIF_FC_LAYERS_SIZE=64,
                     IMAGES_PER_GPU=args.batch or 1)
    config = make_config(args, **extra)
    model, batch = probe.build(config, args.layers, seed=0, model_dir="/tmp/colabrcnn-bench")
    size = int(config.IMAGE_SHAPE[0])
    if model.distribution.backend == "tensorflow" and model.distribution.distributed:
        # tf.distribute cannot average bool tensors when it builds the step (see
        # colabrcnn.train._fit): masks go as uint8, the model casts them back.
        batch = {k: (v.astype(np.uint8) if v.dtype == bool else v)
                 for k, v in batch.items()}
    steps = args.warmup + args.steps

    class Same(keras.utils.PyDataset):
        def __len__(self):
            return steps

        def __getitem__(self, i):
            return batch

    class Clock(keras.callbacks.Callback):
        times = []

        def on_train_batch_end(self, b, logs=None):
            float(np.asarray(logs["loss"]))   # wait for the device
            Clock.times.append(time.perf_counter())

    t0 = time.perf_counter()
    with model.scope():
        model.keras_model.fit(Same(), epochs=1, verbose=0, callbacks=[Clock()])
    times = [t0] + Clock.times
    timed = times[-1] - times[args.warmup]
    result = {"devices": n, "available": total, "engine": str(model.distribution),
              "global_batch": config.BATCH_SIZE, "warmup_s": times[args.warmup] - t0,
              "images_per_s": args.steps * config.BATCH_SIZE / timed,
              "ms_per_step": timed / args.steps * 1000, "image": size,
              "backbone": config.BACKBONE}
    print("RESULT " + json.dumps(result), flush=True)


# -------------------------------------------------------------------- the table
def run_count(args, n):
    cmd = [sys.executable, os.path.join(HERE, "scaling.py"), "--child", str(n)]
    cmd += [a for a in sys.argv[1:]]
    env = dict(os.environ, KERAS_BACKEND=args.backend)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-6000:])
    raise SystemExit(f"GPU_COUNT={n or 'all'}: the run failed (exit {proc.returncode})")


def main():
    args = parser().parse_args()
    if args.child is not None:
        return child(args)
    if args.quick:
        args.steps = min(args.steps, 2)
        args.warmup = min(args.warmup, 1)
        sys.argv += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    wanted = [0 if d.strip() == "all" else int(d) for d in args.devices.split(",")]
    rows = []
    for n in wanted:
        r = run_count(args, n)
        if any(x["devices"] == r["devices"] for x in rows):
            continue   # "all" was already in the list
        rows.append(r)
        print(f"  GPU_COUNT={r['devices']}: {r['images_per_s']:.2f} img/s "
              f"({r['engine']})", flush=True)
    base = next((r for r in rows if r["devices"] == 1), rows[0])
    first = rows[0]
    print(f"\nbackend={args.backend} preset={args.preset} backbone={first['backbone']} "
          f"image={first['image']} layers={args.layers} devices found={first['available']}"
          + ("  [--quick: virtual CPU devices, speed means nothing]" if args.quick else ""))
    print(f"{'devices':>7} {'batch':>6} {'img/s':>9} {'ms/step':>9} {'speed-up':>9} "
          f"{'efficiency':>10} {'warm-up s':>9}")
    for r in rows:
        speedup = r["images_per_s"] / base["images_per_s"] * base["devices"]
        print(f"{r['devices']:>7} {r['global_batch']:>6} {r['images_per_s']:>9.2f} "
              f"{r['ms_per_step']:>9.0f} {speedup:>9.2f} "
              f"{speedup / r['devices']:>10.0%} {r['warmup_s']:>9.1f}")


if __name__ == "__main__":
    main()
