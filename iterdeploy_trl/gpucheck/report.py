"""What ``iterdeploy gpu-check`` reports: the JSON document of a check (every step, the parts skipped with their
reasons, the ratios, ``ok``) and one printed line a step with its headline numbers."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from iterdeploy_trl.gpucheck.common import Scale, Step
from iterdeploy_trl.gpucheck.reinforce import IS_FIELD

EXPECTED_STEPS = ("machine", "model", "teach", "valid_sft", "reference_run", "schema", "logprobs", "lora",
                  "throughput", "reinforce")


def summarise(mode: str, scale: Scale, steps: list[Step], seconds: float, budget_s: float) -> dict[str, Any]:
    """The JSON document of a check: every step, the parts skipped with their reasons, the ratios, ``ok``."""
    done = {s.name for s in steps}
    for name in EXPECTED_STEPS:  # a step that could not start, because one it needs failed
        if name not in done:
            steps.append(Step(name, status="skipped", reason="a step it needs did not pass"))
    by_name = {s.name: s for s in steps}
    gpu = by_name["machine"].data.get("gpu")
    return {
        "mode": mode, "ok": all(s.status == "pass" for s in steps), "wall_seconds": round(seconds, 1),
        "budget_seconds": budget_s, "device": gpu["name"] if gpu else "cpu", "scale": dataclasses.asdict(scale),
        "steps": [s.to_dict() for s in steps],
        "skipped": [{"step": s.name, **part} for s in steps for part in s.skipped_parts]
        + [{"step": s.name, "what": "the whole step", "reason": s.reason} for s in steps if s.status == "skipped"],
        "ratios": by_name["throughput"].data.get("ratios", {}),
    }


def step_line(step: Step) -> str:
    """One line a step: its status, name, seconds, and its reason or headline numbers."""
    head = f"[{step.status:7s}] {step.name:14s} {step.seconds:7.1f} s"
    detail = step.reason or headline(step)
    parts = "; ".join(f"{p['what']} skipped: {p['reason']}" for p in step.skipped_parts)
    return " ".join(x for x in (head, detail, f"({parts})" if parts else "") if x)


def headline(step: Step) -> str:
    """The numbers a reader looks at first, per step."""
    d = step.data
    if step.name == "machine":
        gpu = d.get("gpu")
        where = f"{gpu['name']} {gpu['memory_gib']} GiB, CUDA {d['cuda']}" if gpu else f"no GPU ({d['cpu']})"
        warning = f" (TRL warns: {d['trl_vllm_warning']})" if d.get("trl_vllm_warning") else ""
        return f"{where}; torch {d['torch']}, vLLM {d['vllm']}, TRL {d['trl']}{warning}"
    if step.name == "model":
        return f"{d['architecture']} {d['size']}: {d['parameters'] / 1e6:.2f} M parameters, head_dim {d['head_dim']}"
    if step.name == "teach":
        return f"{d['train_steps']} steps on {d['rows']} reference plans, loss {d['train_loss']:.3f}"
    if step.name in ("valid_sft", "reference_run"):
        g = d["generations"]
        return (f"{d['backend']} {d['dtype']}: solved {g[0]['solved']} -> {g[-1]['solved']} of {g[0]['tasks']}, "
                f"{g[-1]['train_traces'] or g[0]['train_traces']} traces trained on")
    if step.name == "schema":
        return "same files, trace fields and keys as the CPU schema"
    if step.name == "logprobs":
        g1 = d["generation_1"][d["dtype"]]
        return (f"max |beta - log pi| {g1['max_abs_gap']:.3g} nats ({g1['max_abs_gap_per_token']:.3g}/token), "
                f"tolerance {d['tolerance']}")
    if step.name == "lora":
        return (f"{d['samples_changed_by_adapter']}/{d['samples']} samples changed; gap to merged "
                f"{d['adapter_vs_merged']['max_abs_gap_per_token']:.3g}/token, to base "
                f"{d['adapter_vs_base']['mean_abs_gap_per_token']:.3g}/token")
    if step.name == "throughput":
        deploy = ", ".join(f"{b} {m['completions_per_s']:.1f} completions/s {m['tokens_per_s']:.0f} tokens/s"
                           for b, m in d["deploy"].items() if m)
        ratios = ", ".join(f"{k} {v:.3g}" for k, v in d["ratios"].items())
        return f"{deploy}; SFT {d['train']['sft_lora_tokens_per_s']:.0f} tokens/s; {ratios}"
    if step.name == "reinforce":
        recorded = d["importance_sampling"]["recorded"] or {}
        return (f"{d['train_steps']} step on {d['train_traces']} completions ({d['backend']}), use_vllm "
                f"{recorded.get('use_vllm')}, {IS_FIELD} {recorded.get(IS_FIELD)} (TRL's default "
                f"{d['importance_sampling']['trl_grpo_default'][IS_FIELD]}), {d['tokens_per_s']:.0f} tokens/s")
    return ""


def dumps(result: dict[str, Any]) -> str:
    return json.dumps(result, indent=2)
