#!/usr/bin/env bash
# Set up and run every test: the suite in .venv, then the real-vLLM tests in .venv-vllm (vLLM's CPU
# build, an environment of its own: see setup.sh). `./test.sh --no-vllm` sets up .venv only and runs the
# suite; the real-vLLM tests are then reported as not run, in one line. pytest's exit status 5 (no tests
# ran) counts as a failure. CI runs this script (.ci/run).
set -uo pipefail
cd "$(dirname "$0")"
vllm=1
[ "${1:-}" = "--no-vllm" ] && vllm=0
if [ "$vllm" = 1 ]; then
  ./setup.sh --vllm || { echo "setup failed"; exit 1; }
else
  ./setup.sh || { echo "setup failed"; exit 1; }
fi
.venv/bin/python -m pytest -q -p no:cacheprovider
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest ran no tests: failing"
  rc=1
fi
vrc=0
if [ "$vllm" = 1 ]; then
  .venv-vllm/bin/python -m pytest -q -p no:cacheprovider tests/test_vllm_real.py tests/test_vllm_server.py tests/test_vllm_reinforce.py
  vrc=$?
  if [ "$vrc" -eq 5 ]; then
    echo "the real-vLLM tests ran no test: failing"
    vrc=1
  fi
  [ "$vrc" -ne 0 ] && echo "real-vLLM tests failed (exit $vrc)"
fi
[ "$rc" -ne 0 ] && exit "$rc"
exit "$vrc"
