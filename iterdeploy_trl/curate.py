"""Curation policies: which traces of a generation enter the training set.

- ``shortest`` (the study's): one trace per task, the shortest valid plan, ties broken by fewer
  reasoning tokens, then fewer completion tokens, then the earliest sample (deterministic).
- ``shortest-plan``: one trace per task, the shortest valid plan, ties broken by the earliest sample only
  (generation, then sample index): ``shortest`` without the token counts, to measure what that tie-break does.
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

from iterdeploy_trl.traces import TraceRecord


def _key(t: TraceRecord) -> tuple:
    return (t.plan_length, t.reasoning_tokens, t.completion_tokens, t.generation, t.sample_index)


def _plan_key(t: TraceRecord) -> tuple:
    """``shortest-plan``'s order: plan length, then the earliest sample (no token counts)."""
    return (t.plan_length, t.generation, t.sample_index)


# The one-trace-per-task rules: the order whose first trace is kept (None: a seeded uniform choice).
ONE_PER_TASK = {"shortest": _key, "shortest-plan": _plan_key, "random-valid": None}


def curate(traces: Iterable[TraceRecord], policy: str, *, seed: int = 0) -> list[TraceRecord]:
    """Apply ``policy`` to ``traces``; the result is ordered by task id, then generation and sample."""
    traces = [t for t in traces if t.split == "pool"]
    if policy == "none":
        chosen = [t for t in traces if not t.truncated]
    elif policy == "all-valid":
        chosen = [t for t in traces if t.valid]
    elif policy in ONE_PER_TASK:
        by_task: dict[str, list[TraceRecord]] = {}
        for t in traces:
            if t.valid:
                by_task.setdefault(t.task_id, []).append(t)
        rng = random.Random(seed)
        chosen = []
        order = ONE_PER_TASK[policy]
        for task_id in sorted(by_task):
            group = sorted(by_task[task_id], key=order or _key)
            chosen.append(group[0] if order is not None else rng.choice(group))
    else:
        raise ValueError(f"unknown curation policy {policy!r}: use shortest, shortest-plan, all-valid, "
                         "random-valid or none")
    return sorted(chosen, key=lambda t: (t.task_id, t.generation, t.sample_index))


def training_rows(traces: Sequence[TraceRecord]) -> list[dict[str, Any]]:
    """Prompt-completion rows as the SFT trainers read them: ``prompt``, ``completion``, ``task_id``,
    ``behaviour_logprob`` (IW-SFT's log β), and, where the trace recorded them, ``prompt_ids`` and
    ``completion_ids``: the tokens that were sampled, to be trained on as they are (no re-tokenisation,
    no EOS appended: a completion that sampled EOS has it in ``completion_ids``, a truncated one has none).
    Traces from before the ids were recorded give rows without the two id columns. These rows are the
    curated set as written to ``train.jsonl``; ``training.trainer_rows`` turns them into the trainer's dataset
    rows (one conversion, where ``training.max_length`` applies)."""
    rows = []
    for t in traces:
        row: dict[str, Any] = {"prompt": t.prompt, "completion": t.completion,
                               "behaviour_logprob": t.behaviour_logprob, "task_id": t.task_id}
        if t.prompt_ids is not None and t.completion_ids is not None:
            row.update(prompt_ids=list(t.prompt_ids), completion_ids=list(t.completion_ids))
        rows.append(row)
    return rows


# Below this many training rows no validation split is made: a held-out set of one or two traces says
# nothing and costs a tenth of a tiny training set.
MIN_ROWS_FOR_VALIDATION = 10


def validation_split(rows: Sequence[dict[str, Any]], fraction: float, *, seed: int
                     ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    """``(train, eval, note)``: hold out ``floor(fraction * tasks)`` tasks, chosen with ``seed``, and all
    their rows (a task is never on both sides). Order within each side is kept. With ``fraction`` 0,
    fewer than ``MIN_ROWS_FOR_VALIDATION`` rows, or a fraction that holds out no task, every row trains
    and ``note`` says why."""
    rows = list(rows)
    if fraction <= 0:
        return rows, [], "none: training.validation_fraction is 0"
    if len(rows) < MIN_ROWS_FOR_VALIDATION:
        return rows, [], f"none: {len(rows)} rows < {MIN_ROWS_FOR_VALIDATION}, all trained on"
    tasks = sorted({r["task_id"] for r in rows})
    n_eval = min(int(fraction * len(tasks)), len(tasks) - 1)  # at least one task trains
    if n_eval == 0:
        return rows, [], f"none: {fraction:g} of {len(tasks)} tasks is 0 tasks, all trained on"
    held = set(random.Random(f"validation/{seed}").sample(tasks, n_eval))
    train = [r for r in rows if r["task_id"] not in held]
    held_rows = [r for r in rows if r["task_id"] in held]
    return train, held_rows, f"{n_eval} of {len(tasks)} tasks ({len(held_rows)} rows) held out"
