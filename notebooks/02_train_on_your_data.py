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
# # Train Mask R-CNN on your own annotated images
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/OWNER/colabrcnn/blob/main/notebooks/02_train_on_your_data.ipynb)
#
# From your annotations to a trained model, its metrics and its mistakes:
# Drive > data > check > browse > split > fit to the GPU > COCO weights > train the
# heads > fine-tune deeper layers > evaluate > worst images > export.
#
# **Annotations:** VIA 1.x/2.x (project file or exported JSON), LabelMe (a folder of
# JSON files), COCO instances JSON, or a folder with `images/` and `masks/` (PNG masks).
# The format is detected. Images sit next to the annotations, or set `IMAGE_DIR`.
#
# **Colab:** Runtime > Change runtime type > T4 GPU. Put your data on Google Drive
# (a folder, or better one `.zip`: Drive is slow with many small files), set `DATA`
# below, then Runtime > Run all. Checkpoints go to Drive.
#
# **Disconnected?** Reconnect and Run all again: the training cells continue from the
# last checkpoint on Drive (`train(resume="auto")`), a finished stage says
# "nothing to do".
#
# **Kaggle:** File > Import Notebook > GitHub (`OWNER/colabrcnn`,
# `notebooks/02_train_on_your_data.ipynb`); Settings > Accelerator > GPU T4 x2 or P100,
# Internet on; add your data with "Add data" and set `DATA` to its folder under
# `/kaggle/input/`. Checkpoints go to `/kaggle/working/runs` (the notebook's output).

# %% [markdown]
# ## Parameters

# %% tags=["parameters"]
SMOKE = False      # True: the shipped coins sample, 64-px images, 1 step per stage (CPU, CI)
PACKAGE = "git+https://github.com/OWNER/colabrcnn.git"   # what the install cell installs
DATA = "/content/drive/MyDrive/my_dataset"   # folder, annotation file, .zip, Drive link/id, or "upload"
IMAGE_DIR = None       # the images' folder, if not next to the annotations
VAL_DATA = None        # separate validation annotations; None: split DATA
VAL_FRACTION = 0.2     # share of images kept for validation when splitting
NAME = "mydata"        # names the run folder and the checkpoints
MODEL_DIR = None       # None: Drive (Colab), /kaggle/working/runs (Kaggle), ./runs (else)
WEIGHTS = "coco"       # "coco" (matterport's COCO model), "imagenet", a file path, or None
IMAGE_SIZE = 1024      # IMAGE_MAX_DIM; smaller is faster and needs less memory
IMAGES_PER_GPU = 2
EPOCHS_HEADS = 20      # stage 1: only the heads (the backbone keeps its COCO features)
EPOCHS_FINETUNE = 20   # stage 2: deeper layers too, at a tenth of the learning rate
FINETUNE_LAYERS = "4+" # "3+", "4+", "5+" or "all"
LEARNING_RATE = 0.001
AUGMENT = "medium"     # "none", "light" or "medium"
UPRIGHT = True         # False for microscopy, aerial or top-down pictures (adds vertical flips)
FIT_GPU = True         # change memory settings until training fits the GPU (prints why)
ON_OOM = "reduce"      # out of memory while training: "reduce" the batch and go on, or "raise"
DETECTION_MIN_CONFIDENCE = 0.7
WORST_K = 8            # worst validation images to show
DOWNLOAD = False       # also download the exported model to this computer (Colab)

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
# ## Machine and Google Drive
# On Colab this asks for access to your Drive (checkpoints and the weight cache go
# there, so they survive a disconnect). On Kaggle it lists the attached datasets;
# elsewhere it does nothing.

# %%
from colabrcnn import env
from colabrcnn import notebook as nb

print(env.format_report(env.doctor()))
if not SMOKE:
    env.mount_drive()
if nb.platform() == "kaggle":
    print("Kaggle datasets:", nb.kaggle_inputs() or "none attached (Add data)")
if MODEL_DIR is None:
    MODEL_DIR = nb.default_model_dir("runs")
print("checkpoints go to", MODEL_DIR)

# %% [markdown]
# ## Bring the data
# `DATA` can be a folder or annotation file (on Drive, under `/kaggle/input`, anywhere),
# a `.zip` (extracted to the fast local disk), a Google Drive share link or file id
# (downloaded with gdown), or `"upload"` (Colab's upload button; upload a zip).

