"""The iterative-deployment loop.

For each seed and generation g = 0..G: deploy the generation-g model on the task pool (and the
held-out split), validate every plan with VAL, write a trace record per completion, curate the
accumulated valid traces, and fine-tune the generation-(g+1) model on them (by default a fresh model
from the *base*, as in the study). Every phase is resumable from the run directory: deployment is
written chunk by chunk with seeds derived from (seed, generation, split, chunk), a generation's model
is moved into place only when fully trained, and a finished generation's metrics are one JSONL row.

This module is the loop only; what it calls lives in its own modules: ``runtasks`` (the task set),
``basemodel`` (the base model and its cache), ``backends`` (sampling backends), ``deployment`` (a
generation's deployment and re-judging), ``methods`` (what each method trains on and how: one plug-in
each), ``training`` (the training paths), ``runchecks`` (checks before any work), ``metrics``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from iterdeploy_trl import dist, rundir, tracking
from iterdeploy_trl.backends import make_backend, server_model_name
from iterdeploy_trl.basemodel import auto_base_model_path, resolve_base_model
from iterdeploy_trl.config import ConfigError, RunConfig, config_hash, hash_matches, load_config
from iterdeploy_trl.deploy import batch_seed, check_backend
from iterdeploy_trl.deployment import deploy_generation, revalidate_stale
from iterdeploy_trl.errors import RunError
from iterdeploy_trl.methods import TrainJob
from iterdeploy_trl.methods import get as get_method
from iterdeploy_trl.metrics import aggregate, append_metrics, generation_metrics, kl_to_previous
from iterdeploy_trl.runchecks import check_launch, check_methods
from iterdeploy_trl.runio import (
    atomic_write_text,
    machine_id,
    machine_record,
    read_json,
    read_rows,
    write_dir,
    write_json,
    write_jsonl,
)
from iterdeploy_trl.runlock import SESSION_FILES, holds_run_dir
from iterdeploy_trl.runtasks import prepare_tasks
from iterdeploy_trl.status import generation_line
from iterdeploy_trl.traces import TraceRecord
from iterdeploy_trl.training import training_data

__all__ = ["RunError", "begin_run", "replace_config", "run_from_file", "run_loop",
           "run_seed"]


# --------------------------------------------------------------------------- the loop


def _check_run_dir(cfg: RunConfig, out: Path, given: str | None) -> None:
    """Start the run directory ``out`` for ``cfg`` (``given``: the config file's text), or check that it holds a
    run of ``cfg``. Its ``resolved_config.json`` is repaired where the config given proves what it held: a
    body that no longer hashes to its hash (edited) is written again from ``cfg``, and so is a file that is
    not JSON when ``config.yaml`` holds ``cfg``; otherwise the message names the file and what to do."""
    from iterdeploy_trl.status import recorded_config_matches

    resolved = rundir.resolved_config(out)
    if resolved.exists():
        old = _read_resolved(cfg, out, resolved)
        if not hash_matches(cfg, old):
            raise RunError(f"{out} holds a run of another config (hash {old.get('hash')} != {config_hash(cfg)}); "
                           "use a new --out directory, or the config that made it to resume")
        if not recorded_config_matches(old):
            print(f"[iterdeploy] {resolved}: the config it holds does not hash to its hash {old.get('hash')} "
                  "(edited, or written by an older version); written again from the config given, whose hash it is",
                  flush=True)
            write_json(resolved, {"hash": config_hash(cfg), "config": cfg.to_dict()})
        return
    if out.exists() and any(p for p in out.iterdir() if p.name not in (rundir.CONFIG_YAML, *SESSION_FILES)):
        raise RunError(f"{out} is not empty and is not a run directory; choose a new --out")
    out.mkdir(parents=True, exist_ok=True)
    if given is not None:
        atomic_write_text(rundir.config_yaml(out), given)
    write_json(resolved, {"hash": config_hash(cfg), "config": cfg.to_dict()})


def _read_resolved(cfg: RunConfig, out: Path, resolved: Path) -> dict[str, Any]:
    """The run directory's ``resolved_config.json``; one that is not a JSON object is written again from
    ``cfg`` when ``out/config.yaml`` (the config the run was started with) hashes as ``cfg``, else a
    ``RunError`` naming it and what to do."""
    try:
        old = json.loads(resolved.read_text())
        reason = None if isinstance(old, dict) else "not a JSON object"
    except (OSError, ValueError) as exc:
        reason = f"not valid JSON ({exc})"
    if reason is None:
        return old
    started = rundir.config_yaml(out)
    try:
        same = started.is_file() and config_hash(load_config(started, check_paths=False)) == config_hash(cfg)
    except ConfigError:
        same = False
    if not same:
        why = "holds another config" if started.is_file() else "is not there"
        raise RunError(f"{resolved}: {reason}; it records which config made the run in {out}, and {started} {why} "
                       "to write it again from: restore the file from a backup, or start a new run directory (--out)")
    record = {"hash": config_hash(cfg), "config": cfg.to_dict()}
    print(f"[iterdeploy] {resolved}: {reason}; written again from the config given ({started} holds the same)",
          flush=True)
    write_json(resolved, record)
    return json.loads(resolved.read_text())


def set_threads(cfg: RunConfig) -> None:
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)


def run_seed(cfg: RunConfig, out: Path, seed: int, base: Path, domain_pddl: str, pool: list[Any],
             heldout: list[Any], *, progress: bool = True, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """All generations of one seed; returns the metrics rows (resumes from ``out/seed_<seed>``). What a
    resume reuses is checked first: a damaged trace chunk is sampled again, a damaged model trained again,
    a torn ``train.jsonl`` written again (all seeded, so as they were)."""
    from iterdeploy_trl.traces import TraceFormatError

    sdir = rundir.seed_dir(out, seed)
    sdir.mkdir(parents=True, exist_ok=True)
    splits = {"pool": pool, "heldout": heldout}
    # damaged chunks are deleted by the main process, before any process reads them, and sampled again below
    damaged = dist.from_main(dist.main_first(
        lambda: _delete_damaged_chunks(cfg, sdir, splits, log) if dist.is_main() else {}))
    dist.main_first(lambda: revalidate_stale(cfg, sdir, domain_pddl, [*pool, *heldout], log=log))
    metrics_path = rundir.metrics(sdir)
    done = {m["generation"]: m for m in (read_rows(metrics_path) if metrics_path.exists() else [])}
    all_records: list[TraceRecord] = []
    samples_deployed = 0
    train_stats: dict[str, Any] = {}
    method = get_method(cfg.method)
    for g in range(cfg.generations + 1):
        gdir = rundir.gen_dir(sdir, g)
        model_dir = rundir.deployed_model(sdir, g)
        model_id = str(base) if model_dir is None else str(model_dir.relative_to(out))
        t0 = time.time()
        try:
            records = deploy_generation(
                cfg, lambda md=model_dir: make_backend(cfg, base, md), domain_pddl, splits, gdir, seed=seed,
                generation=g, model_id=model_id, run_name=cfg.name, method=cfg.method, progress=progress)
        except TraceFormatError as exc:
            raise RunError(f"{exc}: delete that file and run the same command again: the chunk is sampled again "
                           "(its seed is fixed)") from None
        # the last generation's records, for the metrics' plan_length_change_common (None at generation 0)
        previous = [r for r in all_records if r.generation == g - 1] if g > 0 else None
        if damaged.get(g) and g in done:
            _check_resampled(done[g], generation_metrics(records, g, len(pool), len(heldout), previous), damaged[g],
                             sdir)
        deploy_s = time.time() - t0
        all_records.extend(records)
        samples_deployed += sum(1 for r in records if r.split == "pool")
        if g in done:
            m = done[g]
        else:
            stats_path = rundir.train_stats(rundir.model(gdir))
            train_stats = read_json(stats_path) if stats_path.exists() else {}
            m = generation_metrics(records, g, len(pool), len(heldout), previous)
            # Budget: the sampled completions the generation-g model has learnt from (g rounds of n*K).
            tokens = train_stats.get("train_completion_tokens", 0)
            m.update(seed=seed, samples_used=g * len(pool) * cfg.sampling.samples_per_task,
                     samples_deployed=samples_deployed, deploy_seconds=round(deploy_s, 2),
                     train_traces=train_stats.get("train_traces", 0),
                     train_seconds=train_stats.get("train_seconds", 0.0),
                     # this generation's fine-tune alone, and all fine-tunes of this seed up to it
                     train_completion_tokens=tokens,
                     train_completion_tokens_cumulative=tokens + sum(
                         done[h].get("train_completion_tokens", 0) for h in done if h < g),
                     eval_traces=train_stats.get("eval_traces", 0), eval_loss=train_stats.get("eval_loss"),
                     # where deploy_seconds and train_seconds were measured (a resumed run may move machines)
                     deploy_machine=machine_id(), train_machine=train_stats.get("machine"),
                     # how often max_grad_norm clipped the fine-tune that made this generation's model
                     clip_fraction=(train_stats.get("grad_clip") or {}).get("clip_fraction"),
                     grad_norm_mean=(train_stats.get("grad_clip") or {}).get("grad_norm_mean"))
            if cfg.drift.kl_previous and g > 0 and dist.is_main():
                m.update(_kl_previous(cfg, base, sdir, g, records))
            append_metrics(metrics_path, m)
            if dist.is_main():
                tracking.log_generation(cfg, out, seed, m)
            done[g] = m
        log(generation_line(seed, m, cfg.sampling.samples_per_task))
        if g == cfg.generations:
            break
        next_dir = rundir.model(rundir.gen_dir(sdir, g + 1))

        def data(records: list[TraceRecord] = records) -> list[dict[str, Any]]:  # the same in every process
            return training_data(method, cfg, records=records, history=all_records, pool=pool,
                                 domain_pddl=domain_pddl, seed=seed)

        # one answer for all processes: the main one writes next_dir; a damaged model is trained again
        problem = dist.from_main(rundir.model_dir_problem(next_dir))
        if problem is None:
            if method.curates and dist.is_main():
                _repair_train_set(rundir.train_set(gdir), data, log)
            continue
        if next_dir.exists():
            log(f"seed {seed} gen {g}: {problem}: training the generation-{g + 1} model again (its seed is fixed)")
        rows = data()
        if method.curates:
            if dist.is_main():
                write_jsonl(rundir.train_set(gdir), rows)
            if not rows:
                log(f"seed {seed} gen {g}: no valid trace yet, so generation {g + 1} keeps this generation's model")
                if dist.is_main():
                    write_dir(next_dir, {rundir.SAME_AS: json.dumps({"generation": g, "reason": "empty training set"})})
                dist.barrier()
                continue
        method.train(cfg, TrainJob(base=base, model_dir=model_dir, out_dir=next_dir,
                                   seed=batch_seed(seed, "train", g) % (2**31)), rows)
    return [done[g] for g in sorted(done)]


def _kl_previous(cfg: RunConfig, base: Path, sdir: Path, g: int, records: Sequence[TraceRecord]) -> dict[str, Any]:
    """``drift.kl_previous``: KL(β_g ‖ β_{g-1}) of generation ``g``'s held-out samples, generation g−1's deployed
    model loaded (``metrics.kl_to_previous``, the computation of ``iterdeploy drift``)."""
    return kl_to_previous(cfg, base, rundir.deployed_model(sdir, g - 1), [r.to_dict() for r in records])


def _delete_damaged_chunks(cfg: RunConfig, sdir: Path, splits: dict[str, Sequence[Any]],
                           log: Callable[[str], None]) -> dict[int, list[str]]:
    """Delete the damaged trace chunks of seed directory ``sdir`` (empty, a line cut short or not JSON, a
    record missing, doubled or of another chunk), so that deployment samples them again: a chunk's seed is
    fixed, so it is sampled as it was. Returns what was damaged, one line a chunk, by generation."""
    from iterdeploy_trl.traces import chunk_problem

    k, size = cfg.sampling.samples_per_task, cfg.chunk_size
    damaged: dict[int, list[str]] = {}
    for g in range(cfg.generations + 1):
        for split, tasks in splits.items():
            for i in range(0, len(tasks), size):
                path = rundir.chunk(rundir.gen_dir(sdir, g), split, i // size)  # deploy_generation's
                if not path.exists():
                    continue
                problem = chunk_problem(path, [(g, split, t.id, s) for t in tasks[i : i + size] for s in range(k)])
                if problem:
                    log(f"[iterdeploy] {path}: {problem}: deleted, to be sampled again (its seed is fixed)")
                    path.unlink()
                    damaged.setdefault(g, []).append(f"{path}: {problem}")
    return damaged


def _check_resampled(row: dict[str, Any], again: dict[str, Any], damaged: list[str], sdir: Path) -> None:
    """Stop the run if the chunks sampled again in place of ``damaged`` ones give a finished generation other
    results than its metrics ``row`` (sampling that is not reproducible here): later generations were made
    from the traces as they were."""
    differ = [key for key, value in again.items() if key in row and row[key] != value]
    if differ:
        raise RunError(f"{damaged[0]}; sampled again, generation {row['generation']} gives another {differ[0]} "
                       f"({again[differ[0]]}) than its metrics row ({row[differ[0]]}): sampling is not reproducible "
                       f"on this machine or backend, and the later generations were made from the traces as they "
                       f"were; delete {sdir} to run seed {row.get('seed')} again")


def _repair_train_set(path: Path, rows: Callable[[], list[dict[str, Any]]], log: Callable[[str], None]) -> None:
    """Write a finished generation's ``train.jsonl`` again from the traces (``rows``: curation, deterministic)
    if a line of it is cut short or not JSON; the whole lines before it must be the rows made again."""
    from iterdeploy_trl.runio import jsonl_problem

    problem = jsonl_problem(path) if path.exists() else None
    if problem is None:
        return
    kept = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            kept.append(json.loads(line))
        except json.JSONDecodeError:
            break
    made = rows()
    if json.loads(json.dumps(made[: len(kept)], default=str)) != kept:
        raise RunError(f"{path}: {problem}, and the training set made again from the traces differs from its whole "
                       "lines (written by another version?): restore the file from a backup")
    write_jsonl(path, made)
    log(f"[iterdeploy] {path}: {problem}: written again from the traces")


def _check_before_run(cfg: RunConfig) -> None:
    """``run --check``'s checks (``preflight.check_before_run``: check_methods, the task set, the model, prompts
    against its context), before the run directory is locked or written: a refused config leaves no trace.
    Under several processes the main process checks (the others raise ``MainProcessFailed`` when it fails):
    another process's log records would make its ``run.rank<r>.log`` in the run directory before the main
    process has checked the directory."""
    from iterdeploy_trl.preflight import check_before_run

    check_before_run(cfg)


# check_methods first: a method that cannot run on the config's backend is refused before any server is asked
@holds_run_dir(lambda cfg, kw: (check_methods(cfg, (cfg.method,)), begin_run(cfg, False, _silent),
                                dist.main_first(lambda: _check_before_run(cfg) if dist.is_main() else None)))
def run_loop(cfg: RunConfig, out: str | Path, *, config_text: str | None = None, progress: bool = True,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) the iterative-deployment loop for every seed of ``cfg``; returns the summary.

    Under ``accelerate launch`` / ``torchrun`` every process calls this; see :mod:`iterdeploy_trl.dist`."""
    out = Path(out)
    progress, log = begin_run(cfg, progress, log)  # checks: see holds_run_dir's prepare above
    if dist.world_size() > 1:
        log(f"[iterdeploy] {dist.world_size()} processes: deployment split by chunk, training data-parallel")
    dist.main_first(lambda: _check_run_dir(cfg, out, config_text))
    t0 = time.time()
    task_set, pool, heldout = dist.main_first(lambda: prepare_tasks(cfg, out))
    base = dist.main_first(lambda: resolve_base_model(cfg, progress=progress))
    per_seed = {}
    for seed in cfg.seeds:
        per_seed[seed] = run_seed(cfg, out, seed, base, task_set.domain_pddl, pool, heldout, progress=progress,
                                  log=log)
    summary = {
        "name": cfg.name, "domain": cfg.domain, "method": cfg.method,
        "curation": cfg.curation if get_method(cfg.method).curates else None,
        "seeds": list(cfg.seeds), "base_model": str(base), "tasks": len(pool), "heldout_tasks": len(heldout),
        "samples_per_task": cfg.sampling.samples_per_task, "complete": True,
        "generations": aggregate(per_seed),
        "per_seed": {str(s): [{k: v for k, v in m.items() if not k.endswith("task_ids")} for m in ms]
                     for s, ms in per_seed.items()},
        "wall_seconds_this_invocation": round(time.time() - t0, 1),
        "machine": machine_record(),
    }
    if dist.is_main():
        write_json(rundir.summary(out), summary)
    return summary


