"""Tasks and task sets, and the IPC directory layout they are stored in.

``DIR/domain.pddl``, ``DIR/problems/<id>.pddl``, ``DIR/plans/<id>.plan`` and ``DIR/tasks.jsonl``
(one row a task: ``id, domain, params, reference_plan_length, seed``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iterdeploy_trl.domains import PLANNING_DOMAINS, shipped_name
from iterdeploy_trl.domains import domain_pddl as shipped_domain_pddl

INDEX = "tasks.jsonl"
ROW_KEYS = ("id", "domain", "params", "reference_plan_length", "seed")


class TaskSetError(ValueError):
    """A task set directory that cannot be read or written (the message names the file). A ``ValueError``, so
    that the commands that report bad input in one line report this too."""


@dataclass(frozen=True)
class Task:
    """One planning problem with a reference plan VAL accepts.

    ``params`` holds the generator parameters (``size`` is the main difficulty knob); it is left out
    of the hash so that tasks stay hashable.
    """

    id: str
    domain: str
    problem: str
    reference_plan: tuple[str, ...]
    params: dict[str, Any] = field(hash=False)
    seed: int

    @property
    def reference_length(self) -> int:
        """Number of actions in the reference plan."""
        return len(self.reference_plan)


@dataclass(frozen=True)
class TaskSet:
    """The tasks of one domain, with the domain's PDDL and the directory they came from (if any)."""

    domain: str
    domain_pddl: str
    tasks: tuple[Task, ...]
    root: Path | None = None

    def by_id(self, task_id: str) -> Task:
        """The task called ``task_id`` (``KeyError`` naming the set if there is none)."""
        for task in self.tasks:
            if task.id == task_id:
                return task
        where = f" in {self.root}" if self.root else ""
        raise KeyError(f"no task {task_id!r}{where} ({len(self.tasks)} {self.domain} tasks)")

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self) -> Iterator[Task]:
        return iter(self.tasks)


def plan_text(plan: Iterable[str]) -> str:
    """A plan as VAL reads it: one action a line."""
    return "".join(f"{a}\n" for a in plan)


