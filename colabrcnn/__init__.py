"""colabrcnn: Mask R-CNN instance segmentation on Keras 3, for free Colab/Kaggle GPUs.

Light parts (Config, errors, Dataset) import at once; the model and everything that
needs Keras import on first use, so ``colabrcnn doctor`` works even when Keras does not.
"""
import importlib

__version__ = "0.1.0"

from .config import Config, TorchvisionR50FPN  # noqa: E402
from .errors import (AnnotationError, ColabRCNNError, ConfigError,  # noqa: E402
                     GPUMemoryError, WeightsError)
from .data.dataset import Dataset  # noqa: E402
from .logs import configure as _configure_logging  # noqa: E402

_configure_logging()

_LAZY = {
    "MaskRCNN": ("colabrcnn.model.maskrcnn", "MaskRCNN"),
    "data": ("colabrcnn.data", None),
    "env": ("colabrcnn.env", None),
    "utils": ("colabrcnn.utils", None),
    "errors": ("colabrcnn.errors", None),
    "model": ("colabrcnn.model", None),
    "weights": ("colabrcnn.weights", None),
    "visualize": ("colabrcnn.visualize", None),
    "evaluate": ("colabrcnn.evaluate", None),
    "predict": ("colabrcnn.predict", None),
    "export": ("colabrcnn.export", None),
    "train": ("colabrcnn.train", None),
    "checkpoint": ("colabrcnn.checkpoint", None),
    "memory": ("colabrcnn.memory", None),
    "distribute": ("colabrcnn.distribute", None),
    "demo": ("colabrcnn.demo", None),
}


def __getattr__(name):
    if name in _LAZY:
        module_name, attr = _LAZY[name]
        module = importlib.import_module(module_name)
        return module if attr is None else getattr(module, attr)
    raise AttributeError(f"module 'colabrcnn' has no attribute {name!r}")


__all__ = ["Config", "TorchvisionR50FPN", "Dataset", "MaskRCNN", "ColabRCNNError", "ConfigError",
           "AnnotationError", "WeightsError", "GPUMemoryError", "__version__"] + list(_LAZY)
