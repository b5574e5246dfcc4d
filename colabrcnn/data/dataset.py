"""The Dataset contract (matterport's), and image reading that always gives RGB uint8.

A Dataset holds classes and image records. Subclasses (or the annotation readers in
``colabrcnn.data.formats``) override ``load_mask``; ``load_image`` reads ``path``.

    ds = Dataset()
    ds.add_class("shapes", 1, "square")
    ds.add_image("shapes", image_id="a.png", path="/data/a.png", width=640, height=480)
    ds.prepare()
    image = ds.load_image(ds.image_ids[0])   # H x W x 3 uint8
    masks, class_ids = ds.load_mask(0)      # H x W x N bool, N int32
"""
from __future__ import annotations

import io
import os
import warnings

import numpy as np

from ..errors import AnnotationError


def to_rgb_uint8(array, source="image"):
    """Convert an image array of any common layout to H x W x 3 uint8 RGB.

    Handles H x W (grayscale), H x W x 1, H x W x 2 (gray + alpha), H x W x 4 (RGBA,
    alpha dropped), bool, 16-bit and float images (floats in [0, 1] or [0, 255]).
    """
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 3 and a.shape[-1] == 2:  # gray + alpha
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
        raise AnnotationError(f"cannot interpret an array of shape {a.shape} as an image "
                              f"(expected H x W, H x W x 3 or H x W x 4)", file=source)
    if a.ndim == 3 and a.shape[-1] == 4:
        a = a[..., :3]
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype == np.uint16 or (np.issubdtype(a.dtype, np.integer) and a.max(initial=0) > 255):
        # 16-bit: scale the full range down, so the picture keeps its contrast.
        a = (a.astype(np.float64) / max(1, np.iinfo(a.dtype).max if a.dtype.kind == "u"
                                         else a.max()) * 255.0)
        a = np.clip(np.round(a), 0, 255).astype(np.uint8)
    elif np.issubdtype(a.dtype, np.floating):
        scale = 255.0 if np.nanmax(a, initial=0) <= 1.0 else 1.0
        a = np.clip(np.round(np.nan_to_num(a) * scale), 0, 255).astype(np.uint8)
    else:
        a = a.astype(np.uint8)
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    return np.ascontiguousarray(a)


def image_read_error(err, label, what="image"):
    """The AnnotationError for any failure while PIL opens or decodes ``label``.

    PIL signals broken files with many exception types (OSError, SyntaxError,
    ValueError, struct.error, IndexError, EOFError, ...) and huge headers with
    ``DecompressionBombError``; every one becomes our error naming the file.
    """
    from PIL import Image

    if isinstance(err, FileNotFoundError):
        return AnnotationError(f"{what} file not found; check the image folder and the "
                               "file name in the annotations", file=label)
    if isinstance(err, Image.DecompressionBombError) or isinstance(err, MemoryError):
        return AnnotationError(
            f"{what} is too large to decode ({err or 'out of memory'}); a header claiming "
            "a size this big is usually a damaged or hostile file. If the image is real, "
            "tile it into smaller images (or raise PIL.Image.MAX_IMAGE_PIXELS)", file=label)
    return AnnotationError(f"cannot read {what} ({type(err).__name__}: {err}); is it a "
                           "complete JPEG/PNG/TIFF?", file=label)


def read_image(path_or_bytes, name=None):
    """Read an image file (path, bytes or file-like) as H x W x 3 uint8 RGB.

    EXIF orientation is applied (phone photos), and grayscale, palette, RGBA, 16-bit
    and CMYK files are converted. An unreadable file raises AnnotationError naming it.
    """
    from PIL import Image, ImageOps

    label = name or (path_or_bytes if isinstance(path_or_bytes, (str, os.PathLike))
                     else "<bytes>")
    try:
        if isinstance(path_or_bytes, (bytes, bytearray)):
            img = Image.open(io.BytesIO(path_or_bytes))
        else:
            img = Image.open(path_or_bytes)
        img.load()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = ImageOps.exif_transpose(img)
        return _as_rgb(img, label)
    except AnnotationError:
        raise
    except Exception as e:  # any PIL failure on a broken file: see image_read_error
        raise image_read_error(e, label) from None


