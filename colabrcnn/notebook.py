"""Helpers for the notebooks (``notebooks/``) and for anyone working in Jupyter, Colab or
Kaggle: find data, bring it in, browse it, load the last checkpoint, measure memory.

Everything here runs anywhere. What only Colab can do (upload from the browser,
download to the browser) prints what to do instead elsewhere, so the notebooks run
top to bottom on Colab, Kaggle, a laptop and in CI alike::

    from colabrcnn import notebook as nb
    data = nb.bring_data("/content/drive/MyDrive/balloon.zip")   # folder, zip, link, "upload"
    nb.browse_dataset(dataset)                                    # slider over images + masks
    model = nb.load_for_inference(nb.find_checkpoint("runs"))
    nb.browse_results(images, model.detect(images), class_names)

Nothing here imports Keras at module level.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
import urllib.parse
import zipfile

import numpy as np

from . import env, hardware, probe
from .checkpoint import load_inference, newest_checkpoint
from .errors import ColabRCNNError

KAGGLE_INPUT = "/kaggle/input"
KAGGLE_WORKING = "/kaggle/working"
DRIVE_ROOT = "/content/drive/MyDrive"
CLASS_NAMES_FILE = "class_names.json"

__all__ = ["platform", "has_gpu", "gpu_name", "in_notebook", "find_sample", "find_repo_dir",
           "default_model_dir", "bring_data", "upload", "download", "kaggle_inputs",
           "browse_dataset", "browse_results", "browse_images", "side_by_side",
           "instances_picture", "show_image", "SMOKE_SETTINGS", "save_class_names",
           "load_class_names", "find_checkpoint", "load_for_inference", "measure_step",
           "format_table", "timer"]


# ------------------------------------------------------------------- where are we
def platform():
    """"colab", "kaggle" or "local" (:func:`colabrcnn.env.detect_platform`)."""
    return env.detect_platform()


# From colabrcnn.hardware (no backend import).
has_gpu = hardware.has_gpu
gpu_name = hardware.gpu_name


def in_notebook():
    """True inside a Jupyter/Colab/Kaggle kernel (an IPython kernel, not a terminal)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ in ("ZMQInteractiveShell", "Shell")


