#!/usr/bin/env bash
# GPU evidence in one run (issue 19): memory under a 15 GiB (T4-sized) cap per lever
# for matterport's 1024-px R101 and R50 presets beside memory.estimate_memory,
# fit_to_gpu's T4 and P100 presets for 20 steps, and our training/inference speed
# beside torchvision's Mask R-CNN. Under 8 minutes on one H100/H200; JAX backend
# (torch backend for one extra row). Writes gpu_check.json and gpu_check.md into
# $OUT (or --out DIR, default runs/gpu_check). See benchmarks/gpu_check.py for the rows.
#
#   bash benchmarks/gpu_check.sh --dry-run --out /tmp/gpu_check   # CPU, tiny, ~1 min
#   bash benchmarks/gpu_check.sh --out "$OUT"                       # on the GPU machine
#
# The GPU machine has no Keras and cannot install from the network. Carry the wheels:
# here, first run
#     bash benchmarks/fetch_gpu_wheels.sh
# which downloads into .whl/ (git-ignored) exactly
#     keras==<this venv's>, namex==<this venv's>, optree==<this venv's>
# with
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_28_x86_64 \
#       --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#       --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
#       keras==V namex==V optree==V
# then run this script there with .whl carried (device tool: carry [".whl"]):
#     bash benchmarks/gpu_check.sh --out "$OUT"
# When Keras is missing, the wheels found in .whl/ are installed to /tmp/site (no
# network, no dependencies resolved) and put on PYTHONPATH before anything runs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('keras') is None)" \
        && compgen -G ".whl/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
exec "$PY" benchmarks/gpu_check.py "$@"
