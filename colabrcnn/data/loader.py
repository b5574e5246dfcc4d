"""Training batches for the Keras model.

``DataGenerator`` is a ``keras.utils.PyDataset``: each item is one batch as a dict keyed
by the training model's input names (``INPUT_NAMES``). Ground truth is padded to
MAX_GT_INSTANCES and the RPN targets are computed here in NumPy, as matterport did, so
the model's graph stays static.

One image goes through two stages::

    stage 1 (deterministic, cacheable)            stage 2 (random, every time)
    decode -> masks -> resize by the config's     augment -> pad / crop to IMAGE_SHAPE
    scale (cv2) -> compact masks                  -> boxes, mini-masks, RPN targets

Stage 1 gives a :class:`DecodedSample`: the image already resized to the size training
uses (about IMAGE_MAX_DIM, never padded) and each instance as its tight box plus the
bit-packed mask inside it. Augmentation therefore runs at training resolution, after
resizing, as in matterport (an augmentation that changes the image size is followed by
another resize). Without augmentation stage 2 is only padding and targets.

Cache (``cache=`` of DataGenerator)
-----------------------------------
``None``: decode every time. ``"disk"``: one ``.npz`` file per image and config under
``cache_dir`` (default: ``<tmp>/colabrcnn_cache``, or ``$COLABRCNN_CACHE_DIR``), written
atomically (temporary file + rename), so worker processes, later epochs, new
DataGenerators and later sessions (with ``cache_dir`` on persistent storage) share it;
a damaged or partial file fails its CRC/shape check and is rebuilt. File names hash the
image record, the file's size and modification time, the classes and the resize
settings, so edited annotations or images are never served stale. ``"ram"``: stage-1
results in memory. With ``use_multiprocessing=False`` (threads) one dict is shared by
all workers. Keras starts *new* worker processes every epoch, so a per-process dict would
be thrown away each epoch; with ``use_multiprocessing=True`` the RAM cache is therefore
a folder in shared memory (``/dev/shm``, else the temp dir) that all workers read and
write, removed when the DataGenerator is closed or garbage collected. Both caches stop
adding entries when memory or disk runs low (``cache_max_gb``). Only stage 1 is cached:
augmentation, crops and RPN sampling stay random, and batches are identical with and
without the cache.

Augmentation
------------
``augmentation`` is None, an albumentations transform/Compose, the callable of
``colabrcnn.data.augment.augmentation_callable`` (unwrapped to its pipeline), or any
``callable(image, masks, class_ids)`` returning the same three (it also gets ``rng=``, a
numpy Generator, if it takes that argument). albumentations pipelines are re-seeded for
every sample from the sample's seed, each thread using its own copy, so batches are the
same for a given ``seed`` whatever ``workers``/``use_multiprocessing`` are. For
pipelines made of transforms that only move pixels (flips, rotations, affine, crops,
resizes, pads with nearest-neighbour masks and a zero mask fill, and colour transforms)
the instance masks travel bit-packed, eight per channel, which is exact and several times
faster; other pipelines get one mask per instance. Instances that vanish (cropped or
rotated out) are removed from boxes, masks and class ids together; images whose
instances all vanished, or that had none, are kept (they teach background).
``no_augmentation_sources``: images whose ``source`` is listed are never augmented.

Workers
-------
``workers=2, use_multiprocessing=True`` suits a 2-core Colab. Keras forks the worker
processes anew every epoch. Batches are the same whatever the number of workers (each
sample's random generator is seeded from (seed, epoch, batch, position)). Worker
processes write the big arrays of a batch (the float32 images, and full-size masks when
USE_MINI_MASK is off) straight into files in /dev/shm, and the pool's pipe carries only
their names: the main process maps the same memory instead of unpickling ~12 MB per
1024 px image (``shared_memory=False`` turns this off; it is off by itself with threads
or without /dev/shm).
"""
from __future__ import annotations

import copy
import functools
import hashlib
import inspect
import mmap
import os
import pickle
import random
import shutil
import tempfile
import threading
import time
import uuid
import warnings
import weakref

import cv2
import numpy as np

from .. import utils
from ..errors import AnnotationError, ConfigError

try:  # keras is light to import without a backend call, but keep the module importable
    from keras.utils import PyDataset as _PyDataset
except Exception:  # pragma: no cover - keras missing: doctor reports it
    _PyDataset = object


INPUT_NAMES = ("input_image", "input_image_meta", "input_rpn_match", "input_rpn_bbox",
               "input_gt_class_ids", "input_gt_boxes", "input_gt_masks")

# Bump when DecodedSample's content or layout changes: old cache files are then ignored.
CACHE_VERSION = 1
CACHE_KINDS = ("ram", "disk")
_GB = 1024 ** 3


