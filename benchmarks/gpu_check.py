"""GPU evidence in one run (issue 19): memory under a T4-sized cap, fit_to_gpu's presets,
and speed beside torchvision. Run through ``benchmarks/gpu_check.sh`` (which installs
the carried wheels first); not a test.

    python benchmarks/gpu_check.py --out runs/gpu_check            # on a GPU, < 8 min
    python benchmarks/gpu_check.py --dry-run --out /tmp/gpu_check  # CPU, tiny settings

Writes ``gpu_check.json`` and ``gpu_check.md`` into --out (default $OUT, else
runs/gpu_check), rewritten after every row so that a run cut short still leaves what
it measured. Rows, each in its own Python process with a timeout (an out-of-memory
row is a result, not the end of the run):

* memory: matterport's 1024-px ResNet-101 and ResNet-50 presets, one lever changed at
  a time from "all layers, mixed precision, 2 images, mini-masks, no REMAT": float32,
  REMAT, 1 and 4 images, no mini-masks, heads only (and heads with 8 images on R101).
  Peak device memory under a 15 GiB cap beside ``colabrcnn.memory.estimate_memory``
  and their ratio. JAX: XLA_PYTHON_CLIENT_PREALLOCATE=false with
  XLA_PYTHON_CLIENT_MEM_FRACTION = cap / GPU memory (the BFC allocator's peak is the
  measure; --allocator platform switches to XLA_PYTHON_CLIENT_ALLOCATOR=platform);
  torch: torch.cuda.set_per_process_memory_fraction.
* fit: ``memory.fit_to_gpu`` for the T4 and P100 presets (the 81-class ResNet-101
  default), then 20 training steps of the chosen config under that GPU's memory.
* speed (one row at a time, nothing else on the GPU): our training step (mixed
  precision, 2 images of 1024x1024, ResNet-50-FPN, all layers) against torchvision's
  Mask R-CNN ResNet-50-FPN (random weights, AMP, the same images, the same 200 ROIs
  per image), inference with batch 1 and 8, and the ratios; our step on the Keras
  torch backend too.

The goals of issue 19 are printed beside the figures; a recalibration hint (the
ACTIVATION_OVERHEAD that would make each estimate exact) closes the report.
``--dry-run`` runs the same code paths on the CPU with tiny settings (ResNet-18, 64 px)
and one row of each kind, in a minute or two; tests/test_gpu_check.py runs it.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

GiB = 1 << 30
CAP_BYTES = 15 * GiB          # a T4 as nvidia-smi reports it: 15360 MiB

GOALS = [
    ("memory_r101_all_mixed_2", "Peak memory, all layers, R101, 1024 px, 2 images, mixed "
     "precision", "<= 4.6 GiB (detectron2's R101 figure; matterport needed ~12 GB)"),
    ("heads_r101_8_fit", "Heads only, R101, 1024 px, on the 15 GiB cap", "8 images per step fit"),
    ("train_ratio", "Training img/s / torchvision's, same GPU", ">= 1.3"),
    ("infer_ratio", "Inference img/s / torchvision's (batch 1 and 8)", ">= 1.2"),
    ("estimate_within", "Estimate within 15% of the measured peak", "every memory row"),
]

# Settings that make the dry run quick on a CPU: the demo's ResNet-18 at 64 px with
# narrow heads (as tests/tiny_model.py), 4 classes.
TINY = dict(BACKBONE="resnet18", NUM_CLASSES=4, IMAGE_MIN_DIM=64, IMAGE_MAX_DIM=64,
            RPN_ANCHOR_SCALES=(8, 16, 32, 64, 128), TRAIN_ROIS_PER_IMAGE=16,
            POST_NMS_ROIS_TRAINING=64, POST_NMS_ROIS_INFERENCE=32, PRE_NMS_LIMIT=256,
            TOP_DOWN_PYRAMID_SIZE=32, FPN_CLASSIF_FC_LAYERS_SIZE=64, MAX_GT_INSTANCES=4,
            RPN_TRAIN_ANCHORS_PER_IMAGE=32, MINI_MASK_SHAPE=(14, 14),
            DETECTION_MAX_INSTANCES=8)
BACKBONES = {"R101": "resnet101", "R50": "resnet50"}


# =============================================================================
# The rows
# =============================================================================
def memory_rows() -> list[dict]:
    """One lever at a time from the goal row (all layers, mixed, 2 images, mini-masks),
    for R101 and R50; the goal rows first (rows start in this order)."""
    base = dict(kind="memory", layers="all", mixed=True, remat=False, images=2,
                mini_mask=True)
    variants = [("", {}), ("heads 8 images", {"layers": "heads", "images": 8}),
                ("float32", {"mixed": False}), ("REMAT", {"remat": True}),
                ("1 image", {"images": 1}), ("4 images", {"images": 4}),
                ("no mini-masks", {"mini_mask": False}), ("heads", {"layers": "heads"})]
    rows = []
    for preset in ("R101", "R50"):
        for label, change in variants:
            if preset == "R50" and label == "heads 8 images":
                continue
            spec = dict(base, preset=preset, **change)
            spec["id"] = f"{preset} " + (label or "all mixed 2 images")
            rows.append(spec)
    # The goal rows of both presets lead (R50's is the speed row's config too).
    rows.sort(key=lambda r: r["id"] not in ("R101 all mixed 2 images", "R101 heads 8 images",
                                            "R50 all mixed 2 images"))
    return rows


def fit_rows() -> list[dict]:
    return [dict(kind="fit", id=f"fit_to_gpu {gpu}", gpu=gpu) for gpu in ("T4", "P100")]


def speed_rows() -> list[dict]:
    rows = [dict(kind="train_speed", impl="ours", backend="jax", id="train ours (jax)"),
            dict(kind="train_speed", impl="torchvision", id="train torchvision")]
    for batch in (1, 8):
        rows.append(dict(kind="infer_speed", impl="ours", backend="jax", batch=batch,
                         id=f"inference ours (jax) batch {batch}"))
        rows.append(dict(kind="infer_speed", impl="torchvision", batch=batch,
                         id=f"inference torchvision batch {batch}"))
    rows.append(dict(kind="train_speed", impl="ours", backend="torch",
                     id="train ours (torch backend)"))
    return rows


def all_rows(dry_run: bool) -> list[dict]:
    """The rows in running order; the dry run keeps one of each code path."""
    mem, fit, speed = memory_rows(), fit_rows(), speed_rows()
    if dry_run:
        mem = [r for r in mem if r["id"] == "R101 all mixed 2 images"]
        fit = fit[:1]
        speed = [r for r in speed if r["id"] in (
            "train ours (jax)", "train torchvision", "inference ours (jax) batch 1",
            "inference torchvision batch 1")]
    return mem + fit + speed


# =============================================================================
# One row, in a child process
# =============================================================================
def make_config(dry_run: bool, **settings):
    from colabrcnn import Config
    values = dict(NAME="gpucheck", NUM_CLASSES=81)
    if dry_run:
        values.update(TINY)
        settings.pop("BACKBONE", None)   # ResNet-18 in the dry run, whatever the preset
    values.update(settings)
    return Config(**values)


def speed_config(dry_run: bool, images: int):
    """The speed comparison's config: R50-FPN, 1024 px, mixed precision, all layers."""
    return make_config(dry_run, BACKBONE="resnet50", IMAGES_PER_GPU=images,
                       MIXED_PRECISION=True)


