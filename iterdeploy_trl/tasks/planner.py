"""Reference plans from a real planner: Fast Downward, as shipped by the ``up-fast-downward`` wheel.

The wheel's package ``up_fast_downward`` needs ``unified_planning`` to be imported, which we do not use:
its driver script ``downward/fast-downward.py`` is found through the import system without importing
the package, and run as a subprocess (``lama-first``, a satisficing configuration, by default). A plan it
returns is a candidate only: the importer has VAL check it before it becomes a reference plan.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ALIAS = "lama-first"
# Fast Downward's exit codes (driver/returncodes.py): what they mean for a task.
_EXIT = {
    0: "solved",
    10: "no plan (the task is unsolvable)",
    11: "no plan (the search space was exhausted: unsolvable)",
    12: "no plan (the incomplete search gave up)",
    22: "out of memory",
    23: "time limit reached",
    24: "time limit reached",
}


class PlannerNotFound(RuntimeError):
    """Fast Downward is not installed; the message says how to get it."""


@dataclass(frozen=True)
class PlannerResult:
    """What Fast Downward did on one task: ``plan`` (None when it found none), ``status`` in words, and
    its wall time."""

    plan: tuple[str, ...] | None
    status: str
    seconds: float
    alias: str = DEFAULT_ALIAS


def fast_downward_script() -> Path:
    """Path of ``fast-downward.py`` from the up-fast-downward wheel."""
    spec = importlib.util.find_spec("up_fast_downward")
    for base in (spec.submodule_search_locations or []) if spec else []:
        script = Path(base) / "downward" / "fast-downward.py"
        if script.is_file():
            return script
    raise PlannerNotFound(
        "Fast Downward was not found: `pip install up-fast-downward` (it ships a prebuilt Fast Downward), "
        "or give every task a reference plan in plans/<id>.plan"
    )


def _read_plan(path: Path) -> tuple[str, ...]:
    lines = (line.split(";", 1)[0].strip() for line in path.read_text().splitlines())
    return tuple(line.lower() for line in lines if line)


def run_fast_downward(
    domain_pddl: str, problem_pddl: str, *, alias: str = DEFAULT_ALIAS, time_limit: float = 60.0
) -> PlannerResult:
    """Run Fast Downward (``--alias alias``) on one task with an overall ``time_limit`` in seconds."""
    script = fast_downward_script()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="iterdeploy-fd-") as tmp:
        work = Path(tmp)
        (work / "domain.pddl").write_text(domain_pddl)
        (work / "problem.pddl").write_text(problem_pddl)
        cmd = [sys.executable, str(script), "--alias", alias, "--overall-time-limit", f"{max(1, int(time_limit))}s",
               "--plan-file", "plan", "domain.pddl", "problem.pddl"]
        try:
            proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=time_limit + 30,
                                  stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONHASHSEED": "0"})
        except subprocess.TimeoutExpired:
            return PlannerResult(None, "time limit reached", time.perf_counter() - start, alias)
        seconds = time.perf_counter() - start
        plan_file = work / "plan"
        if proc.returncode == 0 and plan_file.is_file():
            return PlannerResult(_read_plan(plan_file), "solved", seconds, alias)
        status = _EXIT.get(proc.returncode, f"failed (exit code {proc.returncode})")
        if proc.returncode not in _EXIT:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
            status += f": {tail[0][:200]}"
        return PlannerResult(None, status, seconds, alias)