def begin_run(cfg: RunConfig, progress: bool, log: Callable[[str], None]) -> tuple[bool, Callable[[str], None]]:
    """What every entry point (loop, REINFORCE, comparison) does before any work: check the backend and
    the launch, set torch's threads, join the process group; returns (progress, log) for this process
    (the processes other than the main one stay quiet). Calling it again is harmless."""
    check_backend(cfg.sampling.backend)
    if cfg.sampling.backend == "vllm-server" and dist.is_main():
        from iterdeploy_trl.vllm_server import check_lora_rank, check_servers

        check_servers(cfg.sampling.servers, server_model_name(cfg))
        base = auto_base_model_path(cfg) if cfg.model.path == "auto" else Path(cfg.model.path).expanduser()
        if cfg.training.lora is not None and (base / "config.json").exists():
            check_lora_rank(cfg.sampling.servers, base, cfg.training.lora.r)
    set_threads(cfg)
    check_launch(cfg)
    dist.init()
    if not dist.is_main():
        return False, _silent
    return progress, log


def _silent(*_: Any) -> None:
    """The log of the processes other than the main one."""


def run_from_file(config_path: str | Path, out: str | Path, **kw: Any) -> dict[str, Any]:
    cfg = load_config(config_path)
    return run_loop(cfg, out, config_text=Path(config_path).read_text(), **kw)


def replace_config(cfg: RunConfig, **changes: Any) -> RunConfig:
    """A copy of ``cfg`` with top-level fields changed (checked again)."""
    return dataclasses.replace(cfg, **changes).check()