def synthetic_images(config, count: int, seed: int = 0):
    """[(image uint8 HxWx3, masks bool HxWxN, class_ids)] of the synthetic shapes that
    colabrcnn.probe trains on (same seed, same instance limit)."""
    from colabrcnn.data.shapes import shapes
    size = int(config.IMAGE_SHAPE[0])
    ds = shapes(count, size, seed=seed, max_instances=min(4, config.MAX_GT_INSTANCES))
    out = []
    for i in ds.image_ids:
        masks, class_ids = ds.load_mask(i)
        out.append((ds.load_image(i), masks, class_ids))
    return out


def run_memory(spec, args):
    from colabrcnn import memory, probe
    config = make_config(args.dry_run, BACKBONE=BACKBONES[spec["preset"]],
                         IMAGES_PER_GPU=spec["images"], MIXED_PRECISION=spec["mixed"],
                         REMAT=spec["remat"], USE_MINI_MASK=spec["mini_mask"])
    est = memory.estimate_memory(config, spec["layers"], mixed_precision=spec["mixed"])
    got = probe.measure(config, spec["layers"], steps=args.steps, warmup=1, seed=0)
    return dict(status=got["status"], peak_bytes=got["peak_bytes"],
                rss_bytes=got["rss_bytes"], estimate_bytes=est.total,
                estimate_activations=est.activations,
                images_per_second=got["images_per_second"],
                error=got.get("error"))


