"""The model-free drift measures of one generation's trace records (no model, no run directory).

``metrics.generation_metrics`` puts them in every generation's ``metrics.jsonl`` row while the loop runs;
``drift.measure_run`` (``iterdeploy drift``) computes the same rows afterwards and adds the KL between
successive deployed models, which needs the previous model and so stays post hoc. The fields are described
in ``drift``'s docstring. Records are mappings with the trace record's keys (``TraceRecord.to_dict()``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any


def _mean_se(xs: Sequence[float]) -> tuple[float | None, float | None]:
    xs = [x for x in xs if math.isfinite(x)]
    if not xs:
        return None, None
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, None
    var = sum((x - m) ** 2 for x in xs) / (len(xs) - 1)
    return m, math.sqrt(var / len(xs))


def entropy_estimate(records: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    """H ≈ −mean log β(y|x) over ``records`` (samples of the distribution they record), per completion and
    per token; -inf log-probs (a token outside top-p: cannot happen for a sampled token) are left out."""
    lps = [float(r["behaviour_logprob"]) for r in records]
    mean, se = _mean_se([-lp for lp in lps])
    tokens = sum(int(r.get("completion_tokens") or 0) for r, lp in zip(records, lps, strict=True) if math.isfinite(lp))
    total = sum(-lp for lp in lps if math.isfinite(lp))
    return {"entropy": mean, "entropy_se": se, "entropy_per_token": total / tokens if tokens else None}


def kl_estimate(logp_new: Sequence[float], logp_old: Sequence[float]) -> dict[str, float | None]:
    """KL(new ‖ old) ≈ mean(log new(y) − log old(y)) over samples y ~ new, with its standard error."""
    mean, se = _mean_se([a - b for a, b in zip(logp_new, logp_old, strict=True)])
    return {"kl": mean, "kl_se": se}


def distinct_valid_plans(records: Sequence[Mapping[str, Any]]) -> float | None:
    """Mean over tasks with a valid sample of the number of distinct valid plans among its samples."""
    plans: dict[str, set[str]] = defaultdict(set)
    for r in records:
        if r["valid"]:
            plans[r["task_id"]].add(" ".join(str(r["plan"]).split()))
    return sum(len(p) for p in plans.values()) / len(plans) if plans else None


def plan_length_by_task(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Each solved task's mean valid plan length."""
    lengths: dict[str, list[int]] = defaultdict(list)
    for r in records:
        if r["valid"]:
            lengths[r["task_id"]].append(int(r["plan_length"]))
    return {t: sum(v) / len(v) for t, v in sorted(lengths.items())}


def tiebreak_share(records: Sequence[Mapping[str, Any]]) -> float | None:
    """Share of solved tasks where the tie-break by tokens keeps another completion than the earliest
    shortest sample (``curate._key`` against plan length then sample order)."""
    groups: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for r in records:
        if r["valid"]:
            groups[r["task_id"]].append(r)
    if not groups:
        return None
    acts = 0
    for group in groups.values():
        with_tokens = min(group, key=lambda r: (r["plan_length"], r["reasoning_tokens"], r["completion_tokens"],
                                                r["sample_index"]))
        plain = min(group, key=lambda r: (r["plan_length"], r["sample_index"]))
        acts += with_tokens["completion"] != plain["completion"]
    return acts / len(groups)


def generation_row(records: Sequence[Mapping[str, Any]], previous: Mapping[str, float] | None) -> dict[str, Any]:
    """The model-free drift measures of one generation's records (``previous``: the last generation's
    ``valid_plan_length_by_task`` of the pool, for the change over tasks solved in both)."""
    held = [r for r in records if r["split"] == "heldout"]
    pool = [r for r in records if r["split"] != "heldout"]
    ent = entropy_estimate(held)
    by_task = plan_length_by_task(pool)
    common = sorted(set(by_task) & set(previous or {}))
    change = (sum(by_task[t] - previous[t] for t in common) / len(common)) if previous and common else None
    tokens = [int(r.get("completion_tokens") or 0) for r in records]
    reasoning = [int(r.get("reasoning_tokens") or 0) for r in records]
    return {
        "entropy_heldout": ent["entropy"], "entropy_heldout_se": ent["entropy_se"],
        "entropy_per_token_heldout": ent["entropy_per_token"],
        "distinct_valid_plans_pool": distinct_valid_plans(pool),
        "distinct_valid_plans_heldout": distinct_valid_plans(held),
        "valid_plan_length_by_task": by_task,
        "plan_length_change_common": change, "tasks_solved_both": len(common) if previous else None,
        "reasoning_tokens_mean": sum(reasoning) / len(reasoning) if reasoning else None,
        "completion_tokens_mean": sum(tokens) / len(tokens) if tokens else None,
        "tiebreak_acts": tiebreak_share(pool),
    }
