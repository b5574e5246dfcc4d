"""What this machine computes on: Keras backend name, GPUs, TPUs, RAM.

A leaf module: it imports no backend, no Keras and nothing of ours except the errors,
so ``colabrcnn doctor``, the memory estimate and the distribution plan can ask "which
GPU is this?" quickly, even when Keras is broken.

    from colabrcnn import hardware
    hardware.devices()          # [{"name", "kind": "gpu"|"tpu"|"cpu", "memory_bytes",
                                #   "compute_capability" (GPUs, when nvidia-smi says)}]
    hardware.keras_backend()    # "tensorflow" | "jax" | "torch" | ...
    hardware.has_tpu()

GPUs come from one ``nvidia-smi`` query (name, total memory, compute capability);
without nvidia-smi, from a backend that is already imported; then TPUs; the CPU last.
"""
from __future__ import annotations

import functools
import glob
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys

# ----------------------------------------------------------------- backend


def _keras_home(environ) -> str:
    # Same rule as keras/src/backend/config.py: $KERAS_HOME, else ~/.keras, else /tmp.
    if "KERAS_HOME" in environ:
        return environ["KERAS_HOME"]
    base = os.path.expanduser("~")
    if not os.access(base, os.W_OK):
        base = "/tmp"
    return os.path.join(base, ".keras")


def keras_backend(environ: dict | None = None) -> str:
    """The Keras backend name Keras uses (or would use) here, without importing Keras.

    If Keras is already imported its answer is taken. Otherwise, as Keras decides:
    KERAS_BACKEND, else ``backend`` in ``$KERAS_HOME/keras.json`` (~/.keras), else
    "tensorflow".
    """
    env = os.environ if environ is None else environ
    if environ is None and "keras" in sys.modules:
        try:
            return sys.modules["keras"].backend.backend()
        except Exception:  # a half-imported or broken Keras: fall back to the rules
            pass
    if env.get("KERAS_BACKEND"):
        return env["KERAS_BACKEND"]
    path = os.path.join(_keras_home(env), "keras.json")
    try:
        with open(path) as f:
            backend = json.load(f).get("backend")
        if isinstance(backend, str) and backend:
            return backend
    except (OSError, ValueError, AttributeError):
        pass
    return "tensorflow"


# ------------------------------------------------------------- nvidia-smi
NVIDIA_SMI_FIELDS = "name,memory.total,compute_cap"
_CC = re.compile(r"\s*(\d+)\.(\d+)\s*$")


def parse_nvidia_smi(text: str) -> list[dict]:
    """Parse ``name, memory_MiB[, compute_cap]`` lines into device dicts.

    ``memory_bytes`` is None for "[N/A]"; ``compute_capability`` ("7.5") is present
    only when the line has it (drivers >= 510 answer the compute_cap field).
    """
    devices = []
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split(",")]
        cap = None
        if len(parts) >= 3 and _CC.match(parts[-1]):
            cap = parts.pop()
        if len(parts) == 1:  # no comma: only a name
            name, mem = parts[0], ""
        else:
            name, mem = ", ".join(parts[:-1]), parts[-1]
        try:
            memory = int(float(mem)) * 1024 * 1024
        except ValueError:
            memory = None
        dev = {"name": name, "kind": "gpu", "memory_bytes": memory}
        if cap is not None:
            dev["compute_capability"] = cap
        devices.append(dev)
    return devices


def nvidia_smi_devices(timeout: float = 10) -> list[dict] | None:
    """GPUs listed by nvidia-smi (name, memory, compute capability), or None when it is
    missing or fails. Drivers older than 510 reject the compute_cap field: the same
    query is then asked without it."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    for fields in (NVIDIA_SMI_FIELDS, NVIDIA_SMI_FIELDS.rsplit(",", 1)[0]):
        try:
            proc = subprocess.run([exe, f"--query-gpu={fields}",
                                   "--format=csv,noheader,nounits"],
                                  capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.SubprocessError):
            return None
        if proc.returncode == 0:
            return parse_nvidia_smi(proc.stdout)
    return None


# ------------------------------------------------------ backend GPUs, TPUs
def backend_gpus() -> list[dict]:
    """GPUs seen by a backend that is *already imported* (importing one costs seconds)."""
    try:
        if "torch" in sys.modules:
            torch = sys.modules["torch"]
            if torch.cuda.is_available():
                out = []
                for i in range(torch.cuda.device_count()):
                    props = torch.cuda.get_device_properties(i)
                    out.append({"name": torch.cuda.get_device_name(i), "kind": "gpu",
                                "memory_bytes": int(props.total_memory),
                                "compute_capability": f"{props.major}.{props.minor}"})
                return out
        if "jax" in sys.modules:
            devs = [d for d in sys.modules["jax"].devices() if d.platform in ("gpu", "tpu")]
            out = []
            for d in devs:
                try:
                    memory = d.memory_stats().get("bytes_limit")
                except Exception:
                    memory = None
                dev = {"name": getattr(d, "device_kind", str(d)), "kind": d.platform,
                       "memory_bytes": memory}
                cap = getattr(d, "compute_capability", None)
                if cap:
                    dev["compute_capability"] = str(cap)
                out.append(dev)
            if out:
                return out
        if "tensorflow" in sys.modules:
            tf = sys.modules["tensorflow"]
            out = []
            for g in tf.config.list_physical_devices("GPU"):
                details = tf.config.experimental.get_device_details(g)
                dev = {"name": details.get("device_name", g.name), "kind": "gpu",
                       "memory_bytes": None}
                cap = details.get("compute_capability")
                if cap:
                    dev["compute_capability"] = f"{cap[0]}.{cap[1]}"
                out.append(dev)
            return out
    except Exception:
        pass
    return []


def tpu_devices(environ: dict | None = None) -> list[dict]:
    """TPU chips, without a backend import: /dev/accel* (TPU VMs) or, for Colab's old
    TPU nodes and Kaggle, the TPU environment variables."""
    environ = os.environ if environ is None else environ
    chips = sorted(glob.glob("/dev/accel[0-9]*"))
    if chips:
        return [{"name": f"TPU ({os.path.basename(c)})", "kind": "tpu",
                 "memory_bytes": None} for c in chips]
    if environ.get("COLAB_TPU_ADDR") or environ.get("TPU_NAME") or \
            environ.get("TPU_ACCELERATOR_TYPE"):
        name = environ.get("TPU_ACCELERATOR_TYPE") or "TPU"
        return [{"name": name, "kind": "tpu", "memory_bytes": None}]
    return []


def has_tpu(environ: dict | None = None) -> bool:
    """Whether this machine looks like it has a TPU (no backend import): TPU chips
    under /dev/accel*, TPU environment variables, or /dev/vfio with libtpu installed
    (newer TPU VMs)."""
    if tpu_devices(environ):
        return True
    try:
        return os.path.isdir("/dev/vfio") and importlib.util.find_spec("libtpu") is not None
    except (ImportError, ValueError):
        return False


def ram_bytes() -> int | None:
    """The machine's physical memory in bytes (None where the OS does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


