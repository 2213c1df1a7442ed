"""Kill-anywhere and full-disk harness: crash a small run at many moments, resume it, and check that the
resumed run directory equals an uninterrupted one.

Each attempt is an ``iterdeploy run`` (the real command, :func:`iterdeploy_trl.cli.main`) in a child
process forked from this one, so that the libraries are imported once (a fresh interpreter would spend most
of a small run importing torch and transformers). A kill is ``SIGKILL``, as from the OOM killer or a lost
machine: no handler runs. What is compared (:func:`snapshot`): every trace record (none lost or doubled), the
curated training sets, the metrics rows (raw lines: no row twice), the summary, and the weights of every
model (sha256), leaving out only wall-clock times; and nothing half-written may be left behind.

Full form (its numbers: docs/results/kill-resume.md)::

    python -m iterdeploy_trl.testing.killrun --kills 30 --chain 10 --seed 0 --work runs/killrun --no-disk-full

It makes a tiny base model (``--model DIR`` to reuse one), runs the uninterrupted reference twice (the two
must be identical), then kills: without ``--chain``, one run per kill, at ``--kills`` times drawn uniformly
over the reference's wall time from ``--seed``; with ``--chain K``, K kills in a row on one directory, each
process killed a seeded delay after a seeded one of its first writes (so the kills advance through the run
on a slow machine too). The seeds fix the kill moments' specification; what a moment hits depends on the
machine's speed, so each kill's stage is reported. Then it kills halfway through the first write of each
write site (exactly reproducible), and (without ``--no-disk-full``) injects ``ENOSPC`` at the first and the
last write of every site; every attempt is resumed and compared.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from iterdeploy_trl import rundir
from iterdeploy_trl.faults import DISK_FULL_ENV, KILL_ENV, WRITE_LOG_ENV, write_sites

KILLED = -signal.SIGKILL
TINY_MODEL_DIR = "model"  # the harness's own tiny model (WORK/model), not a run directory's


def tiny_config(model: Path, generations: int = 2) -> dict[str, Any]:
    """A run that trains every generation (uncurated SFT) in a few CPU seconds."""
    return {"name": "killrun", "domain": "blocksworld", "generations": generations, "seeds": [0],
            "method": "uncurated-sft", "curation": "none", "tasks": {"n": 8, "heldout": 2, "size": [2, 3], "seed": 0},
            "model": {"path": str(model)}, "sampling": {"samples_per_task": 2, "max_new_tokens": 40, "batch_size": 32},
            "training": {"epochs": 1, "batch_size": 8, "learning_rate": 1e-3, "max_length": 256},
            "chunk_size": 4, "validation_workers": 2}


def preload() -> None:
    """Import what a run imports, once, before forking the attempts (each would import it again)."""
    import datasets  # noqa: F401
    import peft  # noqa: F401
    import transformers  # noqa: F401
    import trl  # noqa: F401

    import iterdeploy_trl.commands.run  # noqa: F401
    import iterdeploy_trl.loop  # noqa: F401
    import iterdeploy_trl.models  # noqa: F401
    import iterdeploy_trl.trainers  # noqa: F401
    import iterdeploy_trl.validate  # noqa: F401


def make_tiny_model(out: Path) -> Path:
    """The tests' tiny blocksworld base model (500 pretraining steps; about 30 s of one core)."""
    from iterdeploy_trl.models import pretrain_base_model

    if not (out / "config.json").exists():
        pretrain_base_model("blocksworld", out, steps=500, seed=0, size="tiny", num_walks=2000, batch_size=32,
                            task_size=(2, 4), max_walk=8, progress=False, log_every=1000, threads=1)
    return out


