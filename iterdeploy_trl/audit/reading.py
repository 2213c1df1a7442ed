"""The run directory as the audit reads it: thin wrappers over :mod:`iterdeploy_trl.rundir` that turn its
errors into :class:`AuditError`, the run's task set (sizes, reference lengths, problems) and its resolved
config as a ``RunConfig``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iterdeploy_trl import rundir
from iterdeploy_trl.rundir import RunDirError
from iterdeploy_trl.runio import read_json_or_raise

SCHEMA = "iterdeploy-audit/1"
STAGES = ("sampled", "valid", "curated")


class AuditError(ValueError):
    """A path that cannot be audited (the message names it and says what to give instead)."""


# ----------------------------------------------------------------------------------------- reading


@dataclass
class RunDir(rundir.RunDir):
    """A run directory as the audit reads it: :class:`iterdeploy_trl.rundir.RunDir` and its task set."""

    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)  # task id -> size, reference_length, ...
    domain_pddl: str | None = None


def _read_json(path: Path) -> Any:
    return read_json_or_raise(path, AuditError)


def open_run(path: str | Path) -> RunDir:
    """Read a run directory's config, summary and tasks (:func:`iterdeploy_trl.rundir.open_run`);
    :class:`AuditError` if it is not one."""
    path = Path(path)
    try:
        run = rundir.open_run(path)
    except RunDirError as exc:
        hint = ""
        if path.is_dir() and not rundir.is_run(path):
            methods = [p.name for p in rundir.method_runs(path)]
            hint = (f"; it holds run directories ({', '.join(methods)}): audit those" if methods else
                    "; give a directory written by `iterdeploy run --out`")
        raise AuditError(f"{exc}{hint}") from exc
    problems = list(run.problems)
    tasks, domain_pddl = _read_tasks(run, problems)
    return RunDir(run.path, run.resolved, run.summary, problems, tasks, domain_pddl)


def _read_tasks(run: rundir.RunDir, problems: list[str]) -> tuple[dict[str, dict[str, Any]], str | None]:
    from iterdeploy_trl.tasks import TaskSetError, load_task_set
    from iterdeploy_trl.tasks.taskset import INDEX

    cfg = run.config
    for cand in run.task_dirs():
        if not (cand / INDEX).is_file():
            continue
        try:
            ts = load_task_set(cand)
        except (TaskSetError, OSError, ValueError) as exc:
            problems.append(f"{cand}: task set unreadable ({exc})")
            continue
        n = int(cfg.get("tasks", {}).get("n", len(ts.tasks)))
        held = int(cfg.get("tasks", {}).get("heldout", 0))
        if len(ts.tasks) < n + held:
            problems.append(f"{cand}: {len(ts.tasks)} tasks, the config needs tasks.n + tasks.heldout = {n + held}")
        out = {}
        for i, t in enumerate(ts.tasks[: n + held]):
            out[t.id] = {"size": t.params.get("size"), "reference_length": t.reference_length,
                         "problem": t.problem, "split": "pool" if i < n else "heldout"}
        return out, ts.domain_pddl
    problems.append(f"{rundir.tasks_dir(run.path)}: no task set ({INDEX}); task sizes and undone actions are not "
                    "reported")
    return {}, None


def read_traces(run: rundir.RunDir, seed: int, generation: int) -> list[dict[str, Any]] | None:
    """Every trace record of one generation of one seed (:meth:`iterdeploy_trl.rundir.RunDir.traces`), or
    None when the generation has no trace file; :class:`AuditError` naming a file that cannot be read."""
    try:
        return run.traces(seed, generation)
    except RunDirError as exc:
        raise AuditError(str(exc)) from exc


def read_train_rows(run: rundir.RunDir, seed: int, generation: int) -> list[dict[str, Any]] | None:
    """The curated training set written after ``generation`` (:meth:`iterdeploy_trl.rundir.RunDir.train_rows`),
    or None; :class:`AuditError` naming a file that cannot be read."""
    try:
        return run.train_rows(seed, generation)
    except RunDirError as exc:
        raise AuditError(str(exc)) from exc


def load_run_config(data: dict[str, Any]) -> Any:
    """The ``RunConfig`` of a resolved config, also one written before keys moved into a method's own
    section (``config.MOVED_KEYS``: moved there when the run's method reads it, else dropped)."""
    import copy

    from iterdeploy_trl import config as config_module

    data = copy.deepcopy(data)
    from iterdeploy_trl.methods import with_section

    readers = {m.section: m.name for m in with_section()}
    for old, new in getattr(config_module, "MOVED_KEYS", {}).items():
        s_old, k_old = old.split(".")
        s_new, k_new = new.split(".")
        if k_old not in (data.get(s_old) or {}):
            continue
        value = data[s_old].pop(k_old)
        if data.get("method") == readers.get(s_new):
            data[s_new] = {**(data.get(s_new) or {}), k_new: value}
    return config_module.config_from_dict(data, check_paths=False)
