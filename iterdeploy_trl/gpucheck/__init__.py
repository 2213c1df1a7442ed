"""``iterdeploy gpu-check``: the paper configs' GPU path (vLLM in bf16 serving LoRA adapters, TRL's vLLM
integration for REINFORCE) checked end to end in a few minutes on a fresh machine, without network.

Each step is a short function that returns a :class:`Step` (status ``pass``, ``fail`` or ``skipped``, its
seconds, what it measured, and what of it was skipped and why). The steps reuse the package's own machinery:
``loop.run_loop`` for the valid-SFT generation, ``loop.train_generation`` / ``loop.train_reinforce`` for
training, ``loop.make_backend`` (``deploy.VLLMBackend`` / ``TransformersBackend``) for sampling, the run
directory as ``iterdeploy run`` writes it. Everything goes to one JSON file, ``OUT/gpu_check.json``.

Modes. ``gpu``: a CUDA GPU, vLLM and bf16 are required (a machine without them is refused before any work,
naming what it lacks); the model is a Qwen3 of ~71 M parameters (``models.SIZES["gpu-check"]``), sampled by
vLLM in bf16. ``cpu`` (``--cpu``, or automatic without a GPU): the same steps with a reduced model
(``tiny-h64``) and the transformers backend, in bf16 where the GPU path is bf16; the steps or parts of steps
that need a GPU or vLLM are reported as skipped with the reason. ``tests/test_gpu_check.py`` runs it.

The model is random-initialised, then taught the pool tasks' reference plans by a few epochs of full
fine-tuning (``loop.train_generation``): a systems check, not a learning result; it makes some deployed
samples valid, so that the valid-SFT generation has traces to curate and a LoRA adapter to train and serve.

The package, in the order a check runs: ``common`` (tolerances, :class:`Scale`, :class:`Step`), ``machine``
(step 1, the mode), ``runs`` (steps 2-5: model, teach, the valid-SFT and reference runs, the schema),
``measure`` (steps 6-8: log-probs, LoRA, throughput), ``reinforce`` (step 9), ``report`` (the JSON document and
the printed lines), ``command`` (:func:`run_gpu_check`). The names below are the package's API.
"""

from __future__ import annotations

from iterdeploy_trl.gpucheck.command import run_gpu_check
from iterdeploy_trl.gpucheck.common import (
    BF16_TOLERANCE_PER_TOKEN,
    CPU_SCALE,
    DEFAULT_BUDGET_S,
    GPU_SCALE,
    OWN_MODEL_DIR,
    RESULT_FILE,
    TRL_IS_CLIP_MAX,
    VOLATILE,
    GpuCheckError,
    Scale,
    Step,
)
from iterdeploy_trl.gpucheck.machine import choose_mode, machine_report, step_machine
from iterdeploy_trl.gpucheck.measure import (
    gap_stats,
    merged_model,
    sequence_logprobs,
    step_logprobs,
    step_lora,
    step_throughput,
    timed_generate,
    tolerance,
    within,
)
from iterdeploy_trl.gpucheck.reinforce import (
    IS_FIELD,
    check_config_for_reinforce,
    reinforce_is_setting,
    reinforce_vllm_refusal,
    step_reinforce,
)
from iterdeploy_trl.gpucheck.report import EXPECTED_STEPS, dumps, headline, step_line, summarise
from iterdeploy_trl.gpucheck.runs import (
    check_config,
    pool_tasks,
    run_dir_schema,
    schema_differences,
    step_model,
    step_schema,
    step_teach,
    step_valid_sft,
    teach_config,
)

__all__ = [
    "BF16_TOLERANCE_PER_TOKEN", "CPU_SCALE", "DEFAULT_BUDGET_S", "EXPECTED_STEPS", "GPU_SCALE", "IS_FIELD",
    "OWN_MODEL_DIR", "RESULT_FILE", "TRL_IS_CLIP_MAX", "VOLATILE", "GpuCheckError", "Scale", "Step", "check_config",
    "check_config_for_reinforce", "choose_mode", "dumps", "gap_stats", "headline", "machine_report", "merged_model",
    "pool_tasks", "reinforce_is_setting", "reinforce_vllm_refusal", "run_dir_schema", "run_gpu_check",
    "schema_differences", "sequence_logprobs", "step_line", "step_logprobs", "step_lora", "step_machine", "step_model",
    "step_reinforce", "step_schema", "step_teach", "step_throughput", "step_valid_sft", "summarise", "teach_config",
    "timed_generate", "tolerance", "within",
]
