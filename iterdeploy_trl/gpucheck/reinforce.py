"""Step 9 of ``iterdeploy gpu-check``: one REINFORCE step through TRL's vLLM integration (on a GPU; by
transformers elsewhere), and the importance-sampling setting it ran with."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from iterdeploy_trl.gpucheck.common import Step, gen_traces
from iterdeploy_trl.gpucheck.machine import no_vllm_reason
from iterdeploy_trl.gpucheck.runs import pool_tasks

IS_FIELD = "vllm_importance_sampling_correction"


def reinforce_is_setting(stats: dict[str, Any]) -> dict[str, Any]:
    """The vLLM importance-sampling setting of the REINFORCE step: as the trainer recorded it in its
    ``train_stats.json`` (``trainers.reinforce.importance_sampling_record``; None where this version records
    nothing), beside the defaults of ``ReinforceConfig`` (the plain estimator: off) and of TRL's ``GRPOConfig``
    (on: sequences whose ratio leaves [clip_min, clip_max] dropped), and the vLLM mode TRL runs."""
    from trl import GRPOConfig

    from iterdeploy_trl.trainers import ReinforceConfig

    def defaults(cls: type) -> dict[str, Any]:
        return {f.name: f.default for f in dataclasses.fields(cls)}

    ours, trl = defaults(ReinforceConfig), defaults(GRPOConfig)
    return {"recorded": stats.get("importance_sampling"), "reinforce_config_default": ours.get(IS_FIELD),
            "trl_grpo_default": {k: trl.get(k) for k in (IS_FIELD, "vllm_importance_sampling_mode",
                                                         "vllm_importance_sampling_clip_max")},
            "vllm_mode": ours.get("vllm_mode")}


def step_reinforce(cfg: Any, run_dir: Path, out: Path, mode: str) -> Step:
    """One REINFORCE step (``training.train_reinforce``: ``ReinforceTrainer`` on TRL's ``GRPOTrainer``) from the
    taught model on the pool prompts as generation 0 deployed them, n*K completions in one optimizer step: on a
    GPU sampled through TRL's vLLM integration (``use_vllm``, colocate), elsewhere by transformers."""
    from iterdeploy_trl.training import prompt_rows, train_reinforce

    rf = check_config_for_reinforce(cfg)
    refused = reinforce_vllm_refusal(rf)
    if refused:  # vLLM's CPU build on a CPU where TRL's weight sync cannot run: REINFORCE samples by transformers
        rf = dataclasses.replace(rf, sampling=dataclasses.replace(rf.sampling, backend="transformers"))
    dom, pool = pool_tasks(rf)
    records = gen_traces(run_dir, 0)
    rows = prompt_rows(rf, records=records, history=records, pool=pool, domain_pddl=dom, seed=0)
    use_vllm = rf.sampling.backend == "vllm"
    saved = {k: os.environ.get(k) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    try:  # TRL's colocate mode sets these for its engine; the rest of the check runs as one plain process
        stats = train_reinforce(rf, Path(rf.model.path), rows, out, seed=0, init_from=None)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    step = Step("reinforce", data={"backend": rf.sampling.backend, "use_vllm": use_vllm,
                                   "importance_sampling": reinforce_is_setting(stats),
                                   "train_steps": stats["train_steps"],
                                   "train_traces": stats["train_traces"], "train_loss": stats["train_loss"],
                                   "train_completion_tokens": stats["train_completion_tokens"],
                                   "train_seconds": stats["train_seconds"],
                                   "tokens_per_s": stats["train_completion_tokens"] / max(stats["train_seconds"], 1e-9),
                                   "reward_mean": stats.get("reward_mean")})
    if not use_vllm:
        step.skipped_parts.append({"what": "REINFORCE through TRL's vLLM integration (use_vllm, colocate)",
                                   "reason": refused or no_vllm_reason(mode)})
    problems = []
    if stats["train_steps"] != 1 or stats["train_traces"] != len(rows) * rf.sampling.samples_per_task:
        problems.append(f"expected one optimizer step on {len(rows) * rf.sampling.samples_per_task} completions, got "
                        f"{stats['train_steps']} step(s) on {stats['train_traces']}")
    recorded = stats.get("importance_sampling")
    if not isinstance(recorded, dict) or recorded.get("use_vllm") != use_vllm or recorded.get(IS_FIELD) is not False:
        problems.append(f"the trainer's importance-sampling setting is {recorded!r} in its train_stats.json; expected "
                        f"it recorded, with use_vllm {use_vllm} and {IS_FIELD} False (the plain REINFORCE estimator)")
    if problems:
        step.status, step.reason = "fail", "; ".join(problems)
    return step


def reinforce_vllm_refusal(cfg: Any) -> str:
    """Why REINFORCE cannot sample through TRL's vLLM integration here (``loop.check_reinforce_vllm``: vLLM's
    CPU build on a CPU where it repacks the linear weights), or '' where it can or does not use vLLM."""
    if cfg.sampling.backend != "vllm":
        return ""
    from iterdeploy_trl.config import ConfigError
    from iterdeploy_trl.methods.reinforce import check_reinforce_vllm

    try:
        check_reinforce_vllm(cfg.model.dtype)
    except ConfigError as exc:
        return str(exc)
    return ""


def check_config_for_reinforce(cfg: Any) -> Any:
    """``cfg`` as method reinforce, its batch the whole pool's n*K completions (one optimizer step)."""
    n, k = cfg.tasks.n, cfg.sampling.samples_per_task
    return dataclasses.replace(cfg, method="reinforce",
                               training=dataclasses.replace(cfg.training, batch_size=n * k, epochs=3.0)).check()
