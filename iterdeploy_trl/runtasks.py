"""The task set of a run: generated once from ``tasks.seed`` into ``RUNDIR/tasks`` (or read from ``tasks.dir``),
split into the pool and the held-out tasks, with a record of the task files (size, sha256) checked on resume."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from iterdeploy_trl import dist, rundir
from iterdeploy_trl.config import ConfigError, RunConfig
from iterdeploy_trl.errors import RunError
from iterdeploy_trl.faults import disk_write
from iterdeploy_trl.runio import write_json


def prepare_tasks(cfg: RunConfig, out: Path, *, log: Callable[[str], None] = print) -> tuple[Any, list[Any], list[Any]]:
    """The task set of the run, split into (pool, held-out); a generated one is written once to ``out/tasks``.

    The size and sha256 of each file the run reads are recorded in ``out/task_files.json`` and checked when
    the run resumes (a run directory made before the record gets one then): a generated task set with a file
    missing, unreadable or changed is written again from ``tasks.seed`` (and must then match the record), a
    changed file of ``tasks.dir`` stops the run naming it."""
    from iterdeploy_trl.runio import read_json_or_raise
    from iterdeploy_trl.tasks import TaskSetError, load_task_set
    from iterdeploy_trl.tasks.taskset import file_record

    record_path = rundir.task_files(out)
    again = "delete it and run the same command again (it is written again from the task files as they are now)"
    record = read_json_or_raise(record_path, RunError, invalid_hint=f": {again}") if record_path.exists() else None
    if record is not None and not isinstance(record, dict):
        raise RunError(f"{record_path}: not a record of task files: {again}")
    if cfg.tasks.dir:
        root = Path(cfg.tasks.dir).expanduser()
        task_set = load_task_set(root)
        if task_set.domain != cfg.domain:
            raise ConfigError(f"tasks.dir: {cfg.tasks.dir} holds {task_set.domain} tasks, the config says {cfg.domain}")
        need = cfg.tasks.n + cfg.tasks.heldout
        if len(task_set.tasks) < need:
            raise ConfigError(f"tasks.dir: {cfg.tasks.dir} has {len(task_set.tasks)} tasks; "
                              f"tasks.n + tasks.heldout = {need}")
        problem = _task_files_problem(cfg, task_set, record)
        if problem:
            raise RunError(f"{problem}; this run's traces and models were made on the task set as it was: restore "
                           "it, or start a new run directory (--out) on the task set as it is now")
    else:
        root = rundir.tasks_dir(out)
        task_set = problem = None
        if (root / "tasks.jsonl").exists():
            try:
                task_set = load_task_set(root)
                problem = _task_files_problem(cfg, task_set, record)
            except TaskSetError as exc:
                problem = str(exc)
            if problem:
                log(f"[iterdeploy] {problem}: writing the run's task set again (generated from tasks.seed "
                    f"{cfg.tasks.seed})")
                shutil.rmtree(root)
        if task_set is None or problem:
            task_set = _write_generated_tasks(cfg, root)
            again = _task_files_problem(cfg, task_set, record) if problem else None
            if again:
                raise RunError(f"{again}, after the task set was generated again from tasks.seed {cfg.tasks.seed}: "
                               "the generator no longer makes the tasks this run was made on; start a new run "
                               "directory (--out)")
    tasks = list(task_set.tasks)
    pool, heldout = tasks[: cfg.tasks.n], tasks[cfg.tasks.n : cfg.tasks.n + cfg.tasks.heldout]
    if record is None and dist.is_main():
        write_json(record_path, file_record(root, [t.id for t in pool + heldout]))
    return task_set, pool, heldout


def _write_generated_tasks(cfg: RunConfig, tdir: Path) -> Any:
    """Generate the run's tasks from ``tasks.seed``, write them to ``tdir`` and read them back."""
    from iterdeploy_trl.tasks import generate_tasks, load_task_set, write_task_set

    size = tuple(cfg.tasks.size) if cfg.tasks.size else None
    tasks = generate_tasks(cfg.domain, cfg.tasks.n + cfg.tasks.heldout, cfg.tasks.seed, size=size,
                           distinct=cfg.tasks.distinct)
    disk_write("task-set", tdir)
    write_task_set(tasks, tdir)
    return load_task_set(tdir)


def _task_files_problem(cfg: RunConfig, task_set: Any, record: dict[str, Any] | None) -> str | None:
    """How the run's tasks in ``task_set`` differ from the run directory's ``record`` of them (other tasks, a
    file missing or changed), naming the file; None when they do not, or when there is no record."""
    from iterdeploy_trl.tasks.taskset import INDEX, record_mismatch

    if record is None:
        return None
    ids = [t.id for t in task_set.tasks[: cfg.tasks.n + cfg.tasks.heldout]]
    if record.get("tasks") != ids:
        return f"{task_set.root / INDEX}: lists other tasks than when the run started"
    return record_mismatch(task_set.root, record)


