"""Curation policies: which traces of a generation enter the training set.

- ``shortest`` (the study's): one trace per task, the shortest valid plan, ties broken by fewer
  reasoning tokens, then fewer completion tokens, then the earliest sample (deterministic).
- ``all-valid``: every valid trace.
- ``random-valid``: one valid trace per task, chosen uniformly at random (seeded).
- ``none``: the uncurated ablation: every trace that is not truncated, valid or not.

With accumulation, the training set of generation g+1 is the union over generations 0..g, with
``shortest`` / ``random-valid`` applied per task over *all* accumulated traces, so a task keeps one
trace (the best so far).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from typing import Any

Trace = dict[str, Any]


def _key(t: Trace) -> tuple:
    return (t["plan_length"], t["reasoning_tokens"], t["completion_tokens"], t["generation"], t["sample_index"])


def curate(traces: Iterable[Trace], policy: str, *, seed: int = 0) -> list[Trace]:
    """Apply ``policy`` to ``traces``; the result is ordered by task id, then generation and sample."""
    traces = [t for t in traces if t.get("split", "pool") == "pool"]
    if policy == "none":
        chosen = [t for t in traces if not t["truncated"]]
    elif policy == "all-valid":
        chosen = [t for t in traces if t["valid"]]
    elif policy in ("shortest", "random-valid"):
        by_task: dict[str, list[Trace]] = {}
        for t in traces:
            if t["valid"]:
                by_task.setdefault(t["task_id"], []).append(t)
        rng = random.Random(seed)
        chosen = []
        for task_id in sorted(by_task):
            group = sorted(by_task[task_id], key=_key)
            chosen.append(group[0] if policy == "shortest" else rng.choice(group))
    else:
        raise ValueError(f"unknown curation policy {policy!r}: use shortest, all-valid, random-valid or none")
    return sorted(chosen, key=lambda t: (t["task_id"], t["generation"], t["sample_index"]))


def training_rows(traces: Sequence[Trace]) -> list[dict[str, Any]]:
    """Prompt-completion rows as the SFT trainers read them (with the behaviour log-prob for IW-SFT)."""
    return [{"prompt": t["prompt"], "completion": t["completion"], "behaviour_logprob": t["behaviour_logprob"],
             "task_id": t["task_id"]} for t in traces]
