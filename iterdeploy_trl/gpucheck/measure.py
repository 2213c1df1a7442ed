"""Steps 6-8 of ``iterdeploy gpu-check``: what it measures on the valid-SFT run. The recorded behaviour log-probs
against the trainer's log pi (6), the LoRA adapter served unmerged against the merged model (7), and the
throughput of the backends and of training (8)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from iterdeploy_trl import rundir
from iterdeploy_trl.gpucheck.common import BF16_TOLERANCE_PER_TOKEN, TRL_IS_CLIP_MAX, Step, gen_traces
from iterdeploy_trl.gpucheck.machine import no_vllm_reason

# --------------------------------------------------------------------------- step 6: log-probs


def sequence_logprobs(model: Any, pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
                      temperature: float = 1.0) -> list[float]:
    """log pi(y|x) of each (prompt ids, completion ids): one forward pass of ``model`` over the sequence, the
    float32 log-softmax of logits / temperature at the completion's positions, summed."""
    import torch

    out = []
    device = next(model.parameters()).device
    with torch.no_grad():
        for prompt, completion in pairs:
            seq = torch.tensor([list(prompt) + list(completion)], device=device)
            logits = model(seq).logits[0, len(prompt) - 1 : -1].float() / temperature
            target = torch.tensor(list(completion), device=device)[:, None]
            out.append(float(torch.log_softmax(logits, -1).gather(-1, target).sum()))
    return out


def gap_stats(recorded: Sequence[float], recomputed: Sequence[float], tokens: Sequence[int]) -> dict[str, Any]:
    """Per-sequence and per-token |recorded - recomputed| (nats), and the fraction of sequences TRL's default
    importance-sampling correction would drop (ratio exp(recomputed - recorded) above ``TRL_IS_CLIP_MAX``)."""
    import math

    gaps = [abs(a - b) for a, b in zip(recorded, recomputed, strict=True)]
    per_token = [g / max(1, n) for g, n in zip(gaps, tokens, strict=True)]
    dropped = sum(1 for a, b in zip(recorded, recomputed, strict=True) if b - a > math.log(TRL_IS_CLIP_MAX))
    return {"sequences": len(gaps), "max_abs_gap": max(gaps, default=0.0),
            "mean_abs_gap": sum(gaps) / len(gaps) if gaps else 0.0, "max_abs_gap_per_token": max(per_token, default=0.0),
            "mean_abs_gap_per_token": sum(per_token) / len(per_token) if per_token else 0.0,
            "trl_is_sequence_mask_would_drop": dropped}


def tolerance(dtype: str) -> dict[str, Any]:
    """The log-prob tolerance of a dtype: per token in bf16/fp16, per sequence in float32."""
    from iterdeploy_trl.theory.pipeline_sampling import LOGPROB_TOLERANCE

    if dtype == "float32":
        return {"per_sequence": LOGPROB_TOLERANCE}
    return {"per_token": BF16_TOLERANCE_PER_TOKEN}


def within(stats: dict[str, Any], tol: dict[str, Any]) -> bool:
    if "per_token" in tol:
        return stats["max_abs_gap_per_token"] <= tol["per_token"]
    return stats["max_abs_gap"] <= tol["per_sequence"]



def step_logprobs(cfg: Any, run_dir: Path) -> Step:
    """Behaviour log-probs of the deployed traces (generation 0: the base; generation 1: the LoRA adapter,
    unmerged) against the trainer's log pi of the same token ids: the model as the loop trains it
    (``loop.load_for_generation``: ``cfg.model.dtype``, the adapter unmerged), and in float32 for reference."""
    from iterdeploy_trl.backends import load_for_generation

    base = Path(cfg.model.path)
    tol = tolerance(cfg.model.dtype)
    step = Step("logprobs", data={"dtype": cfg.model.dtype, "backend": cfg.sampling.backend, "tolerance": tol})
    for g in (0, 1):
        records = [r for r in gen_traces(run_dir, g) if r.completion_ids]
        model_dir = rundir.deployed_model(rundir.seed_dir(run_dir, 0), g)
        pairs = [(r.prompt_ids, r.completion_ids) for r in records]
        recorded = [r.behaviour_logprob for r in records]
        tokens = [len(r.completion_ids) for r in records]
        entry: dict[str, Any] = {"model": "base" if model_dir is None else str(model_dir.relative_to(run_dir))}
        for dtype in dict.fromkeys((cfg.model.dtype, "float32")):
            model, _ = load_for_generation(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dtype=dtype)),
                                           base, model_dir)
            entry[dtype] = gap_stats(recorded, sequence_logprobs(model, pairs, cfg.sampling.temperature), tokens)
            del model
        step.data[f"generation_{g}"] = entry
        if not records:
            step.status, step.reason = "fail", f"generation {g} has no trace with completion_ids"
        elif not within(entry[cfg.model.dtype], tol) and step.status == "pass":
            stats = entry[cfg.model.dtype]
            step.status = "fail"
            step.reason = (f"generation {g}: behaviour log-prob vs the trainer's log pi ({cfg.model.dtype}) max gap "
                           f"{stats['max_abs_gap']:.4g} nats ({stats['max_abs_gap_per_token']:.4g} a token), above "
                           f"the tolerance {tol}")
    return step