def run_fit(spec, args):
    from colabrcnn import memory, probe
    gpu = spec["gpu"]
    base = make_config(args.dry_run)
    budget = memory.GPU_MEMORY[gpu]
    config, lines = memory.fit_to_gpu(base, "all", memory=budget, gpu=gpu, measure=False,
                                      verbose=False)
    # Decide mixed precision as on that GPU (float32 on a P100), not on this one.
    policy = memory.mixed_precision_policy(config, [gpu])
    config = config.copy(MIXED_PRECISION=policy or False)
    est = memory.estimate_memory(config, "all")
    steps = 2 if args.dry_run else 20
    got = probe.measure(config, "all", steps=steps - 1, warmup=1, seed=0)
    fits = got["status"] == "ok" and (got["peak_bytes"] is None or
                                     got["peak_bytes"] <= budget)
    return dict(status=got["status"], peak_bytes=got["peak_bytes"],
                rss_bytes=got["rss_bytes"], estimate_bytes=est.total,
                estimate_activations=est.activations, cap_bytes=budget, steps=steps,
                fits=fits, changes=lines[:-1], summary=lines[-1],
                images_per_second=got["images_per_second"], error=got.get("error"),
                settings={k: getattr(config, k) for k in (
                    "BACKBONE", "IMAGES_PER_GPU", "GRADIENT_ACCUMULATION_STEPS",
                    "MIXED_PRECISION", "REMAT", "USE_MINI_MASK", "TRAIN_ROIS_PER_IMAGE",
                    "IMAGE_MAX_DIM")})


def run_ours_train(spec, args):
    from colabrcnn import probe
    if spec.get("backend") == "torch":
        _torch_device(args)                    # the cap, as for torchvision
    config = speed_config(args.dry_run, 2)
    got = probe.measure(config, "all", steps=args.speed_steps, warmup=2, seed=0)
    return dict(status=got["status"], images_per_second=got["images_per_second"],
                step_seconds=got["step_seconds"], peak_bytes=got["peak_bytes"],
                warmup_seconds=got["warmup_seconds"], error=got.get("error"),
                rois_per_image=int(config.TRAIN_ROIS_PER_IMAGE))


def run_ours_infer(spec, args):
    import keras

    from colabrcnn import probe
    from colabrcnn.model.maskrcnn import MaskRCNN
    batch = spec["batch"] if not args.dry_run else min(spec["batch"], 2)
    config = speed_config(args.dry_run, batch)
    images = [im for im, _, _ in synthetic_images(config, batch)]
    keras.utils.set_random_seed(0)
    probe.free_memory()
    baseline = probe.reset_peak_memory()
    model = MaskRCNN("inference", config, model_dir=tempfile.mkdtemp())
    for _ in range(2):
        model.detect(images, verbose=0)        # compile, warm up
    reps = 2 if args.dry_run else 10
    start = time.perf_counter()
    for _ in range(reps):
        model.detect(images, verbose=0)        # returns NumPy: the device has finished
    seconds = (time.perf_counter() - start) / reps
    return dict(status="ok", images_per_second=batch / seconds, batch=batch,
                step_seconds=seconds, peak_bytes=probe.read_peak_memory(baseline))


