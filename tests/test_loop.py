"""The iterative-deployment loop end to end on CPU with the tiny model, resume after real kills
(SIGKILL during generation, validation and training), and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_run_config

from iterdeploy_trl.config import ConfigError, config_from_dict
from iterdeploy_trl.errors import RunError
from iterdeploy_trl.loop import run_loop
from iterdeploy_trl.runio import read_jsonl

LINEAGE = {"run", "method", "generation", "seed", "task_id", "prompt", "completion", "plan", "plan_length", "valid",
           "reason", "reasoning_tokens", "completion_tokens", "truncated", "behaviour_logprob", "model", "sampling",
           "validator", "split", "sample_index"}


def traces(run: Path) -> list[dict]:
    rows = [r for p in sorted(run.glob("seed_*/gen_*/traces/*.jsonl")) for r in read_jsonl(p)]
    return sorted(rows, key=lambda r: (r["seed"], r["generation"], r["split"], r["task_id"], r["sample_index"]))


# Uncurated SFT trains on every untruncated trace, so every generation really trains (a kill during
# training is always reached), whatever the tiny model solves.
RESUME_OVER = dict(generations=1, method="uncurated-sft", curation="none", tasks={"n": 8, "heldout": 2},
                   sampling={"samples_per_task": 2}, chunk_size=4)


def write_config(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def cli(args: list[str], env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "iterdeploy_trl.cli", *args], capture_output=True, text=True,
                          env=env, timeout=600)


def test_loop_end_to_end(tiny_base_model, tmp_path):
    cfg = config_from_dict(tiny_run_config(tiny_base_model))
    summary = run_loop(cfg, tmp_path / "run", progress=False)
    gens = summary["generations"]
    assert [g["generation"] for g in gens] == [0, 1, 2]
    for g in gens:
        for key in ("generation", "solved", "heldout_solved", "train_traces", "max_valid_plan_length", "samples_used"):
            assert key in g
    assert [g["samples_used"] for g in gens] == [0, 16 * 4, 2 * 16 * 4]
    rows = traces(tmp_path / "run")
    assert len(rows) == 3 * (16 + 4) * 4
    assert LINEAGE <= set(rows[0])
    assert all(r["valid"] == (r["reason"] == "valid") for r in rows)
    for r in rows:
        if r["valid"]:
            assert r["plan"].count("\n") + 1 == r["plan_length"]
    assert all(r["behaviour_logprob"] <= 0 for r in rows)
    # The curated set of generation 0 is one shortest valid trace per solved pool task.
    train0 = read_jsonl(tmp_path / "run" / "seed_0" / "gen_00" / "train.jsonl")
    solved0 = {r["task_id"] for r in rows if r["generation"] == 0 and r["valid"] and r["split"] == "pool"}
    assert sorted(t["task_id"] for t in train0) == sorted(solved0)
    # Summary on disk equals the returned one; running again resumes and changes nothing.
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk["generations"] == gens
    # the machine the numbers were made on: CPU instruction set and library versions
    assert on_disk["machine"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert on_disk["machine"]["versions"]["torch"] == torch.__version__
    again = run_loop(cfg, tmp_path / "run", progress=False)
    assert again["generations"] == gens
    assert traces(tmp_path / "run") == rows


def test_each_generation_names_the_machines_its_seconds_were_measured_on(tiny_base_model, tmp_path, monkeypatch):
    import iterdeploy_trl.loop as loop
    import iterdeploy_trl.training as training

    cfg = config_from_dict(tiny_run_config(tiny_base_model, generations=1, **{k: v for k, v in RESUME_OVER.items()
                                                                             if k != "generations"}))
    monkeypatch.setattr(loop, "machine_id", lambda: "machine A")  # where it deploys
    monkeypatch.setattr(training, "machine_id", lambda: "machine A")  # where it trains
    run_loop(cfg, tmp_path / "run", progress=False)
    metrics = tmp_path / "run" / "seed_0" / "metrics.jsonl"
    rows = read_jsonl(metrics)
    assert [(r["deploy_machine"], r["train_machine"]) for r in rows] == [("machine A", None), ("machine A", "machine A")]
    # Generation 1's row lost (as if the run was killed before writing it) and the run resumed elsewhere: its
    # deployment is read back from disk, its row says where each number came from.
    metrics.write_text(json.dumps(rows[0]) + "\n")
    monkeypatch.setattr(loop, "machine_id", lambda: "machine B")
    monkeypatch.setattr(training, "machine_id", lambda: "machine B")
    run_loop(cfg, tmp_path / "run", progress=False)
    assert [(r["deploy_machine"], r["train_machine"]) for r in read_jsonl(metrics)] == \
        [("machine A", None), ("machine B", "machine A")]


@pytest.fixture(scope="module")
def reference_run(tiny_base_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    cfg = write_config(root / "cfg.yaml", tiny_run_config(tiny_base_model, **RESUME_OVER))
    out = root / "reference"
    proc = cli(["run", "--config", str(cfg), "--out", str(out), "--no-progress"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cfg, traces(out)


@pytest.mark.parametrize("point", ["generation:2", "validation:1", "training:1", "generation:5"])
def test_resume_after_kill(reference_run, tmp_path, point):
    cfg, expected = reference_run
    out = tmp_path / "run"
    killed = cli(["run", "--config", str(cfg), "--out", str(out), "--no-progress"], {"ITERDEPLOY_KILL_AT": point})
    assert killed.returncode == -9, (killed.returncode, killed.stderr[-2000:])
    assert not (out / "summary.json").exists()
    resumed = cli(["run", "--config", str(cfg), "--out", str(out), "--no-progress"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    got = traces(out)
    assert len(got) == len(expected)
    assert got == expected  # nothing lost, nothing duplicated, same samples
    assert not list(out.rglob("*.partial")) and not list(out.rglob(".*.tmp"))


def test_bad_config_fails_before_work(tmp_path):
    cfg = write_config(tmp_path / "bad.yaml", {"sampling": {"temprature": 0.7}})
    proc = cli(["run", "--config", str(cfg), "--out", str(tmp_path / "out")])
    assert proc.returncode == 2
    assert "sampling.temprature" in proc.stderr
    assert not (tmp_path / "out").exists()
    cfg = write_config(tmp_path / "bad2.yaml", {"model": {"path": str(tmp_path / "nope")}})
    proc = cli(["run", "--config", str(cfg), "--out", str(tmp_path / "out")])
    assert proc.returncode == 2 and "model.path" in proc.stderr and "does not exist" in proc.stderr


def test_model_dir_that_is_not_a_model(tmp_path):
    (tmp_path / "empty").mkdir()
    cfg = config_from_dict(tiny_run_config(tmp_path / "empty"))
    with pytest.raises(RunError, match="not a model directory"):
        run_loop(cfg, tmp_path / "run", progress=False)


def test_task_dir_without_plans(tiny_base_model, tmp_path):
    from iterdeploy_trl.tasks import TaskSetError, generate_tasks, write_task_set

    tdir = write_task_set(generate_tasks("blocksworld", 4, 0, size=(2, 3)), tmp_path / "tasks")
    for plan in (tdir / "plans").iterdir():
        plan.unlink()
    cfg = config_from_dict(tiny_run_config(tiny_base_model, tasks={"n": 4, "heldout": 0, "dir": str(tdir)}))
    with pytest.raises(TaskSetError, match="plan"):
        run_loop(cfg, tmp_path / "run", progress=False)


def test_run_dir_from_another_config(tiny_base_model, tmp_path):
    cfg = config_from_dict(tiny_run_config(tiny_base_model, generations=0, tasks={"n": 4, "heldout": 0}))
    run_loop(cfg, tmp_path / "run", progress=False)
    other = config_from_dict(tiny_run_config(tiny_base_model, generations=1, tasks={"n": 4, "heldout": 0}))
    with pytest.raises(RunError, match="another config"):
        run_loop(other, tmp_path / "run", progress=False)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    with pytest.raises(RunError, match="not a run directory"):
        run_loop(cfg, tmp_path / "junk", progress=False)
    assert (tmp_path / "junk" / "notes.txt").read_text() == "mine"


def test_domain_mismatch_between_config_and_task_dir(tiny_base_model, tmp_path):
    from iterdeploy_trl.tasks import generate_tasks, write_task_set

    tdir = write_task_set(generate_tasks("sokoban", 2, 0, size=(1, 1)), tmp_path / "tasks")
    with pytest.raises(ConfigError, match="sokoban"):
        run_loop(config_from_dict(tiny_run_config(tiny_base_model, tasks={"n": 2, "heldout": 0, "dir": str(tdir)})),
                 tmp_path / "run", progress=False)


def reinforce_config(model: Path, **over) -> dict:
    """REINFORCE through the loop on the tiny model: 8 pool tasks x 2 samples a segment, 2 steps of 8."""
    data = tiny_run_config(model, **{**RESUME_OVER, "method": "reinforce", "curation": "shortest", **over})
    del data["training"]["epochs"]  # an SFT setting: REINFORCE does not read it (refused if set)
    return data


@pytest.fixture(scope="module")
def reinforce_reference(tiny_base_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("reinforce")
    cfg = write_config(root / "cfg.yaml", reinforce_config(tiny_base_model))
    out = root / "reference"
    proc = cli(["run", "--config", str(cfg), "--out", str(out), "--no-progress"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cfg, out, traces(out)


def test_reinforce_runs_through_the_loop(reinforce_reference):
    _, out, rows = reinforce_reference
    assert {r["method"] for r in rows} == {"reinforce"} and {r["generation"] for r in rows} == {0, 1}
    assert not list(out.rglob("train.jsonl"))  # REINFORCE curates nothing: it samples its own
    stats = json.loads((out / "seed_0" / "gen_01" / "model" / "train_stats.json").read_text())
    assert stats["train_traces"] == 8 * 2 and stats["train_steps"] == 2  # n*K fresh samples, batches of 8
    assert 0 < stats["train_completion_tokens"] <= 16 * 40  # counted from the samples, at most max_new_tokens
    # TRL's vLLM importance-sampling correction (on by default in GRPOConfig) is recorded, and off
    assert stats["importance_sampling"] == {"use_vllm": False, "vllm_importance_sampling_correction": False,
                                            "vllm_importance_sampling_mode": None,
                                            "vllm_importance_sampling_clip_min": None,
                                            "vllm_importance_sampling_clip_max": None}
    metrics = read_jsonl(out / "seed_0" / "metrics.jsonl")
    assert [m["samples_used"] for m in metrics] == [0, 16]
    assert metrics[1]["train_completion_tokens"] == stats["train_completion_tokens"]


@pytest.mark.parametrize("point", ["training:1", "generation:4"])
def test_reinforce_resumes_after_kill(reinforce_reference, tmp_path, point):
    cfg, _, expected = reinforce_reference
    out = tmp_path / "run"
    killed = cli(["run", "--config", str(cfg), "--out", str(out), "--no-progress"], {"ITERDEPLOY_KILL_AT": point})
    assert killed.returncode == -9, (killed.returncode, killed.stderr[-2000:])
    assert not (out / "summary.json").exists()
    resumed = cli(["run", "--config", str(cfg), "--out", str(out), "--no-progress"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert traces(out) == expected  # the retrained segment samples and deploys exactly as the reference
    assert not list(out.rglob("*.partial"))


def test_a_setting_the_method_does_not_read_is_refused_before_work(tiny_base_model, tmp_path):
    data = tiny_run_config(tiny_base_model, reinforce={"baseline": "mean"})
    proc = cli(["run", "--config", str(write_config(tmp_path / "c.yaml", data)), "--out", str(tmp_path / "out")])
    assert proc.returncode == 2 and "reinforce.baseline: set, but only method reinforce reads it" in proc.stderr
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match=r"^training\.epochs: set, but only the SFT methods"):
        run_loop(config_from_dict(tiny_run_config(tiny_base_model, method="reinforce")), tmp_path / "out2",
                 progress=False)
    assert not (tmp_path / "out2").exists()