# ============================================================================ stage 1
class DecodedSample:
    """An image resized to its training scale, with compact instance masks.

    image [h, w, C] uint8 (not padded); boxes [N, 4] int32 tight (y1, x1, y2, x2),
    y2/x2 exclusive, in ``image``; class_ids [N] int32; ``bits``/``offsets``: instance
    k's mask inside its box is ``np.packbits`` of it at bits[offsets[k]:offsets[k+1]];
    original_shape: the decoded image's shape; scale: original -> ``image``.
    """

    __slots__ = ("image", "boxes", "class_ids", "bits", "offsets", "original_shape",
                 "scale")

    def __init__(self, image, boxes, class_ids, bits, offsets, original_shape, scale):
        self.image = image
        self.boxes = boxes
        self.class_ids = class_ids
        self.bits = bits
        self.offsets = offsets
        self.original_shape = tuple(int(v) for v in original_shape)
        self.scale = float(scale)

    @classmethod
    def from_crops(cls, image, boxes, crops, class_ids, original_shape, scale):
        packed = [np.packbits(c.reshape(-1)) for c in crops]
        offsets = np.zeros((len(packed) + 1,), np.int64)
        offsets[1:] = np.cumsum([p.size for p in packed]) if packed else []
        bits = np.concatenate(packed) if packed else np.zeros((0,), np.uint8)
        return cls(image, np.asarray(boxes, np.int32).reshape(-1, 4),
                   np.asarray(class_ids, np.int32).reshape(-1), bits, offsets,
                   original_shape, scale)

    def __len__(self):
        return int(self.boxes.shape[0])

    def crop(self, k):
        """Instance k's mask inside its box: [y2 - y1, x2 - x1] bool."""
        y1, x1, y2, x2 = (int(v) for v in self.boxes[k])
        h, w = y2 - y1, x2 - x1
        part = self.bits[self.offsets[k]:self.offsets[k + 1]]
        return np.unpackbits(part, count=h * w).reshape(h, w).view(bool)

    def crops(self):
        return [self.crop(k) for k in range(len(self))]

    @property
    def nbytes(self):
        return int(self.image.nbytes + self.boxes.nbytes + self.class_ids.nbytes
                   + self.bits.nbytes + self.offsets.nbytes)

    def freeze(self):
        """Make the arrays read-only (cached samples are shared between uses)."""
        for name in ("image", "boxes", "class_ids", "bits", "offsets"):
            getattr(self, name).flags.writeable = False
        return self

    # -- serialisation (the disk cache) --
    def to_arrays(self):
        return {"image": self.image, "boxes": self.boxes, "class_ids": self.class_ids,
                "bits": self.bits, "offsets": self.offsets,
                "info": np.array(list(self.original_shape) + [self.scale], np.float64),
                "version": np.array([CACHE_VERSION], np.int64)}

    @classmethod
    def from_arrays(cls, arrays):
        """Rebuild from ``to_arrays`` output; ValueError if anything is inconsistent."""
        version = np.asarray(arrays["version"])
        if version.shape != (1,) or int(version[0]) != CACHE_VERSION:
            raise ValueError("cache format version differs")
        image = np.asarray(arrays["image"])
        boxes = np.asarray(arrays["boxes"])
        class_ids = np.asarray(arrays["class_ids"])
        bits = np.asarray(arrays["bits"])
        offsets = np.asarray(arrays["offsets"])
        info = np.asarray(arrays["info"])
        n = boxes.shape[0] if boxes.ndim == 2 else -1
        if image.dtype != np.uint8 or image.ndim != 3 or boxes.dtype != np.int32 or \
                boxes.ndim != 2 or boxes.shape[1] != 4 or class_ids.shape != (n,) or \
                offsets.shape != (n + 1,) or bits.dtype != np.uint8 or bits.ndim != 1 or \
                info.ndim != 1 or info.size < 2:
            raise ValueError("cached arrays have unexpected shapes")
        h, w = image.shape[:2]
        sizes = (boxes[:, 2] - boxes[:, 0]).astype(np.int64) * (boxes[:, 3] - boxes[:, 1])
        if n and (boxes[:, :2].min() < 0 or boxes[:, 2].max() > h or boxes[:, 3].max() > w
                  or sizes.min() <= 0):
            raise ValueError("cached boxes lie outside the image")
        if offsets[0] != 0 or offsets[-1] != bits.size or \
                not np.array_equal(np.diff(offsets), (sizes + 7) // 8):
            raise ValueError("cached mask bits do not match the boxes")
        return cls(image, boxes, class_ids, bits, offsets,
                   tuple(int(v) for v in info[:-1]), float(info[-1]))


def _as_image(image, config, ref):
    """The dataset's image as [H, W, C] uint8 (RGB when IMAGE_CHANNEL_COUNT is 3)."""
    from .dataset import to_rgb_uint8
    image = np.asarray(image)
    channels = int(config.IMAGE_CHANNEL_COUNT)
    if image.ndim == 3 and image.shape[2] == channels and image.dtype == np.uint8:
        return image
    if channels == 3:
        return to_rgb_uint8(image, ref)
    if image.ndim == 2 and channels == 1:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] != channels:
        raise AnnotationError(f"load_image returned an array of shape {image.shape}, but "
                              f"IMAGE_CHANNEL_COUNT is {channels}", image=ref)
    return np.clip(image, 0, 255).astype(np.uint8)


_MAGIC = np.uint64(0x0102040810204080)


