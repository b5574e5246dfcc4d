"""Datasets: the Dataset contract, image reading, built-in synthetic shapes."""
from .dataset import Dataset, read_image, to_rgb_uint8  # noqa: F401
from .shapes import shapes  # noqa: F401
