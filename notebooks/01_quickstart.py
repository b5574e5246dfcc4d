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
# # colabrcnn quickstart: Mask R-CNN in minutes, no data needed
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/OWNER/colabrcnn/blob/main/notebooks/01_quickstart.ipynb)
#
# Trains a small Mask R-CNN from scratch on synthetic squares, circles and triangles,
# detects on images it has never seen, draws the masks and prints COCO metrics.
# About two minutes on a free Colab T4; nothing to upload.
#
# **Colab:** Runtime > Change runtime type > T4 GPU, then Runtime > Run all.
#
# **Kaggle:** File > Import Notebook > GitHub, `OWNER/colabrcnn`,
# `notebooks/01_quickstart.ipynb`; Settings > Accelerator > GPU T4 x2 (or P100) and
# Settings > Internet on (for the install); then Run All.
#
# Next: `02_train_on_your_data` (your annotations), `03_predict`, `04_memory`.

# %% [markdown]
# ## Parameters
# `SMOKE = True` shrinks everything (64-pixel images, one step per epoch) so the
# notebook runs on a CPU in about a minute: that is how CI checks it. Leave it `False`.

# %% tags=["parameters"]
SMOKE = False        # True: tiny images and steps, runs on a CPU (CI); the model learns nothing
PACKAGE = "git+https://github.com/OWNER/colabrcnn.git"   # what the install cell installs
OUT = "runs/quickstart"   # run folder: checkpoints, log.csv, loss.png, pictures, metrics
EPOCHS = 40               # epochs of 20 steps (the `colabrcnn demo` recipe)
TRAIN_IMAGES = 500
VAL_IMAGES = 8
SEED = 0

# %% [markdown]
# ## Install
# Installs the package only. Its dependencies are lower bounds that Colab's and Kaggle's
# TensorFlow, Keras and NumPy already satisfy, so pip keeps those and no restart is
# needed. The cell checks that and says so if anything changed.

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
# ## Check the machine
# Platform, versions, GPU and memory, and what to fix. No GPU on Colab? Runtime > Change
# runtime type > T4 GPU.

# %%
import colabrcnn
from colabrcnn import env
from colabrcnn import notebook as nb

report = env.doctor()
print(env.format_report(report))
if not nb.has_gpu() and not SMOKE:
    print("\nNo GPU: this runs, but slowly (about five minutes on 2 CPU cores).")

# %% [markdown]
# ## Data: built-in synthetic shapes
# `colabrcnn.data.shapes(count, size, seed)` is a ready dataset with matterport's
# `Dataset` interface: `load_image(i)` gives an RGB image, `load_mask(i)` the instance
# masks and class ids.

# %%
import numpy as np
import keras

from colabrcnn import MaskRCNN, evaluate, utils, visualize
from colabrcnn.data import shapes
from colabrcnn.demo import ShapesConfig, scratch_optimizer

if SMOKE:
    EPOCHS, TRAIN_IMAGES, VAL_IMAGES = 1, 8, 2

config = ShapesConfig()
if SMOKE:
    config = config.copy(**{**nb.SMOKE_SETTINGS, "STEPS_PER_EPOCH": 2})
size = int(config.IMAGE_MAX_DIM)
keras.utils.set_random_seed(SEED)
train_set = shapes(TRAIN_IMAGES, size, seed=SEED)
val_set = shapes(VAL_IMAGES, size, seed=SEED + 1000)
print(f"{len(train_set.image_ids)} training and {len(val_set.image_ids)} validation images "
      f"of {size}x{size}; classes: {train_set.class_names[1:]}")

examples = []
for image_id in train_set.image_ids[:4]:
    image = train_set.load_image(image_id)
    masks, class_ids = train_set.load_mask(image_id)
    examples.append(visualize.draw_instances(image, utils.extract_bboxes(masks), masks,
                                             class_ids, train_set.class_names))
nb.show_image(np.concatenate(examples, axis=1), "training images with their masks")

# %% [markdown]
# ## Train
# A small model (ResNet-18 backbone, 128x128 images) from scratch, all layers, Adam with
# a cosine decay. Checkpoints go to `OUT` every epoch: run this cell again after a
# disconnect and `train()` continues from the last one (`resume="auto"`).

# %%
print(config)
model = MaskRCNN("training", config, model_dir=OUT)
with nb.timer("training"):
    model.train(train_set, val_set, learning_rate=0.001, epochs=EPOCHS, layers="all",
                optimizer=scratch_optimizer(config, 0.001, EPOCHS), seed=SEED,
                verbose=2 if SMOKE else 1)
print("run folder:", model.log_dir)

# %%
import matplotlib.pyplot as plt

log_csv = os.path.join(model.log_dir, "log.csv")
if os.path.exists(log_csv):
    visualize.plot_history(log_csv, os.path.join(model.log_dir, "loss.png"))
    plt.show()

# %% [markdown]
# ## Detect on unseen images
# Left: ground truth; right: prediction with scores. A training-mode model can
# `detect()` too: both graphs share one set of weights.

# %%
images = [val_set.load_image(i) for i in val_set.image_ids]
results = model.detect(images)
pictures = []
for image_id, image, r in zip(val_set.image_ids, images, results):
    gt_masks, gt_ids = val_set.load_mask(image_id)
    left = visualize.draw_instances(image, utils.extract_bboxes(gt_masks), gt_masks, gt_ids,
                                    val_set.class_names)
    right = visualize.draw_instances(image, r["rois"], r["masks"], r["class_ids"],
                                     val_set.class_names, r["scores"])
    gap = np.full((image.shape[0], 4, 3), 255, np.uint8)
    path = os.path.join(model.log_dir, f"val_{image_id:03d}.png")
    visualize.save_image(path, np.concatenate([left, gap, right], axis=1))
    pictures.append(path)
print(f"{len(pictures)} pictures in {model.log_dir}")
nb.browse_images(pictures)

# %% [markdown]
# ## Metrics
# COCO metrics through pycocotools (`segm` = masks, `bbox` = boxes; AP50 is the usual
# headline number), written to `coco_metrics.json` in the run folder; and matterport's
# mean AP at IoU 0.5.

# %%
metrics = evaluate.coco_metrics(model, val_set,
                                out_json=os.path.join(model.log_dir, "coco_metrics.json"))
mask_ap50 = evaluate.evaluate_ap(model, val_set, verbose=0)
print(f"\nmask AP50 (COCO): {metrics['segm']['AP50']:.3f}   matterport mAP@0.5: "
      f"{mask_ap50:.3f}")
print("metrics file:", os.path.join(model.log_dir, "coco_metrics.json"))

# %% [markdown]
# ## What next
# * Your own annotations (VIA, LabelMe, COCO or mask PNGs): `02_train_on_your_data`.
# * Predict with a trained model on images, folders and videos: `03_predict`.
# * Out of GPU memory? `04_memory` measures every lever on your GPU.
#
# The same from a terminal: `colabrcnn demo` (this notebook), `colabrcnn train
# --annotations DATA` (notebook 02), `colabrcnn predict`, `colabrcnn evaluate`.