# -------------------------------------------------------------------- finding data
def _repo_dirs(start=None):
    """colabrcnn checkouts (folders holding ``datasets/`` and ``colabrcnn/``) above the
    working directory (or ``start``), above the installed package, and where Colab and
    Kaggle users usually clone it."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    seen = set()
    for c in (os.path.abspath(start or os.getcwd()), here, "/content/colabrcnn",
              os.path.join(KAGGLE_WORKING, "colabrcnn")):
        d = c
        while d not in seen:
            seen.add(d)
            if os.path.isdir(os.path.join(d, "datasets")) and \
                    os.path.isdir(os.path.join(d, "colabrcnn")):
                yield d
            d = os.path.dirname(d)


def find_repo_dir(start=None):
    """The first colabrcnn checkout found (see :func:`find_sample`), or None (a pip
    install outside a checkout)."""
    return next(_repo_dirs(start), None)


def find_sample(name="coins", start=None):
    """Path of the shipped sample dataset ``datasets/<name>`` (see datasets/README.md),
    looked for upwards from the working directory (a notebook in ``notebooks/``), then
    from the installed package; None when it is not there (clone the repository)."""
    for repo in _repo_dirs(start):
        path = os.path.join(repo, "datasets", name)
        if os.path.exists(path):
            return path
    return None


def default_model_dir(name="runs"):
    """Where checkpoints should go: Drive (``MyDrive/colabrcnn/<name>``) on Colab with
    Drive mounted, so they survive a disconnect; ``/kaggle/working/<name>`` on Kaggle
    (kept as the notebook's output); ``./<name>`` elsewhere."""
    where = platform()
    if where == "colab" and os.path.isdir(DRIVE_ROOT):
        return os.path.join(DRIVE_ROOT, "colabrcnn", name)
    if where == "colab":
        print("Google Drive is not mounted: checkpoints go to the Colab disk and are "
              "lost when the session ends. Run the Drive cell to keep them.")
    if where == "kaggle" and os.path.isdir(KAGGLE_WORKING):
        return os.path.join(KAGGLE_WORKING, name)
    return os.path.abspath(name)


def kaggle_inputs():
    """Datasets attached to a Kaggle notebook (folders of /kaggle/input); [] elsewhere."""
    if not os.path.isdir(KAGGLE_INPUT):
        return []
    return sorted(os.path.join(KAGGLE_INPUT, d) for d in os.listdir(KAGGLE_INPUT))


def _is_link(text):
    return bool(re.match(r"https?://", text))


def _gdrive_or_url_download(link, dest_dir):
    """Download a Google Drive link/id (gdown) or a URL into ``dest_dir``; its path."""
    os.makedirs(dest_dir, exist_ok=True)
    if "drive.google.com" in link or "docs.google.com" in link or \
            re.fullmatch(r"[A-Za-z0-9_-]{25,}", link):
        import gdown
        if "/folders/" in link:
            out = gdown.download_folder(link, output=dest_dir, quiet=False)
            if not out:
                raise ColabRCNNError(f"gdown could not download the folder {link}: is it "
                                     f"shared as 'anyone with the link'?")
            return dest_dir
        if _is_link(link):
            out = gdown.download(url=link, output=dest_dir + os.sep, quiet=False, fuzzy=True)
        else:
            out = gdown.download(id=link, output=dest_dir + os.sep, quiet=False)
        if not out:
            raise ColabRCNNError(f"gdown could not download {link}: is the file shared as "
                                 f"'anyone with the link'?")
        return out
    import urllib.request
    name = os.path.basename(urllib.parse.unquote(urllib.parse.urlparse(link).path)) \
        or "download"
    out = os.path.join(dest_dir, name)
    print(f"Downloading {link}\n  to {out}")
    urllib.request.urlretrieve(link, out)
    return out


def _extract_zip(path, dest_dir):
    """Unzip ``path`` into ``dest_dir/<zip stem>`` once; return the folder holding the
    data (the single top folder of the archive, if it has one)."""
    stem = os.path.splitext(os.path.basename(path))[0]
    out = os.path.join(dest_dir, stem)
    marker = os.path.join(out, ".colabrcnn_extracted")
    if not os.path.exists(marker):
        print(f"Extracting {path}\n  to {out}")
        with zipfile.ZipFile(path) as z:
            z.extractall(out)
        open(marker, "w").close()
    entries = [e for e in os.listdir(out) if not e.startswith(".") and e != "__MACOSX"]
    if len(entries) == 1 and os.path.isdir(os.path.join(out, entries[0])):
        return os.path.join(out, entries[0])
    return out


def bring_data(source, dest="data"):
    """Make a dataset available locally and return its path, for ``data.load``.

    source: a folder or annotation file (returned as it is, e.g. a Drive folder or a
    Kaggle input); a ``.zip`` file (extracted under ``dest``: reading thousands of
    small files from Drive is slow, one zip is fast); a Google Drive share link or
    file id, or an http(s) URL (downloaded with gdown/urllib, then extracted if a zip);
    or ``"upload"`` (Colab's upload button; elsewhere a message and None).
    """
    if source is None:
        raise ColabRCNNError("no data given: set DATA to a folder, an annotation file, a "
                             "zip, a Google Drive link or 'upload'")
    text = os.fspath(source)
    if text == "upload":
        files = upload(os.path.join(dest, "upload"))
        if not files:
            return None
        zips = [f for f in files if f.lower().endswith(".zip")]
        if zips:
            return _extract_zip(zips[0], dest)
        return os.path.join(dest, "upload")
    if _is_link(text) or re.fullmatch(r"[A-Za-z0-9_-]{25,}", text):
        text = _gdrive_or_url_download(text, os.path.join(dest, "downloads"))
    text = os.path.expanduser(text)
    if not os.path.exists(text):
        hint = ""
        if text.startswith("/content/drive") and not os.path.isdir("/content/drive"):
            hint = " (Google Drive is not mounted: run the Drive cell first)"
        raise ColabRCNNError(f"data not found: {text}{hint}")
    if text.lower().endswith(".zip") and os.path.isfile(text):
        return _extract_zip(text, dest)
    return text


def upload(dest="uploads"):
    """Colab: ask the browser for files and save them in ``dest``; returns their paths.
    Elsewhere prints where to put files instead and returns []."""
    where = platform()
    if where != "colab":
        tip = ("add a dataset with 'Add data' (right panel); it appears under "
               "/kaggle/input" if where == "kaggle" else
               f"copy the files into {os.path.abspath(dest)}")
        print(f"upload: browser uploads work on Colab only (here: {where}); {tip}.")
        return []
    from google.colab import files
    os.makedirs(dest, exist_ok=True)
    got = files.upload()
    paths = []
    for name, content in got.items():
        path = os.path.join(dest, os.path.basename(name))
        with open(path, "wb") as f:
            f.write(content)
        paths.append(path)
    return paths


def download(path):
    """Colab: send a file (a folder is zipped first) to the browser. Kaggle: files under
    /kaggle/working are the notebook's output. Elsewhere: prints the path. Returns the
    path that was (or would be) downloaded."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.exists(path):
        raise ColabRCNNError(f"nothing to download: {path} does not exist")
    if os.path.isdir(path):
        path = shutil.make_archive(path, "zip", root_dir=path)
    where = platform()
    if where == "colab":
        from google.colab import files
        files.download(path)
    elif where == "kaggle":
        print(f"{path}: files under {KAGGLE_WORKING} appear in the notebook's Output "
              f"(save a version to keep them).")
    else:
        print(f"download: not on Colab; the file is at {path}")
    return path


# -------------------------------------------------------------------- pictures
def instances_picture(image, boxes, masks, class_ids, class_names=None, scores=None):
    """RGB uint8 picture of the instances over the image."""
    from .visualize import draw_instances
    return draw_instances(image, boxes, masks, class_ids, class_names, scores)


def _png_bytes(image):
    import cv2
    ok, buf = cv2.imencode(".png", cv2.cvtColor(np.asarray(image, np.uint8),
                                                 cv2.COLOR_RGB2BGR))
    if not ok:
        raise ColabRCNNError("could not encode the picture as PNG")
    return buf.tobytes()


def _scaled(image, width):
    import cv2
    image = np.asarray(image, np.uint8)
    h, w = image.shape[:2]
    if width and w < width:   # small images (tests, shapes): enlarge so they can be seen
        f = max(1, width // w)
        image = cv2.resize(image, (w * f, h * f), interpolation=cv2.INTER_NEAREST)
    return image


def show_image(image, title=None, width=512):
    """Show an RGB picture inline (IPython), or say where it would be."""
    try:
        from IPython.display import Image, display
    except ImportError:
        print(f"(picture {title or ''}: IPython is not available)")
        return
    if title:
        print(title)
    display(Image(data=_png_bytes(_scaled(image, width))))


def _slider_browser(count, render, description, width):
    """An ipywidgets slider over ``count`` items; ``render(i) -> (image, caption)``.

    Returns the widget (displayed). Falls back to showing the first item when
    ipywidgets is missing."""
    try:
        import ipywidgets as widgets
        from IPython.display import display
    except ImportError:
        image, caption = render(0)
        show_image(image, caption, width)
        return None
    slider = widgets.IntSlider(value=0, min=0, max=max(0, count - 1), step=1,
                               description=description, continuous_update=False)
    picture = widgets.Image(format="png")
    caption = widgets.HTML()

    def update(change=None):
        image, text = render(slider.value)
        picture.value = _png_bytes(_scaled(image, width))
        caption.value = f"<code>{text}</code>"

    slider.observe(update, names="value")
    update()
    box = widgets.VBox([slider, caption, picture])
    display(box)
    return box


def browse_dataset(dataset, width=640):
    """A slider over the dataset's images with their ground-truth masks, boxes and class
    names. Returns the widget."""
    from .utils import extract_bboxes
    ids = list(dataset.image_ids)
    if not ids:
        raise ColabRCNNError("the dataset has no images")
    names = list(getattr(dataset, "class_names", []) or [])

    def render(i):
        image_id = ids[i]
        image = dataset.load_image(image_id)
        masks, class_ids = dataset.load_mask(image_id)
        masks = np.asarray(masks, bool)
        keep = np.asarray(class_ids) > 0
        masks, class_ids = masks[..., keep], np.asarray(class_ids)[keep]
        boxes = extract_bboxes(masks) if masks.shape[-1] else np.zeros((0, 4), int)
        ref = dataset.image_reference(image_id) if hasattr(dataset, "image_reference") \
            else image_id
        counts = {}
        for c in class_ids:
            n = names[int(c)] if int(c) < len(names) else str(int(c))
            counts[n] = counts.get(n, 0) + 1
        text = f"{i + 1}/{len(ids)}  {os.path.basename(str(ref))}  " \
               f"{image.shape[1]}x{image.shape[0]}  " + \
               ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
        return instances_picture(image, boxes, masks, class_ids, names), text

    return _slider_browser(len(ids), render, "image", width)


def browse_results(images, results, class_names=None, titles=None, width=640):
    """A slider over detections: each image with its predicted masks, boxes, classes and
    scores. ``images`` are arrays or file paths; ``results`` are ``detect()``'s dicts."""
    from .data.dataset import read_image
    images = list(images)
    results = list(results)
    if len(images) != len(results):
        raise ColabRCNNError(f"{len(images)} images but {len(results)} results")
    if not images:
        raise ColabRCNNError("nothing to browse: no images")

    def render(i):
        image = images[i]
        name = titles[i] if titles else None
        if isinstance(image, (str, os.PathLike)):
            name = name or os.path.basename(os.fspath(image))
            image = read_image(image)
        r = results[i]
        text = f"{i + 1}/{len(images)}  {name or ''}  {len(r['class_ids'])} instances"
        return instances_picture(image, r["rois"], r["masks"], r["class_ids"],
                                 class_names, r["scores"]), text

    return _slider_browser(len(images), render, "result", width)


def browse_images(pictures, titles=None, width=640):
    """A slider over pictures: file paths (e.g. the overlays ``predict_folder`` wrote)
    or RGB arrays."""
    from .data.dataset import read_image
    pictures = list(pictures)
    if not pictures:
        raise ColabRCNNError("nothing to browse: no pictures")

    def render(i):
        p = pictures[i]
        if isinstance(p, (str, os.PathLike)):
            name = titles[i] if titles else os.path.basename(os.fspath(p))
            return read_image(p), f"{i + 1}/{len(pictures)}  {name}"
        return np.asarray(p), f"{i + 1}/{len(pictures)}  {titles[i] if titles else ''}"

    return _slider_browser(len(pictures), render, "picture", width)


def side_by_side(*images, gap=4):
    """RGB images next to each other (bottoms padded white), with a white gap."""
    images = [np.asarray(a, np.uint8) for a in images]
    height = max(a.shape[0] for a in images)
    parts = []
    for k, a in enumerate(images):
        a = np.pad(a, ((0, height - a.shape[0]), (0, 0), (0, 0)), constant_values=255)
        parts.append(a)
        if k < len(images) - 1 and gap:
            parts.append(np.full((height, gap, 3), 255, np.uint8))
    return np.concatenate(parts, axis=1)


# Tiny settings for SMOKE runs of the notebooks (CPU, CI): ResNet-18 at 64x64, a few
# ROIs, one step per epoch. They check that every cell runs, not that the model learns.
SMOKE_SETTINGS = dict(
    BACKBONE="resnet18", IMAGE_MIN_DIM=64, IMAGE_MAX_DIM=64, IMAGES_PER_GPU=2,
    RPN_ANCHOR_SCALES=(8, 16, 32, 64, 128), RPN_TRAIN_ANCHORS_PER_IMAGE=32,
    PRE_NMS_LIMIT=256, POST_NMS_ROIS_TRAINING=64, POST_NMS_ROIS_INFERENCE=32,
    TRAIN_ROIS_PER_IMAGE=16, TOP_DOWN_PYRAMID_SIZE=32, FPN_CLASSIF_FC_LAYERS_SIZE=64,
    MAX_GT_INSTANCES=16, MINI_MASK_SHAPE=(14, 14), STEPS_PER_EPOCH=1, VALIDATION_STEPS=1,
    DETECTION_MIN_CONFIDENCE=0.0, DETECTION_MAX_INSTANCES=8, CHECKPOINT_EVERY_MINUTES=None,
    MIXED_PRECISION=False, TRAIN_BN=False)


# ------------------------------------------------------------------ checkpoints
def save_class_names(folder, class_names):
    """Write ``class_names.json`` (BG first) into a run folder; returns its path."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, CLASS_NAMES_FILE)
    with open(path, "w") as f:
        json.dump(list(class_names), f)
    return path


def load_class_names(folder_or_checkpoint, num_classes=None):
    """Class names saved beside a checkpoint (``class_names.json``), else
    ["BG", "class_1", ...] for ``num_classes``, else None."""
    folder = folder_or_checkpoint
    if os.path.isfile(folder):
        folder = os.path.dirname(folder)
    path = os.path.join(folder, CLASS_NAMES_FILE)
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    if num_classes:
        return ["BG"] + [f"class_{i}" for i in range(1, int(num_classes))]
    return None


def find_checkpoint(model_dir, which="last", name=None):
    """A checkpoint under ``model_dir`` (a folder of runs, or one run folder).

    which: "last" (the newest complete epoch or mid-epoch checkpoint of the newest run)
    or "best" (the lowest validation loss of that run; the last when no best was kept).
    name: the Config NAME to look for (default: any). Returns None when there is none.
    The newest run is the one whose folder name has the latest timestamp (see
    :mod:`colabrcnn.checkpoint`).
    """
    return newest_checkpoint(model_dir, name, which)


def load_for_inference(checkpoint, config=None, model_dir=None, **overrides):
    """An inference MaskRCNN with a checkpoint's weights.

    The Config comes from ``config`` (a Config or JSON), else from the ``config.json``
    the run folder holds, else from the checkpoint's saved training state. Keyword
    overrides change settings for inference (e.g. ``DETECTION_MIN_CONFIDENCE=0.5``;
    IMAGES_PER_GPU=1 is used unless given). A ``.keras`` export works too.
    """
    overrides.setdefault("IMAGES_PER_GPU", 1)
    return load_inference(checkpoint, config, model_dir, **overrides)


# ---------------------------------------------------------------- measuring
class timer:
    """``with timer("train"): ...`` prints how long the block took."""

    def __init__(self, what=""):
        self.what = what
        self.seconds = None

    def __enter__(self):
        self.start = time.time()
        return self

    def __exit__(self, *exc):
        self.seconds = time.time() - self.start
        print(f"{self.what + ': ' if self.what else ''}{self.seconds:.1f} s")
        return False


def measure_step(config, layers="all", steps=3, warmup=1, seed=0):
    """Train ``config`` for ``warmup`` + ``steps`` steps on synthetic shapes at its image
    size and measure it. Returns {"peak_bytes" (None without a GPU), "step_seconds",
    "images_per_second", "status": "ok" | "out of memory" | "error: ..."}.

    Out-of-memory is caught and reported (the next row can still run); the memory is
    released after each call. The first (warm-up) steps compile and are not timed.
    (:func:`colabrcnn.probe.measure` does the work.)
    """
    got = probe.measure(config, layers, steps=steps, warmup=warmup, seed=seed)
    return {k: got[k] for k in ("peak_bytes", "step_seconds", "images_per_second",
                                "status")}


def format_table(rows, columns=None):
    """A plain-text table of dicts (one per row), columns in order of first appearance."""
    if not rows:
        return "(no rows)"
    if columns is None:
        columns = []
        for r in rows:
            columns.extend(k for k in r if k not in columns)

    def cell(v):
        if v is None:
            return "n/a"
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(str(c)), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = "  ".join(str(c).ljust(w) for c, w in zip(columns, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    for row in cells:
        out.append("  ".join(v.ljust(w) for v, w in zip(row, widths)))
    return "\n".join(out)
