"""The arms of the head-to-head and their run configs: an arm is a method or ``METHOD@CURATION``; its run config
holds the shared settings and its method's own section only (:func:`method_config`), with one tuning knob set
(:func:`with_setting`, :func:`apply_settings`) from its grid (:func:`arm_grid`). Generation 0 is the same for every
arm of a seed with the same deployment settings (:func:`deployment_key`): it is deployed once and its chunks are
copied into the later arms and tuning runs (:func:`reuse_generation_zero`, :func:`register_generation_zero`).
:func:`run_planned` runs a stage's runs (the tuning points, then the result arms) one after another or in worker
processes (``iterdeploy compare --jobs N``), a run that copies generation 0 starting once the run it copies from has
finished, so that every run directory holds what one-by-one would have written."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from iterdeploy_trl import dist, rundir
from iterdeploy_trl import methods as registry
from iterdeploy_trl.config import SFT_METHODS, RunConfig, TrainingConfig, config_hash, split_arm
from iterdeploy_trl.errors import ConfigError, RunError
from iterdeploy_trl.runio import read_json, read_rows, write_json

LOOP_METHODS = SFT_METHODS  # the methods that train on the deployment's traces (the figures' name for them)


def method_config(cfg: RunConfig, method: str) -> RunConfig:
    """The run config of one method in the comparison: the shared settings of ``cfg`` and the method's
    own section only (so a method's run directory, and its hash, hold nothing another method reads). A
    setting of ``methods.SFT_KEYS`` that the method does not read (``Method.reads``: REINFORCE, which curates
    nothing and trains online, reads none) is set to its default; a method that runs with one curation only
    (``Method.required_curation``) gets it, the others ``shortest`` where ``cfg`` says ``none``. ``method`` may be
    an arm ``METHOD@CURATION`` (``valid-sft@random-valid``): that method with that curation rule."""
    arm = method
    method, arm_curation = split_arm(arm)
    m = registry.get(method)
    changes: dict[str, Any] = dict(method=method, name=f"{cfg.name}/{arm}", tuning=None,
                                   **{o.section: getattr(cfg, o.section) if o is m else None
                                      for o in registry.with_section()})
    run, sft = RunConfig(), TrainingConfig()
    training = {key.split(".")[1]: getattr(sft, key.split(".")[1]) for key in registry.SFT_KEYS
                if key.startswith("training.") and key not in m.reads}
    changes.update({key: getattr(run, key) for key in registry.SFT_KEYS if "." not in key and key not in m.reads})
    if training:
        changes.update(training=dataclasses.replace(cfg.training, **training))
    if m.required_curation is not None:
        changes.update(curation=m.required_curation)
    elif "curation" in m.reads:
        changes.update(curation=arm_curation or ("shortest" if cfg.curation == "none" else cfg.curation))
    return dataclasses.replace(cfg, **changes).check()


def with_learning_rate(cfg: RunConfig, method: str, lr: float) -> RunConfig:
    """``cfg`` with ``method``'s learning rate set to ``lr`` (its section's ``learning_rate`` where it has one,
    e.g. ``reinforce.learning_rate``; else ``training.learning_rate``). ``method`` may be an arm."""
    m = registry.get(split_arm(method)[0])
    if m.own_learning_rate:
        return dataclasses.replace(cfg, **{m.section: dataclasses.replace(m.settings_of(cfg), learning_rate=lr)})
    return dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, learning_rate=lr))


def with_setting(cfg: RunConfig, arm: str, knob: str, value: float) -> RunConfig:
    """``cfg`` with one tuning knob of ``arm`` set: ``learning_rate`` (:func:`with_learning_rate`), a field of
    the arm's method section (``prompts_per_step`` of the RL arms) or of ``training`` (``batch_size`` of the SFT
    arms); a ``ConfigError`` naming ``tuning.grids.<arm>.<knob>`` for any other."""
    if knob == "learning_rate":
        return with_learning_rate(cfg, arm, float(value))
    m = registry.get(split_arm(arm)[0])
    if m.settings is not None and knob in {f.name for f in dataclasses.fields(m.settings)}:
        return dataclasses.replace(cfg, **{m.section: dataclasses.replace(m.settings_of(cfg), **{knob: int(value)})})
    if m.curates and knob in {f.name for f in dataclasses.fields(TrainingConfig)}:
        return dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, **{knob: int(value)}))
    own = f"{m.section}'s fields" if m.section else "training's fields (the SFT arms' batch_size)"
    raise ConfigError(f"tuning.grids.{arm}.{knob}: {split_arm(arm)[0]} has no such setting; a grid holds "
                      f"learning_rate and one of {own}")


def arm_grid(cfg: RunConfig, arm: str) -> dict[str, list[float]]:
    """The tuning grid of ``arm``: ``tuning.grids[arm]``, else its method's list of candidate learning rates
    (``Method.tuning_key``); empty: not tuned (it keeps its configured settings)."""
    tuning = cfg.tuning
    if tuning is None:
        return {}
    if tuning.grids and arm in tuning.grids:
        return {k: list(v) for k, v in tuning.grids[arm].items()}
    rates = getattr(tuning, registry.get(split_arm(arm)[0]).tuning_key)
    return {"learning_rate": list(rates)} if rates else {}


def apply_settings(cfg: RunConfig, arm: str, point: dict[str, float]) -> RunConfig:
    """``cfg`` with every knob of a grid ``point`` set for ``arm``."""
    for knob, value in point.items():
        cfg = with_setting(cfg, arm, knob, value)
    return cfg


# --------------------------------------------------------------------------- generation 0, deployed once


def deployment_key(cfg: RunConfig) -> str:
    """What generation 0's deployment depends on (the base model, the tasks, the sampler, the validator, the
    chunking): arms and tuning points with equal keys deploy the same traces there, seed by seed."""
    data = cfg.to_dict()
    keys = ("domain", "tasks", "model", "sampling", "validator", "chunk_size", "validation_timeout")
    return hashlib.sha256(json.dumps({k: data.get(k) for k in keys}, sort_keys=True).encode()).hexdigest()[:16]


def reuse_generation_zero(cfg: RunConfig, run_out: Path, sources: dict[tuple[str, int], Path],
                          log=print) -> dict[str, Any]:
    """Copy generation 0's trace chunks of an earlier arm (``sources``: (deployment key, seed) -> its gen_00
    directory) into ``run_out`` where this run has none yet, each record's run name and method set to this
    run's (what its own deployment would have written: same model, tasks, seed, chunk seeds). The loop's resume
    keeps chunks on disk, so it deploys generation 0 no more. Each copy is recorded beside it
    (``gen_00/reused_from.json``). Returns per seed the source and the seconds its deployment took there (the time
    saved), for the copies made now and those an earlier invocation recorded."""
    from iterdeploy_trl.traces import read_traces, write_traces

    key, reused = deployment_key(cfg), {}
    for seed in cfg.seeds:
        src = sources.get((key, seed))
        target = rundir.gen_dir(rundir.seed_dir(run_out, seed), 0)
        if src is None or rundir.chunk_files(target) or not dist.is_main():
            continue
        resolved = rundir.resolved_config(run_out)
        if not resolved.exists():  # what the loop writes when it starts a run directory
            run_out.mkdir(parents=True, exist_ok=True)
            write_json(resolved, {"hash": config_hash(cfg), "config": cfg.to_dict()})
        rundir.traces_dir(target).mkdir(parents=True, exist_ok=True)
        for path in rundir.chunk_files(src):
            records = [dataclasses.replace(r, run=cfg.name, method=cfg.method) for r in read_traces(path)]
            write_traces(rundir.traces_dir(target) / path.name, records)
        rows = read_rows(rundir.metrics(src.parent)) if rundir.metrics(src.parent).exists() else []
        saved = next((float(r.get("deploy_seconds") or 0.0) for r in rows if r["generation"] == 0), 0.0)
        reused[str(seed)] = {"from": str(src), "saved_seconds": saved}
        write_json(rundir.reused_from(target), reused[str(seed)])  # kept with the run: a resume copies nothing
        log(f"[compare] seed {seed}: generation 0 of {run_out.name} reused from {src} (its deployment: {saved:.1f} s)")
    dist.barrier()  # the other processes deploy their share of generation 0 only after the copies are in place
    return {**recorded_generation_zero(cfg, run_out), **reused}


def recorded_generation_zero(cfg: RunConfig, run_out: Path) -> dict[str, Any]:
    """Per seed, the generation-0 copy recorded in ``run_out`` (:func:`reuse_generation_zero` writes it beside
    the copied traces), so that a comparison reports every copy, whichever invocation made it. An unreadable
    record counts as none."""
    recorded = {}
    for seed in cfg.seeds:
        path = rundir.reused_from(rundir.gen_dir(rundir.seed_dir(run_out, seed), 0))
        try:
            row = read_json(path) if path.is_file() else None
        except (OSError, ValueError):
            row = None
        if isinstance(row, dict) and "from" in row:
            recorded[str(seed)] = row
    return recorded


def register_generation_zero(cfg: RunConfig, run_out: Path, sources: dict[tuple[str, int], Path]) -> None:
    """Make ``run_out``'s finished generation-0 deployments the source of later arms with the same key."""
    key = deployment_key(cfg)
    for seed in cfg.seeds:
        gdir = rundir.gen_dir(rundir.seed_dir(run_out, seed), 0)
        if rundir.chunk_files(gdir):
            sources.setdefault((key, seed), gdir)


