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
# # Predict with a trained model: images, folders, videos
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/OWNER/colabrcnn/blob/main/notebooks/03_predict.ipynb)
#
# Loads the last (or best) checkpoint of a run from `02_train_on_your_data` (or a
# `.keras` export), detects on uploaded images, a folder or a video, lets you browse
# the results, and saves overlays, mask PNGs and a COCO JSON to Drive or downloads them.
#
# **Colab:** a GPU helps but is not required for a few images (Runtime > Change runtime
# type). Run all; the upload cell shows a button.
#
# **Kaggle:** File > Import Notebook > GitHub (`OWNER/colabrcnn`,
# `notebooks/03_predict.ipynb`); attach the run folder or export as a dataset and set
# `CHECKPOINT` to it; set `IMAGES` to a folder under `/kaggle/input`.

# %% [markdown]
# ## Parameters

# %% tags=["parameters"]
SMOKE = False      # True: a stand-in untrained model and synthetic images (CPU, CI)
PACKAGE = "git+https://github.com/OWNER/colabrcnn.git"   # what the install cell installs
MODEL_DIR = None       # runs folder of notebook 02; None: its default (Drive on Colab)
CHECKPOINT = "last"    # "last", "best", or a path to a checkpoint .h5 or an export .keras
IMAGES = "upload"      # a folder of images, "upload" (Colab's button), or None
VIDEO = None           # a video file (.mp4, .avi, ...) to run frame by frame, or None
MAX_FRAMES = None      # only the first N frames of the video (None: all)
MIN_SCORE = 0.7        # keep detections scoring at least this
OUT = None             # output folder; None: "predictions" in the run folder
DOWNLOAD = False       # zip the outputs and download them (Colab)

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

# %%
from colabrcnn import env
from colabrcnn import notebook as nb

print(env.format_report(env.doctor()))
if not SMOKE:
    env.mount_drive()
if MODEL_DIR is None:
    MODEL_DIR = nb.default_model_dir("runs")
print("runs folder:", MODEL_DIR)

# %% [markdown]
# ## Load the model
# The newest run's last checkpoint (`CHECKPOINT = "last"`), its lowest-validation-loss
# one (`"best"`), or a file. The Config comes from the run folder's `config.json`,
# the class names from its `class_names.json` (both written by notebook 02 and
# `colabrcnn train`).

# %%
if SMOKE and nb.find_checkpoint(MODEL_DIR) is None:
    # No trained model in a fresh SMOKE folder: save an untrained tiny one as a
    # checkpoint, so the rest of the notebook runs as with a real one.
    import keras

    from colabrcnn import Config, MaskRCNN

    keras.utils.set_random_seed(0)
    stand_in = MaskRCNN("inference", Config(NAME="smoke", NUM_CLASSES=4).copy(
        **nb.SMOKE_SETTINGS), MODEL_DIR)
    os.makedirs(stand_in.log_dir, exist_ok=True)
    stand_in.save_weights(os.path.join(stand_in.log_dir, "mask_rcnn_smoke_0001.h5"))
    with open(os.path.join(stand_in.log_dir, "config.json"), "w") as f:
        f.write(stand_in.config.to_json())
    nb.save_class_names(stand_in.log_dir, ["BG", "square", "circle", "triangle"])
    MIN_SCORE = 0.0
    del stand_in

if os.path.exists(str(CHECKPOINT)):
    checkpoint = CHECKPOINT
else:
    checkpoint = nb.find_checkpoint(MODEL_DIR, CHECKPOINT)
    if checkpoint is None:
        raise FileNotFoundError(f"no checkpoint under {MODEL_DIR}: train with notebook 02 "
                                f"first, or set CHECKPOINT to a .h5 or .keras file")
print("model:", checkpoint)
if checkpoint.endswith(".keras"):
    # An export keeps the DETECTION_MIN_CONFIDENCE it was exported with; MIN_SCORE
    # filters on top of it below.
    model = nb.load_for_inference(checkpoint)
