"""The package's log output: one ``colabrcnn`` logger that notebooks see.

Library modules log through ``logging.getLogger(__name__)``. A notebook user expects to
see "Resuming from …" as matterport printed it, and Python's default (no handler, level
WARNING) would hide it, so the ``colabrcnn`` logger gets one handler of its own at INFO
that writes the bare message to the *current* ``sys.stdout`` (resolved at each record,
so Jupyter's and pytest's captured streams receive it). A program that configures
logging itself can call ``configure(level)`` or remove the handler.
"""
from __future__ import annotations

import logging
import sys

ROOT = "colabrcnn"


class _CurrentStdout(logging.StreamHandler):
    """StreamHandler whose stream is whatever ``sys.stdout`` is when a record arrives."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; ignore
        pass


def configure(level: int | str = logging.INFO) -> logging.Logger:
    """Give the ``colabrcnn`` logger its stdout handler (once) and set its level."""
    logger = logging.getLogger(ROOT)
    if not any(isinstance(h, _CurrentStdout) for h in logger.handlers):
        handler = _CurrentStdout()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(level)
    return logger