def _as_rgb(img, label):
    """A loaded PIL image as H x W x 3 uint8 RGB."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return to_rgb_uint8(np.array(img, dtype=np.uint16), label)
    if mode in ("I", "F"):
        arr = np.array(img)
        if mode == "I" and arr.max(initial=0) <= 65535 and arr.min(initial=0) >= 0:
            return to_rgb_uint8(arr.astype(np.uint16), label)
        return to_rgb_uint8(arr.astype(np.float64) / max(1e-12, float(arr.max(initial=1))),
                            label)
    if mode != "RGB":
        img = img.convert("RGBA" if "A" in mode or "transparency" in img.info else "RGB")
    return to_rgb_uint8(np.array(img), label)


class Dataset:
    """Base dataset: classes, image records, and the loading contract.

    Class 0 is always background ("BG"). After adding classes and images call
    ``prepare()``; it assigns contiguous internal class ids and image ids.
    """

    def __init__(self, class_map=None):
        self._image_ids = []
        self.image_info = []
        self.class_info = [{"source": "", "id": 0, "name": "BG"}]
        self.source_class_ids = {}

    # ------------------------------------------------------------- building
    def add_class(self, source, class_id, class_name):
        if "." in str(source):
            raise AnnotationError("source names cannot contain a dot", field="source")
        for info in self.class_info:
            if info["source"] == source and info["id"] == class_id:
                return  # already added
        self.class_info.append({"source": source, "id": class_id, "name": class_name})

    def add_image(self, source, image_id, path, **kwargs):
        info = {"id": image_id, "source": source, "path": path}
        info.update(kwargs)
        self.image_info.append(info)

    def image_reference(self, image_id):
        """A string a person can use to find the image (path or URL)."""
        info = self.image_info[image_id]
        return str(info.get("path") or info.get("id"))

    def prepare(self, class_map=None):
        """Assign internal ids; call after all add_class/add_image calls."""
        def clean_name(name):
            return ",".join(str(name).split(",")[:1])

        self.num_classes = len(self.class_info)
        self.class_ids = np.arange(self.num_classes)
        self.class_names = [clean_name(c["name"]) for c in self.class_info]
        self.num_images = len(self.image_info)
        self._image_ids = np.arange(self.num_images)

        self.class_from_source_map = {f"{info['source']}.{info['id']}": cid
                                      for info, cid in zip(self.class_info, self.class_ids)}
        self.image_from_source_map = {f"{info['source']}.{info['id']}": iid
                                      for info, iid in zip(self.image_info, self.image_ids)}
        self.sources = sorted({i["source"] for i in self.class_info})
        self.source_class_ids = {}
        for source in self.sources:
            self.source_class_ids[source] = [
                i for i, info in enumerate(self.class_info)
                if i == 0 or source == info["source"]]
        return self

    def map_source_class_id(self, source_class_id):
        """'source.class_id' -> internal class id, e.g. 'coco.12' -> 23."""
        return self.class_from_source_map[source_class_id]

    def get_source_class_id(self, class_id, source):
        info = self.class_info[class_id]
        assert info["source"] == source
        return info["id"]

    @property
    def image_ids(self):
        return self._image_ids

    def source_image_link(self, image_id):
        return self.image_info[image_id]["path"]

    def __len__(self):
        return len(self.image_info)

    # ------------------------------------------------------------- loading
    def load_image(self, image_id):
        """H x W x 3 uint8 RGB, whatever the file's mode, bit depth or EXIF rotation."""
        info = self.image_info[image_id]
        if "image" in info and info["image"] is not None:
            return to_rgb_uint8(info["image"], self.image_reference(image_id))
        return read_image(info["path"])

    def load_mask(self, image_id):
        """Instance masks: (H x W x N bool, N int32 class ids).

        The base class has no annotations; override in a subclass. An empty result
        (H x W x 0, empty ids) means an image with no instances.
        """
        warnings.warn("Dataset.load_mask is not overridden: returning no instances for "
                      f"image {self.image_reference(image_id)}", stacklevel=2)
        info = self.image_info[image_id]
        h, w = info.get("height"), info.get("width")
        if h is None or w is None:
            h, w = self.load_image(image_id).shape[:2]
        return np.zeros((h, w, 0), dtype=bool), np.zeros((0,), dtype=np.int32)