def torchvision_model(config, dry_run):
    """torchvision's maskrcnn_resnet50_fpn, random weights, set up like our config:
    FrozenBatchNorm (our TRAIN_BN=False), the same ROIs per image, anchors per image,
    proposals after NMS, detection limits and image size."""
    if dry_run:
        # A CPU dry run: torchvision's compiled ops do not load beside torch's CPU
        # build; the tests' loader puts a Python NMS kernel in their place.
        sys.path.insert(0, os.path.join(REPO, "tests"))
        from torchvision_ref import load_torchvision
        load_torchvision()
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops.misc import FrozenBatchNorm2d
    name = "resnet18" if dry_run else "resnet50"
    backbone = resnet_fpn_backbone(backbone_name=name, weights=None,
                                   norm_layer=FrozenBatchNorm2d, trainable_layers=5)
    size = int(config.IMAGE_SHAPE[0])
    # Pre-NMS candidates stay torchvision's (2000/1000 per level; ours: PRE_NMS_LIMIT
    # over all levels); proposals after NMS, sampled anchors and ROIs, detections match.
    return MaskRCNN(backbone, num_classes=int(config.NUM_CLASSES), min_size=size,
                    max_size=size,
                    rpn_post_nms_top_n_train=int(config.POST_NMS_ROIS_TRAINING),
                    rpn_post_nms_top_n_test=int(config.POST_NMS_ROIS_INFERENCE),
                    rpn_batch_size_per_image=int(config.RPN_TRAIN_ANCHORS_PER_IMAGE),
                    rpn_nms_thresh=float(config.RPN_NMS_THRESHOLD),
                    box_batch_size_per_image=int(config.TRAIN_ROIS_PER_IMAGE),
                    box_positive_fraction=float(config.ROI_POSITIVE_RATIO),
                    box_nms_thresh=float(config.DETECTION_NMS_THRESHOLD),
                    box_detections_per_img=int(config.DETECTION_MAX_INSTANCES),
                    box_score_thresh=float(config.DETECTION_MIN_CONFIDENCE))


def _torch_device(args):
    import torch
    if torch.cuda.is_available():
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.cap_bytes / total))
        torch.cuda.reset_peak_memory_stats()
        return torch.device("cuda")
    return torch.device("cpu")


def _tensors(samples, device):
    import numpy as np
    import torch
    images, targets = [], []
    for image, masks, class_ids in samples:
        images.append(torch.from_numpy(image).permute(2, 0, 1).float().div(255).to(device))
        keep = masks.any(axis=(0, 1))               # an occluded shape can vanish
        masks, class_ids = masks[..., keep], np.asarray(class_ids)[keep]
        ys, xs = masks.any(1), masks.any(0)       # [H, N], [W, N]
        boxes = []
        for k in range(masks.shape[-1]):
            y, x = ys[:, k].nonzero()[0], xs[:, k].nonzero()[0]
            boxes.append([x[0], y[0], x[-1] + 1, y[-1] + 1])   # (x1, y1, x2, y2)
        targets.append({
            "boxes": torch.tensor(boxes, dtype=torch.float32, device=device),
            "labels": torch.as_tensor(class_ids, dtype=torch.int64, device=device),
            "masks": torch.from_numpy(masks.transpose(2, 0, 1).astype("uint8")).to(device)})
    return images, targets


def _sync(device):
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_torchvision_train(spec, args):
    import torch
    device = _torch_device(args)
    torch.manual_seed(0)
    config = speed_config(args.dry_run, 2)
    model = torchvision_model(config, args.dry_run).to(device).train()
    images, targets = _tensors(synthetic_images(config, 2), device)
    opt = torch.optim.SGD(model.parameters(), lr=float(config.LEARNING_RATE),
                          momentum=float(config.LEARNING_MOMENTUM))
    amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)

    def step():
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            losses = model(images, targets)
            loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return loss

    for _ in range(2):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(args.speed_steps):
        loss = step()
    float(loss)
    _sync(device)
    seconds = (time.perf_counter() - start) / args.speed_steps
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    return dict(status="ok", images_per_second=len(images) / seconds, step_seconds=seconds,
                peak_bytes=peak, amp=amp,
                rois_per_image=model.roi_heads.fg_bg_sampler.batch_size_per_image)


def run_torchvision_infer(spec, args):
    import torch
    device = _torch_device(args)
    torch.manual_seed(0)
    batch = spec["batch"] if not args.dry_run else min(spec["batch"], 2)
    config = speed_config(args.dry_run, batch)
    model = torchvision_model(config, args.dry_run).to(device).eval()
    images, _ = _tensors(synthetic_images(config, batch), device)
    amp = device.type == "cuda"

    def detect():
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            out = model(images)
        return [{k: v.cpu() for k, v in o.items()} for o in out]   # as ours: on the host

    for _ in range(2):
        detect()
    reps = 2 if args.dry_run else 10
    start = time.perf_counter()
    for _ in range(reps):
        detect()
    seconds = (time.perf_counter() - start) / reps
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    return dict(status="ok", images_per_second=batch / seconds, batch=batch,
                step_seconds=seconds, peak_bytes=peak, amp=amp)