# %%
if SMOKE:
    DATA = nb.find_sample("coins")   # datasets/coins: 2 images, 24 coins (VIA + LabelMe)
    assert DATA, "SMOKE needs the sample dataset: run from a colabrcnn checkout"
data_path = nb.bring_data(DATA, dest="data")
print("data:", data_path)

# %% [markdown]
# ## Read and check the annotations
# `data.load` detects the format. `validate` lists every problem with the file, the
# image and the shape: errors would lose data (fix them and run again), warnings are
# worth a look (shapes clipped at the border, tiny masks, ...).

# %%
from colabrcnn import data

kw = {"image_dir": IMAGE_DIR} if IMAGE_DIR else {}
dataset = data.load(data_path, **kw)
fmt, _ = data.formats.detect_format(data_path)
print(f"format: {fmt}; classes: {dataset.class_names[1:]}")
report = data.validate(dataset)
print(report)
report.raise_if_errors()

# %% [markdown]
# ## Browse the data
# Move the slider: every image with its masks, boxes and classes. Look for missing
# objects, wrong classes, shapes drawn around the wrong thing.

# %%
nb.browse_dataset(dataset)

# %% [markdown]
# ## Split into training and validation
# Stratified by class (every class in both parts where possible), the same every time
# for the same seed.

# %%
if VAL_DATA:
    train_set, val_set = dataset, data.load(nb.bring_data(VAL_DATA, dest="data"), **kw)
elif len(dataset.image_ids) >= 2:
    train_set, val_set = data.train_val_split(dataset, VAL_FRACTION, seed=0)
else:
    print("One image only: validating on the training image.")
    train_set, val_set = dataset, dataset
print(f"{len(train_set.image_ids)} training images, {len(val_set.image_ids)} validation images")

# %% [markdown]
# ## Configuration, fitted to the GPU
# matterport's defaults (ResNet-101, so the COCO weights fit) with your class count;
# one epoch = one pass over your training images. `fit_to_gpu` then changes memory
# settings, cheapest first, until training fits this GPU, and prints each change and
# its cost (`04_memory` shows them all).

# %%
import math

from colabrcnn import Config, memory

config = Config(
    NAME=NAME, NUM_CLASSES=len(dataset.class_names), BACKBONE="resnet101",
    IMAGE_MAX_DIM=IMAGE_SIZE, IMAGE_MIN_DIM=min(800, IMAGE_SIZE),
    IMAGES_PER_GPU=IMAGES_PER_GPU,
    STEPS_PER_EPOCH=max(1, math.ceil(len(train_set.image_ids) / IMAGES_PER_GPU)),
    VALIDATION_STEPS=max(1, math.ceil(len(val_set.image_ids) / IMAGES_PER_GPU)),
    DETECTION_MIN_CONFIDENCE=DETECTION_MIN_CONFIDENCE, LEARNING_RATE=LEARNING_RATE)
if SMOKE:
    EPOCHS_HEADS, EPOCHS_FINETUNE = 1, 1
    config = config.copy(**nb.SMOKE_SETTINGS)

if FIT_GPU and nb.has_gpu():
    config, changes = memory.fit_to_gpu(config, layers=FINETUNE_LAYERS)
else:
    print("No GPU here: what a Colab T4 (15 GB) would need, without changing anything:")
    memory.fit_to_gpu(config, layers=FINETUNE_LAYERS, memory="15GB", gpu="T4",
                      measure=False)
print(memory.estimate_memory(config, layers=FINETUNE_LAYERS))

# %% [markdown]
# ## Starting weights
# matterport's COCO model (246 MB, downloaded once into `MyDrive/colabrcnn/weights`
# on Colab, reused by later sessions) without its class-specific layers
# (`weights.HEADS`): everything else is already good at finding objects. If this run
# has a checkpoint already, training continues from it instead.

# %%
from colabrcnn import MaskRCNN, weights

model = MaskRCNN("training", config, model_dir=MODEL_DIR)
try:
    last = model.find_last()
except FileNotFoundError:
    last = None
if last:
    print(f"Checkpoint found: {last}\nTraining continues from it (resume='auto').")
