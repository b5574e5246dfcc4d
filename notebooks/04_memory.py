# ---
# jupyter:
#   accelerator: GPU
#   colab:
#     gpuType: T4
#     provenance: []
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: accelerator,colab
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Out of GPU memory? The checklist, measured on your GPU
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/OWNER/colabrcnn/blob/main/notebooks/04_memory.ipynb)
#
# Every way to make Mask R-CNN training fit a 15 GB GPU is a Config setting. This
# notebook trains a few steps with each one on the GPU you have, measures peak memory
# and speed, and prints a table, so you pick levers by numbers instead of guesses.
#
# The levers, cheapest in accuracy first (what `colabrcnn.memory.fit_to_gpu` applies,
# in this order):
#
# | lever | setting | costs |
# |---|---|---|
# | mixed precision | `MIXED_PRECISION = True` | nothing on T4/L4/A100 (tensor cores); not faster on P100 |
# | recompute activations | `REMAT = True` | ~20-30% slower steps |
# | mini-masks | `USE_MINI_MASK = True` (default) | coarser targets for big objects |
# | fewer ROIs | `TRAIN_ROIS_PER_IMAGE = 128 / 64` | noisier head gradients |
# | fewer GT slots | `MAX_GT_INSTANCES = 50 / 35` | crowded images lose instances per step |
# | smaller batch, same effective batch | `IMAGES_PER_GPU = 1`, `GRADIENT_ACCUMULATION_STEPS = 2` | slower per image |
# | train on crops | `IMAGE_RESIZE_MODE = "crop"`, `IMAGE_MIN_DIM = 512` | less context |
# | smaller backbone | `BACKBONE = "resnet50"` | ~2 AP; no COCO weights (use ImageNet) |
# | smaller images | `IMAGE_MAX_DIM = 768 / 512` | small objects suffer |
# | train fewer layers | `layers="heads"` / `"4+"` | the frozen part does not adapt |
#
# **Colab:** Runtime > Change runtime type > T4 GPU, then Run all (about 10 minutes for
# all rows at 1024 px). **Kaggle:** import from GitHub (`OWNER/colabrcnn`,
# `notebooks/04_memory.ipynb`), Accelerator GPU T4 x2 or P100, Internet on.

# %% [markdown]
# ## Parameters
# The model to measure: by default matterport's (ResNet-101, 1024x1024, 2 images per
# step, all layers, 81 classes). Set them to your own training settings.

# %% tags=["parameters"]
SMOKE = False      # True: a tiny model and three rows on a CPU (CI); no memory figures there
PACKAGE = "git+https://github.com/OWNER/colabrcnn.git"   # what the install cell installs
BACKBONE = "resnet101"
IMAGE_SIZE = 1024      # IMAGE_MAX_DIM
IMAGES_PER_GPU = 2
NUM_CLASSES = 81
LAYERS = "all"         # the layers you train: "all", "4+", "heads", ...
STEPS = 5              # timed steps per row (after one untimed warm-up step)
ROWS = None            # None: every row; or a list of row names to measure
OUT = "runs/memory"    # the table (JSON) and the chart go here

# %% [markdown]
# ## Install

# %%
import importlib.metadata
import importlib.util
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")   # quieter TensorFlow start-up


def _versions(names=("tensorflow", "keras", "numpy")):
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


if SMOKE or os.environ.get("COLABRCNN_SKIP_INSTALL"):
    print("SMOKE/CI run: not installing anything")
elif importlib.util.find_spec("colabrcnn") is not None:
    print("colabrcnn is already installed")
else:
    before = _versions()
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", PACKAGE])
    changed = {k: (v, _versions()[k]) for k, v in before.items() if _versions()[k] != v}
    if changed:
        print(f"pip changed {changed}: Runtime > Restart session, then run all again")
    else:
        print("installed colabrcnn; TensorFlow, Keras and NumPy unchanged")

# %% [markdown]
# ## The GPU

# %%
from colabrcnn import env
from colabrcnn import notebook as nb

print(env.format_report(env.doctor()))
GPU = nb.gpu_name()
print("\nmeasuring on:", GPU or "CPU (no memory figures: those need a GPU)")

# %% [markdown]
# ## The rows
# Each row changes one thing from the baseline (float32, your settings).

# %%
from colabrcnn import Config, memory

base = Config(NAME="memory", NUM_CLASSES=NUM_CLASSES, BACKBONE=BACKBONE,
              IMAGE_MAX_DIM=IMAGE_SIZE, IMAGE_MIN_DIM=min(800, IMAGE_SIZE),
              IMAGES_PER_GPU=IMAGES_PER_GPU, MIXED_PRECISION=False)
if SMOKE:
    base = base.copy(**nb.SMOKE_SETTINGS)
    STEPS = 1
    ROWS = ["baseline (float32)", "heads only"]