RUNNERS = {("memory", None): run_memory, ("fit", None): run_fit,
           ("train_speed", "ours"): run_ours_train,
           ("infer_speed", "ours"): run_ours_infer,
           ("train_speed", "torchvision"): run_torchvision_train,
           ("infer_speed", "torchvision"): run_torchvision_infer}


def child(args):
    spec = json.loads(args.child)
    runner = RUNNERS[(spec["kind"], spec.get("impl"))]
    try:
        result = runner(spec, args)
    except Exception as e:  # noqa: BLE001 - a failed row is a result too
        from colabrcnn.errors import is_oom_error
        text = (str(e).strip().splitlines() or [""])[0][:200]
        result = {"status": "out of memory" if is_oom_error(e) else "error",
                  "error": f"{type(e).__name__}: {text}"}
    print("RESULT " + json.dumps(result, default=str), flush=True)


# =============================================================================
# The parent: environment, processes, report
# =============================================================================
def gpu_memory_total() -> int | None:
    from colabrcnn import hardware
    gpus = [d for d in hardware.devices() if d["kind"] == "gpu"]
    return gpus[0]["memory_bytes"] if gpus else None


def child_env(spec, args, total):
    env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
    env["KERAS_BACKEND"] = spec.get("backend", "jax")
    # Rows with the same config (the R101 goal row and fit_to_gpu's T4 choice, the R50
    # goal row and the speed row) compile the same step: share XLA's executables.
    env.update(JAX_COMPILATION_CACHE_DIR=args.jax_cache,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
    if args.dry_run:
        env.update(JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
        return env
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    if args.allocator == "platform":
        env["XLA_PYTHON_CLIENT_ALLOCATOR"] = "platform"
    if total:
        env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{min(1.0, cap_for(spec, args) / total):.4f}"
    return env


def cap_for(spec, args) -> int:
    if spec["kind"] == "fit":
        from colabrcnn import memory
        return int(memory.GPU_MEMORY[spec["gpu"]])
    return int(args.cap_bytes)


def run_row(spec, args, total, deadline) -> dict:
    row = dict(spec)
    if spec.get("impl") == "torchvision" and importlib.util.find_spec("torchvision") is None:
        row.update(status="not importable", error="torchvision is not installed here")
        return row
    left = deadline - time.time()
    if left < 20:
        row.update(status="not run", error="time budget of the run used up")
        return row
    cmd = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec),
           "--out", args.out, "--steps", str(args.steps),
           "--speed-steps", str(args.speed_steps), "--cap-gib", str(args.cap_gib)]
    if args.dry_run:
        cmd.append("--dry-run")
    timeout = min(args.row_timeout, left)
    start = time.time()
    try:
        proc = subprocess.run(cmd, env=child_env(spec, args, total), capture_output=True,
                              text=True, timeout=timeout, cwd=REPO)
        line = next((t for t in proc.stdout.splitlines() if t.startswith("RESULT ")), None)
        if line is None:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:] or ["?"]
            oom = any(k in " ".join(tail) for k in ("RESOURCE_EXHAUSTED", "out of memory"))
            row.update(status="out of memory" if oom else "error",
                       error=f"exit {proc.returncode}: {' | '.join(tail)[:300]}")
        else:
            row.update(json.loads(line[7:]))
    except subprocess.TimeoutExpired:
        row.update(status="timeout", error=f"no result after {timeout:.0f} s")
    row["seconds"] = round(time.time() - start, 1)
    row["cap_bytes"] = row.get("cap_bytes") or cap_for(spec, args)
    return row


def _ratio(a, b):
    return a / b if a and b else None