def _write_atomic(path: Path, text: str) -> None:
    """Write to a temporary file beside ``path``, then rename it over ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _index_row(task: Task) -> str:
    row = {
        "id": task.id,
        "domain": task.domain,
        "params": task.params,
        "reference_plan_length": task.reference_length,
        "seed": task.seed,
    }
    return json.dumps(row) + "\n"


def _existing_domain(out: Path) -> str | None:
    """The domain of a task set already in ``out`` (``None`` if there is none)."""
    index = out / INDEX
    if index.exists():
        for line in index.read_text().splitlines():
            if line.strip():
                try:
                    return json.loads(line)["domain"]
                except (ValueError, KeyError, TypeError):
                    break
    if (out / "domain.pddl").exists():
        return shipped_name((out / "domain.pddl").read_text()) or "an unknown domain"
    return None


def write_task_set(tasks: Iterable[Task], out: Path | str, domain_pddl: str | None = None) -> Path:
    """Write ``tasks`` (all of one domain) to ``out`` in the IPC layout and return ``out``.

    ``domain_pddl`` is the domain file's text; by default the shipped file of the tasks' domain (required
    for a domain that is not registered). Each file is written to a temporary name and renamed, ``tasks.jsonl`` last. An existing task set
    of the same domain in ``out`` is replaced (its problem and plan files no longer listed are
    removed); one of another domain is refused.
    """
    tasks = list(tasks)
    out = Path(out)
    if not tasks:
        raise ValueError(f"no tasks to write to {out}")
    domains = sorted({t.domain for t in tasks})
    if len(domains) > 1:
        raise ValueError(f"tasks of several domains ({', '.join(domains)}): write one directory per domain")
    domain = domains[0]
    ids = [t.id for t in tasks]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"duplicate task id {dup!r}")
    old = _existing_domain(out) if out.exists() else None
    if old is not None and old != domain:
        raise TaskSetError(
            f"{out} already holds a {old} task set; refusing to mix in {domain} tasks (use another directory)"
        )
    old_ids: set[str] = set()
    if old is not None and (out / INDEX).exists():
        try:
            old_ids = {task.id for task in load_task_set(out).tasks}
        except TaskSetError:
            old_ids = set()
    (out / "problems").mkdir(parents=True, exist_ok=True)
    (out / "plans").mkdir(exist_ok=True)
    if domain_pddl is None:
        if domain not in PLANNING_DOMAINS:
            raise ValueError(f"{domain} is not a registered domain: give its domain_pddl text")
        domain_pddl = shipped_domain_pddl(domain)
    _write_atomic(out / "domain.pddl", domain_pddl)
    for task in tasks:
        _write_atomic(out / "problems" / f"{task.id}.pddl", task.problem)
        _write_atomic(out / "plans" / f"{task.id}.plan", plan_text(task.reference_plan))
    _write_atomic(out / INDEX, "".join(_index_row(t) for t in tasks))
    for stale in old_ids - set(ids):
        (out / "problems" / f"{stale}.pddl").unlink(missing_ok=True)
        (out / "plans" / f"{stale}.plan").unlink(missing_ok=True)
    return out


def _read_text(path: Path) -> str:
    """The text of a task-set file; one that cannot be read or is not text is a ``TaskSetError`` naming it."""
    try:
        return path.read_text()
    except UnicodeDecodeError as exc:
        raise TaskSetError(f"{path}: not a text file ({exc.reason} at byte {exc.start}); "
                           "restore it, or write the task set again") from None
    except OSError as exc:
        raise TaskSetError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def read_plan(path: Path) -> tuple[str, ...]:
    """The actions of a plan file (blank lines and ``;`` comments skipped)."""
    lines = (line.split(";", 1)[0].strip() for line in _read_text(path).splitlines())
    return tuple(line for line in lines if line)


def _parse_row(line: str, index: Path, lineno: int) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except ValueError as exc:
        raise TaskSetError(f"{index}, line {lineno}: not valid JSON ({exc})") from None
    if not isinstance(row, dict):
        raise TaskSetError(f"{index}, line {lineno}: expected a JSON object, got {type(row).__name__}")
    missing = [k for k in ROW_KEYS if k not in row]
    if missing:
        raise TaskSetError(f"{index}, line {lineno}: missing key(s) {', '.join(missing)}")
    if not isinstance(row["params"], dict):
        raise TaskSetError(f"{index}, line {lineno}: params must be a JSON object")
    return row


def load_task_set(path: Path | str) -> TaskSet:
    """Read a task set written by :func:`write_task_set` (``TaskSetError`` naming what is wrong)."""
    root = Path(path)
    if not root.is_dir():
        raise TaskSetError(f"task set directory {root} does not exist (create one with `iterdeploy tasks`)")
    domain_file = root / "domain.pddl"
    if not domain_file.is_file():
        raise TaskSetError(f"{domain_file} is missing: {root} is not a task set directory")
    index = root / INDEX
    if not index.is_file():
        raise TaskSetError(f"{index} is missing: {root} is not a task set directory")
    rows = []
    for lineno, line in enumerate(_read_text(index).splitlines(), start=1):
        if line.strip():
            rows.append(_parse_row(line, index, lineno))
    if not rows:
        raise TaskSetError(f"{index} lists no tasks")
    domains = sorted({r["domain"] for r in rows})
    if len(domains) > 1:
        raise TaskSetError(f"{index} mixes domains ({', '.join(domains)})")
    tasks = []
    for row in rows:
        problem = root / "problems" / f"{row['id']}.pddl"
        plan = root / "plans" / f"{row['id']}.plan"
        if not problem.is_file():
            raise TaskSetError(f"task {row['id']}: problem file {problem} is missing")
        if not plan.is_file():
            raise TaskSetError(
                f"task {row['id']}: plan file {plan} is missing (a task directory without plans cannot be "
                "used: regenerate it with `iterdeploy tasks`)"
            )
        tasks.append(
            Task(
                id=row["id"],
                domain=row["domain"],
                problem=_read_text(problem),
                reference_plan=read_plan(plan),
                params=row["params"],
                seed=int(row["seed"]),
            )
        )
    return TaskSet(domains[0], _read_text(domain_file), tuple(tasks), root)


# --------------------------------------------------------------------------- a record of the files a run uses


def task_files(ids: Iterable[str]) -> list[str]:
    """The files of a task set that tasks ``ids`` are read from, relative to its directory."""
    return ["domain.pddl", *(name for i in ids for name in (f"problems/{i}.pddl", f"plans/{i}.plan"))]


def file_digest(path: Path) -> dict[str, Any]:
    """The size and sha256 of a file."""
    data = path.read_bytes()
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def file_record(root: Path | str, ids: Iterable[str]) -> dict[str, Any]:
    """What tasks ``ids`` of the task set in ``root`` are made of: each file's size and sha256, and the ids
    in order. A run directory keeps it, so that a file changed after the run started is noticed."""
    root = Path(root)
    ids = list(ids)
    return {"tasks": ids, "files": {name: file_digest(root / name) for name in task_files(ids)}}


def record_mismatch(root: Path | str, record: dict[str, Any]) -> str | None:
    """The first file of ``record`` (:func:`file_record`) that is missing or no longer what it was, as
    ``PATH: what changed``; None when every file is unchanged."""
    root = Path(root)
    files = record.get("files") if isinstance(record, dict) else None
    if not isinstance(files, dict):
        return "the record of the task files holds no 'files' mapping"
    for name, want in files.items():
        path = root / name
        if not path.is_file():
            return f"{path}: missing"
        got = file_digest(path)
        if got != want:
            what = (f"{want.get('size')} bytes when the run started, {got['size']} now" if got["size"] != want.get("size")
                    else "same size, other content (sha256 differs)")
            return f"{path}: changed since the run started ({what})"
    return None
