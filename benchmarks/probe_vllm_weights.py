"""What ``deploy.vllm_cpu_keeps_linear_weights`` says on this CPU (or an emulated one): the probe behind the
refusal of REINFORCE with ``sampling.backend: vllm`` on vLLM's CPU platform. Run it in ``.venv-vllm``; for an
AVX2 CPU without AVX-512, under emulation:

    qemu-x86_64 -cpu Haswell .venv-vllm/bin/python benchmarks/probe_vllm_weights.py

(about 1 min under emulation. 2026-12-07: torch capability AVX2, engine dtype bfloat16, oneDNN could not create
its matmul primitive, "keeps weights: True"; natively on the AVX512 + AMX Xeon: "keeps weights: False".)"""

import time

import torch
import vllm._custom_ops as ops

from iterdeploy_trl.deploy import vllm_cpu_engine_dtype, vllm_cpu_keeps_linear_weights

start = time.time()
print("torch capability:", torch.backends.cpu.get_cpu_capability(), "| avx512:", torch.cpu._is_avx512_supported(),
      "| amx:", torch.cpu._is_amx_tile_supported(), flush=True)
print("engine dtype:", vllm_cpu_engine_dtype("float32"), "| oneDNN built:", ops._supports_onednn, flush=True)
print("keeps weights:", vllm_cpu_keeps_linear_weights("float32"), f"({time.time() - start:.0f} s)", flush=True)