def summarize(rows, dry_run) -> dict:
    by_id = {r["id"]: r for r in rows}
    out = {}
    # Memory: estimate / measured per row; the overhead that would make each exact.
    overheads = []
    for r in rows:
        if r["kind"] in ("memory", "fit"):
            r["estimate_over_measured"] = _ratio(r.get("estimate_bytes"), r.get("peak_bytes"))
            act, est, peak = (r.get("estimate_activations"), r.get("estimate_bytes"),
                              r.get("peak_bytes"))
            if act and est and peak and r.get("status") == "ok":
                from colabrcnn.memory import ACTIVATION_OVERHEAD
                rest = est - act
                k = ACTIVATION_OVERHEAD * (peak - rest) / act
                r["overhead_for_exact"] = k
                overheads.append(k)
    ratios = [r["estimate_over_measured"] for r in rows
              if r["kind"] == "memory" and r.get("estimate_over_measured")]
    out["estimate_within_15pct"] = (all(abs(q - 1) <= 0.15 for q in ratios)
                                    if ratios else None)
    out["estimate_rows_off_by_more_than_15pct"] = [
        r["id"] for r in rows if r["kind"] == "memory" and r.get("estimate_over_measured")
        and abs(r["estimate_over_measured"] - 1) > 0.15]
    if overheads:
        from colabrcnn.memory import ACTIVATION_OVERHEAD
        out["recalibration"] = {
            "current_ACTIVATION_OVERHEAD": ACTIVATION_OVERHEAD,
            "median_overhead_for_exact": statistics.median(overheads),
            "min": min(overheads), "max": max(overheads), "rows": len(overheads)}
    # Speed ratios: ours / torchvision.
    for key, a, b in (("train_ratio", "train ours (jax)", "train torchvision"),
                      ("infer_ratio_batch_1", "inference ours (jax) batch 1",
                       "inference torchvision batch 1"),
                      ("infer_ratio_batch_8", "inference ours (jax) batch 8",
                       "inference torchvision batch 8")):
        out[key] = _ratio((by_id.get(a) or {}).get("images_per_second"),
                          (by_id.get(b) or {}).get("images_per_second"))
    goal_row = by_id.get("R101 all mixed 2 images") or {}
    out["memory_r101_all_mixed_2"] = goal_row.get("peak_bytes")
    heads8 = by_id.get("R101 heads 8 images")
    out["heads_r101_8_fit"] = None if heads8 is None or heads8.get("status") in (
        "not run", "timeout") else heads8.get("status") == "ok"
    out["fit_presets_run_under_cap"] = {r["gpu"]: r.get("fits") for r in rows
                                        if r["kind"] == "fit"}
    return out


def goal_lines(summary) -> list[tuple[str, str, str]]:
    def gib(n):
        return "n/a" if n is None else f"{n / GiB:.2f} GiB"

    def num(x):
        return "n/a" if x is None else f"{x:.2f}"

    figures = {
        "memory_r101_all_mixed_2": gib(summary.get("memory_r101_all_mixed_2")),
        "heads_r101_8_fit": {True: "fits", False: "does not fit", None: "n/a"}[
            summary.get("heads_r101_8_fit")],
        "train_ratio": num(summary.get("train_ratio")),
        "infer_ratio": f"{num(summary.get('infer_ratio_batch_1'))} (batch 1), "
                       f"{num(summary.get('infer_ratio_batch_8'))} (batch 8)",
        "estimate_within": {True: "yes", False: "no: " + ", ".join(
            summary.get("estimate_rows_off_by_more_than_15pct") or []), None: "n/a"}[
            summary.get("estimate_within_15pct")],
    }
    return [(what, goal, figures[key]) for key, what, goal in GOALS]


def _gib(n):
    return "" if n is None else f"{n / GiB:.2f}"


def _f(x, fmt="{:.2f}"):
    return "" if x is None else fmt.format(x)


