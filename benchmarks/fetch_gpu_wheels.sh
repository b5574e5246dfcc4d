#!/usr/bin/env bash
# Download, here, the wheels benchmarks/gpu_check.sh installs on the GPU machine.
#
# The GPU machine (Python 3.12, x86-64, no network) has JAX, PyTorch, torchvision,
# NumPy, h5py, OpenCV, scikit-image, tqdm, rich, absl-py, ml-dtypes and packaging, but
# no Keras and no TensorFlow. Keras 3 needs two more that are missing there: namex and
# optree. colabrcnn itself travels as source (the repository); the probe path imports
# nothing else that is missing (pycocotools, albumentations and gdown load lazily).
#
#   bash benchmarks/fetch_gpu_wheels.sh          # -> .whl/ (git-ignored), ~2 MB
#
# Versions: those of the Python that runs this script (KERAS=, OPTREE=, NAMEX= override).
# The command, per the device notes (one version of each package in .whl/):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     --platform manylinux1_x86_64 -d .whl keras==V namex==V optree==V
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
KERAS=${KERAS:-$(version keras)}
NAMEX=${NAMEX:-$(version namex)}
OPTREE=${OPTREE:-$(version optree)}
mkdir -p .whl
rm -f .whl/keras-*.whl .whl/namex-*.whl .whl/optree-*.whl
"$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d .whl \
    "keras==$KERAS" "namex==$NAMEX" "optree==$OPTREE"
ls -la .whl