def _pack_masks(masks):
    """[H, W, N] masks -> [H, W, ceil(N / 8)] uint8, bit (k % 8) of channel k // 8 = mask k.

    Same result as ``np.packbits(masks != 0, axis=-1, bitorder="little")``, 5-10x
    faster: eight 0/1 bytes read as one uint64 are gathered into a byte by a
    multiplication, walking the array in its memory order (pycocotools' masks are
    column-major).
    """
    n = masks.shape[2]
    m = masks if masks.dtype == bool else masks != 0
    swap = abs(m.strides[0]) < abs(m.strides[1])
    if swap:
        m = m.transpose(1, 0, 2)
    out = np.zeros(m.shape[:2] + ((n + 7) // 8,), np.uint8)
    for p in range(out.shape[2]):
        part = m[..., 8 * p:8 * p + 8]
        if part.shape[2] == 8 and part.strides[2] == 1:
            out[..., p] = (part.view(np.uint64)[..., 0] * _MAGIC) >> np.uint64(56)
        else:
            o = out[..., p]
            for b in range(part.shape[2]):
                o |= part[..., b].view(np.uint8) << b
    if swap:
        out = out.transpose(1, 0, 2)
    return np.ascontiguousarray(out)


def _resize_nearest(planes_hwp, height, width):
    """cv2 nearest-neighbour resize of [H, W, P] (any P) -> [height, width, P]."""
    parts = []
    for i in range(0, planes_hwp.shape[2], 512):  # cv2 handles at most 512 channels
        part = cv2.resize(np.ascontiguousarray(planes_hwp[..., i:i + 512]), (width, height),
                          interpolation=cv2.INTER_NEAREST)
        parts.append(part.reshape(height, width, -1))
    return np.concatenate(parts, axis=2) if len(parts) > 1 else parts[0]


def _compact(planes, n):
    """Bit planes -> tight boxes and crops of the non-empty instances.

    planes [P, H, W] uint8: bit (k % 8) of plane k // 8 is instance k.
    Returns boxes [M, 4] int32, crops (M bool arrays) and the kept indices [M].
    """
    if n == 0:
        return np.zeros((0, 4), np.int32), [], np.zeros((0,), np.int64)
    p, h, w = planes.shape
    shifts = np.arange(8, dtype=np.uint8)[None, :, None]
    rows = np.bitwise_or.reduce(planes, axis=2)  # [P, H]: any pixel in the row, per bit
    cols = np.bitwise_or.reduce(planes, axis=1)  # [P, W]
    rows = ((rows[:, None, :] >> shifts) & 1).reshape(p * 8, h)[:n]
    cols = ((cols[:, None, :] >> shifts) & 1).reshape(p * 8, w)[:n]
    boxes, crops, keep = [], [], []
    for k in range(n):
        r = np.flatnonzero(rows[k])
        if r.size == 0:
            continue
        c = np.flatnonzero(cols[k])
        y1, y2, x1, x2 = int(r[0]), int(r[-1]) + 1, int(c[0]), int(c[-1]) + 1
        crops.append(((planes[k >> 3, y1:y2, x1:x2] >> (k & 7)) & 1).view(bool))
        boxes.append((y1, x1, y2, x2))
        keep.append(k)
    return (np.asarray(boxes, np.int32).reshape(-1, 4), crops,
            np.asarray(keep, np.int64))


def _planes(shape, boxes, crops):
    """Compact instances -> bit planes [ceil(N / 8), H, W] uint8."""
    n = len(crops)
    planes = np.zeros(((n + 7) // 8,) + tuple(shape[:2]), np.uint8)
    for k, (box, crop) in enumerate(zip(boxes, crops)):
        y1, x1, y2, x2 = (int(v) for v in box)
        planes[k >> 3, y1:y2, x1:x2] |= crop.view(np.uint8) << (k & 7)
    return planes


def _full_masks(shape, boxes, crops):
    """Compact instances -> [H, W, N] bool (matterport's layout)."""
    masks = np.zeros(tuple(shape[:2]) + (len(crops),), bool)
    for k, (box, crop) in enumerate(zip(boxes, crops)):
        y1, x1, y2, x2 = (int(v) for v in box)
        masks[y1:y2, x1:x2, k] = crop
    return masks


def _tighten(crop):
    """(dy1, dx1, dy2, dx2) of the pixels set in a bool crop, or None if empty."""
    rows = np.flatnonzero(crop.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(crop.any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def decode_sample(dataset, config, image_id):
    """Stage 1: load the image and its masks and resize both to the training scale.

    The scale is what ``utils.resize_image`` would use for the config; masks are resized
    nearest-neighbour while bit-packed (eight instances per channel: exact and fast),
    then cut to their boxes. Instances that vanish when shrinking are dropped.
    """
    ref = _reference(dataset, image_id)
    image = _as_image(dataset.load_image(image_id), config, ref)
    masks, class_ids = dataset.load_mask(image_id)
    masks = np.asarray(masks)
    class_ids = np.asarray(class_ids).reshape(-1)
    if masks.ndim == 2 and masks.size == 0 and class_ids.size == 0:
        masks = np.zeros(image.shape[:2] + (0,), bool)
    if masks.ndim != 3 or masks.shape[:2] != image.shape[:2]:
        raise AnnotationError(f"load_mask returned masks of shape {masks.shape} for an image "
                              f"of size {image.shape[0]}x{image.shape[1]}; expected "
                              f"{image.shape[0]} x {image.shape[1]} x N", image=ref)
    if masks.shape[2] != class_ids.shape[0]:
        raise AnnotationError(f"load_mask returned {masks.shape[2]} masks but "
                              f"{class_ids.shape[0]} class ids", image=ref)
    if class_ids.size and not np.issubdtype(class_ids.dtype, np.integer):
        if not np.all(np.equal(np.mod(class_ids, 1), 0)):
            raise AnnotationError(f"class ids must be integers, got {class_ids[:5]}",
                                  image=ref)
    class_ids = class_ids.astype(np.int32)
    original_shape = image.shape
    n = masks.shape[2]
    scale = utils.resize_scale(image.shape, config.IMAGE_MIN_DIM, config.IMAGE_MAX_DIM,
                               config.IMAGE_MIN_SCALE, config.IMAGE_RESIZE_MODE)
    packed = _pack_masks(masks) if n else None  # [H, W, ceil(N / 8)]
    if scale != 1:
        nh, nw = utils.scaled_size(image.shape, scale)
        image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
        if image.ndim == 2:
            image = image[..., None]
        if n:
            packed = _resize_nearest(packed, nh, nw)
    planes = np.ascontiguousarray(packed.transpose(2, 0, 1)) if n else None
    boxes, crops, keep = _compact(planes, n)
    return DecodedSample.from_crops(np.ascontiguousarray(image), boxes, crops,
                                    class_ids[keep], original_shape, scale)


# ============================================================================ caches
def _mem_available():
    """Bytes of memory available (Linux /proc/meminfo), or None when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def default_cache_dir():
    """``$COLABRCNN_CACHE_DIR``, else ``<temp dir>/colabrcnn_cache``.

    Local disk, not Drive: Drive is slow for many small reads. Entries are keyed by
    content, so one folder serves every dataset and config.
    """
    return os.environ.get("COLABRCNN_CACHE_DIR") or os.path.join(tempfile.gettempdir(),
                                                                  "colabrcnn_cache")


class RamCache:
    """Stage-1 samples in this process's memory (shared by threads, not processes).

    Stops adding entries beyond ``max_bytes`` (default: half the memory available when
    it is created).
    """

    kind = "ram"

    def __init__(self, max_bytes=None):
        if max_bytes is None:
            avail = _mem_available()
            max_bytes = avail // 2 if avail else 4 * _GB
        self.max_bytes = int(max_bytes)
        self._entries = {}
        self._bytes = 0
        self._lock = threading.Lock()
        self._full_warned = False
        self.stats = {"hits": 0, "misses": 0, "writes": 0, "rebuilt": 0}

    def get(self, key):
        sample = self._entries.get(key)
        self.stats["hits" if sample is not None else "misses"] += 1
        return sample

    def put(self, key, sample):
        with self._lock:
            if key in self._entries:
                return
            if self._bytes + sample.nbytes > self.max_bytes:
                if not self._full_warned:
                    self._full_warned = True
                    warnings.warn(f"the RAM cache reached its limit of "
                                  f"{self.max_bytes / _GB:.1f} GB; further images are "
                                  "decoded every time (use cache='disk' or a smaller "
                                  "IMAGE_MAX_DIM)", stacklevel=3)
                return
            self._entries[key] = sample.freeze()
            self._bytes += sample.nbytes
            self.stats["writes"] += 1

    @property
    def nbytes(self):
        return self._bytes

    def __len__(self):
        return len(self._entries)

    def close(self):
        self._entries.clear()
        self._bytes = 0

    def __getstate__(self):  # a copy in another process starts empty
        return {"max_bytes": self.max_bytes}

    def __setstate__(self, state):
        self.__init__(state["max_bytes"])


def _remove_dir(path, owner_pid):
    if os.getpid() == owner_pid:  # never from a forked worker holding a copy
        shutil.rmtree(path, ignore_errors=True)


class DiskCache:
    """Stage-1 samples as ``.npz`` files in ``folder``, safe with worker processes.

    (Also the "ram" cache of multiprocessing workers: then a temporary folder in
    /dev/shm, ``kind == "ram"``.)

    Files are written to a temporary name and renamed (atomic), read with their CRC
    checked; a file that cannot be read back is deleted and rebuilt. Writing stops while
    less than ``min_free_bytes`` of disk (and, for a shared-memory folder, of memory)
    would remain.
    """

    kind = "disk"

    def __init__(self, folder=None, min_free_bytes=1 * _GB, temporary=False, kind="disk"):
        self.folder = os.path.abspath(os.fspath(folder or default_cache_dir()))
        self.min_free_bytes = int(min_free_bytes)
        self.temporary = temporary
        self.kind = kind
        self.stats = {"hits": 0, "misses": 0, "writes": 0, "rebuilt": 0}
        self._full_warned = False
        os.makedirs(self.folder, exist_ok=True)
        self._remove_stale_temporaries()
        self._finalizer = None
        if temporary:
            self._finalizer = weakref.finalize(self, _remove_dir, self.folder, os.getpid())

    def _remove_stale_temporaries(self, age_s=3600):
        """Temporary files of writers that were killed mid-write (an hour old)."""
        try:
            with os.scandir(self.folder) as entries:
                for e in entries:
                    if e.name.endswith(".tmp"):
                        try:
                            if e.stat().st_mtime < time.time() - age_s:
                                os.remove(e.path)
                        except OSError:
                            pass
        except OSError:
            pass

    def path(self, key):
        return os.path.join(self.folder, key + ".npz")

    def get(self, key):
        path = self.path(key)
        try:
            with np.load(path, allow_pickle=False) as z:
                sample = DecodedSample.from_arrays({k: z[k] for k in z.files})
        except FileNotFoundError:
            self.stats["misses"] += 1
            return None
        except Exception:  # partial, damaged or foreign file: rebuild it
            self.stats["misses"] += 1
            self.stats["rebuilt"] += 1
            try:
                os.remove(path)
            except OSError:
                pass
            return None
        self.stats["hits"] += 1
        return sample

    def _room(self, nbytes):
        try:
            free = shutil.disk_usage(self.folder).free
        except OSError:
            return False
        if free - nbytes < self.min_free_bytes:
            return False
        if self.temporary and self.folder.startswith("/dev/shm"):
            avail = _mem_available()
            if avail is not None and avail - nbytes < self.min_free_bytes:
                return False
        return True

    def put(self, key, sample):
        if not self._room(sample.nbytes):
            if not self._full_warned:
                self._full_warned = True
                warnings.warn(f"the cache folder {self.folder} is nearly full; further "
                              "images are not cached", stacklevel=3)
            return
        os.makedirs(self.folder, exist_ok=True)
        tmp = os.path.join(self.folder, f".{key}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with open(tmp, "wb") as f:
                np.savez(f, **sample.to_arrays())
            os.replace(tmp, self.path(key))
            self.stats["writes"] += 1
        except OSError as e:  # disk full, folder removed, ...: training goes on uncached
            try:
                os.remove(tmp)
            except OSError:
                pass
            if not self._full_warned:
                self._full_warned = True
                warnings.warn(f"cannot write to the cache folder {self.folder} ({e}); "
                              "further images are not cached", stacklevel=3)

    def __len__(self):
        try:
            return sum(1 for n in os.listdir(self.folder) if n.endswith(".npz"))
        except OSError:
            return 0

    def close(self):
        if self._finalizer is not None:
            self._finalizer()

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_finalizer"] = None  # only the creating process removes a temporary folder
        return state


def _shared_memory_folder():
    """A fresh folder in /dev/shm when it has room, else in the temp dir."""
    name = f"colabrcnn_ram_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    try:
        if os.path.isdir("/dev/shm") and shutil.disk_usage("/dev/shm").free > 2 * _GB:
            return os.path.join("/dev/shm", name)
    except OSError:
        pass
    return os.path.join(tempfile.gettempdir(), name)


def make_cache(kind, cache_dir=None, max_gb=None, multiprocessing=False):
    """A cache object for ``kind`` ("ram", "disk", None), see the module docstring.

    ``multiprocessing=True`` makes "ram" a temporary shared-memory folder, which worker
    processes (recreated by Keras every epoch) can share.
    """
    if kind is None or kind is False:
        return None
    if isinstance(kind, (RamCache, DiskCache)):
        return kind
    if kind == "ram":
        max_bytes = None if max_gb is None else int(max_gb * _GB)
        if multiprocessing:
            return DiskCache(cache_dir or _shared_memory_folder(), temporary=cache_dir is None,
                             min_free_bytes=_GB, kind="ram")
        return RamCache(max_bytes)
    if kind == "disk":
        return DiskCache(cache_dir)
    raise ValueError(f"cache must be one of {CACHE_KINDS} or None, got {kind!r}")


def _stable_bytes(value):
    try:
        return pickle.dumps(value, protocol=4)
    except Exception:
        return repr(value).encode("utf-8", "replace")


def sample_key(dataset, config, image_id):
    """Cache key of one image's stage-1 result: a hash of everything it depends on."""
    h = hashlib.sha1()
    h.update(repr((CACHE_VERSION, type(dataset).__module__, type(dataset).__qualname__,
                   str(config.IMAGE_RESIZE_MODE), int(config.IMAGE_MIN_DIM or 0),
                   int(config.IMAGE_MAX_DIM or 0), float(config.IMAGE_MIN_SCALE or 0),
                   int(config.IMAGE_CHANNEL_COUNT))).encode())
    info = dict(dataset.image_info[image_id])  # current items: no lazy size lookup
    if info.get("size_from") == "file":
        # Read from the file's header on first use: covered by the file's stat below.
        for k in ("width", "height", "size_from"):
            info.pop(k, None)
    for k in sorted(info, key=str):
        h.update(str(k).encode())
        h.update(_stable_bytes(info[k]))
    path = info.get("path")
    if isinstance(path, (str, os.PathLike)):
        try:
            st = os.stat(path)
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
        except OSError:
            pass
    h.update(_stable_bytes(getattr(dataset, "class_info", None)))
    name = os.path.splitext(os.path.basename(str(path or info.get("name")
                                                 or info.get("id") or image_id)))[0]
    name = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)[:40]
    return f"{name}-{h.hexdigest()[:24]}"


# ================================================================ batch transport
_SHM_PREFIXES = ("colabrcnn_batches_", "colabrcnn_ram_")


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _remove_stale_shared_folders():
    """Remove /dev/shm folders left by colabrcnn processes that no longer run."""
    try:
        names = os.listdir("/dev/shm")
    except OSError:
        return
    for name in names:
        for prefix in _SHM_PREFIXES:
            if name.startswith(prefix):
                try:
                    pid = int(name[len(prefix):].split("_")[0])
                except ValueError:
                    continue
                if pid != os.getpid() and not _pid_alive(pid):
                    shutil.rmtree(os.path.join("/dev/shm", name), ignore_errors=True)


class _SharedArray(np.ndarray):
    """A batch array in a shared-memory file; pickles as the file's name.

    A worker process writes the batch straight into the mapped file; pickling it for
    the pool's result pipe sends only (path, shape, dtype), and the main process maps
    the same pages (and removes the name). Instead of ~5 copies of ~12 MB per 1024 px
    image through pickle and a pipe, none.
    """

    def __array_finalize__(self, obj):
        self._shm_path = None  # slices and views pickle as plain arrays

    def __reduce_ex__(self, protocol):
        path = getattr(self, "_shm_path", None)
        if path is None:
            return np.ascontiguousarray(self).view(np.ndarray).__reduce_ex__(protocol)
        return (_open_shared, (path, self.shape, self.dtype.str))

    def __reduce__(self):
        return self.__reduce_ex__(2)


def _open_shared(path, shape, dtype):
    """Unpickle a _SharedArray: map its file, remove the name, return a plain array."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    fd = os.open(path, os.O_RDWR)
    try:
        mm = mmap.mmap(fd, max(nbytes, 1))
    finally:
        os.close(fd)
        try:
            os.remove(path)
        except OSError:
            pass
    return np.frombuffer(mm, dtype=dtype, count=int(np.prod(shape))).reshape(shape)


class _BatchTransport:
    """Shared-memory batches from worker processes (see _SharedArray); a no-op in the
    main process, with threads, or where /dev/shm is missing or full."""

    def __init__(self, enabled):
        self.owner = os.getpid()
        self.folder = None
        self._finalizer = None
        if not enabled or not os.path.isdir("/dev/shm"):
            return
        _remove_stale_shared_folders()
        folder = os.path.join("/dev/shm", f"colabrcnn_batches_{self.owner}_"
                                          f"{uuid.uuid4().hex[:8]}")
        try:
            os.makedirs(folder)
        except OSError:
            return
        self.folder = folder
        self._finalizer = weakref.finalize(self, _remove_dir, folder, self.owner)

    def empty(self, shape, dtype):
        """An uninitialised array, in shared memory when called in a worker process."""
        if self.folder is None or os.getpid() == self.owner:
            return np.empty(shape, dtype)
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        path = os.path.join(self.folder, uuid.uuid4().hex)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.posix_fallocate(fd, 0, max(nbytes, 1))  # ENOSPC now, not SIGBUS later
                mm = mmap.mmap(fd, max(nbytes, 1))
            finally:
                os.close(fd)
        except (OSError, ValueError, AttributeError):
            try:
                os.remove(path)
            except OSError:
                pass
            return np.empty(shape, dtype)
        arr = np.frombuffer(mm, dtype=dtype, count=int(np.prod(shape))).reshape(shape)
        arr = arr.view(_SharedArray)
        arr._shm_path = path
        return arr

    def close(self):
        if self._finalizer is not None:
            self._finalizer()

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_finalizer"] = None
        return state


# ====================================================================== augmentation
# Transforms that only move pixels (or pad/crop/resize): with nearest-neighbour mask
# interpolation and a zero mask fill they keep bit-packed masks exact.
_PIXEL_MOVING = {
    "HorizontalFlip", "VerticalFlip", "Transpose", "RandomRotate90", "D4",
    "SquareSymmetry", "Rotate", "SafeRotate", "Affine", "ShiftScaleRotate", "Perspective",
    "RandomScale", "Resize", "LongestMaxSize", "SmallestMaxSize", "PadIfNeeded", "Pad",
    "Crop", "CenterCrop", "RandomCrop", "RandomResizedCrop", "RandomSizedCrop",
    "CropAndPad", "ElasticTransform", "GridDistortion", "OpticalDistortion",
    "PiecewiseAffine", "ThinPlateSpline", "NoOp", "ToGray",
}


def _is_albumentations(obj):
    return any(c.__module__.split(".")[0] == "albumentations" for c in type(obj).__mro__)


def _bit_safe(transform):
    """True if every transform in the pipeline keeps bit-packed masks exact."""
    children = getattr(transform, "transforms", None)
    if children is not None and not hasattr(transform, "apply"):  # a Compose/OneOf/...
        return all(_bit_safe(t) for t in children)
    names = {c.__name__ for c in type(transform).__mro__}
    if "ImageOnlyTransform" in names:
        return True
    if type(transform).__name__ not in _PIXEL_MOVING:
        return False
    interp = getattr(transform, "mask_interpolation", cv2.INTER_NEAREST)
    if interp not in (None, cv2.INTER_NEAREST, cv2.INTER_NEAREST_EXACT):
        return False
    for name in ("fill_mask", "mask_value", "cval_mask"):  # albumentations 2 / 1.x names
        fill = getattr(transform, name, 0)
        if fill is not None and np.any(np.asarray(fill) != 0):
            return False
    return True


class Augmenter:
    """Applies one of the accepted augmentation forms to a compact sample.

    Picklable (worker processes get their own copy); each thread deep-copies an
    albumentations pipeline once, then re-seeds it per sample.
    """

    def __init__(self, augmentation):
        from . import augment as _augment
        self.kind = None
        self.pipeline = None
        self.fn = None
        self.min_area = 1
        self.packed = False
        self.pass_rng = False
        if augmentation is None:
            pass
        elif isinstance(augmentation, functools.partial) and \
                augmentation.func is _augment._apply_positional:
            self.pipeline, self.min_area = augmentation.args[0], augmentation.args[1]
            self.kind = None if self.pipeline is None else "pipeline"
        elif _is_albumentations(augmentation):
            self.pipeline, self.kind = augmentation, "pipeline"
        elif callable(augmentation):
            self.fn, self.kind = augmentation, "callable"
            try:
                self.pass_rng = "rng" in inspect.signature(augmentation).parameters
            except (TypeError, ValueError):
                self.pass_rng = False
        else:
            raise TypeError("augmentation must be an albumentations transform or Compose, "
                            "a callable(image, masks, class_ids) or None, got "
                            f"{type(augmentation).__name__}")
        if self.kind == "pipeline":
            self.packed = _is_albumentations(self.pipeline) and _bit_safe(self.pipeline)
        self._local = threading.local()

    def __bool__(self):
        return self.kind is not None

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_local", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._local = threading.local()

    def _thread_pipeline(self):
        p = getattr(self._local, "pipeline", None)
        if p is None:
            try:
                p = copy.deepcopy(self.pipeline)
            except Exception:  # pragma: no cover - an uncopyable custom transform
                p = self.pipeline
            self._local.pipeline = p
        return p

    def __call__(self, image, boxes, crops, class_ids, rng):
        """Augment a compact sample -> (image, planes [P, H, W] uint8, class_ids, n)."""
        from .augment import _call, apply_augmentation
        seed = int(rng.integers(0, 2 ** 32))
        shape = image.shape
        n = len(crops)
        if self.kind == "pipeline":
            p = self._thread_pipeline()
            if hasattr(p, "set_random_seed"):
                p.set_random_seed(seed)
            else:  # albumentations 1.x draws from the global generators
                random.seed(seed)
                np.random.seed(seed)
            if self.packed or n == 0:
                planes = _planes(shape, boxes, crops)
                data = {"image": np.array(image)}
                if n:
                    data["masks"] = list(planes)
                out = _call(p, **data)
                img = np.asarray(out["image"])
                planes = (np.stack([np.asarray(m, np.uint8) for m in out["masks"]])
                          if n else np.zeros((0,) + img.shape[:2], np.uint8))
                return img, planes, class_ids, n
            img, masks, ids = apply_augmentation(p, np.array(image),
                                                 _full_masks(shape, boxes, crops),
                                                 class_ids, min_area=0)
        else:
            args = (np.array(image), _full_masks(shape, boxes, crops), class_ids.copy())
            out = self.fn(*args, rng=rng) if self.pass_rng else self.fn(*args)
            if not isinstance(out, (tuple, list)) or len(out) != 3:
                raise TypeError("an augmentation callable must return (image, masks, "
                                "class_ids)")
            img, masks, ids = (np.asarray(v) for v in out)
        ids = np.asarray(ids).reshape(-1)
        if masks.ndim != 3 or masks.shape[2] != ids.shape[0]:
            raise AnnotationError(f"the augmentation returned masks of shape {masks.shape} "
                                  f"with {ids.shape[0]} class ids")
        planes = (np.ascontiguousarray(_pack_masks(masks).transpose(2, 0, 1))
                  if ids.size else np.zeros((0,) + masks.shape[:2], np.uint8))
        return img, planes, ids.astype(np.int32), int(ids.shape[0])


# ============================================================================ stage 2
def _reference(dataset, image_id):
    try:
        return dataset.image_reference(image_id)
    except Exception:
        return f"image_id {image_id}"


class SampleBuilder:
    """Builds one image's model inputs: stage 1 (cached when a cache is given), then
    augmentation, padding/cropping and targets. Picklable for worker processes."""

    def __init__(self, dataset, config, augmentation=None, cache=None,
                 no_augmentation_sources=None):
        self.dataset = dataset
        self.config = config
        self.augmenter = augmentation if isinstance(augmentation, Augmenter) \
            else Augmenter(augmentation)
        self.cache = cache
        self.no_augmentation_sources = set(no_augmentation_sources or ())
        self._keys = {}

    # -- stage 1 --
    def decoded(self, image_id):
        if self.cache is None:
            return decode_sample(self.dataset, self.config, image_id)
        key = self._keys.get(image_id)
        if key is None:
            key = self._keys[image_id] = sample_key(self.dataset, self.config, image_id)
        sample = self.cache.get(key)
        if sample is None:
            sample = decode_sample(self.dataset, self.config, image_id)
            self.cache.put(key, sample)
        return sample

    # -- both stages --
    def build(self, image_id, rng=None, image_out=None):
        """Model inputs of one image (unbatched), a dict keyed like INPUT_NAMES.

        ``image_out``: optional float32 IMAGE_SHAPE array the molded image is written
        into (a slice of the batch array: saves a copy). Any failure is raised as an
        AnnotationError naming the image (ConfigError for settings that cannot work).
        """
        rng = rng if rng is not None else np.random.default_rng()
        image_id = int(image_id)
        try:
            return self._build(image_id, rng, image_out)
        except AnnotationError as e:
            if e.image is None and e.file is None:
                raise AnnotationError(str(e), image=_reference(self.dataset, image_id)) \
                    from e
            raise
        except (ConfigError, MemoryError):
            raise
        except Exception as e:
            raise AnnotationError(f"cannot build a training sample ({type(e).__name__}: "
                                  f"{e})", image=_reference(self.dataset, image_id)) from e

    def _augments(self, image_id):
        if not self.augmenter:
            return False
        if self.no_augmentation_sources:
            source = self.dataset.image_info[image_id].get("source")
            if source in self.no_augmentation_sources:
                return False
        return True

    def _build(self, image_id, rng, image_out=None):
        c = self.config
        dec = self.decoded(image_id)
        image, boxes, class_ids, scale = dec.image, dec.boxes, dec.class_ids, dec.scale
        crops = dec.crops()
        if self._augments(image_id):
            img, planes, ids, n = self.augmenter(image, boxes, crops, class_ids, rng)
            img = np.asarray(img)
            if img.ndim == 2:
                img = img[..., None]
            if img.ndim != 3 or planes.shape[1:] != img.shape[:2]:
                raise AnnotationError(f"the augmentation returned masks of size "
                                      f"{planes.shape[1:]} for an image of shape {img.shape}")
            if img.dtype != np.uint8:
                img = np.clip(np.round(img), 0, 255).astype(np.uint8)
            if img.shape[:2] != image.shape[:2]:
                # The augmentation changed the size: resize again, as resize_image would.
                s2 = utils.resize_scale(img.shape, c.IMAGE_MIN_DIM, c.IMAGE_MAX_DIM,
                                        c.IMAGE_MIN_SCALE, c.IMAGE_RESIZE_MODE)
                if s2 != 1:
                    nh, nw = utils.scaled_size(img.shape, s2)
                    img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
                    img = img[..., None] if img.ndim == 2 else img
                    if n:
                        planes = np.ascontiguousarray(_resize_nearest(
                            planes.transpose(1, 2, 0), nh, nw).transpose(2, 0, 1))
                    else:
                        planes = np.zeros((0, nh, nw), np.uint8)
                    scale *= s2
            image = img
            boxes, crops, keep = _compact(planes, n)
            class_ids = ids[keep]
            if self.augmenter.min_area > 1 and crops:
                big = [k for k, m in enumerate(crops) if m.sum() >= self.augmenter.min_area]
                boxes, class_ids = boxes[big], class_ids[big]
                crops = [crops[k] for k in big]

        # Pad / crop into IMAGE_SHAPE, as resize_image + pad_to_shape do.
        padding, crop, window = utils.placement(image.shape, c.IMAGE_MIN_DIM,
                                                c.IMAGE_MAX_DIM, c.IMAGE_RESIZE_MODE, rng)
        h, w = image.shape[:2]
        if crop is not None:
            oy, ox, out_h, out_w = crop[0] - padding[0][0], crop[1] - padding[1][0], \
                crop[2], crop[3]
        else:
            oy, ox = -padding[0][0], -padding[1][0]
            out_h, out_w = h + sum(padding[0]), w + sum(padding[1])
        shape = (int(c.IMAGE_SHAPE[0]), int(c.IMAGE_SHAPE[1]), image.shape[2])
        if out_h > shape[0] or out_w > shape[1]:
            raise ConfigError(
                f"image of {out_h}x{out_w} does not fit in IMAGE_SHAPE {shape[0]}x{shape[1]};"
                f" raise IMAGE_MAX_DIM or use IMAGE_RESIZE_MODE='square'")
        # Molded straight into the output (utils.mold_image of the padded image).
        mean = np.asarray(c.MEAN_PIXEL, np.float32)
        molded = image_out if image_out is not None else np.empty(shape, np.float32)
        if molded.shape != shape or molded.dtype != np.float32:
            raise ValueError(f"image_out must be float32 {shape}, got {molded.dtype} "
                             f"{molded.shape}")
        r0, r1 = max(0, -oy), min(out_h, h - oy)
        c0, c1 = max(0, -ox), min(out_w, w - ox)
        if r1 > r0 and c1 > c0:
            np.subtract(image[r0 + oy:r1 + oy, c0 + ox:c1 + ox], mean,
                        out=molded[r0:r1, c0:c1])
            # Padding holds a zero pixel, molded: -MEAN_PIXEL.
            molded[:r0] = -mean
            molded[r1:] = -mean
            molded[r0:r1, :c0] = -mean
            molded[r0:r1, c1:] = -mean
        else:
            molded[...] = -mean

        # Instances into the same frame; a crop may cut them down or away.
        out_boxes, out_crops, keep = [], [], []
        for k, (box, m) in enumerate(zip(boxes, crops)):
            y1, x1, y2, x2 = (int(v) for v in box)
            y1, x1, y2, x2 = y1 - oy, x1 - ox, y2 - oy, x2 - ox
            cy1, cx1, cy2, cx2 = max(y1, 0), max(x1, 0), min(y2, out_h), min(x2, out_w)
            if cy2 <= cy1 or cx2 <= cx1:
                continue
            if (cy1, cx1, cy2, cx2) != (y1, x1, y2, x2):
                m = m[cy1 - y1:cy2 - y1, cx1 - x1:cx2 - x1]
                t = _tighten(m)
                if t is None:
                    continue
                m = m[t[0]:t[2], t[1]:t[3]]
                cy1, cx1, cy2, cx2 = cy1 + t[0], cx1 + t[1], cy1 + t[2], cx1 + t[3]
            out_boxes.append((cy1, cx1, cy2, cx2))
            out_crops.append(m)
            keep.append(k)
        boxes = np.asarray(out_boxes, np.int32).reshape(-1, 4)
        class_ids = np.asarray(class_ids, np.int32)[np.asarray(keep, np.int64)]
        crops = out_crops

        anchors = utils.get_anchors(c, shape)
        rpn_match, rpn_bbox = utils.build_rpn_targets(anchors, class_ids, boxes, c, rng=rng)

        n_max = c.MAX_GT_INSTANCES
        if class_ids.shape[0] > n_max:
            # More instances than the model takes: a random subset each time it is seen.
            sel = np.sort(rng.choice(class_ids.shape[0], n_max, replace=False))
            class_ids, boxes = class_ids[sel], boxes[sel]
            crops = [crops[i] for i in sel]
        k = class_ids.shape[0]
        gt_class_ids = np.zeros((n_max,), np.int32)
        gt_boxes = np.zeros((n_max, 4), np.float32)
        gt_class_ids[:k] = class_ids
        gt_boxes[:k] = boxes
        if c.USE_MINI_MASK:
            mh, mw = (int(v) for v in c.MINI_MASK_SHAPE)
            gt_masks = np.zeros((mh, mw, n_max), bool)
            for i, m in enumerate(crops):  # as utils.minimize_mask
                gt_masks[:, :, i] = cv2.resize(m.astype(np.float32), (mw, mh),
                                               interpolation=cv2.INTER_LINEAR) >= 0.5
        else:
            gt_masks = np.zeros(shape[:2] + (n_max,), bool)
            for i, (box, m) in enumerate(zip(boxes, crops)):
                y1, x1, y2, x2 = (int(v) for v in box)
                gt_masks[y1:y2, x1:x2, i] = m

        active_class_ids = np.zeros([c.NUM_CLASSES], dtype=np.int32)
        source_class_ids = self.dataset.source_class_ids.get(
            self.dataset.image_info[image_id]["source"], list(range(c.NUM_CLASSES)))
        active_class_ids[[i for i in source_class_ids if i < c.NUM_CLASSES]] = 1
        image_meta = utils.compose_image_meta(image_id, dec.original_shape, shape,
                                              window, scale, active_class_ids)
        return {
            "input_image": molded,
            "input_image_meta": image_meta,
            "input_rpn_match": rpn_match[:, None].astype(np.int32),
            "input_rpn_bbox": rpn_bbox,
            "input_gt_class_ids": gt_class_ids,
            "input_gt_boxes": gt_boxes,
            "input_gt_masks": gt_masks,
        }


def build_training_sample(dataset, config, image_id, augmentation=None, rng=None, *,
                          cache=None, no_augmentation_sources=None):
    """One image's model inputs (unbatched) as a dict keyed like INPUT_NAMES.

    ``augmentation``: see the module docstring. ``cache``: a cache object from
    :func:`make_cache` (or None). Raises AnnotationError naming the image when the
    sample cannot be built.
    """
    if isinstance(cache, str):
        raise ValueError("pass a cache object (make_cache('ram') or make_cache('disk')), "
                         "not a string: a new cache per call would never be reused")
    return SampleBuilder(dataset, config, augmentation, cache,
                         no_augmentation_sources).build(image_id, rng)


# ====================================================================== the PyDataset
class DataGenerator(_PyDataset):
    """Batches of training inputs from a prepared Dataset.

    Args:
        dataset: a prepared Dataset (annotation readers, shapes, or a matterport-style
            subclass).
        config: the Config.
        shuffle: shuffle the images every epoch.
        augmentation: None, an albumentations transform/Compose, the callable of
            ``augmentation_callable``, or callable(image, masks, class_ids).
        seed: makes shuffling, augmentation, crops and RPN sampling repeatable; a batch
            depends only on (seed, epoch, batch index), not on the number of workers.
        steps: batches per epoch (default: one pass over the images).
        cache: None, "ram" or "disk" (or a cache object): keep decoded, resized images
            so that later epochs do not decode again (module docstring).
        cache_dir: folder of the disk cache (default :func:`default_cache_dir`); for
            "ram" with multiprocessing, the shared folder to use.
        no_augmentation_sources: dataset sources whose images are not augmented.
        cache_max_gb: size limit of the RAM cache (default: half the free memory).
        shared_memory: with ``use_multiprocessing=True``, worker processes hand the big
            batch arrays (images, full-size masks) to the main process as files in
            /dev/shm, mapped on both sides, instead of pickling them through a pipe:
            on 2 cores this saves about a quarter of the loader's CPU time. Falls back
            to pickling where /dev/shm is missing or full.
        workers, use_multiprocessing, max_queue_size: keras.utils.PyDataset's. On a
            2-core Colab, ``workers=2, use_multiprocessing=True`` keeps the GPU fed.

    Images whose instances all vanished (e.g. after a crop) are still used: they teach
    the model background.
    """

    def __init__(self, dataset, config, shuffle=True, augmentation=None, seed=None,
                 steps=None, cache=None, cache_dir=None, no_augmentation_sources=None,
                 cache_max_gb=None, shared_memory=True, **kwargs):
        super().__init__(**kwargs)
        self.dataset = dataset
        self.config = config
        self.shuffle = shuffle
        self.augmentation = augmentation
        self.batch_size = config.BATCH_SIZE
        self.seed = seed
        self.epoch = 0
        self.image_ids = np.asarray(dataset.image_ids)
        if len(self.image_ids) == 0:
            raise AnnotationError("the dataset has no images; call prepare() after adding "
                                  "images, and check the annotation paths")
        self.steps = steps or max(1, int(np.ceil(len(self.image_ids) / self.batch_size)))
        multiprocessing = bool(getattr(self, "_use_multiprocessing", False))
        self.cache = make_cache(cache, cache_dir=cache_dir, max_gb=cache_max_gb,
                                multiprocessing=multiprocessing)
        self.builder = SampleBuilder(dataset, config, augmentation, self.cache,
                                     no_augmentation_sources)
        # Anchors and their search index, built once here: worker processes (forked
        # anew every epoch) inherit them instead of rebuilding them.
        utils._anchor_index(utils.get_anchors(config, config.IMAGE_SHAPE))
        self._transport = _BatchTransport(multiprocessing and shared_memory)
        self._order = self._make_order(0)

    def _make_order(self, epoch):
        rng = np.random.default_rng(None if self.seed is None else (self.seed, epoch))
        reps = int(np.ceil(self.steps * self.batch_size / len(self.image_ids))) + 1
        order = np.concatenate([rng.permutation(self.image_ids) if self.shuffle
                                else self.image_ids for _ in range(reps)])
        return order

    def __len__(self):
        return self.steps

    def on_epoch_end(self):
        self.epoch += 1
        self._order = self._make_order(self.epoch)

    def __getitem__(self, index):
        ids = self._order[index * self.batch_size:(index + 1) * self.batch_size]
        c = self.config
        images = self._transport.empty((len(ids), int(c.IMAGE_SHAPE[0]),
                                        int(c.IMAGE_SHAPE[1]), int(c.IMAGE_SHAPE[2])),
                                       np.float32)
        samples = []
        for j, image_id in enumerate(ids):
            rng = np.random.default_rng(
                None if self.seed is None else (self.seed, self.epoch, index, j))
            samples.append(self.builder.build(int(image_id), rng, image_out=images[j]))
        batch = {"input_image": images}
        for k in INPUT_NAMES[1:]:
            first = samples[0][k]
            if first.nbytes * len(samples) >= 4 * 1024 ** 2:  # full-size masks
                batch[k] = self._transport.empty((len(samples),) + first.shape, first.dtype)
                np.stack([s[k] for s in samples], out=batch[k])
            else:
                batch[k] = np.stack([s[k] for s in samples])
        return {k: batch[k] for k in INPUT_NAMES}

    def cache_info(self):
        """This process's cache counters (hits, misses, writes, rebuilt) and size."""
        if self.cache is None:
            return None
        info = dict(self.cache.stats)
        info.update(kind=self.cache.kind, entries=len(self.cache),
                    folder=getattr(self.cache, "folder", None))
        return info

    def close(self):
        """Drop the RAM cache, remove temporary shared-memory folders."""
        if self.cache is not None:
            self.cache.close()
        self._transport.close()