size = int(base.IMAGE_MAX_DIM)
half = max(64, size // 2 // 64 * 64)
smaller = max(64, size * 3 // 4 // 64 * 64)
candidates = [   # (row, settings changed, layers trained, does it apply here?)
    ("baseline (float32)", {}, LAYERS, True),
    ("mixed precision", {"MIXED_PRECISION": True}, LAYERS, True),
    ("REMAT", {"REMAT": True}, LAYERS, base.TRAIN_BN is not True),
    ("mixed precision + REMAT", {"MIXED_PRECISION": True, "REMAT": True}, LAYERS,
     base.TRAIN_BN is not True),
    ("TRAIN_ROIS_PER_IMAGE 64", {"TRAIN_ROIS_PER_IMAGE": 64}, LAYERS,
     base.TRAIN_ROIS_PER_IMAGE > 64),
    ("MAX_GT_INSTANCES 35", {"MAX_GT_INSTANCES": 35}, LAYERS, base.MAX_GT_INSTANCES > 35),
    ("1 image per step, accumulate 2",
     {"IMAGES_PER_GPU": max(1, base.IMAGES_PER_GPU // 2),
      "GRADIENT_ACCUMULATION_STEPS": 2 * base.GRADIENT_ACCUMULATION_STEPS}, LAYERS,
     base.IMAGES_PER_GPU > 1),
    (f"crops of {half}", {"IMAGE_RESIZE_MODE": "crop", "IMAGE_MIN_DIM": half}, LAYERS,
     half < size),
    ("ResNet-50", {"BACKBONE": "resnet50"}, LAYERS, base.BACKBONE == "resnet101"),
    (f"images of {smaller}", {"IMAGE_MAX_DIM": smaller,
                              "IMAGE_MIN_DIM": min(base.IMAGE_MIN_DIM, smaller)}, LAYERS,
     smaller < size),
    ("layers 4+", {}, "4+", LAYERS != "4+"),
    ("heads only", {}, "heads", LAYERS != "heads"),
]
rows = []
for name, change, layers, applies in candidates:
    if not applies:
        continue
    cfg = base.copy(**change)
    estimate = memory.estimate_memory(cfg, layers, devices=[GPU or "T4"]).total
    rows.append({"lever": name, "layers": layers, "config": cfg, "estimate_GiB":
                 estimate / memory.GiB})
print(nb.format_table(rows, ["lever", "layers", "estimate_GiB"]))

# %% [markdown]
# ## Measure
# A few training steps per row on synthetic images of the same size. Rows that run
# out of memory say so; the next row still runs. Mixed precision is measured on GPUs
# only (float16 on a CPU is slow and tells nothing).

# %%
for row in rows:
    if ROWS is not None and row["lever"] not in ROWS:
        row["status"] = "not measured"
        continue
    if row["config"].MIXED_PRECISION is True and GPU is None:
        row["status"] = "GPU only"
        continue
    with nb.timer(row["lever"]):
        got = nb.measure_step(row["config"], row["layers"], steps=STEPS)
    row["peak_GiB"] = None if got["peak_bytes"] is None else got["peak_bytes"] / memory.GiB
    row["s_per_step"] = got["step_seconds"]
    row["images_per_s"] = got["images_per_second"]
    row["status"] = got["status"]
baseline = rows[0].get("peak_GiB") or rows[0]["estimate_GiB"]
for row in rows:
    measured = row.get("peak_GiB")
    row["vs_baseline"] = None if measured is None or not baseline else \
        f"{measured / baseline:.0%}"
table = nb.format_table(rows, ["lever", "layers", "estimate_GiB", "peak_GiB", "vs_baseline",
                               "s_per_step", "images_per_s", "status"])
print(table)

# %% [markdown]
# ## Chart and files
# Peak memory per row (the estimate where nothing was measured), with the GPU's memory
# as a line; the table is also written as JSON.

# %%
import json

import matplotlib.pyplot as plt

os.makedirs(OUT, exist_ok=True)
labels = [f"{r['lever']} ({r['layers']})" for r in rows]
values = [r.get("peak_GiB") or r["estimate_GiB"] for r in rows]
measured = [r.get("peak_GiB") is not None for r in rows]
fig, ax = plt.subplots(figsize=(8, 0.4 * len(rows) + 1.5))
ax.barh(labels, values, color=["tab:blue" if m else "tab:gray" for m in measured])
ax.invert_yaxis()
ax.set_xlabel("GiB (blue: measured peak, gray: estimate)")
gpu_bytes = next((d["memory_bytes"] for d in env.devices() if d["kind"] == "gpu"), None)
if gpu_bytes:
    ax.axvline(gpu_bytes / memory.GiB, color="red", linestyle="--", label=GPU)
    ax.legend()
ax.set_title(f"training memory per lever, {base.BACKBONE} {size}px, "
             f"{base.IMAGES_PER_GPU} images/step")
fig.tight_layout()
fig.savefig(os.path.join(OUT, "memory_levers.png"), dpi=100)
plt.show()
with open(os.path.join(OUT, "memory_levers.json"), "w") as f:
    json.dump({"gpu": GPU, "backend": env.keras_backend(),
               "rows": [{k: v for k, v in r.items() if k != "config"} for r in rows]},
              f, indent=2)
with open(os.path.join(OUT, "memory_levers.txt"), "w") as f:
    f.write(table + "\n")
print("written:", os.path.join(OUT, "memory_levers.json"), "and memory_levers.png")

# %% [markdown]
# ## What to use
# `fit_to_gpu` turns your settings into ones that fit, cheapest lever first, and says
# what each change costs. Use its config in notebook 02 (it runs there by itself with
# `FIT_GPU = True`), or `colabrcnn train --fit-gpu`.

# %%
if GPU:
    fitted, lines = memory.fit_to_gpu(base.copy(MIXED_PRECISION="auto"), layers=LAYERS,
                                      measure=False)
    try:
        preset = memory.preset_for_gpu(GPU)
        print(f"\npreset for {preset['gpu']}: {preset['overrides']} - {preset['note']}")
    except Exception as e:  # a GPU without a preset
        print(f"\n{e}")
else:
    print("No GPU here: the plan for a Colab T4 (15 GB):")
    fitted, lines = memory.fit_to_gpu(base.copy(MIXED_PRECISION="auto"), layers=LAYERS,
                                      memory="15GB", gpu="T4", measure=False)
print("\nIf training still runs out of memory, in this order:")
for line in memory.oom_advice(fitted, LAYERS, devices=[GPU or "T4"]):
    print(" -", line)