@dataclasses.dataclass(frozen=True)
class PlannedRun:
    """One run of a comparison stage: its label in the progress lines, its run config, its run directory."""

    label: str
    cfg: RunConfig
    out: Path


@dataclasses.dataclass(frozen=True)
class FinishedRun:
    """What a finished run gives back: the loop's summary, the generation-0 copies made into it
    (:func:`reuse_generation_zero`), and the seconds from its start to its end in this invocation."""

    summary: dict[str, Any]
    reused: dict[str, Any]
    seconds: float


def generation_zero_waits(runs: list[PlannedRun]) -> list[set[int]]:
    """Per run, the earlier runs it must wait for: for each (deployment key, seed) of it, the first run of the
    list with that key and seed, the one whose generation 0 it copies when the runs go one by one."""
    first: dict[tuple[str, int], int] = {}
    waits = []
    for i, run in enumerate(runs):
        keys = [(deployment_key(run.cfg), seed) for seed in run.cfg.seeds]
        for key in keys:
            first.setdefault(key, i)
        waits.append({first[key] for key in keys} - {i})
    return waits


def check_jobs(cfg: RunConfig, jobs: int) -> None:
    """Before any work: ``jobs`` (``--jobs``) is at least 1, and above 1 only where runs can share the machine: not
    under a distributed launch (its processes are one run's), not with ``sampling.backend: vllm`` (each worker
    would start its own engine on the same accelerator). A ``RunError`` in one line otherwise."""
    if jobs < 1:
        raise RunError(f"--jobs {jobs}: must be at least 1")
    if jobs > 1 and dist.world_size() > 1:
        raise RunError(f"--jobs {jobs}: the processes of accelerate launch/torchrun run one run together; use --jobs 1")
    if jobs > 1 and cfg.sampling.backend == "vllm":
        raise RunError(f"--jobs {jobs}: with sampling.backend vllm each worker would start its own vLLM engine on the "
                       "same accelerator; use --jobs 1 (or sampling.backend vllm-server: the workers share the servers)")


