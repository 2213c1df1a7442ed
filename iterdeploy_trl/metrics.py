"""Per-generation numbers of a run (``metrics.jsonl`` rows, from the trace records) and their summary over seeds."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from iterdeploy_trl import dist
from iterdeploy_trl.drift_measures import generation_row, kl_estimate, plan_length_by_task
from iterdeploy_trl.runio import append_row
from iterdeploy_trl.traces import TraceRecord


def generation_metrics(records: Sequence[TraceRecord], generation: int, n_pool: int, n_heldout: int,
                       previous: Sequence[TraceRecord] | None = None) -> dict[str, Any]:
    """Per-generation numbers from trace records (named after the quantities), with the model-free drift
    measures (``drift_measures.generation_row``: held-out entropy, distinct valid plans, tie-break share, token
    means; ``plan_length_change_common`` against ``previous``, the last generation's records, None without)."""
    pool = [r for r in records if r.split == "pool"]
    held = [r for r in records if r.split == "heldout"]

    def solved(rs: list[TraceRecord]) -> set[str]:
        return {r.task_id for r in rs if r.valid}

    by_task: dict[str, list[bool]] = {}
    for r in pool:
        by_task.setdefault(r.task_id, []).append(r.valid)
    valid = [r for r in pool if r.valid]
    lengths = [r.plan_length for r in valid]
    ref_solved = [r.reference_length for r in valid if r.reference_length is not None]

    def stat(xs: list[float], fn: Callable) -> float | None:
        return round(float(fn(xs)), 3) if xs else None

    return {
        "generation": generation,
        "solved": len(solved(pool)),
        "tasks": n_pool,
        "heldout_solved": len(solved(held)),
        "heldout_tasks": n_heldout,
        "all_samples_valid": sum(all(v) for v in by_task.values()),
        "valid_fraction": stat([float(r.valid) for r in pool], statistics.fmean),
        "truncated_fraction": stat([float(r.truncated) for r in pool], statistics.fmean),
        "mean_valid_plan_length": stat(lengths, statistics.fmean),
        "median_valid_plan_length": stat(lengths, statistics.median),
        "max_valid_plan_length": max(lengths) if lengths else 0,
        "max_solved_reference_length": max(ref_solved) if ref_solved else 0,
        "mean_reasoning_tokens": stat([r.reasoning_tokens for r in pool], statistics.fmean),
        "mean_completion_tokens": stat([r.completion_tokens for r in pool], statistics.fmean),
        "samples": len(pool),
        "solved_task_ids": sorted(solved(pool)),
        "heldout_solved_task_ids": sorted(solved(held)),
        **drift_fields(records, previous),
    }


def drift_fields(records: Sequence[TraceRecord], previous: Sequence[TraceRecord] | None) -> dict[str, Any]:
    """``drift_measures.generation_row`` of ``records`` (``previous``: the last generation's records), less the
    per-task length map (``iterdeploy drift`` keeps that); the KL between models is not here (post hoc)."""
    before = None
    if previous is not None:
        before = plan_length_by_task([r.to_dict() for r in previous if r.split != "heldout"])
    row = generation_row([r.to_dict() for r in records], before)
    row.pop("valid_plan_length_by_task")
    return row


def kl_to_previous(run_cfg: Any, base: Path, prev_model: Path | None, records: Sequence[Mapping[str, Any]]
                   ) -> dict[str, float | None]:
    """``kl_prev_heldout`` and ``kl_prev_heldout_se``: KL(β_g ‖ β_{g-1}) over the held-out samples among
    ``records`` (generation g's trace records as dicts), their recorded log β_g against their log-prob under
    ``prev_model`` (generation g−1's deployed model; None: ``base``) at the run's temperature and top-p. The one
    computation of the KL: ``drift.measure_run`` (``iterdeploy drift``) and the loop (``drift.kl_previous``)
    call it."""
    held = [r for r in records if r["split"] == "heldout"]
    old = score_under(run_cfg, base, prev_model, held, run_cfg.sampling.temperature, run_cfg.sampling.top_p)
    est = kl_estimate([float(r["behaviour_logprob"]) for r in held], old)
    return {"kl_prev_heldout": est["kl"], "kl_prev_heldout_se": est["kl_se"]}


def score_under(run_cfg: Any, base: Path, model_dir: Path | None, recs: Sequence[Mapping[str, Any]],
                temperature: float, top_p: float) -> list[float]:
    """log β(y|x) of ``recs`` under a deployed model (None: the base model ``base``; a LoRA adapter on it)."""
    from iterdeploy_trl.backends import load_for_generation
    from iterdeploy_trl.sampler import score_logprobs

    model, tok = load_for_generation(run_cfg, base, model_dir)
    return score_logprobs(model, tok, list(recs), temperature=temperature, top_p=top_p)


def aggregate(per_seed: dict[int, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per-generation summary over seeds: mean/min/max of the numbers, and unanimous@k."""
    gens = sorted({m["generation"] for rows in per_seed.values() for m in rows})
    out = []
    for g in gens:
        rows = [next(m for m in ms if m["generation"] == g) for ms in per_seed.values()
                if any(m["generation"] == g for m in ms)]
        entry: dict[str, Any] = {"generation": g, "seeds": [r["seed"] for r in rows]}
        for key in ("solved", "heldout_solved", "train_traces", "max_valid_plan_length", "samples_used",
                    "mean_valid_plan_length", "max_solved_reference_length", "valid_fraction",
                    "mean_reasoning_tokens", "mean_completion_tokens", "train_completion_tokens",
                    "train_completion_tokens_cumulative",
                    "deploy_seconds", "train_seconds", "all_samples_valid", "eval_loss"):
            vals = [r[key] for r in rows if r.get(key) is not None]
            if not vals:
                entry[key] = None
                continue
            entry[key] = round(statistics.fmean(vals), 3)
            entry[f"{key}_min"] = min(vals)
            entry[f"{key}_max"] = max(vals)
        sets = [set(r["solved_task_ids"]) for r in rows]
        entry["unanimous"] = len(set.intersection(*sets)) if sets else 0
        entry["unanimous_k"] = len(sets)
        entry["tasks"] = rows[0]["tasks"]
        entry["heldout_tasks"] = rows[0]["heldout_tasks"]
        out.append(entry)
    return out


def append_metrics(path: Path, row: dict[str, Any]) -> None:
    """Append a finished generation's metrics row to ``metrics.jsonl`` (the main process writes it)."""
    if dist.is_main():
        append_row(path, row, key="generation")


