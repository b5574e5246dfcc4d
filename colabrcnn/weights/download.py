"""Pretrained weight files: registry, download (resumed), verification, cache.

``fetch("coco")`` downloads ``mask_rcnn_coco.h5`` once (246 MB, with a progress bar,
resuming after a cut connection), checks it and keeps it in the cache: on Colab with
Drive mounted that is ``/content/drive/MyDrive/colabrcnn/weights``, so the next session
finds it; else ``~/.cache/colabrcnn/weights``; ``$COLABRCNN_CACHE`` or ``cache_dir=``
override both. The command line does the same: ``colabrcnn fetch-weights coco``.

(This module is ``download`` rather than ``fetch`` so that ``colabrcnn.weights.fetch``
stays the function.)
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, replace

from .. import __version__
from ..errors import WeightsError
from .load import h5_attr

logger = logging.getLogger(__name__)

# Where Google Drive appears on Colab once mounted (colabrcnn.env.mount_drive()).
DRIVE_DIR = "/content/drive/MyDrive"
DRIVE_CACHE = os.path.join(DRIVE_DIR, "colabrcnn", "weights")
LOCAL_CACHE = os.path.join("~", ".cache", "colabrcnn", "weights")
CACHE_ENV = "COLABRCNN_CACHE"

CHUNK = 1 << 20  # download and hash in 1 MiB pieces


# ------------------------------------------------------------------------ registry
@dataclass(frozen=True)
class WeightsEntry:
    """Where a weight file comes from and how to know it arrived whole."""
    name: str
    url: str
    filename: str
    size: int | None = None          # bytes
    sha256: str | None = None
    md5: str | None = None
    layers: tuple = ()               # layer groups the HDF5 file must have
    backbone: str | None = None      # the Config.BACKBONE it fits
    num_classes: int | None = None   # NUM_CLASSES of its heads, if it has any
    description: str = ""
    gdrive_id: str | None = None     # set for Google Drive files (downloaded by gdown)
    # The first hex digits of the sha256 (torchvision names its files <name>-<prefix>.pth
    # and checks just that prefix; the full hash is published nowhere).
    sha256_prefix: str | None = None
    format: str = "h5"               # "h5" (Keras HDF5) or "pth" (a PyTorch state_dict)


_KERAS_APPS = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"

# Sizes are the Content-Length the servers send; md5 hashes are those keras.applications
# and matterport check. matterport published no hash of mask_rcnn_coco.h5: the size and
# the HDF5 check stand in for it.
REGISTRY: dict[str, WeightsEntry] = {e.name: e for e in [
    WeightsEntry(
        "coco",
        "https://github.com/matterport/Mask_RCNN/releases/download/v2.0/mask_rcnn_coco.h5",
        "mask_rcnn_coco.h5", size=257_557_808,
        layers=("conv1", "bn_conv1", "res4w_branch2c", "bn5c_branch2c", "fpn_p2",
                "rpn_model", "mrcnn_class_logits", "mrcnn_mask"),
        backbone="resnet101", num_classes=81,
        description="matterport Mask R-CNN trained on COCO (ResNet-101, 80 classes + BG)"),
    WeightsEntry(
        "imagenet-resnet50",
        "https://github.com/fchollet/deep-learning-models/releases/download/v0.2/"
        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5", size=94_653_016,
        md5="a268eb855778b3df3c7506639542a6af",
        layers=("conv1", "bn_conv1", "res2a_branch2a", "res5c_branch2c", "bn5c_branch2c"),
        backbone="resnet50",
        description="ImageNet ResNet-50 without top, old Keras names (matterport's)"),
    WeightsEntry(
        "keras-resnet50",
        _KERAS_APPS + "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "keras_resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5", size=94_765_736,
        md5="4d473c1dd8becc155b73f8504c6f6626",
        layers=("conv1_conv", "conv1_bn", "conv2_block1_0_conv", "conv5_block3_3_bn"),
        backbone="resnet50",
        description="ImageNet ResNet50 without top, keras.applications"),
    WeightsEntry(
        "keras-resnet101",
        _KERAS_APPS + "resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "keras_resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5", size=171_446_536,
        md5="88cf7a10940856eca736dc7b7e228a21",
        layers=("conv1_conv", "conv1_bn", "conv4_block23_3_conv", "conv5_block3_3_bn"),
        backbone="resnet101",
        description="ImageNet ResNet101 without top, keras.applications"),
]}

_TORCHVISION = "https://download.pytorch.org/models/"
# torchvision's COCO Mask R-CNN weights (load them with colabrcnn.TorchvisionR50FPN).
# torchvision's files carry the first 8 hex digits of their sha256 in their names, and
# torchvision checks only those: so do we (sha256_prefix). Sizes are not pinned.
REGISTRY.update({e.name: e for e in [
    WeightsEntry(
        "torchvision-coco", _TORCHVISION + "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth",
        "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth", sha256_prefix="bf2d0c1e", format="pth",
        backbone="resnet50", num_classes=91,
        description="torchvision maskrcnn_resnet50_fpn on COCO (box AP 37.9, mask AP "
                    "34.6); use colabrcnn.TorchvisionR50FPN"),
    WeightsEntry(
        "torchvision-coco-v2", _TORCHVISION + "maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth",
        "maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth", sha256_prefix="73cbd019",
        format="pth", backbone="resnet50", num_classes=91,
        description="torchvision maskrcnn_resnet50_fpn_v2 on COCO (box AP 47.4, mask AP "
                    "41.8); its architecture is not built yet: loading it raises "
                    "WeightsError"),
]})

ALIASES = {"mask_rcnn_coco": "coco", "imagenet": "imagenet-resnet50",
           "imagenet-resnet101": "keras-resnet101"}


def imagenet_for(backbone):
    """Registry name of the ImageNet weights for a Config.BACKBONE."""
    names = {"resnet50": "imagenet-resnet50", "resnet101": "keras-resnet101"}
    if backbone not in names:
        raise WeightsError(f"no ImageNet weights for BACKBONE={backbone!r}; there are "
                           f"some for {' and '.join(names)} (resnet18 trains from "
                           f"scratch)")
    return names[backbone]



# ------------------------------------------------------------------------ caching
def default_cache_dir():
    """$COLABRCNN_CACHE, else Drive's colabrcnn/weights when Drive is mounted (Colab),
    else ~/.cache/colabrcnn/weights."""
    if os.environ.get(CACHE_ENV):
        return os.path.expanduser(os.environ[CACHE_ENV])
    if os.path.isdir(DRIVE_DIR):
        return DRIVE_CACHE
    return os.path.expanduser(LOCAL_CACHE)


_GDRIVE_ID = re.compile(r"[A-Za-z0-9_-]{25,}")


def _gdrive_id(text):
    """The file id of a Google Drive link or a bare id, else None."""
    if re.fullmatch(r"https?://(drive|docs)\.google\.com/.*", text):
        m = re.search(r"/d/([A-Za-z0-9_-]+)", text) or re.search(r"[?&]id=([A-Za-z0-9_-]+)",
                                                                  text)
        if not m:
            raise WeightsError(f"cannot find a file id in the Google Drive link {text}")
        return m.group(1)
    if "." not in text and "/" not in text and _GDRIVE_ID.fullmatch(text):
        return text
    return None


def resolve(name_or_url):
    """A registry name, URL or Google Drive link/id -> WeightsEntry."""
    key = ALIASES.get(name_or_url, name_or_url)
    if key in REGISTRY:
        return REGISTRY[key]
    fid = _gdrive_id(name_or_url)
    if fid:
        return WeightsEntry(f"gdrive:{fid}", f"https://drive.google.com/uc?id={fid}",
                            f"gdrive_{fid}.h5", gdrive_id=fid)
    parsed = urllib.parse.urlparse(name_or_url)
    if parsed.scheme in ("http", "https", "ftp", "file") and parsed.path:
        filename = os.path.basename(urllib.parse.unquote(parsed.path)) or "weights.h5"
        # torchvision-style names end in -<first hex digits of the sha256>.pth
        m = re.search(r"-([0-9a-f]{8,})\.pth?$", filename)
        if filename.endswith((".pth", ".pt")):
            return WeightsEntry(filename, name_or_url, filename, format="pth",
                                sha256_prefix=m.group(1) if m else None)
        return WeightsEntry(filename, name_or_url, filename)
    known = ", ".join(list(REGISTRY) + list(ALIASES))
    raise WeightsError(f"unknown weights {name_or_url!r}: give one of {known}, a URL, a "
                       f"Google Drive link or file id, or a local file path")


def _hash(path, algo):
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(path, entry, checksum=True):
    """Why ``path`` is not a good copy of ``entry`` (a string), or None if it is.

    Checks the size, the checksum (when known and ``checksum``), and that the HDF5 file
    opens and has the entry's expected layers (a truncated HDF5 file does not open).
    """
    size = os.path.getsize(path)
    if entry.size and size != entry.size:
        return f"size {size:,} bytes, expected {entry.size:,} (incomplete download?)"
    if checksum:
        for algo in ("sha256", "md5"):
            want = getattr(entry, algo)
            if want:
                got = _hash(path, algo)
                if got != want.lower():
                    return f"{algo} {got}, expected {want}"
                break
        else:
            if entry.sha256_prefix:
                got = _hash(path, "sha256")
                if not got.startswith(entry.sha256_prefix.lower()):
                    return f"sha256 {got}, expected one starting {entry.sha256_prefix}"
    if entry.format == "pth":
        return _pth_problem(path)
    import h5py
    try:
        with h5py.File(path, "r") as f:
            root = f
            if h5_attr(f, "layer_names") is None and "model_weights" in f:
                root = f["model_weights"]
            missing = [n for n in entry.layers if n not in root]
            if missing:
                return f"no layer {', '.join(missing)} in the file (not {entry.name} weights?)"
    except OSError as e:
        return f"not a readable HDF5 file ({e})"
    return None


def _pth_problem(path):
    """Why ``path`` is not a PyTorch file (None if it looks like one): torch.save writes
    a zip archive (PyTorch >= 1.6) or, before, a pickle (protocol 2: starts 0x80 0x02).
    A truncated zip has no central directory at its end and fails the zip check."""
    import zipfile
    if zipfile.is_zipfile(path):
        return None
    with open(path, "rb") as f:
        head = f.read(2)
    if head == b"\x80\x02":
        return None
    return "not a PyTorch file (neither a zip archive nor a legacy torch.save pickle)"


class _Retry(Exception):
    """A download attempt failed in a way worth trying again."""


def _manual_hint(entry, dest):
    where = entry.url if not entry.gdrive_id else \
        f"https://drive.google.com/file/d/{entry.gdrive_id}/view"
    return (f"\nIf this machine cannot reach {where}, download the file elsewhere (another "
            f"computer, a browser) and put it at\n  {dest}\nthen run this again (a good "
            f"file there is used as it is), or pass the file's path to load_weights. "
            f"${CACHE_ENV} or cache_dir= choose another folder.")


def _download(url, part, entry, progress, timeout):
    """One attempt: fetch ``url`` into ``part``, resuming from what is there.

    Returns the number of new bytes. Raises _Retry for network trouble and server
    errors, WeightsError for answers that will not change (404, 403 ...).
    """
    have = os.path.getsize(part) if os.path.exists(part) else 0
    if entry.size and have > entry.size:
        os.remove(part)
        have = 0
    if entry.size and have == entry.size:
        return 0
    headers = {"User-Agent": f"colabrcnn/{__version__}"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                      timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to send: verification decides
            return 0
        if e.code in (408, 425, 429) or e.code >= 500:
            raise _Retry(f"HTTP {e.code} {e.reason}") from None
        raise WeightsError(f"{url} answered HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, socket.timeout, ConnectionError, OSError) as e:
        raise _Retry(str(getattr(e, "reason", e))) from None
    new = 0
    with resp:
        status = getattr(resp, "status", 200)
        start = 0
        if have and status == 206:
            m = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", ""))
            start = int(m.group(1)) if m else have
        if start != have:  # the server ignored or misread the range: start over
            start = 0
        length = resp.headers.get("Content-Length")
        total = start + int(length) if length and length.isdigit() else entry.size
        from tqdm.auto import tqdm
        with open(part, "r+b" if start else "wb") as f, \
                tqdm(total=total, initial=start, unit="B", unit_scale=True,
                     unit_divisor=1024, desc=os.path.basename(part)[:-5],
                     disable=not progress, leave=True) as bar:
            f.seek(start)
            f.truncate()
            try:
                while True:
                    chunk = resp.read(CHUNK)
                    if not chunk:
                        break
                    f.write(chunk)
                    new += len(chunk)
                    bar.update(len(chunk))
            except (OSError, socket.timeout, ConnectionError, ValueError) as e:
                f.flush()
                raise _Retry(f"connection lost after {start + new:,} bytes ({e})") \
                    from None
        if total and start + new < total:
            raise _Retry(f"connection closed after {start + new:,} of {total:,} bytes")
    return new


def _gdown(entry, part, progress):
    try:
        import gdown
    except ImportError:
        raise WeightsError("Google Drive downloads need gdown: pip install gdown") from None
    try:
        out = gdown.download(id=entry.gdrive_id, output=part, quiet=not progress,
                             resume=True)
    except Exception as e:  # gdown raises its own error types, by version
        raise _Retry(f"{type(e).__name__}: {e}") from None
    if not out or not os.path.exists(part):
        raise _Retry("gdown did not download the file (is it shared as 'anyone with "
                     "the link'?)")
    return os.path.getsize(part)


def fetch(name_or_url, cache_dir=None, progress=True, *, filename=None, sha256=None,
          md5=None, size=None, retries=4, backoff=1.0, timeout=60, force=False):
    """Path of a verified local copy of a weight file, downloading it if needed.

    name_or_url: a :data:`REGISTRY` name ("coco", "imagenet-resnet50", "keras-resnet50",
        "keras-resnet101", "torchvision-coco", "torchvision-coco-v2"), an http(s) URL,
        a Google Drive link or file id (through gdown), or a path to a local file
        (returned as it is).
    cache_dir: where downloads are kept; default :func:`default_cache_dir`.
    filename, sha256, md5, size: for URLs, the file name in the cache and what to check.
    retries, backoff: failed attempts in a row allowed, waiting backoff * 2**k seconds.
    force: download again even if the cache has a good copy.

    A download goes to ``<file>.part`` (resumed with an HTTP Range request after a cut
    connection, also in a later session), is verified (checksum or size, then the HDF5
    file's layers), then renamed into place. A cached copy is checked (size, HDF5
    layers) before use; a damaged one is removed and fetched again.
    """
    text = os.fspath(name_or_url)
    if os.path.isfile(os.path.expanduser(text)):
        return os.path.abspath(os.path.expanduser(text))
    entry = resolve(text)
    overrides = {k: v for k, v in dict(filename=filename, sha256=sha256, md5=md5,
                                       size=size).items() if v is not None}
    if overrides:
        entry = replace(entry, **overrides)
    cache = os.path.expanduser(cache_dir) if cache_dir else default_cache_dir()
    dest = os.path.join(cache, entry.filename)
    if os.path.exists(dest) and not force:
        problem = verify(dest, entry, checksum=False)
        if problem is None:
            return dest
        logger.warning(f"colabrcnn: the cached {dest} is damaged ({problem}); removing "
                       f"it and downloading again")
        os.remove(dest)
    try:
        os.makedirs(cache, exist_ok=True)
    except OSError as e:
        raise WeightsError(f"cannot create the weights cache folder {cache} ({e}); pass "
                           f"cache_dir= or set ${CACHE_ENV}") from None
    part = dest + ".part"
    if force and os.path.exists(part):
        os.remove(part)
    if progress:
        logger.info(f"Downloading {entry.name} from {entry.url}\n  to {dest}")
    failures, bad_files, attempts = 0, 0, 0
    while True:
        attempts += 1
        try:
            if entry.gdrive_id:
                _gdown(entry, part, progress)
            else:
                new = _download(entry.url, part, entry, progress, timeout)
                if new:
                    failures = 0  # progress was made: a flaky line is not a dead one
        except _Retry as e:
            failures += 1
            if failures > retries or attempts > 100:
                raise WeightsError(
                    f"could not download {entry.name} ({e}; {attempts} attempts)."
                    + _manual_hint(entry, dest)) from None
            wait = backoff * 2 ** (failures - 1)
            if progress:
                logger.info(f"  download interrupted ({e}); retrying in {wait:.0f} s")
            time.sleep(wait)
            continue
        problem = verify(part, entry, checksum=True)
        if problem is None:
            break
        os.remove(part)
        bad_files += 1
        if bad_files >= 2:
            raise WeightsError(
                f"the download of {entry.name} from {entry.url} is not the expected file "
                f"({problem}), twice; removed it." + _manual_hint(entry, dest))
        if progress:
            logger.warning(f"  the downloaded file is damaged ({problem}); downloading "
                           f"again")
    os.replace(part, dest)
    return dest


def list_registry():
    """One line per registry entry: name, size, what it is."""
    lines = []
    for e in REGISTRY.values():
        size = f"{e.size / 2**20:.0f} MB" if e.size else "?"
        lines.append(f"{e.name:18s} {size:>7s}  {e.description}")
    return lines


__all__ = ["DRIVE_DIR", "DRIVE_CACHE", "LOCAL_CACHE", "CACHE_ENV", "WeightsEntry",
           "REGISTRY", "ALIASES", "imagenet_for", "default_cache_dir", "resolve", "verify",
           "fetch", "list_registry"]