def run_planned(runs: list[PlannedRun], sources: dict[tuple[str, int], Path], *, jobs: int = 1,
                progress: bool = True, log: Callable[[str], None] = print) -> list[FinishedRun]:
    """Run each of ``runs`` (resumable; generation 0 copied from ``sources`` and registered there) and return
    what each gave back, in order. ``jobs`` 1: one after another in this process. More: in that many worker
    processes (:func:`_run_in_worker`, each run's log in its ``run.log``), a run starting once the runs it copies
    generation 0 from have finished (:func:`generation_zero_waits`), so it copies what one by one would have;
    one line per finished run. A run that fails stops the others (killed: their directories resume) and
    raises a ``RunError`` naming it and its log."""
    from iterdeploy_trl.loop import run_loop

    if jobs <= 1:
        done = []
        for run in runs:
            log(f"== {run.label} ==")
            start = time.time()
            reused = reuse_generation_zero(run.cfg, run.out, sources, log)
            summary = run_loop(run.cfg, run.out, progress=progress, log=log)
            register_generation_zero(run.cfg, run.out, sources)
            done.append(FinishedRun(summary, reused, round(time.time() - start, 1)))
        return done
    return _run_in_workers(runs, sources, jobs, log)


def _run_in_workers(runs: list[PlannedRun], sources: dict[tuple[str, int], Path], jobs: int,
                    log: Callable[[str], None]) -> list[FinishedRun]:
    """:func:`run_planned` with ``jobs`` worker processes (spawned: nothing of this process's torch state is
    inherited; each worker sets its own threads from the run config)."""
    import multiprocessing

    waits = generation_zero_waits(runs)
    pending, running, done = list(range(len(runs))), {}, {}
    pool = multiprocessing.get_context("spawn").Pool(min(jobs, len(runs)) or 1, initializer=_worker_init)
    try:
        while pending or running:
            for i in [i for i in pending if waits[i].issubset(done)][: jobs - len(running)]:
                pending.remove(i)
                log(f"== {runs[i].label} ==")
                reused = reuse_generation_zero(runs[i].cfg, runs[i].out, sources, log)
                running[i] = (pool.apply_async(_run_in_worker, (runs[i].cfg, runs[i].out)), reused, time.time())
            ready = [i for i, (result, _, _) in running.items() if result.ready()]
            if not ready:
                time.sleep(0.2)
            for i in ready:
                result, reused, start = running.pop(i)
                summary = _result_of(result, runs[i])
                register_generation_zero(runs[i].cfg, runs[i].out, sources)
                done[i] = FinishedRun(summary, reused, round(time.time() - start, 1))
                log(f"[compare] finished {runs[i].label} in {done[i].seconds:.1f} s ({len(done)}/{len(runs)} of this "
                    f"stage; its log: {runs[i].out / 'run.log'})")
        pool.close()
    finally:
        pool.terminate()  # a failure or an interrupt: the runs still going are killed; their directories resume
        pool.join()
    return [done[i] for i in range(len(runs))]