def markdown(report) -> str:
    meta, rows, summary = report["meta"], report["rows"], report["summary"]
    lines = [f"# GPU check ({'DRY RUN, CPU, tiny settings: not GPU figures' if meta['dry_run'] else meta['gpu']})",
             "",
             f"{meta['date']} · {meta['gpu']} · backend {meta['backend']} · cap "
             f"{meta['cap_bytes'] / GiB:.0f} GiB ({meta['memory_limit']}) · "
             f"colabrcnn {meta['versions'].get('colabrcnn')}, keras "
             f"{meta['versions'].get('keras')}, jax {meta['versions'].get('jax')}, torch "
             f"{meta['versions'].get('torch')}, torchvision {meta.get('torchvision')}",
             "", "## Goals (issue 19)", "", "| goal | target | measured |", "|---|---|---|"]
    lines += [f"| {what} | {goal} | {fig} |" for what, goal, fig in goal_lines(summary)]
    lines += ["", "## Memory (one lever at a time; peak under the cap vs "
              "memory.estimate_memory)", "",
              "| row | layers | precision | REMAT | images | mini-masks | measured peak GiB "
              "| estimate GiB | estimate/measured | status |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["kind"] != "memory":
            continue
        lines.append(
            f"| {r['id']} | {r['layers']} | {'mixed' if r['mixed'] else 'float32'} | "
            f"{'on' if r['remat'] else 'off'} | {r['images']} | "
            f"{'on' if r['mini_mask'] else 'off'} | {_gib(r.get('peak_bytes'))} | "
            f"{_gib(r.get('estimate_bytes'))} | {_f(r.get('estimate_over_measured'))} | "
            f"{_status(r)} |")
    lines += ["", "## fit_to_gpu presets (20 steps under that GPU's memory)", "",
              "| GPU | settings chosen | measured peak GiB | estimate GiB | cap GiB | fits "
              "| status |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["kind"] != "fit":
            continue
        settings = ", ".join(f"{k}={v}" for k, v in (r.get("settings") or {}).items())
        lines.append(f"| {r['gpu']} | {settings} | {_gib(r.get('peak_bytes'))} | "
                     f"{_gib(r.get('estimate_bytes'))} | {_gib(r.get('cap_bytes'))} | "
                     f"{r.get('fits', '')} | {_status(r)} |")
    lines += ["", "## Speed (same images; ours mixed precision, torchvision AMP)", "",
              "| row | img/s | s/step | peak GiB | status |", "|---|---|---|---|---|"]
    for r in rows:
        if r["kind"] in ("train_speed", "infer_speed"):
            lines.append(f"| {r['id']} | {_f(r.get('images_per_second'))} | "
                         f"{_f(r.get('step_seconds'), '{:.3f}')} | {_gib(r.get('peak_bytes'))} "
                         f"| {_status(r)} |")
    lines += ["", f"Ratios ours / torchvision: training {_f(summary.get('train_ratio'))}, "
                  f"inference batch 1 {_f(summary.get('infer_ratio_batch_1'))}, batch 8 "
                  f"{_f(summary.get('infer_ratio_batch_8'))}."]
    rec = summary.get("recalibration")
    lines += ["", "## Recalibration hint", ""]
    if rec:
        lines.append(
            f"ACTIVATION_OVERHEAD is {rec['current_ACTIVATION_OVERHEAD']}; the value that "
            f"would make each row's estimate exact has median "
            f"{rec['median_overhead_for_exact']:.2f} (range {rec['min']:.2f} to "
            f"{rec['max']:.2f}, {rec['rows']} rows). Per row: "
            + "; ".join(f"{r['id']} {r['overhead_for_exact']:.2f}" for r in rows
                        if r.get("overhead_for_exact") is not None) + ".")
    else:
        lines.append("No measured peaks (no GPU): nothing to recalibrate from.")
    return "\n".join(lines) + "\n"


def _status(r):
    s = r.get("status", "")
    return s if s in ("ok", "not importable") or not r.get("error") else \
        f"{s}: {r['error'][:80]}".replace("|", "/")


def write(report, out):
    os.makedirs(out, exist_ok=True)
    tmp = os.path.join(out, "gpu_check.json.tmp")
    with open(tmp, "w") as f:
        json.dump(report, f, indent=1, default=str)
    os.replace(tmp, os.path.join(out, "gpu_check.json"))
    with open(os.path.join(out, "gpu_check.md"), "w") as f:
        f.write(markdown(report))


def meta_info(args, total):
    from colabrcnn import env, hardware
    gpus = [d for d in hardware.devices() if d["kind"] == "gpu"]
    try:
        from importlib.metadata import version
        tv = version("torchvision")
    except Exception:
        tv = None
    mem = ("JAX: dry run on the CPU, no cap" if args.dry_run else
           f"JAX: XLA_PYTHON_CLIENT_MEM_FRACTION=cap/{(total or 0) / GiB:.0f} GiB, "
           f"allocator {args.allocator}; torch: set_per_process_memory_fraction")
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime(
                "%Y-%m-%d %H:%M UTC"),
            "dry_run": args.dry_run, "gpu": gpus[0]["name"] if gpus else "no GPU (CPU)",
            "devices": hardware.devices(), "backend": "jax",
            "versions": env.versions(), "torchvision": tv, "cap_bytes": args.cap_bytes,
            "memory_limit": mem, "python": sys.version.split()[0]}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT") or "runs/gpu_check")
    p.add_argument("--dry-run", action="store_true",
                   help="tiny settings on the CPU, one row of each kind (a minute or two)")
    p.add_argument("--cap-gib", type=float, default=CAP_BYTES / GiB,
                   help="memory cap per process in GiB (default 15, a T4)")
    p.add_argument("--jobs", type=int, default=None,
                   help="memory rows run at once (default: as many 15 GiB processes as "
                        "90%% of the GPU holds, at most 8: 8 on an H200, 4 on an H100; 1 "
                        "in the dry run); speed rows always run alone")
    p.add_argument("--budget-s", type=float, default=None,
                   help="seconds for all rows: a row is stopped when they run out, and "
                        "rows not started are recorded as such (default 440 on a GPU, so "
                        "the run stays under 8 minutes; 1500 in the dry run)")
    p.add_argument("--speed-reserve-s", type=float, default=None,
                   help="seconds of the budget kept for the speed rows (default 210 on "
                        "a GPU, 0 in the dry run)")
    p.add_argument("--row-timeout", type=float, default=None,
                   help="seconds per row (default 240; 900 in the dry run)")
    p.add_argument("--steps", type=int, default=2, help="timed steps of a memory row")
    p.add_argument("--speed-steps", type=int, default=None,
                   help="timed steps of a speed row (default 20; 2 in the dry run)")
    p.add_argument("--rows", default=None,
                   help="comma-separated substrings of row ids to run (default: all)")
    p.add_argument("--allocator", choices=["bfc", "platform"], default="bfc",
                   help="JAX allocator: bfc (with the memory fraction; reports the peak) "
                        "or platform (XLA_PYTHON_CLIENT_ALLOCATOR=platform)")
    p.add_argument("--jax-cache", default=os.path.join(tempfile.gettempdir(),
                                                      "colabrcnn-gpu-check-jax-cache"),
                   help="JAX's persistent compilation cache, shared by the rows")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.cap_bytes = int(args.cap_gib * GiB)
    dry = args.dry_run
    args.speed_reserve_s = args.speed_reserve_s if args.speed_reserve_s is not None \
        else (0 if dry else 210)
    # A CPU compiles the tiny training step in about 30 s, much longer on a busy one.
    args.budget_s = args.budget_s or (1500 if dry else 440)
    args.row_timeout = args.row_timeout or (900 if dry else 240)
    args.speed_steps = args.speed_steps or (2 if dry else 20)
    args.out = os.path.abspath(args.out)
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.child is not None:
        child(args)
        return 0
    start = time.time()
    deadline = start + args.budget_s
    total = None if args.dry_run else gpu_memory_total()
    if not args.jobs:   # as many capped processes as fit the GPU, at most 8
        args.jobs = 1 if args.dry_run or not total else \
            max(1, min(8, int(0.9 * total // args.cap_bytes)))
    rows = all_rows(args.dry_run)
    if args.rows:
        keys = [k.strip() for k in args.rows.split(",") if k.strip()]
        rows = [r for r in rows if any(k in r["id"] for k in keys)]
    report = {"meta": meta_info(args, total), "goals": [
        {"key": k, "what": w, "target": g} for k, w, g in GOALS], "rows": [], "summary": {}}
    done = {}

    def record(row):
        done[row["id"]] = row
        report["rows"] = [done[r["id"]] for r in rows if r["id"] in done]
        report["summary"] = summarize(report["rows"], args.dry_run)
        report["meta"]["seconds"] = round(time.time() - start, 1)
        write(report, args.out)
        print(f"[{time.time() - start:6.0f} s] {row['id']}: {row.get('status')}"
              + (f" ({row['error'][:160]})" if row.get("error") and
                 row.get("status") != "ok" else ""), flush=True)

    parallel = [r for r in rows if r["kind"] in ("memory", "fit")]
    alone = [r for r in rows if r not in parallel]
    print(f"gpu_check: {len(rows)} rows ({len(parallel)} memory/fit rows {args.jobs} at "
          f"a time, then {len(alone)} speed rows one at a time); writing {args.out}",
          flush=True)
    # The memory rows leave --speed-reserve-s of the budget to the speed rows.
    memory_deadline = deadline - (args.speed_reserve_s if alone else 0)
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run_row, r, args, total, memory_deadline) for r in parallel]
        for fut in concurrent.futures.as_completed(futures):
            record(fut.result())
    for r in alone:
        record(run_row(r, args, total, deadline))
    write(report, args.out)
    print()
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
