"""Where are we running, with what, on which hardware, and what should be fixed.

All Colab- and Kaggle-specific code lives here (DESIGN.md, decision 9). Nothing in this
module imports Keras or a backend: ``doctor`` must work, and be quick, precisely when
those are missing or broken.

    from colabrcnn import env
    env.detect_platform()            # "colab" | "kaggle" | "local"
    print(env.format_report(env.doctor()))
    model_dir = env.mount_drive()    # "/content/drive" on Colab, None elsewhere

The checks are pure functions of a *facts* dict (see :func:`gather_facts`), so tests
and other code can ask "what would be wrong on a machine like this?" without one.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import platform as _platform
import re
from dataclasses import dataclass, field

from . import __version__, hardware
from .distribute import describe_plan

logger = logging.getLogger(__name__)

# Minimum versions the package is written for; keep in step with setup.cfg.
MIN_PYTHON = (3, 10)
MIN_NUMPY = (1, 26)
MIN_KERAS = (3, 0)
MIN_TENSORFLOW = (2, 16)

# Keras backend name -> module (and pip name) that provides it.
BACKEND_MODULES = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch",
                   "numpy": "numpy", "openvino": "openvino"}
# Backends Keras can *train* with; numpy and openvino are inference-only.
TRAINING_BACKENDS = ("tensorflow", "jax", "torch")

# Distribution names to try for each package reported by versions(); the first one
# installed wins (TensorFlow ships under several names).
_DISTRIBUTIONS = {
    "numpy": ("numpy",),
    "keras": ("keras",),
    "tensorflow": ("tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tf-nightly",
                   "tensorflow-macos", "tensorflow-intel"),
    "jax": ("jax",),
    "torch": ("torch",),
}

NO_GPU_FIX = "on Colab: Runtime > Change runtime type > T4 GPU; on Kaggle: Settings > " \
             "Accelerator > GPU T4 x2 or P100"


# ---------------------------------------------------------------- platform
def _module_exists(name):
    """True if ``name`` can be imported, without importing it (parents may be)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def detect_platform(environ=None):
    """"colab", "kaggle" or "local", from environment variables and well-known paths.

    ``environ`` defaults to ``os.environ``; pass a dict to test a situation. Module and
    path checks only run when reading the real environment.
    """
    real = environ is None
    env = os.environ if real else environ
    if "COLAB_RELEASE_TAG" in env or "COLAB_GPU" in env or "COLAB_BACKEND_VERSION" in env:
        return "colab"
    if "KAGGLE_KERNEL_RUN_TYPE" in env or "KAGGLE_URL_BASE" in env:
        return "kaggle"
    if real:
        if os.path.isdir("/kaggle/working"):
            return "kaggle"
        if _module_exists("google.colab"):
            return "colab"
    return "local"


# ----------------------------------------------------------------- backend
# keras_backend lives in colabrcnn.hardware (a leaf module); re-exported here.
keras_backend = hardware.keras_backend


# ---------------------------------------------------------------- versions
def _installed_version(dist_names):
    for name in dist_names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        except Exception:  # broken metadata must not break the doctor
            continue
    return None


def versions():
    """Versions of Python and the packages that matter: {name: "x.y.z" or None}.

    Read from package metadata, so nothing is imported (a broken TensorFlow does not
    crash this). colabrcnn's own version is the running code's ``__version__``.
    """
    out = {"python": _platform.python_version()}
    for key, dists in _DISTRIBUTIONS.items():
        out[key] = _installed_version(dists)
    out["colabrcnn"] = __version__
    return out


def parse_version(text):
    """Leading numeric part of a version string as a tuple: "2.13.0+cpu" -> (2, 13, 0).

    Returns None for None or a string without a leading number.
    """
    if not text:
        return None
    m = re.match(r"\s*v?(\d+(?:\.\d+)*)", str(text))
    if not m:
        return None
    return tuple(int(p) for p in m.group(1).split("."))


def _older(version_text, minimum):
    v = parse_version(version_text)
    return v is not None and v < tuple(minimum)


# ----------------------------------------------------------------- devices
# Devices come from colabrcnn.hardware (one nvidia-smi query); re-exported here.
devices = hardware.devices
parse_nvidia_smi = hardware.parse_nvidia_smi


# ----------------------------------------------------------- Google Drive
def mount_drive(path="/content/drive", force_remount=False):
    """Mount Google Drive at ``path`` on Colab and return ``path``.

    Elsewhere (Kaggle, a laptop, CI) this logs why nothing happened and returns None,
    so notebooks run unchanged: keep model_dir on a local folder there.
    """
    where = detect_platform()
    if where != "colab":
        logger.info("mount_drive: not on Colab (platform: %s); Google Drive is not "
                    "mounted. Save checkpoints to a local folder instead.", where)
        return None
    try:
        from google.colab import drive
    except ImportError:
        logger.warning("mount_drive: this looks like Colab but google.colab cannot be "
                       "imported; Google Drive is not mounted.")
        return None
    drive.mount(str(path), force_remount=force_remount)
    return str(path)


# ------------------------------------------------------------------ doctor
@dataclass
class Problem:
    """Something that will break or slow down training, and what to do about it."""
    code: str      # short stable id, e.g. "no_gpu"
    message: str   # what is wrong
    fix: str       # what to do


