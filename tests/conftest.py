"""Shared test helpers.

The main test process runs on the TensorFlow backend (what Colab users have). Code that
must also run on JAX and PyTorch runs in a subprocess per backend through
``run_in_backend``, since Keras fixes its backend at import time.
"""
import importlib.util
import os
import subprocess
import sys
import textwrap

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BACKEND_MODULES = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}


def backend_available(backend):
    return importlib.util.find_spec(BACKEND_MODULES[backend]) is not None


def run_in_backend(backend, code, timeout=900):
    """Run ``code`` in a fresh Python with KERAS_BACKEND=backend; return its stdout.

    Fails the calling test (with the child's stderr) if the child exits non-zero.
    A backend that is not installed is a failure, not a skip: CI installs all three.
    """
    if not backend_available(backend):
        pytest.fail(f"backend {backend} is not installed; run the README install command "
                    f"(it installs the jax and torch extras)")
    env = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2",
               CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)
    if proc.returncode != 0:
        pytest.fail(f"[{backend}] child process failed (exit {proc.returncode}):\n"
                    f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n"
                    f"{proc.stderr[-8000:]}")
    return proc.stdout