def _result_of(result: Any, run: PlannedRun) -> dict[str, Any]:
    """A worker's summary, or a ``RunError`` in one line naming the run, its error and its log."""
    try:
        return result.get()
    except Exception as exc:  # the worker's error, re-raised here
        first = (str(exc).strip().splitlines() or [""])[0]
        raise RunError(f"{run.label} failed: {type(exc).__name__}: {first} (the traceback is in "
                       f"{run.out / 'run.log'}); the runs still going were stopped: fix it and run the same "
                       "command again, every finished run is kept") from None


def _worker_init() -> None:
    """A worker ignores Ctrl-C (the main process stops it) and dies with the main process, however that dies."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):
        pass  # elsewhere: the main process's terminate() still stops it


def _run_in_worker(cfg: RunConfig, out: Path) -> dict[str, Any]:
    """One run in a worker process: the loop without progress bars, its log lines, the libraries' logs and a
    failure's traceback in ``OUT/run.log``; returns the loop's summary."""
    import traceback

    from iterdeploy_trl.console import LOG_NAME, quiet_session
    from iterdeploy_trl.loop import run_loop

    out.mkdir(parents=True, exist_ok=True)
    with open(out / LOG_NAME, "a", encoding="utf-8") as fh:
        def log(msg: str) -> None:
            fh.write(msg + "\n")
            fh.flush()

        with quiet_session(out, progress=False):
            try:
                return run_loop(cfg, out, progress=False, log=log)
            except BaseException:
                log(traceback.format_exc())
                raise
