"""Features of trace records along the funnel (sampled -> valid -> curated): plan actions and their types,
repeated and undone actions (:class:`UndoCounter`, with the simulator), and the mean features of a stage."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

# ---------------------------------------------------------------------------------------- features


def plan_actions(rec: dict[str, Any]) -> list[str]:
    """The actions of a trace's extracted plan (its ``plan`` field, one action a line)."""
    return [a.strip() for a in (rec.get("plan") or "").split("\n") if a.strip()]


def action_type(action: str) -> str:
    """``(pick-up a)`` -> ``pick-up``."""
    words = action.strip().strip("()").split()
    return words[0].lower() if words else ""


def repeated_actions(actions: Sequence[str]) -> int:
    """Actions written a second (third, ...) time in the same plan."""
    return len(actions) - len({a.lower() for a in actions})


class UndoCounter:
    """Counts undone actions of plans with the simulator: step i+1 undoes step i when the state after it
    equals the state before step i. Only the legal prefix of a plan is followed. One simulator per task."""

    def __init__(self, domain_pddl: str | None, tasks: dict[str, dict[str, Any]]) -> None:
        self.domain_pddl = domain_pddl
        self.tasks = tasks
        self._sims: dict[str, Any] = {}
        self.actions: set[str] | None = None  # the domain's action names (others count as malformed)
        if domain_pddl is not None:
            from iterdeploy_trl.blindspot import BlindSpotError, parse_sexpr

            try:
                define = parse_sexpr(domain_pddl)[0]
                self.actions = {f[1] for f in define if isinstance(f, list) and f and f[0] == ":action"}
            except (BlindSpotError, IndexError, TypeError):
                self.actions = None

    def name_of(self, name: str) -> str:
        """An action type as reported: the domain's action name, or ``(malformed)``."""
        return name if self.actions is None or name in self.actions else "(malformed)"

    def __call__(self, task_id: str, actions: Sequence[str]) -> int | None:
        if self.domain_pddl is None or task_id not in self.tasks or len(actions) < 2:
            return None if self.domain_pddl is None or task_id not in self.tasks else 0
        sim = self._sims.get(task_id)
        if sim is None:
            from iterdeploy_trl.sim import Simulator

            sim = self._sims[task_id] = Simulator(self.domain_pddl, self.tasks[task_id]["problem"])
        from iterdeploy_trl.sim import IllegalAction

        states = [sim.init_state]
        for a in actions:
            try:
                states.append(sim.apply(states[-1], a))
            except (IllegalAction, ValueError, KeyError):
                break
        return sum(1 for i in range(len(states) - 2) if states[i + 2] == states[i])


def trace_features(rec: dict[str, Any], tasks: dict[str, dict[str, Any]], undo: UndoCounter) -> dict[str, Any]:
    """The features of one trace record that the audit compares along the funnel."""
    actions = plan_actions(rec)
    ref = rec.get("reference_length") or tasks.get(rec.get("task_id"), {}).get("reference_length")
    return {
        "plan_length": len(actions),
        "relative_length": len(actions) / ref if ref else None,
        "reasoning_tokens": rec.get("reasoning_tokens"),
        "completion_tokens": rec.get("completion_tokens"),
        "task_size": tasks.get(rec.get("task_id"), {}).get("size"),
        "action_types": Counter(undo.name_of(action_type(a)) for a in actions),
        "repeated": repeated_actions(actions),
        "undone": undo(rec.get("task_id"), actions),
        "truncated": bool(rec.get("truncated")),
        "valid": bool(rec.get("valid")),
    }


def _mean(xs: Iterable[Any]) -> float | None:
    vals = [float(x) for x in xs if x is not None]
    return round(statistics.fmean(vals), 4) if vals else None


def stage_summary(feats: Sequence[dict[str, Any]], novel: Sequence[bool] | None = None) -> dict[str, Any]:
    """Mean features of a set of traces (a funnel stage)."""
    types: Counter[str] = Counter()
    for f in feats:
        types.update(f["action_types"])
    total = sum(types.values())
    undone = [f["undone"] for f in feats]
    return {
        "n": len(feats),
        "plan_length_mean": _mean(f["plan_length"] for f in feats),
        "plan_length_median": statistics.median([f["plan_length"] for f in feats]) if feats else None,
        "relative_length_mean": _mean(f["relative_length"] for f in feats),
        "reasoning_tokens_mean": _mean(f["reasoning_tokens"] for f in feats),
        "completion_tokens_mean": _mean(f["completion_tokens"] for f in feats),
        "task_size_mean": _mean(f["task_size"] for f in feats),
        "repeated_per_plan": _mean(f["repeated"] for f in feats),
        "undone_per_plan": _mean(undone),
        "with_undone_fraction": _mean(float(u > 0) for u in undone if u is not None),
        "truncated_fraction": _mean(float(f["truncated"]) for f in feats),
        "valid_fraction": _mean(float(f["valid"]) for f in feats),
        "novel_fraction": _mean(float(x) for x in novel) if novel is not None else None,
        "action_type_fraction": {k: round(v / total, 4) for k, v in sorted(types.items())} if total else {},
    }