elif WEIGHTS:
    if SMOKE:
        # No download in SMOKE: an 81-class model of the same (tiny) architecture
        # stands in for the COCO file, so the same loading code runs.
        stand_in = MaskRCNN("inference", config.copy(NAME="coco_stand_in",
                                                      NUM_CLASSES=81), "smoke_weights")
        WEIGHTS = stand_in.save_weights("smoke_weights/coco_stand_in.h5")
        del stand_in
    print("weights cache:", weights.default_cache_dir())
    if WEIGHTS == "coco":
        path = weights.fetch("coco")
    elif WEIGHTS == "imagenet":
        path = weights.fetch(weights.imagenet_for(config.BACKBONE))
    else:
        path = weights.fetch(WEIGHTS)   # a local file is used as it is
    model.load_weights(path, by_name=True, exclude=weights.HEADS, verbose=1)

# %% [markdown]
# ## Stage 1: train the heads
# The backbone stays frozen; only the region proposal network, the feature pyramid and
# the box/mask heads learn. Checkpoints every epoch and every 10 minutes.

# %%
from colabrcnn.data import default_augmentation

augmentation = default_augmentation(AUGMENT, seed=0, upright=UPRIGHT)
with nb.timer("stage 1 (heads)"):
    model.train(train_set, val_set, learning_rate=LEARNING_RATE, epochs=EPOCHS_HEADS,
                layers="heads", augmentation=augmentation, on_oom=ON_OOM,
                verbose=2 if SMOKE else 1)

# %% [markdown]
# ## Stage 2: fine-tune deeper layers
# `FINETUNE_LAYERS` of the backbone learn too, at a tenth of the learning rate.
# Epochs count on from stage 1.

# %%
with nb.timer("stage 2 (fine-tune)"):
    model.train(train_set, val_set, learning_rate=LEARNING_RATE / 10,
                epochs=EPOCHS_HEADS + EPOCHS_FINETUNE, layers=FINETUNE_LAYERS,
                augmentation=augmentation, on_oom=ON_OOM, verbose=2 if SMOKE else 1)
run_dir = model.log_dir
nb.save_class_names(run_dir, dataset.class_names)
print("run folder:", run_dir)

# %%
import matplotlib.pyplot as plt

from colabrcnn import visualize

log_csv = os.path.join(run_dir, "log.csv")
if os.path.exists(log_csv):
    visualize.plot_history(log_csv, os.path.join(run_dir, "loss.png"))
    plt.show()

# %% [markdown]
# ## Evaluate
# The best checkpoint (lowest validation loss) in inference mode; COCO metrics,
# per-class AP, and an error analysis of every validation image.

# %%
from colabrcnn import evaluate

best = nb.find_checkpoint(run_dir, "best")
print("evaluating", best)
infer = nb.load_for_inference(best)
eval_dir = os.path.join(run_dir, "evaluation")
done = evaluate.evaluate_model(infer, val_set, eval_dir, k=WORST_K)
print("metrics:", done["metrics_json"])
nb.show_image(data.read_image(done["per_class_png"]), "per-class AP", width=0)

# %% [markdown]
# ## The worst images
# Ground truth (left) and prediction (right) for the validation images with the most
# errors; red boxes: missed objects and false positives, orange: wrong class. The full
# browser with links to each image and annotation file is `evaluation/errors.html`.

# %%
import glob

print(evaluate.summarize_errors(done["analysis"]))
gt_pngs = sorted(glob.glob(os.path.join(eval_dir, "errors", "*_gt.png")))
if gt_pngs:
    pairs = [nb.side_by_side(data.read_image(p), data.read_image(p.replace("_gt.png", "_pred.png")))
             for p in gt_pngs]
    nb.browse_images(pairs, titles=[os.path.basename(p)[:-len("_gt.png")] for p in gt_pngs])
else:
    print("no errors to show")

# %% [markdown]
# ## Save and export
# The checkpoints are already in the run folder (on Drive on Colab). The export is one
# `.keras` file with the inference graph and weights, plus its config and class names:
# `03_predict` and `colabrcnn predict --weights FILE.keras` load it anywhere.

# %%
from colabrcnn import export

keras_file = export.export_keras(infer, os.path.join(run_dir, f"{config.NAME}.keras"))
nb.save_class_names(run_dir, dataset.class_names)
print("exported:", keras_file)
print("config:  ", export.config_path_for(keras_file))
if DOWNLOAD:
    nb.download(keras_file)

# %% [markdown]
# ## The same from a terminal
# ```
# colabrcnn train --annotations DATA --weights coco --layers heads --epochs 20 --augment medium --fit-gpu
# colabrcnn evaluate --weights RUN/mask_rcnn_NAME_best.h5 --config RUN/config.json --annotations VAL
# ```
# Next: `03_predict` for new images, folders and videos.