@dataclass
class Report:
    """What :func:`doctor` found: ``lines`` describe the setup, ``problems`` need action."""
    lines: list = field(default_factory=list)
    problems: list = field(default_factory=list)
    facts: dict = field(default_factory=dict)


def gather_facts():
    """The facts :func:`check` judges: platform, backend, versions, devices."""
    return {"platform": detect_platform(), "backend": keras_backend(),
            "versions": versions(), "devices": devices()}


def _pip(requirement):
    return f'pip install -U "{requirement}"'


def check(facts):
    """Problems found in ``facts`` (a dict as returned by :func:`gather_facts`).

    Pure: no I/O, so any situation can be checked from a hand-written dict. Missing
    keys count as unknown and raise no problem.
    """
    problems = []
    vers = facts.get("versions") or {}
    backend = facts.get("backend")

    if _older(vers.get("python"), MIN_PYTHON):
        problems.append(Problem(
            "old_python", f"Python {vers['python']} is too old; colabrcnn needs Python "
                          f"{'.'.join(map(str, MIN_PYTHON))} or newer.",
            "use a newer Python (Colab and Kaggle already have one; locally create a "
            "fresh environment with Python 3.10+)"))

    if "keras" in vers and vers["keras"] is None:
        problems.append(Problem("no_keras", "Keras is not installed.", _pip("keras>=3")))
    elif _older(vers.get("keras"), MIN_KERAS):
        problems.append(Problem(
            "keras2", f"Keras {vers['keras']} is Keras 2; colabrcnn needs Keras 3.",
            _pip("keras>=3") + " (then restart the runtime)"))

    if _older(vers.get("numpy"), MIN_NUMPY):
        problems.append(Problem(
            "old_numpy", f"NumPy {vers['numpy']} is too old; colabrcnn needs NumPy "
                         f"{'.'.join(map(str, MIN_NUMPY))} or newer.",
            _pip("numpy>=1.26") + " (then restart the runtime)"))

    if backend is not None:
        module = BACKEND_MODULES.get(backend)
        if module is None:
            problems.append(Problem(
                "unknown_backend", f"KERAS_BACKEND is {backend!r}, which Keras does not "
                                   f"know.",
                "set KERAS_BACKEND to tensorflow, jax or torch before importing keras"))
        elif backend not in TRAINING_BACKENDS:
            problems.append(Problem(
                "inference_backend", f"The Keras backend {backend!r} cannot train models.",
                "set KERAS_BACKEND to tensorflow, jax or torch before importing keras"))
        elif module in vers and vers[module] is None:
            problems.append(Problem(
                "backend_missing", f"The Keras backend is {backend!r} but {module} is not "
                                   f"installed.",
                f"{_pip(module)}, or set KERAS_BACKEND=tensorflow before importing keras"))
        if backend == "tensorflow" and _older(vers.get("tensorflow"), MIN_TENSORFLOW):
            problems.append(Problem(
                "old_tensorflow", f"TensorFlow {vers['tensorflow']} predates Keras 3 "
                                  f"support (needs 2.16+).",
                _pip("tensorflow>=2.16") + " (then restart the runtime), or use "
                                           "KERAS_BACKEND=jax"))

    devs = facts.get("devices")
    if devs is not None and not any(d.get("kind") in ("gpu", "tpu") for d in devs):
        problems.append(Problem("no_gpu", "No GPU found: training will be slow.",
                                NO_GPU_FIX))
    return problems


def _format_bytes(n):
    if n is None:
        return "memory unknown"
    return f"{n / 1024 ** 3:.1f} GiB"


def describe(facts):
    """Human-readable lines for ``facts``: platform, Python, backend, versions, devices."""
    vers = dict(facts.get("versions") or {})
    lines = [f"Platform:  {facts.get('platform', 'unknown')}",
             f"Python:    {vers.pop('python', None) or 'unknown'}",
             f"Backend:   {facts.get('backend', 'unknown')}",
             "Packages:"]
    for name, version in vers.items():
        lines.append(f"  {name:<11} {version or 'not installed'}")
    lines.append("Devices:")
    for d in facts.get("devices") or []:
        lines.append(f"  {d.get('kind', '?'):<4} {d.get('name', '?')} "
                     f"({_format_bytes(d.get('memory_bytes'))})")
    if not facts.get("devices"):
        lines.append("  none found")
    lines.append(f"Distribution: {describe_plan(facts.get('backend'), facts.get('devices'))}")
    return lines


def doctor(facts=None):
    """Look at this machine (or at given ``facts``) and report problems with fixes."""
    facts = gather_facts() if facts is None else facts
    return Report(lines=describe(facts), problems=check(facts), facts=facts)


def format_report(report):
    """A short text: the setup lines, then each problem with what to do."""
    out = list(report.lines)
    if report.problems:
        out.append(f"Problems ({len(report.problems)}):")
        for p in report.problems:
            out.append(f"  ! {p.message}")
            out.append(f"    fix: {p.fix}")
    else:
        out.append("No problems found.")
    return "\n".join(out)


__all__ = ["detect_platform", "keras_backend", "versions", "devices", "mount_drive",
           "Problem", "Report", "gather_facts", "check", "describe", "doctor",
           "format_report", "parse_version", "parse_nvidia_smi"]
