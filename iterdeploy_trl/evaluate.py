"""Deploy one model on a task set: tasks solved (VAL) and the fraction of legal actions (simulator)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from iterdeploy_trl.backends import make_backend
from iterdeploy_trl.config import ModelConfig, RunConfig, SamplingConfig, TasksConfig
from iterdeploy_trl.deployment import deploy_generation
from iterdeploy_trl.errors import RunError
from iterdeploy_trl.traces import TraceRecord, write_traces


def legal_action_fraction(domain_pddl: str, records: list[TraceRecord], problems: dict[str, str]) -> float:
    """Share of extracted actions that are legal: of each plan, the actions that apply in turn from the
    initial state (its legal prefix) over all its actions. Actions after the first illegal one count as
    not legal (the state they would apply to is undefined). The same definition as the base-model
    measurement (``models.measure_small_model``), so the two report the same number for the same plans."""
    from iterdeploy_trl.sim import Simulator

    sims: dict[str, Any] = {}
    legal = total = 0
    for r in records:
        actions = [a for a in r.plan.splitlines() if a.strip()]
        if not actions:
            continue
        sim = sims.get(r.task_id) or sims.setdefault(r.task_id, Simulator(domain_pddl, problems[r.task_id]))
        k = sim.legal_prefix(actions)
        legal += k
        total += len(actions)
    return legal / total if total else 0.0


def evaluate_model(model: str | Path, tasks_dir: str | Path, *, samples: int = 1, temperature: float = 1.0,
                   top_p: float = 1.0, max_new_tokens: int = 128, batch_size: int = 64, prompt_style: str = "compact",
                   backend: str = "transformers", seed: int = 0, traces_out: str | Path | None = None,
                   progress: bool = True) -> dict[str, Any]:
    """Solved count, rate, valid-completion fraction and legal-action fraction of ``model`` on a task set."""
    import tempfile

    from iterdeploy_trl.tasks import load_task_set

    model = Path(model)
    if not model.exists():
        raise RunError(f"model directory {model} does not exist (train one with `iterdeploy base-model`)")
    task_set = load_task_set(Path(tasks_dir))
    cfg = RunConfig(
        domain=task_set.domain, name="evaluate", generations=0,
        tasks=TasksConfig(n=len(task_set.tasks), dir=str(tasks_dir)), model=ModelConfig(path=str(model), prompt_style=prompt_style),
        sampling=SamplingConfig(backend=backend, samples_per_task=samples, temperature=temperature, top_p=top_p,
                                max_new_tokens=max_new_tokens, batch_size=batch_size),
    ).check()
    with tempfile.TemporaryDirectory(prefix="iterdeploy-eval-") as tmp:
        records = deploy_generation(cfg, lambda: make_backend(cfg, model, None), task_set.domain_pddl,
                                    {"pool": list(task_set.tasks)}, Path(tmp), seed=seed, generation=0,
                                    model_id=str(model), run_name="evaluate", method="evaluate", progress=progress)
    if traces_out:
        write_traces(Path(traces_out), records)
    solved = {r.task_id for r in records if r.valid}
    n = len(task_set.tasks)
    problems = {t.id: t.problem for t in task_set.tasks}
    return {
        "solved": len(solved), "tasks": n, "rate": len(solved) / n if n else 0.0,
        "valid_fraction": sum(r.valid for r in records) / max(1, len(records)),
        "legal_action_fraction": legal_action_fraction(task_set.domain_pddl, records, problems),
        "solved_task_ids": sorted(solved),
    }