# --------------------------------------------------------------------------- step 7: LoRA vs the merged model


def timed_generate(backend: Any, prompts: Sequence[str], cfg: Any, seed: int) -> tuple[list[list[Any]], dict[str, Any]]:
    """Sample ``cfg.sampling.samples_per_task`` completions of each prompt; the samples, and completions/s and
    tokens/s of the ``generate`` call alone (the engine's start is not in it)."""
    s = cfg.sampling
    t0 = time.perf_counter()
    samples = backend.generate(prompts, num_samples=s.samples_per_task, temperature=s.temperature, top_p=s.top_p,
                               max_new_tokens=s.max_new_tokens, seed=seed)
    seconds = time.perf_counter() - t0
    flat = [c for row in samples for c in row]
    tokens = sum(c.completion_tokens for c in flat)
    return samples, {"completions": len(flat), "tokens": tokens, "generate_seconds": round(seconds, 3),
                     "completions_per_s": len(flat) / seconds, "tokens_per_s": tokens / seconds}


def merged_model(cfg: Any, base: Path, adapter_dir: Path) -> Any:
    """The base with the adapter merged into its weights (float32, so that the merge itself rounds nothing)."""
    from iterdeploy_trl.backends import load_for_generation

    model, _ = load_for_generation(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dtype="float32")),
                                   base, adapter_dir)
    return model.merge_and_unload()


def step_lora(cfg: Any, run_dir: Path) -> Step:
    """The trained LoRA adapter, served unmerged by the main backend (``loop.make_backend``), changes the samples
    as the merged model would: with the same seeds its samples differ from the base's; their behaviour
    log-probs are the merged model's log pi (within the dtype's tolerance) and not the base's (their gap to
    the base's log pi is above it). The adapter's ``generate`` call is also the main backend's throughput."""
    from iterdeploy_trl.backends import load_for_generation, make_backend
    from iterdeploy_trl.deploy import VLLMBackend

    base = Path(cfg.model.path)
    adapter_dir = rundir.model(rundir.gen_dir(rundir.seed_dir(run_dir, 0), 1))
    prompts = list(dict.fromkeys(r.prompt for r in gen_traces(run_dir, 0) if r.split == "pool"))
    seed = 12345
    t0 = time.perf_counter()
    backend = make_backend(cfg, base, adapter_dir)
    start_s = time.perf_counter() - t0
    try:
        tuned, speed = timed_generate(backend, prompts, cfg, seed)
        if isinstance(backend, VLLMBackend):  # the same engine, the adapter off (no second engine start)
            backend.adapter_path = None
            plain, _ = timed_generate(backend, prompts, cfg, seed)
        else:
            plain, _ = timed_generate(make_backend(cfg, base, None), prompts, cfg, seed)
        prompt_ids = {p: list(backend.tokenizer(p)["input_ids"]) for p in prompts}
    finally:
        backend.close()
    pairs = [(prompt_ids[p], c.token_ids) for p, row in zip(prompts, tuned, strict=True) for c in row]
    recorded = [c.behaviour_logprob for row in tuned for c in row]
    tokens = [c.completion_tokens for row in tuned for c in row]
    merged = merged_model(cfg, base, adapter_dir)
    vs_merged = gap_stats(recorded, sequence_logprobs(merged, pairs, cfg.sampling.temperature), tokens)
    del merged
    base_model, _ = load_for_generation(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dtype="float32")),
                                        base, None)
    vs_base = gap_stats(recorded, sequence_logprobs(base_model, pairs, cfg.sampling.temperature), tokens)
    changed = sum(a.token_ids != b.token_ids for ra, rb in zip(tuned, plain, strict=True)
                  for a, b in zip(ra, rb, strict=True))
    tol = tolerance(cfg.model.dtype)
    step = Step("lora", data={"backend": cfg.sampling.backend, "adapter": str(adapter_dir), "seed": seed,
                              "samples": len(recorded), "samples_changed_by_adapter": changed,
                              "adapter_vs_merged": vs_merged, "adapter_vs_base": vs_base, "tolerance": tol,
                              "throughput": {**speed, "backend": cfg.sampling.backend,
                                             "start_seconds": round(start_s, 2)}})
    problems = []
    if not changed:
        problems.append("the adapter changed no sample (same seeds as the base)")
    if not within(vs_merged, tol):
        problems.append(f"behaviour log-probs differ from the merged model's log pi by up to "
                        f"{vs_merged['max_abs_gap']:.4g} nats ({vs_merged['max_abs_gap_per_token']:.4g} a token), "
                        f"above {tol}")
    effect = (vs_base["mean_abs_gap_per_token"] > tol["per_token"]) if "per_token" in tol \
        else (vs_base["mean_abs_gap"] > tol["per_sequence"])
    if not effect:
        problems.append("the base's log pi is as close to the samples' log-probs as the merged model's: the adapter's "
                        "effect is below the tolerance, so the check cannot tell them apart")
    if problems:
        step.status, step.reason = "fail", "; ".join(problems)
    return step


