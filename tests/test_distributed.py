"""The loop under several processes: a real two-process CPU run (`accelerate launch`, gloo) of the tiny
model, checked against a single-process run of the same config; and the sharding and batch-splitting rules."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import tiny_run_config

from iterdeploy_trl import dist
from iterdeploy_trl.config import ConfigError, config_from_dict
from iterdeploy_trl.errors import RunError
from iterdeploy_trl.loop import run_loop
from iterdeploy_trl.runchecks import check_launch
from iterdeploy_trl.runio import read_json, read_jsonl
from iterdeploy_trl.training import process_batch

# Uncurated SFT trains on every untruncated trace, so generation 1 is really trained whatever the tiny model
# solves; 4 pool chunks + 1 held-out chunk: the two processes get unequal shares (3 and 2).
OVER = dict(generations=1, method="uncurated-sft", curation="none", tasks={"n": 8, "heldout": 2},
            sampling={"samples_per_task": 2}, chunk_size=2, validation_workers=1)


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_shard_gives_each_chunk_to_exactly_one_process(world):
    items = [f"chunk-{j}" for j in range(11)]
    shares = [dist.shard(items, rank=r, world=world) for r in range(world)]
    assert sorted(x for share in shares for x in share) == sorted(items)  # none lost, none twice
    for r, share in enumerate(shares):
        assert share == [x for j, x in enumerate(items) if j % world == r]  # chunk j on process j mod N, in order
    with pytest.raises(ValueError, match="rank 2"):
        dist.shard(items, rank=2, world=2)


def test_split_batch_keeps_the_global_batch():
    assert dist.split_batch(8, 1, 1) == (8, 1)
    assert dist.split_batch(8, 1, 2) == (4, 1)
    assert dist.split_batch(1, 4, 2) == (1, 2)  # accumulation first: micro-batches unchanged
    assert dist.split_batch(8, 2, 2) == (8, 1)
    assert dist.split_batch(2, 2, 4) == (1, 1)
    for b, a, n in [(8, 1, 2), (1, 4, 2), (2, 2, 4), (6, 2, 4)]:
        pb, pa = dist.split_batch(b, a, n)
        assert pb * pa * n == b * a
    with pytest.raises(ValueError, match="cannot be split evenly over 2"):
        dist.split_batch(1, 1, 2)


def test_what_several_processes_cannot_run_fails_before_any_work(monkeypatch, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(RunError, match="multiple of 3"):
        process_batch(8, 1)
    assert process_batch(6, 1) == (2, 1)
    for over, match in [({}, "multiple of 3"), ({"method": "reinforce"}, "multiple of 3"),
                        ({"sampling": {"backend": "vllm"}, "training": {"batch_size": 3}}, "vllm")]:
        data = tiny_run_config(tmp_path, **over)
        if data.get("method") == "reinforce":
            del data["training"]["epochs"]  # an SFT setting, refused (before any work too) for REINFORCE
        cfg = config_from_dict(data)
        with pytest.raises(RunError, match=match):
            check_launch(cfg)
        # run_loop may refuse vLLM earlier still, where it cannot be imported (ConfigError): either way,
        # before any work.
        with pytest.raises((RunError, ConfigError), match=match):
            run_loop(cfg, tmp_path / "run", progress=False)
        assert not (tmp_path / "run").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _traces(run: Path, generation: int) -> list[dict]:
    return [r for p in sorted((run / "seed_0" / f"gen_{generation:02d}" / "traces").glob("*.jsonl"))
            for r in read_jsonl(p)]


def _launch(cfg_path: Path, out: Path, env_extra: dict) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", **env_extra)
    # `--cpu --num_processes 2` would start one process (accelerate runs several CPU processes only through
    # MPI); `--multi_gpu` starts them through torchrun, and on a machine without CUDA they use gloo.
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()),
           "-m", "iterdeploy_trl.cli", "run", "--config", str(cfg_path), "--out", str(out), "--no-progress"]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.slow
def test_two_processes_match_one_and_resume(tiny_base_model, tmp_path):
    data = tiny_run_config(tiny_base_model, **OVER)
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(data))
    out = tmp_path / "two"
    chunk_log = tmp_path / "chunks.log"
    t0 = time.time()
    # A crash: each process is SIGKILLed at its second chunk of generation 0; then the run resumes.
    killed = _launch(cfg_path, out, {"ITERDEPLOY_CHUNK_LOG": str(chunk_log), "ITERDEPLOY_KILL_AT": "generation:2"})
    assert killed.returncode != 0 and not (out / "summary.json").exists()
    assert "SIGKILL" in killed.stderr, killed.stderr[-3000:]
    assert 1 <= len(chunk_log.read_text().splitlines()) < 5  # some chunks of generation 0 made it to disk
    t1 = time.time()
    proc = _launch(cfg_path, out, {"ITERDEPLOY_CHUNK_LOG": str(chunk_log)})
    seconds = time.time() - t1
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("done:") == 1  # the main process reports
    assert "2 processes" in proc.stdout

    # Every chunk written exactly once over both launches, by the process its index gives it.
    writes = [line.split() for line in chunk_log.read_text().splitlines()]
    paths = [p for _, p in writes]
    assert len(paths) == len(set(paths)) == 2 * 5
    for gen in (0, 1):
        files = sorted(p.name for p in (out / "seed_0" / f"gen_{gen:02d}" / "traces").glob("*.jsonl"))
        assert files == ["heldout-00000.jsonl"] + [f"pool-{i:05d}.jsonl" for i in range(4)]
    order = ["pool-00000", "pool-00001", "pool-00002", "pool-00003", "heldout-00000"]
    for rank, p in writes:
        assert int(rank) == order.index(Path(p).stem) % 2
    assert {rank for rank, _ in writes} == {"0", "1"}

    # No trace lost or duplicated.
    tasks = [json.loads(line)["id"] for line in (out / "tasks" / "tasks.jsonl").read_text().splitlines()]
    expected = {"pool": {(t, k) for t in tasks[:8] for k in range(2)},
                "heldout": {(t, k) for t in tasks[8:10] for k in range(2)}}
    for gen in (0, 1):
        rows = _traces(out, gen)
        for split, keys in expected.items():
            got = [(r["task_id"], r["sample_index"]) for r in rows if r["split"] == split]
            assert len(got) == len(set(got)) and set(got) == keys
        assert all(r["generation"] == gen for r in rows)

    # One process deploys exactly the same generation-0 traces, and trains the same number of steps (the
    # global batch is kept).
    single = tmp_path / "one"
    run_loop(config_from_dict(data), single, progress=False)
    assert _traces(out, 0) == _traces(single, 0)
    stats = read_json(out / "seed_0" / "gen_01" / "model" / "train_stats.json")
    assert stats["train_steps"] == read_json(single / "seed_0" / "gen_01" / "model" / "train_stats.json")["train_steps"]
    assert stats["train_traces"] == 16 - sum(r["truncated"] for r in _traces(out, 0) if r["split"] == "pool")

    # Files of the main process: one metrics row per generation, a complete summary, the gen-1 model.
    metrics = read_jsonl(out / "seed_0" / "metrics.jsonl")
    assert [m["generation"] for m in metrics] == [0, 1]
    summary = read_json(out / "summary.json")
    assert summary["complete"] is True
    assert [g["generation"] for g in summary["generations"]] == [0, 1]
    assert [m["generation"] for m in summary["per_seed"]["0"]] == [0, 1]
    assert (out / "seed_0" / "gen_00" / "train.jsonl").exists()
    assert (out / "seed_0" / "gen_01" / "model" / "config.json").exists()
    assert not list(out.rglob("*.partial")) and not list(out.rglob(".*.tmp"))

    # A single process resumes the two-process run directory and changes nothing.
    before = [_traces(out, g) for g in (0, 1)]
    again = run_loop(config_from_dict(data), out, progress=False)
    assert again["generations"] == summary["generations"]
    assert [_traces(out, g) for g in (0, 1)] == before
    print(f"two-process launches: killed {t1 - t0:.1f} s, resumed to the end {seconds:.1f} s")


@pytest.mark.slow
def test_a_failure_in_the_main_process_stops_every_process(tiny_base_model, tmp_path):
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny_run_config(tiny_base_model, **OVER)))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    proc = _launch(cfg_path, tmp_path / "junk", {})
    assert proc.returncode != 0
    # The main process says why; the other one does not wait for it at a barrier but says it failed too.
    assert "not a run directory" in proc.stderr
    assert "the main process failed: RunError" in proc.stderr
    assert "exitcode  : 2" in proc.stderr and "SIGKILL" not in proc.stderr
    assert (tmp_path / "junk" / "notes.txt").read_text() == "mine"
