"""Any STRIPS domain from a folder: an IPC-layout folder of PDDL files becomes a task set.

``SRC/domain.pddl``, ``SRC/problems/*.pddl`` and, optionally, ``SRC/plans/<problem stem>.plan``. Before any
planning, everything is read by ``pddlio`` and checked: the domain uses only STRIPS with typing and
negative preconditions (action costs allowed), and every problem is for that domain and names only its
predicates, types and objects; the first failure is an error naming the file, the line and the feature.
A task without a plan gets one from Fast Downward (``lama-first`` by default, a time limit per task);
every reference plan, given or computed, must be accepted by VAL. Tasks with no VAL-valid plan are
reported and left out of the task set, never given a made-up plan.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from iterdeploy_trl.domains import get, is_registered
from iterdeploy_trl.pddlio import PDDLReadError, read_domain, read_problem, strips_problems
from iterdeploy_trl.tasks.planner import DEFAULT_ALIAS, run_fast_downward
from iterdeploy_trl.tasks.taskset import Task, TaskSet, TaskSetError, read_plan, write_task_set

REPORT = "import_report.json"


@dataclass
class ImportReport:
    """What the import did: the tasks kept, with where their plan came from, and those left out, why."""

    domain: str
    source: str
    kept: dict[str, str] = field(default_factory=dict)  # task id -> "given" | "fast-downward <alias>"
    left_out: dict[str, str] = field(default_factory=dict)  # task id -> reason
    notes: dict[str, str] = field(default_factory=dict)  # task id -> e.g. why a given plan was replaced

    def to_dict(self) -> dict:
        return {"domain": self.domain, "source": self.source, "kept": self.kept, "left_out": self.left_out,
                "notes": self.notes}


def _name_for(domain_name: str, domain_text: str, name: str | None, label: str) -> str:
    chosen = (name or domain_name).lower()
    if not chosen or any(c.isspace() or c in "/\\" for c in chosen):
        raise TaskSetError(f"{label}: {chosen!r} cannot name a task set's domain; give --name NAME")
    if is_registered(chosen) and read_domain(get(chosen).pddl).symbols() != read_domain(domain_text).symbols():
        raise TaskSetError(
            f"{label} defines a domain called {chosen!r}, like the built-in one, but with other predicates or "
            f"actions (e.g. the IPC-2023 learning track's version); import it under another name with --name"
        )
    return chosen


def read_folder(src: Path | str, *, name: str | None = None) -> tuple[str, str, list[tuple[str, str, Path | None]]]:
    """Check an IPC-layout folder before any work: ``(domain name, domain text, [(task id, problem text,
    plan file or None)])``. Raises :class:`TaskSetError` / :class:`pddlio.PDDLReadError` naming the file."""
    src = Path(src)
    if not src.is_dir():
        raise TaskSetError(f"{src} is not a folder: give a folder holding domain.pddl and problems/*.pddl")
    domain_file = src / "domain.pddl"
    if not domain_file.is_file():
        raise TaskSetError(f"{domain_file} is missing: a folder to import holds domain.pddl and problems/*.pddl")
    domain_text = domain_file.read_text()
    domain = read_domain(domain_text, str(domain_file))
    strips_problems(domain, str(domain_file))
    problems = sorted((src / "problems").glob("*.pddl")) if (src / "problems").is_dir() else []
    if not problems:
        raise TaskSetError(f"{src / 'problems'} holds no *.pddl problem files")
    chosen = _name_for(domain.name, domain_text, name, str(domain_file))
    tasks = []
    for path in problems:
        text = path.read_text()
        problem = read_problem(domain_text, text, str(path))
        if problem.unsupported:
            raise PDDLReadError(str(path), "the goal is not a conjunction of literals: " + "; ".join(problem.unsupported))
        plan = src / "plans" / f"{path.stem}.plan"
        tasks.append((path.stem, text, plan if plan.is_file() else None))
    return chosen, domain_text, tasks


def import_folder(
    src: Path | str,
    out: Path | str,
    *,
    name: str | None = None,
    alias: str = DEFAULT_ALIAS,
    time_limit: float = 60.0,
    workers: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[TaskSet, ImportReport]:
    """Turn the IPC-layout folder ``src`` into a task set in ``out`` (see the module docstring); returns the
    task set and the report (also written to ``out/import_report.json``). ``name`` names the domain
    (default: the domain file's own name). Raises :class:`TaskSetError` if no task has a valid plan."""
    from iterdeploy_trl.validate import validate_batch

    say = progress or (lambda _msg: None)
    domain_name, domain_text, found = read_folder(src, name=name)
    report = ImportReport(domain_name, str(src))
    plans: dict[str, tuple[tuple[str, ...], str]] = {}
    given = [(tid, text, read_plan(plan)) for tid, text, plan in found if plan is not None]
    if given:
        say(f"checking {len(given)} given plans with VAL")
        verdicts = validate_batch([(domain_text, text, list(plan)) for _, text, plan in given], workers=workers)
        for (tid, _, plan), verdict in zip(given, verdicts, strict=True):
            if verdict.valid:
                plans[tid] = (plan, "given")
            else:
                report.notes[tid] = f"given plan rejected by VAL ({verdict.reason}); planned instead"
    texts = {tid: text for tid, text, _ in found}
    todo = [tid for tid, _, _ in found if tid not in plans]
    computed = []
    for k, tid in enumerate(todo, start=1):
        result = run_fast_downward(domain_text, texts[tid], alias=alias, time_limit=time_limit)
        say(f"[{k}/{len(todo)}] {tid}: Fast Downward {alias}: {result.status} ({result.seconds:.1f}s)")
        if result.plan is None:
            report.left_out[tid] = f"Fast Downward {alias}: {result.status} (time limit {time_limit:g}s)"
        else:
            computed.append((tid, result.plan))
    if computed:
        verdicts = validate_batch([(domain_text, texts[tid], list(plan)) for tid, plan in computed], workers=workers)
        for (tid, plan), verdict in zip(computed, verdicts, strict=True):
            if verdict.valid:
                plans[tid] = (plan, f"fast-downward {alias}")
            else:
                report.left_out[tid] = f"Fast Downward's plan rejected by VAL: {verdict.reason}"
    tasks = []
    for tid, text, _ in found:
        if tid not in plans:
            continue
        plan, origin = plans[tid]
        report.kept[tid] = origin
        objects = len(read_problem(domain_text, text, tid).objects)
        tasks.append(Task(id=tid, domain=domain_name, problem=text, reference_plan=plan,
                          params={"size": objects, "objects": objects, "plan_source": origin}, seed=0))
    if not tasks:
        raise TaskSetError(f"no task of {src} has a VAL-valid plan: " + "; ".join(
            f"{tid}: {why}" for tid, why in list(report.left_out.items())[:5]))
    root = write_task_set(tasks, out, domain_pddl=domain_text)
    (root / REPORT).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return TaskSet(domain_name, domain_text, tuple(tasks), root), report
