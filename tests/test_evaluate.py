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
