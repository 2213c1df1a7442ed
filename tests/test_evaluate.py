"""`iterdeploy evaluate` on a real tiny model and a generated task set."""

from __future__ import annotations

import json
import subprocess
import sys

from iterdeploy_trl.tasks import generate_tasks, write_task_set


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "iterdeploy_trl.cli", "evaluate", *args], capture_output=True,
                          text=True, timeout=300)


def test_evaluate_json(tiny_base_model, tmp_path):
    tdir = write_task_set(generate_tasks("blocksworld", 12, 5, size=(2, 3)), tmp_path / "tasks")
    proc = run("--model", str(tiny_base_model), "--tasks", str(tdir), "--samples", "4", "--json",
               "--traces", str(tmp_path / "traces.jsonl"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(out) == {"solved", "tasks", "rate", "legal_action_fraction"}
    assert out["tasks"] == 12 and 0 <= out["solved"] <= 12 and out["rate"] == out["solved"] / 12
    assert 0.0 < out["legal_action_fraction"] <= 1.0  # the base model writes mostly legal actions
    rows = [json.loads(line) for line in (tmp_path / "traces.jsonl").read_text().splitlines()]
    assert len(rows) == 48
    assert out["solved"] == len({r["task_id"] for r in rows if r["valid"]})


def test_evaluate_bad_paths(tmp_path):
    proc = run("--model", str(tmp_path / "nope"), "--tasks", str(tmp_path))
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_legal_action_fraction_counts_every_action():
    """Legal prefix over all actions: actions after the first illegal one count as not legal."""
    from iterdeploy_trl.domains import domain_pddl
    from iterdeploy_trl.evaluate import legal_action_fraction
    from iterdeploy_trl.sim import Simulator

    task = generate_tasks("blocksworld", 1, 3, size=(3, 3))[0]
    dom = domain_pddl("blocksworld")
    sim = Simulator(dom, task.problem)
    first = sim.applicable(sim.init_state)[0]
    assert not sim.is_applicable(sim.apply(sim.init_state, first), first)  # the same action twice is illegal
    from types import SimpleNamespace as Rec  # the two trace-record fields it reads

    records = [
        Rec(task_id=task.id, plan=f"{first}\n{first}\n{first}\n"),  # 1 of 3 legal: the 3rd is not either
        Rec(task_id=task.id, plan=""),  # nothing extracted: no actions
        Rec(task_id=task.id, plan=first),  # 1 of 1
    ]
    assert legal_action_fraction(dom, records, {task.id: task.problem}) == 2 / 4
