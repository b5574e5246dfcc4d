"""Errors users can catch.

Every error colabrcnn raises on purpose derives from :class:`ColabRCNNError`, and each
message says what went wrong, where (file, image, field, setting) and what to do.
"""
from __future__ import annotations


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


class CheckpointNotFoundError(ColabRCNNError, FileNotFoundError):
    """No complete checkpoint where one was looked for (``find_last``); still a
    FileNotFoundError, which matterport code catches."""


class GPUMemoryError(ColabRCNNError, MemoryError):
    """The accelerator ran out of memory; the message lists settings to change."""

    def __init__(self, message: str, *, suggestions=None):
        self.suggestions = list(suggestions or [])
        if self.suggestions:
            message = message + "\nTry, in this order:\n" + "\n".join(
                f"  - {s}" for s in self.suggestions)
        super().__init__(message)


__all__ = ["ColabRCNNError", "ConfigError", "AnnotationError", "WeightsError",
           "CheckpointNotFoundError", "GPUMemoryError"]
