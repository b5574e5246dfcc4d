"""Peak training memory and speed per memory lever, beside colabrcnn's estimate (not a test).

    python benchmarks/memory.py --backend jax          # on a GPU: matterport's default
    python benchmarks/memory.py --backend torch --steps 20
    python benchmarks/memory.py --quick                # CPU-sized: ResNet-18 at 256 px
    python benchmarks/memory.py --quick --backend jax --xla   # + XLA's planned peak

Rows: matterport's default (ResNet-101, 1024x1024, 2 images, all layers) in float32
and mixed precision, each without and with REMAT; then heads-only training at twice
the batch, float32 and mixed. Each row runs in a fresh Python process, so one row's
peak cannot leak into the next, and an out-of-memory row is reported as such instead
of ending the run. Each child trains --warmup untimed steps (compilation), then
--steps timed ones on one prepared batch of synthetic shapes, and reports the
backend's peak device memory (TF get_memory_info, JAX memory_stats, torch
max_memory_allocated) -- or the process' peak RSS on a CPU -- next to
``colabrcnn.memory.estimate_memory`` for the same config. With --xla (JAX only) it
also prints XLA's own plan for the jitted train step (arguments + outputs + temporaries
from ``compiled.memory_analysis()``), which needs no GPU.
"""
import json
import os
import subprocess
import sys

from common import PRESETS, base_parser, fmt_bytes

HERE = os.path.dirname(os.path.abspath(__file__))

# (label, layers, images per GPU as a multiple of --batch, MIXED_PRECISION, REMAT)
ROWS = [
    ("default fp32", "all", 1, False, False),
    ("default mixed", "all", 1, True, False),
    ("default fp32 remat", "all", 1, False, True),
    ("default mixed remat", "all", 1, True, True),
    ("heads fp32 2x batch", "heads", 2, False, False),
    ("heads mixed 2x batch", "heads", 2, True, False),
]


def parse_args(argv=None):
    p = base_parser(__doc__)
    p.set_defaults(preset="matterport")
    p.add_argument("--quick", action="store_true",
                   help="CPU-sized: ResNet-18 at 256x256 (unless --backbone/--image-size)")
    p.add_argument("--rows", default=None,
                   help="comma-separated substrings of row labels to run (default: all)")
    p.add_argument("--xla", action="store_true",
                   help="JAX only: also report XLA's planned peak of the train step")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per row")
    p.add_argument("--row", default=None, help=argparse_hidden())
    args = p.parse_args(argv)
    if args.quick:
        args.backbone = args.backbone or "resnet18"
        args.image_size = args.image_size or 256
        if "--steps" not in " ".join(argv or sys.argv):
            args.steps = 3
        if "--warmup" not in " ".join(argv or sys.argv):
            args.warmup = 1
    args.batch = args.batch or 2
    return args


def argparse_hidden():
    import argparse
    return argparse.SUPPRESS


# ------------------------------------------------------------------ one row (child)
def run_row(args, spec):
    os.environ["KERAS_BACKEND"] = args.backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from common import make_config

    from colabrcnn import memory, probe

    label, layers, batch_mult, mixed, remat = spec
    args.batch = args.batch * batch_mult
    config = make_config(args, MIXED_PRECISION=mixed, REMAT=remat)
    est = memory.estimate_memory(config, layers, mixed_precision=mixed)
    out = {"label": label, "layers": layers, "batch": config.IMAGES_PER_GPU,
           "backbone": config.BACKBONE, "image": int(config.IMAGE_SHAPE[0]),
           "mixed": mixed, "remat": remat, "estimate": est.total,
           "backend": keras.backend.backend()}

    def plan(model, batch):
        if args.xla and keras.backend.backend() == "jax":
            out["xla_plan"] = xla_plan(model.keras_model, batch)

    got = probe.measure(config, layers, steps=args.steps, warmup=args.warmup, seed=0,
                        model_dir="/tmp/colabrcnn-bench-memory", on_built=plan)
    out["device_peak"], out["rss"] = got["peak_bytes"], got["rss_bytes"]
    if got["status"] == "ok":
        out["images_per_s"] = got["images_per_second"]
    else:
        out["error"] = ("OOM: " if got["status"] == "out of memory" else "") + got["error"]
    print("ROW " + json.dumps(out), flush=True)