@dataclass
class Child:
    """A finished child process: its exit status (negative: killed by that signal), wall time, output."""

    status: int
    seconds: float
    log: Path

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def start_child(fn: Callable[[], int], log: Path, *, env: dict[str, str] | None = None) -> int:
    """Fork a child that runs ``fn`` with stdout/stderr to ``log`` and exits with its result; its PID."""
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        # the parent's sys.stdout/stderr may not be fds 1 and 2 (pytest swaps them for its capture files)
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        os.environ.update(env or {})
        code = int(fn() or 0)
    except BaseException:  # noqa: B036 - the child must exit here whatever happened
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _lines(path: Path | None) -> int:
    try:
        return len(path.read_text().splitlines()) if path is not None else 0
    except OSError:
        return 0


def wait_child(pid: int, *, kill_after: float | None = None, timeout: float = 900.0,
               write_log: Path | None = None, after_writes: int = 0) -> int:
    """Wait for a child of :func:`start_child` and return its exit status (negative: the signal that ended
    it). SIGKILL it ``kill_after`` s after it started, or, with ``after_writes``, ``kill_after`` s after its
    ``after_writes``-th write (lines of its ``ITERDEPLOY_WRITE_LOG`` file ``write_log``)."""
    t0 = time.monotonic()
    armed = None if after_writes else t0
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        now = time.monotonic()
        if armed is None and _lines(write_log) >= after_writes:
            armed = now
        elapsed = now - t0
        if (kill_after is not None and armed is not None and now - armed >= kill_after) or elapsed > timeout:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            break
        time.sleep(0.002)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def fork_call(fn: Callable[[], int], log: Path, *, env: dict[str, str] | None = None,
              kill_after: float | None = None, timeout: float = 900.0) -> Child:
    """Run ``fn`` in a forked child with stdout/stderr to ``log``; SIGKILL it after ``kill_after`` seconds."""
    t0 = time.monotonic()
    status = wait_child(start_child(fn, log, env=env), kill_after=kill_after, timeout=timeout)
    return Child(status, time.monotonic() - t0, log)


def cli_run(config: Path, out: Path, *extra: str) -> Callable[[], int]:
    def call() -> int:
        from iterdeploy_trl.cli import main

        return main(["run", "--config", str(config), "--out", str(out), "--no-progress", *extra])

    return call


# --------------------------------------------------------------------------- comparing run directories

_TIMES = ("deploy_seconds", "train_seconds", "wall_seconds", "wall_seconds_this_invocation")


def _untimed(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _untimed(v) for k, v in obj.items()
                if not (k in _TIMES or any(k.startswith(t + "_") for t in _TIMES))}
    if isinstance(obj, list):
        return [_untimed(v) for v in obj]
    return obj


