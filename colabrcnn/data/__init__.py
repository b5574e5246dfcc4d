"""Datasets: the Dataset contract, image reading, annotation readers, validation,
splitting, conversion, augmentation and the built-in synthetic shapes."""
from .dataset import Dataset, read_image, to_rgb_uint8  # noqa: F401
from .shapes import shapes  # noqa: F401
from . import formats  # noqa: F401
from .formats import (AnnotatedDataset, load, load_coco, load_labelme,  # noqa: F401
                      load_mask_folder, load_via)
from .validate import ValidationReport, validate  # noqa: F401
from .split import train_val_split  # noqa: F401
from .convert import to_coco  # noqa: F401
from .augment import (apply_augmentation, augmentation_callable,  # noqa: F401
                      default_augmentation)