def xla_plan(keras_model, batch):
    """XLA's planned bytes for the jitted train step (arguments + outputs - aliased +
    temporaries), from the compiled executable; works on CPU."""
    import jax
    keras_model._symbolic_build(data_batch=(batch,))
    keras_model.optimizer.build(keras_model.trainable_variables)
    state = keras_model._get_jax_state(trainable_variables=True,
                                       non_trainable_variables=True,
                                       optimizer_variables=True, metrics_variables=True)
    specs = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                                   (state, (batch,)))
    compiled = jax.jit(keras_model.train_step, donate_argnums=0).lower(*specs).compile()
    ma = compiled.memory_analysis()
    return int(ma.argument_size_in_bytes + ma.output_size_in_bytes
               - ma.alias_size_in_bytes + ma.temp_size_in_bytes)


# --------------------------------------------------------------------- the table
def main(argv=None):
    args = parse_args(argv)
    if args.row is not None:
        run_row(args, json.loads(args.row))
        return
    assert args.preset in PRESETS
    rows = ROWS
    if args.rows:
        keys = [k.strip() for k in args.rows.split(",") if k.strip()]
        rows = [r for r in ROWS if any(k in r[0] for k in keys)]
    env = dict(os.environ, KERAS_BACKEND=args.backend, TF_CPP_MIN_LOG_LEVEL="2")
    base = [sys.executable, os.path.join(HERE, "memory.py"), "--backend", args.backend,
            "--preset", args.preset, "--batch", str(args.batch), "--steps",
            str(args.steps), "--warmup", str(args.warmup)]
    if args.image_size:
        base += ["--image-size", str(args.image_size)]
    if args.backbone:
        base += ["--backbone", args.backbone]
    if args.xla:
        base.append("--xla")
    results = []
    print_header(args)
    for spec in rows:
        try:
            proc = subprocess.run(base + ["--row", json.dumps(list(spec))], env=env,
                                  capture_output=True, text=True, timeout=args.timeout)
            line = next((t for t in proc.stdout.splitlines() if t.startswith("ROW ")), None)
            if line is None:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
                result = {"label": spec[0], "error": f"exit {proc.returncode}: "
                                                     f"{tail[0][:120]}"}
            else:
                result = json.loads(line[4:])
        except subprocess.TimeoutExpired:
            result = {"label": spec[0], "error": f"timeout after {args.timeout}s"}
        results.append(result)
        print_row(result, args)
    if not any(r.get("device_peak") for r in results):
        print("No device memory reported (CPU run): 'peak RSS' is the whole process "
              "(Python, the framework, data), not comparable to the estimate.")


def _columns(args):
    cols = ("row", "layers", "batch", "estimate", "device peak", "peak RSS", "img/s")
    return cols + ("XLA plan",) if args.xla else cols


def _line(values):
    return " | ".join(f"{v:>11}" if i else f"{v:<21}" for i, v in enumerate(values))


def print_header(args):
    print(f"backend={args.backend} preset={args.preset} backbone={args.backbone or '-'} "
          f"image={args.image_size or '-'} batch={args.batch} steps={args.steps} "
          f"(after {args.warmup} warm-up); one process per row", flush=True)
    print(_line(_columns(args)), flush=True)


def print_row(r, args):
    vals = [r.get("label", "?"), r.get("layers", ""), str(r.get("batch", "")),
            fmt_bytes(r.get("estimate")), fmt_bytes(r.get("device_peak")),
            fmt_bytes(r.get("rss")),
            f"{r['images_per_s']:.2f}" if "images_per_s" in r else "-"]
    if args.xla:
        vals.append(fmt_bytes(r.get("xla_plan")))
    print(_line(vals), flush=True)
    if "error" in r:
        print(f"{'':<21}   ! {r['error']}", flush=True)


if __name__ == "__main__":
    main()