def snapshot(run: Path) -> dict[str, Any]:
    """What must not depend on whether (and where) a run was interrupted. Timing fields are left out."""
    traces = []
    for p in rundir.every_chunk_file(run):
        traces += [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    keys = [(r["seed"], r["generation"], r["split"], r["task_id"], r["sample_index"]) for r in traces]
    metrics = {}
    for p in rundir.every_metrics_file(run):
        lines = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
        metrics[str(p.relative_to(run))] = _untimed(lines)
    models = {}
    for p in rundir.every_model_file(run):
        if p.suffix in (".safetensors", ".json") and p.name != rundir.TRAIN_STATS:
            models[str(p.relative_to(run))] = hashlib.sha256(p.read_bytes()).hexdigest()
        elif p.name == rundir.TRAIN_STATS:
            models[str(p.relative_to(run))] = _untimed(json.loads(p.read_text()))
    summary = rundir.summary(run)
    return {
        "traces": sorted(traces, key=lambda r: (r["seed"], r["generation"], r["split"], r["task_id"],
                                                r["sample_index"])),
        "duplicate_traces": len(keys) - len(set(keys)),
        "train_sets": {str(p.relative_to(run)): p.read_text()
                       for p in map(rundir.train_set, rundir.every_gen_dir(run)) if p.exists()},
        "metrics": metrics,
        "summary": _untimed(json.loads(summary.read_text())) if summary.exists() else None,
        "models": models,
        "left_over": sorted(str(p.relative_to(run)) for p in run.rglob("*")
                            if p.name.endswith(".tmp") or p.name.endswith(".partial")),
    }


def differences(got: dict[str, Any], want: dict[str, Any]) -> list[str]:
    """Named differences between two snapshots (empty: identical)."""
    out = []
    for key in want:
        if got[key] != want[key]:
            if key == "traces":
                out.append(f"traces: {len(got[key])} records, expected {len(want[key])}")
            else:
                out.append(f"{key}: {str(got[key])[:200]} != {str(want[key])[:200]}")
    if got["duplicate_traces"]:
        out.append(f"{got['duplicate_traces']} duplicated trace records")
    return out


def stage(run: Path) -> str:
    """Where a killed run had got to, from what it left on disk."""
    gens = rundir.every_gen_dir(run)
    chunks = len(rundir.every_chunk_file(run))
    models = sum((rundir.model(g) / "config.json").exists() for g in gens)
    rows = sum(len(p.read_text().splitlines()) for p in rundir.every_metrics_file(run))
    partial = any(rundir.partial(rundir.model(g)).exists() for g in gens)
    return (f"{chunks} chunks, {models} models{' (+1 partial)' if partial else ''}, {rows} metrics rows"
            f"{', summary' if rundir.summary(run).exists() else ''}")


# --------------------------------------------------------------------------- the harness


@dataclass
class Attempt:
    kind: str  # "time", "write-kill" or "disk-full"
    what: str  # the kill time or the fault spec
    status: int  # exit status of the interrupted run
    stage: str  # what it had written when it stopped
    resumed_status: int
    differences: list[str]
    message: str = ""  # the interrupted run's last line of stderr (disk-full: the user's message)

    @property
    def ok(self) -> bool:
        return self.resumed_status == 0 and not self.differences


@dataclass
class Report:
    reference_seconds: float
    write_sites: dict[str, int]
    attempts: list[Attempt] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"reference run: {self.reference_seconds:.1f} s; write sites reached: "
                 + ", ".join(f"{s} x{n}" for s, n in self.write_sites.items())]
        for kind in ("time", "write-kill", "disk-full"):
            group = [a for a in self.attempts if a.kind == kind]
            if not group:
                continue
            stopped = [a for a in group if a.status != 0]
            lines.append(f"{kind}: {len(group)} attempts, {len(stopped)} stopped the run before its end, "
                         f"{sum(a.ok for a in group)} resumed to a directory identical to the reference; "
                         "stages: " + "; ".join(sorted({a.stage for a in stopped})))
        for a in self.attempts:
            if not a.ok:
                lines.append(f"  FAILED {a.kind} {a.what} (stage: {a.stage}): resumed exit {a.resumed_status}, "
                             + "; ".join(a.differences))
        return "\n".join(lines)

    @property
    def ok(self) -> bool:
        return all(a.ok for a in self.attempts)


def kill_times(n: int, seed: int, span: float) -> list[float]:
    """``n`` distinct kill times (ms resolution) uniform over (0, span), reproducible from ``seed``."""
    rng = random.Random(seed)
    times: set[float] = set()
    while len(times) < n:
        times.add(round(rng.uniform(0.01, 0.99) * span, 3))
    return sorted(times)


