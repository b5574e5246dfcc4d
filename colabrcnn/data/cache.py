"""Caches of stage-1 samples (decoded, resized images with compact masks), and their keys.

``cache=`` of the DataGenerator
-------------------------------
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
"""
from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import tempfile
import threading
import time
import uuid
import warnings
import weakref

import numpy as np

from .decode import CACHE_VERSION, DecodedSample

CACHE_KINDS = ("ram", "disk")
_GB = 1024 ** 3
_SHM_PREFIX = "colabrcnn_ram_"


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


class _Cache:
    """What SampleBuilder asks of a cache: ``key``, ``get`` and ``put``."""

    def key(self, dataset, config, image_id):
        return sample_key(dataset, config, image_id)


class RamCache(_Cache):
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


class DiskCache(_Cache):
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


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def remove_stale_shared_folders():
    """Remove /dev/shm RAM-cache folders left by colabrcnn processes that no longer run."""
    try:
        names = os.listdir("/dev/shm")
    except OSError:
        return
    for name in names:
        if name.startswith(_SHM_PREFIX):
            try:
                pid = int(name[len(_SHM_PREFIX):].split("_")[0])
            except ValueError:
                continue
            if pid != os.getpid() and not _pid_alive(pid):
                shutil.rmtree(os.path.join("/dev/shm", name), ignore_errors=True)


def _shared_memory_folder():
    """A fresh folder in /dev/shm when it has room, else in the temp dir."""
    remove_stale_shared_folders()
    name = f"{_SHM_PREFIX}{os.getpid()}_{uuid.uuid4().hex[:8]}"
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
    if config.DETECTOR_STYLE == "torchvision":  # its scale rule (matterport's keys kept)
        h.update(b"torchvision")
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