else:
    model = nb.load_for_inference(checkpoint, DETECTION_MIN_CONFIDENCE=MIN_SCORE)
class_names = nb.load_class_names(checkpoint, model.config.NUM_CLASSES)
print("classes:", class_names[1:])
if OUT is None:
    OUT = os.path.join(os.path.dirname(os.path.abspath(checkpoint)), "predictions")
print("outputs go to", OUT)

# %% [markdown]
# ## Images
# `IMAGES = "upload"` shows an upload button on Colab (pick several files, or a zip);
# or point `IMAGES` at a folder (on Drive, under `/kaggle/input`, ...).

# %%
from colabrcnn import visualize

if SMOKE:
    from colabrcnn.data import shapes

    IMAGES = "smoke_images"
    os.makedirs(IMAGES, exist_ok=True)
    demo = shapes(3, int(model.config.IMAGE_MAX_DIM), seed=7)
    for i in demo.image_ids:
        visualize.save_image(os.path.join(IMAGES, f"shapes_{i}.png"), demo.load_image(i))
image_dir = nb.bring_data(IMAGES, dest="inputs") if IMAGES else None
print("images:", image_dir)

# %% [markdown]
# ## Detect
# Writes `overlays/` (the pictures with masks, boxes, classes and scores), `masks/`
# (one PNG per image: 0 = background, k = the k-th instance) and
# `coco_predictions.json` (loadable with pycocotools).

# %%
if image_dir:
    summary = model.predict_folder(image_dir, os.path.join(OUT, "images"), class_names,
                                   recursive=True, min_score=MIN_SCORE)
    print("COCO JSON:", summary["coco_json"])
    for file, message in summary["errors"]:
        print("skipped", file, ":", message)
else:
    summary = None
    print("no images given (IMAGES = None)")

# %% [markdown]
# ## Browse the results
# Move the slider to see each image with its detections.

# %%
if summary and summary["images"]:
    overlays = [r["overlay"] for r in summary["images"] if r.get("overlay")]
    nb.browse_images(overlays)

# %% [markdown]
# ## Video
# Every frame with its detections, written as a new video (same frame rate and size).
# A few minutes of HD video take a while on a T4: try `MAX_FRAMES` first.

# %%
import cv2

if SMOKE:
    # A tiny synthetic clip: a few shapes images as frames.
    VIDEO, MAX_FRAMES = "smoke_clip.avi", 4
    size = int(model.config.IMAGE_MAX_DIM)
    writer = cv2.VideoWriter(VIDEO, cv2.VideoWriter_fourcc(*"MJPG"), 5, (size, size))
    clip = shapes(4, size, seed=11)
    for i in clip.image_ids:
        writer.write(cv2.cvtColor(clip.load_image(i), cv2.COLOR_RGB2BGR))
    writer.release()
if VIDEO:
    video_out = os.path.join(OUT, os.path.splitext(os.path.basename(VIDEO))[0] + "_pred.mp4")
    done = model.predict_video(VIDEO, video_out, class_names, max_frames=MAX_FRAMES,
                               min_score=MIN_SCORE)
    print(f"{done['frames']} frames, {done['instances']} instances -> {done['out_path']}")
    cap = cv2.VideoCapture(done["out_path"])
    ok, frame = cap.read()
    cap.release()
    if ok:
        nb.show_image(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), "first frame")
else:
    print("no video given (VIDEO = None)")

# %% [markdown]
# ## Save or download
# On Colab the outputs are on Drive already when `MODEL_DIR` is there (the default).
# `DOWNLOAD = True` zips them and sends the zip to your browser.

# %%
print("outputs:", OUT)
if DOWNLOAD:
    nb.download(OUT)

# %% [markdown]
# ## The same from a terminal
# ```
# colabrcnn predict --weights RUN/mask_rcnn_NAME_best.h5 --config RUN/config.json --images photos/ --out predictions --classes balloon
# colabrcnn predict --weights NAME.keras --video clip.mp4 --out predictions
# ```
