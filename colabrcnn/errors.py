"""Errors users can catch.

Every error colabrcnn raises on purpose derives from :class:`ColabRCNNError`, and each
message says what went wrong, where (file, image, field, setting) and what to do.
"""
from __future__ import annotations

import re


class ColabRCNNError(Exception):
    """Base class of all colabrcnn errors."""


class ConfigError(ColabRCNNError, ValueError):
    """An impossible or inconsistent Config setting."""


class AnnotationError(ColabRCNNError, ValueError):
    """Bad annotation or image input.

    ``file``, ``image`` and ``field`` say where; they are also part of the message.
    """

    def __init__(self, message: str, *, file=None, image=None, field=None):
        self.file = None if file is None else str(file)
        self.image = image
        self.field = field
        where = []
        if file is not None:
            where.append(f"file '{file}'")
        if image is not None:
            where.append(f"image '{image}'")
        if field is not None:
            where.append(f"field '{field}'")
        prefix = (", ".join(where) + ": ") if where else ""
        super().__init__(prefix + message)


class WeightsError(ColabRCNNError):
    """A weight file that cannot be fetched, verified or loaded."""


class GPUMemoryError(ColabRCNNError, MemoryError):
    """The accelerator ran out of memory; the message lists settings to change."""

    def __init__(self, message: str, *, suggestions=None):
        self.suggestions = list(suggestions or [])
        if self.suggestions:
            message = message + "\nTry, in this order:\n" + "\n".join(
                f"  - {s}" for s in self.suggestions)
        super().__init__(message)


class NotProvidedError(ColabRCNNError, AttributeError):
    """A name of matterport's ``mrcnn`` modules that colabrcnn deliberately does not
    provide; the message says why and what to use instead (README, "Migrating from
    matterport"). An AttributeError, so ``hasattr`` stays False."""

    def __init__(self, module: str, name: str, why: str):
        self.module = module
        self.name = name
        super().__init__(f"{module}.{name} (matterport's) is not provided here: {why}")



# ------------------------------------------------------------ out of memory
# Recognising a backend's out-of-memory error is a question about errors, asked by the
# memory helpers (advice, on_oom="reduce") and by colabrcnn.probe (a trial row that
# ran out of memory); it lives here so that neither imports the other for it.
_OOM_TYPE_NAMES = {"ResourceExhaustedError", "OutOfMemoryError"}
_OOM_TEXT = re.compile(r"RESOURCE_EXHAUSTED|OOM when allocating|out of memory|"
                       r"Failed to allocate|CUBLAS_STATUS_ALLOC_FAILED|"
                       r"CUDNN_STATUS_ALLOC_FAILED|cudaErrorMemoryAllocation",
                       re.IGNORECASE)
_BACKEND_MODULES = ("tensorflow", "tf_keras", "keras", "jax", "jaxlib", "torch", "xla")


def _one_is_oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    mro = type(exc).__mro__
    if any(k.__name__ in _OOM_TYPE_NAMES for k in mro):
        return True
    from_backend = any(str(getattr(k, "__module__", "")).split(".")[0] in _BACKEND_MODULES
                       for k in mro)
    if from_backend or isinstance(exc, RuntimeError):
        return bool(_OOM_TEXT.search(str(exc)))
    return False


def is_oom_error(exc: BaseException | None) -> bool:
    """True if ``exc`` (or an exception it was raised from) is an out-of-memory error:
    TensorFlow's ResourceExhaustedError, XLA's RESOURCE_EXHAUSTED / "Out of memory"
    runtime errors (jaxlib's XlaRuntimeError), PyTorch's OutOfMemoryError / "CUDA out
    of memory", or Python's MemoryError. Looks at class names and messages only: no
    backend is imported."""
    seen = set()
    while exc is not None and id(exc) not in seen and len(seen) < 8:
        seen.add(id(exc))
        if _one_is_oom(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


__all__ = ["ColabRCNNError", "ConfigError", "AnnotationError", "WeightsError",
           "GPUMemoryError", "NotProvidedError", "is_oom_error"]