# --------------------------------------------------------------------------- step 8: throughput


def step_throughput(cfg: Any, run_dir: Path, lora: Step, mode: str) -> Step:
    """completions/s and tokens/s of vLLM and of the transformers backend on the same model (the base + the
    trained adapter, the same prompts and seeds), and training tokens/s, as ratios measured in this run."""
    from iterdeploy_trl.backends import make_backend
    from iterdeploy_trl.runio import read_json

    base = Path(cfg.model.path)
    adapter_dir = rundir.model(rundir.gen_dir(rundir.seed_dir(run_dir, 0), 1))
    prompts = list(dict.fromkeys(r.prompt for r in gen_traces(run_dir, 0) if r.split == "pool"))
    step = Step("throughput")
    measured = {cfg.sampling.backend: lora.data.get("throughput")}
    if "transformers" not in measured:
        hf = dataclasses.replace(cfg, sampling=dataclasses.replace(cfg.sampling, backend="transformers"))
        t0 = time.perf_counter()
        backend = make_backend(hf, base, adapter_dir)
        start_s = time.perf_counter() - t0
        _, speed = timed_generate(backend, prompts, hf, 12345)
        backend.close()
        measured["transformers"] = {**speed, "backend": "transformers", "start_seconds": round(start_s, 2)}
    if "vllm" not in measured:
        step.skipped_parts.append({"what": "vLLM throughput", "reason": no_vllm_reason(mode)})
    stats = read_json(rundir.train_stats(adapter_dir))
    train = {"sft_lora_tokens_per_s": stats["train_completion_tokens"] / max(stats["train_seconds"], 1e-9),
             "train_completion_tokens": stats["train_completion_tokens"], "train_seconds": stats["train_seconds"]}
    step.data = {"deploy": measured, "train": train, "dtype": cfg.model.dtype, "prompts": len(prompts),
                 "samples_per_task": cfg.sampling.samples_per_task, "max_new_tokens": cfg.sampling.max_new_tokens}
    ratios = {}
    if measured.get("vllm") and measured.get("transformers"):
        for unit in ("completions_per_s", "tokens_per_s"):
            ratios[f"vllm_over_transformers_{unit}"] = measured["vllm"][unit] / measured["transformers"][unit]
    main = measured[cfg.sampling.backend]
    ratios["sft_train_over_deploy_tokens_per_s"] = train["sft_lora_tokens_per_s"] / main["tokens_per_s"]
    step.data["ratios"] = ratios
    return step