class Harness:
    """Runs attempts of one config in ``work`` and compares them with the reference run there."""

    def __init__(self, work: Path, model: Path, config: dict[str, Any] | None = None) -> None:
        self.work = Path(work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.config = rundir.config_yaml(self.work)
        self.config.write_text(yaml.safe_dump(config or tiny_config(model)))
        self.n = 0

    def reference(self) -> tuple[dict[str, Any], float, dict[str, int]]:
        out = self.work / "reference"
        shutil.rmtree(out, ignore_errors=True)
        log = self.work / "reference.writes"
        log.unlink(missing_ok=True)
        child = fork_call(cli_run(self.config, out), self.work / "reference.log", env={WRITE_LOG_ENV: str(log)})
        if child.status != 0:
            raise RuntimeError(f"the reference run failed ({child.status}):\n{child.output[-3000:]}")
        self.ref = snapshot(out)
        self.sites = write_sites(log)
        # A second, warm run: its wall time is the span of the kill times (the first also paid for loading
        # files into the page cache), and it must equal the first (the run is deterministic: an identity check
        # that the comparisons below rest on).
        again = self.work / "reference-2"
        shutil.rmtree(again, ignore_errors=True)
        child = fork_call(cli_run(self.config, again), self.work / "reference-2.log")
        diffs = differences(snapshot(again), self.ref) if child.status == 0 else [child.output[-3000:]]
        if diffs:
            raise RuntimeError(f"two uninterrupted runs differ, so resumed runs cannot be compared: {diffs}")
        shutil.rmtree(again)
        self.ref_seconds = child.seconds
        return self.ref, child.seconds, self.sites

    def attempt(self, kind: str, what: str, *, env: dict[str, str] | None = None,
                kill_after: float | None = None) -> Attempt:
        self.n += 1
        out = self.work / f"attempt-{self.n:03d}"
        shutil.rmtree(out, ignore_errors=True)
        first = fork_call(cli_run(self.config, out), self.work / f"attempt-{self.n:03d}.log", env=env,
                          kill_after=kill_after)
        where = stage(out) if out.exists() else "nothing written"
        resumed = fork_call(cli_run(self.config, out), self.work / f"attempt-{self.n:03d}.resume.log")
        diffs = differences(snapshot(out), self.ref) if resumed.status == 0 else [resumed.output[-1500:]]
        lines = [line for line in first.output.splitlines() if line.strip()]
        a = Attempt(kind, what, first.status, where, resumed.status, diffs, lines[-1] if lines else "")
        if a.ok:
            shutil.rmtree(out, ignore_errors=True)
        return a


    def chain(self, kind: str, kills: list[tuple[str, dict[str, str] | None, float | None, int]],
              log: Callable[[str], None] = print) -> list[Attempt]:
        """Kill one run again and again: each ``(what, env, delay, writes)`` is one process on the same
        directory (the previous one's resume), killed by its fault spec, or ``delay`` s after its ``writes``-th
        write; then a last resume, and the directory is compared. One attempt per kill, each with the
        comparison's result."""
        self.n += 1
        out = self.work / f"chain-{self.n:03d}"
        shutil.rmtree(out, ignore_errors=True)
        steps = []
        for i, (what, env, delay, writes) in enumerate(kills):
            wlog = self.work / f"chain-{self.n:03d}-{i:02d}.writes"
            wlog.unlink(missing_ok=True)
            pid = start_child(cli_run(self.config, out), self.work / f"chain-{self.n:03d}-{i:02d}.log",
                              env={**(env or {}), WRITE_LOG_ENV: str(wlog)})
            child = Child(wait_child(pid, kill_after=delay, write_log=wlog, after_writes=writes), 0.0,
                          self.work / f"chain-{self.n:03d}-{i:02d}.log")
            steps.append((what, child.status, stage(out) if out.exists() else "nothing written"))
            log(f"  {kind} {what}: exit {child.status}, {steps[-1][2]}")
        resumed = fork_call(cli_run(self.config, out), self.work / f"chain-{self.n:03d}.resume.log")
        diffs = differences(snapshot(out), self.ref) if resumed.status == 0 else [resumed.output[-1500:]]
        attempts = [Attempt(kind, what, status, where, resumed.status, diffs) for what, status, where in steps]
        if not diffs and resumed.status == 0:
            shutil.rmtree(out, ignore_errors=True)
        return attempts


def run_harness(work: Path, model: Path, *, kills: int, seed: int, chain: int = 1, write_kills: bool = True,
                disk_full: bool = True, generations: int = 2, log: Callable[[str], None] = print) -> Report:
    """The harness (see the module docstring). ``chain`` > 1: each run is killed ``chain`` times in a row
    (every resume killed again, at a time drawn over 1/chain of the run) before the comparison, so that
    many kills cost few runs; the mid-write kills then form one chain in the order the sites are reached."""
    preload()
    h = Harness(work, model, tiny_config(model, generations))
    _, seconds, sites = h.reference()
    report = Report(seconds, sites)
    log(f"reference: {seconds:.1f} s, write sites {sites}")
    if chain <= 1:
        for t in kill_times(kills, seed, seconds):
            a = h.attempt("time", f"{t:.3f}s", kill_after=t)
            report.attempts.append(a)
            log(f"kill at {t:7.3f} s: exit {a.status}, {a.stage} -> {'identical' if a.ok else a.differences}")
    else:
        # Each process of a chain is killed a random delay after a random one of its first writes (the
        # lock's, then whatever it writes next), so that the kills advance through the whole run however
        # slow the machine is; the delays are drawn up to the reference's mean time between two writes.
        rng = random.Random(seed)
        gap = seconds / max(1, sum(sites.values()))
        plan = [(rng.randint(1, 3), round(rng.uniform(0.0, gap), 3)) for _ in range(kills)]
        for start in range(0, kills, chain):
            group = plan[start : start + chain]
            attempts = h.chain("time", [(f"write #{w} + {d:.3f}s", None, d, w) for w, d in group], log=log)
            report.attempts.extend(attempts)
            log(f"chain of {len(group)} kills -> {'identical' if attempts[0].ok else attempts[0].differences}")
    if write_kills:
        specs = [(f"write:{site}", {KILL_ENV: f"write:{site}:1"}) for site in sites]
        if chain <= 1:
            for what, env in specs:
                a = h.attempt("write-kill", what, env=env)
                report.attempts.append(a)
                log(f"kill mid-write at {what}: exit {a.status}, {a.stage} -> "
                    f"{'identical' if a.ok else a.differences}")
        else:
            attempts = h.chain("write-kill", [(what, env, None, 0) for what, env in specs], log=log)
            report.attempts.extend(attempts)
            log(f"chain of {len(specs)} mid-write kills -> {'identical' if attempts[0].ok else attempts[0].differences}")
    if disk_full:
        for site, count in sites.items():
            for n in sorted({1, count}):
                a = h.attempt("disk-full", f"{site}:{n}", env={DISK_FULL_ENV: f"{site}:{n}"})
                report.attempts.append(a)
                log(f"ENOSPC at {site} #{n}: exit {a.status} ({a.message[:100]}) -> "
                    f"{'identical' if a.ok else a.differences}")
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m iterdeploy_trl.testing.killrun", description=__doc__.split("\n")[0])
    p.add_argument("--kills", type=int, default=30, help="SIGKILLs at random times (default 30)")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    p.add_argument("--work", type=Path, required=True, help="working directory (runs are made here)")
    p.add_argument("--model", type=Path, default=None, help="a tiny base model (default: made in WORK/model)")
    p.add_argument("--chain", type=int, default=1,
                   help="kill each run this many times in a row before comparing it (default 1: a run per kill)")
    p.add_argument("--generations", type=int, default=2, help="generations of the tiny run (default 2)")
    p.add_argument("--no-write-kills", action="store_true")
    p.add_argument("--no-disk-full", action="store_true")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    model = args.model or make_tiny_model(args.work / TINY_MODEL_DIR)
    t0 = time.time()
    report = run_harness(args.work, model, kills=args.kills, seed=args.seed, chain=args.chain,
                         write_kills=not args.no_write_kills, disk_full=not args.no_disk_full,
                         generations=args.generations)
    print(report.summary())
    print(f"total {time.time() - t0:.0f} s")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
