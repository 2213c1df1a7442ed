"""A broken validator stops a run; a run judged by another validator is judged again on resume.

A validator that crashes, hangs or prints garbage (``ITERDEPLOY_VALIDATE`` pointed at a tests-only shell
script) makes ``iterdeploy run`` exit non-zero with one line naming it, and nothing is recorded for its
failures; resuming with the real VAL gives the run that an undamaged run gives. A run directory whose
traces another validator judged (one that gave wrong verdicts; or, before failures stopped runs, recorded
them as verdicts) is judged again on resume, and what was made from the changed verdicts is redone.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import tiny_run_config

from iterdeploy_trl.cli import main as cli_main
from iterdeploy_trl.testing.killrun import differences, snapshot
from iterdeploy_trl.validate import ENV_VAR, validator_info

# Small enough to run in seconds; valid-sft, so that the verdicts decide the training set.
OVER = dict(generations=1, tasks={"n": 6, "heldout": 2, "size": [2, 2], "seed": 1},
            sampling={"samples_per_task": 4}, chunk_size=4, validation_timeout=1)

BROKEN = {
    "crashing": "kill -SEGV $$",
    "hanging": "sleep 60",
    "garbage": "echo '%$#@ this is not VAL'",
}
# A validator that answers, but wrongly: every plan "goal not satisfied" (VAL's own words).
LYING = 'n=$(grep -c . "$4"); echo "Plan size: $n"; echo "Goal not satisfied"; echo "Plan invalid"'


def fake_validator(tmp_path: Path, name: str, body: str) -> str:
    """A tests-only stand-in for VAL's Validate: answers ``-h`` with a version, then does ``body``."""
    script = tmp_path / name
    script.write_text(f'#!/bin/sh\nif [ "$1" = "-h" ]; then echo "Version 0-fake"; exit 0; fi\n{body}\n')
    script.chmod(0o755)
    return str(script)


def run(config: Path, out: Path) -> int:
    return cli_main(["run", "--config", str(config), "--out", str(out), "--no-progress"])


@pytest.fixture(scope="module")
def undamaged(tiny_base_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("broken-validator")
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump(tiny_run_config(tiny_base_model, **OVER)))
    out = root / "undamaged"
    assert run(config, out) == 0
    want = snapshot(out)
    assert any(r["valid"] for r in want["traces"] if r["generation"] == 0), "the tiny model solves nothing"
    return config, out, want


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_a_broken_validator_stops_the_run_and_the_real_one_resumes_it(undamaged, tmp_path, monkeypatch,
                                                                         capsys, kind):
    config, _, want = undamaged
    script = fake_validator(tmp_path, f"{kind}-validate", BROKEN[kind])
    out = tmp_path / "run"
    monkeypatch.setenv(ENV_VAR, script)
    capsys.readouterr()
    assert run(config, out) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("iterdeploy run:")]
    assert len(lines) == 1 and f"{ENV_VAR}={script}" in lines[0] and "none was recorded" in lines[0], err
    assert "Traceback" not in err
    assert not list(out.glob("seed_*/gen_*/traces/*.jsonl"))  # no failure became a verdict on disk
    assert not (out / "summary.json").exists()
    monkeypatch.delenv(ENV_VAR)
    assert run(config, out) == 0
    assert differences(snapshot(out), want) == []


def test_traces_judged_by_another_validator_are_judged_again(undamaged, tmp_path, monkeypatch, capsys):
    """A run made to the end with a validator that said "goal not satisfied" to every plan: resumed with the
    real VAL, generation 0 is judged again, its training set, generation 1 and the summary redone."""
    config, _, want = undamaged
    out = tmp_path / "run"
    monkeypatch.setenv(ENV_VAR, fake_validator(tmp_path, "lying-validate", LYING))
    assert run(config, out) == 0
    lied = snapshot(out)
    assert not any(r["valid"] for r in lied["traces"]) and differences(lied, want) != []
    monkeypatch.delenv(ENV_VAR)
    capsys.readouterr()
    assert run(config, out) == 0
    assert "gen 0: 3 trace chunk(s) judged again" in capsys.readouterr().out
    assert differences(snapshot(out), want) == []
    real = validator_info().sha256
    assert {r["validator"]["sha256"] for r in snapshot(out)["traces"]} == {real}


def test_failures_recorded_as_verdicts_by_an_older_run_are_judged_again(undamaged, tmp_path, capsys):
    """Before failures stopped a run they were recorded as invalid verdicts ("validator crashed ...") by the
    real VAL itself (same sha256): those records are judged again, and the metrics made from them redone."""
    config, good, want = undamaged
    out = tmp_path / "run"
    shutil.copytree(good, out)
    chunk = out / "seed_0" / "gen_01" / "traces" / "pool-00000.jsonl"
    rows = [json.loads(line) for line in chunk.read_text().splitlines()]
    for row in rows[:3]:
        row.update(valid=False, reason="validator crashed (exit code 139)", plan_length=0)
    chunk.write_text("".join(json.dumps(r) + "\n" for r in rows))
    metrics = out / "seed_0" / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    rows[1]["solved"] = -1  # what the poisoned chunk made: must be made again
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert differences(snapshot(out), want) != []
    capsys.readouterr()
    assert run(config, out) == 0
    assert "gen 1: 1 trace chunk(s) judged again" in capsys.readouterr().out
    assert differences(snapshot(out), want) == []