# ----------------------------------------------------------------- devices
def devices() -> list[dict]:
    """Accelerators, then the CPU: [{"name", "kind": "gpu"|"tpu"|"cpu", "memory_bytes"}]
    (GPUs also carry "compute_capability" when nvidia-smi or the backend reports it).

    GPUs come from nvidia-smi when present (no backend import); otherwise from a
    backend already imported. ``memory_bytes`` is the total, None when unknown; for the
    CPU it is the machine's RAM.
    """
    accelerators = nvidia_smi_devices()
    if not accelerators:
        accelerators = backend_gpus()
    if not accelerators:
        accelerators = tpu_devices()
    cpu = {"name": f"CPU ({os.cpu_count() or '?'} cores)", "kind": "cpu",
           "memory_bytes": ram_bytes()}
    return list(accelerators) + [cpu]


@functools.lru_cache(maxsize=1)
def _devices_cached() -> tuple:
    return tuple(devices())


def local_devices(refresh: bool = False) -> list[dict]:
    """:func:`devices`, cached: the answer does not change within a process (the
    memory helpers ask often); ``refresh=True`` asks again."""
    if refresh:
        _devices_cached.cache_clear()
    return [dict(d) for d in _devices_cached()]


def accelerators(devs: list[dict] | None = None) -> list[dict]:
    """The GPUs and TPUs among ``devs`` (default: :func:`devices`)."""
    devs = devices() if devs is None else devs
    return [d for d in devs if d.get("kind") in ("gpu", "tpu")]


def has_gpu() -> bool:
    """True when a GPU (or TPU) is visible, without importing a backend."""
    return bool(accelerators())


def gpu_name() -> str | None:
    """Name of the first accelerator, or None."""
    acc = accelerators()
    return acc[0]["name"] if acc else None


# ---------------------------------------------------- compute capability
# A GPU's compute capability from its *name*. The GPU this process runs on gets its
# capability from the nvidia-smi query above (or the backend); this table is still
# needed for GPUs that are not here: fit_to_gpu(gpu="T4") and the GPU presets decide
# mixed precision for a named card from a CPU machine, and mixed_precision_policy
# accepts names ("Tesla P100-PCIE-16GB"). So it lists the cards people name: those of
# free and paid notebooks and common desktop cards. Capability 7.0 and up have tensor
# cores. Source: NVIDIA's CUDA GPUs table (https://developer.nvidia.com/cuda-gpus).
_GPU_CC = [
    (r"H100|H200|GH200", (9, 0)),
    (r"L40S?|\bL4\b|RTX\s*40\d\d", (8, 9)),
    (r"A100|\bA30\b", (8, 0)),
    (r"\bA10G?\b|\bA40\b|RTX\s*30\d\d", (8, 6)),
    (r"\bT4\b|RTX\s*20\d\d", (7, 5)),
    (r"V100", (7, 0)),
    (r"P100", (6, 0)),
    (r"\bP40\b|\bP4\b|GTX\s*10\d\d", (6, 1)),
    (r"K80", (3, 7)),
]


def gpu_compute_capability(name: str | None) -> tuple[int, int] | None:
    """(major, minor) of a GPU from its name (as nvidia-smi prints it), None if unknown."""
    text = str(name or "")
    for pattern, cc in _GPU_CC:
        if re.search(pattern, text, flags=re.IGNORECASE):
            return cc
    return None


def parse_compute_capability(value) -> tuple[int, int] | None:
    """(major, minor) from "7.5", (7, 5) or None."""
    if value is None:
        return None
    if isinstance(value, (tuple, list)) and len(value) >= 2:
        return int(value[0]), int(value[1])
    m = _CC.match(str(value))
    return (int(m.group(1)), int(m.group(2))) if m else None


def compute_capability(device: dict) -> tuple[int, int] | None:
    """A device dict's compute capability: the one reported for it, else from its name."""
    return (parse_compute_capability(device.get("compute_capability"))
            or gpu_compute_capability(device.get("name")))


__all__ = ["keras_backend", "parse_nvidia_smi", "nvidia_smi_devices", "backend_gpus",
           "tpu_devices", "has_tpu", "ram_bytes", "devices", "local_devices",
           "accelerators", "has_gpu", "gpu_name", "gpu_compute_capability",
           "parse_compute_capability", "compute_capability"]
