"""Head-to-head: valid-trace SFT vs importance-weighted SFT vs uncurated SFT vs online REINFORCE.

Every method starts from the same base model, on the same task pool, with the same seeds, and spends
the same **budget of sampled completions used for learning**: the iterative-deployment methods sample
K completions per pool task per generation, so their generation-g model has learnt from
b_g = g·n·K completions; REINFORCE (:class:`~iterdeploy_trl.trainers.ReinforceTrainer`, online) is
trained in G segments of n·K sampled completions each and evaluated after each segment. All methods are
evaluated at the same budget points b_0..b_G by the same deployment (K samples per task on the pool and
the held-out split), and we also report training tokens and wall time, which are *not* equalised.

Every method is one run of the same loop (:func:`iterdeploy_trl.loop.run_loop`; a method is its entry of
its plug-in in ``iterdeploy_trl/methods/``: its data, its trainer, its section): this module only schedules the methods and reports them
with the statistics of :mod:`iterdeploy_trl.stats`: held-out tasks solved is the primary measure, pool
tasks solved the second; per comparison a seed-level paired t interval and a task-and-seed paired
bootstrap interval, raw and Holm-adjusted p over every comparison tested, unanimous@k with an interval,
and a verdict per measure. Layout: ``OUT/<method>/`` is a run directory of the loop, ``OUT/compare.json``
holds the per-budget statistics and each arm's wall time as measured (kept across a resume).

The protocol (issue 24): an arm is a method or ``METHOD@CURATION`` (the curation-sensitivity arms); with
``tuning`` each arm is first run at every point of its grid (:func:`arm_grid`: learning rate x its batch knob,
the same number of points per arm) on the tuning seeds and a tuning pool of its own, which
:func:`check_tuning_pool` compares with the reported tasks before any work; ``compare.json`` records the tuning
table (``at_edge``), each arm's budget in every unit (:func:`arm_budget`) and the generation-0 deployments
copied across arms (:func:`reuse_generation_zero`: generation 0 is the same for every arm of a seed).

Modules: ``compare_arms`` (an arm's run config, generation 0 deployed once), ``compare_tuning`` (the tuning stage
and its pool), ``compare_stats`` (the statistics, times and budgets of ``compare.json``); this one runs the arms
and writes ``compare.json``. It re-exports their names, which the commands, figures and tests import from here.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from iterdeploy_trl import dist, rundir
from iterdeploy_trl import methods as registry
from iterdeploy_trl.compare_arms import (
    LOOP_METHODS,
    PlannedRun,
    apply_settings,
    arm_grid,
    check_jobs,
    deployment_key,
    method_config,
    register_generation_zero,
    reuse_generation_zero,
    run_planned,
    with_learning_rate,
    with_setting,
)
from iterdeploy_trl.compare_stats import (
    MEASURES,
    PRIMARY_MEASURE,
    arm_budget,
    compare_statistics,
    measured_seconds,
    method_rows,
    metrics_rows,
    paired_measure,
    task_matrix,
)
from iterdeploy_trl.compare_tuning import (
    check_tuning,
    check_tuning_pool,
    split_overlap,
    tune_learning_rates,
    tuning_run_config,
    write_tuning_pool,
)
from iterdeploy_trl.config import METHODS, RunConfig, split_arm
from iterdeploy_trl.errors import RunError
from iterdeploy_trl.loop import begin_run
from iterdeploy_trl.runchecks import check_methods, check_server_methods
from iterdeploy_trl.runio import atomic_write_text, machine_record, read_json, write_json
from iterdeploy_trl.runlock import holds_run_dir
from iterdeploy_trl.tasks.generate import problem_key

__all__ = [
    "LOOP_METHODS", "MEASURES", "PRIMARY_MEASURE", "apply_settings", "arm_budget", "arm_grid", "check_jobs", "check_tuning",
    "check_tuning_pool", "compare_statistics", "deployment_key", "measured_seconds", "method_config", "method_rows",
    "metrics_rows", "paired_measure", "problem_key", "register_generation_zero", "reuse_generation_zero",
    "run_compare", "split_overlap", "task_matrix", "tune_learning_rates", "tuning_run_config", "with_learning_rate",
    "with_setting", "write_tuning_pool",
]


def record_config(out: Path, config_text: str, log=print) -> None:
    """Keep the config of this invocation as ``OUT/config.yaml`` (what ``iterdeploy status`` plans from). Where
    an earlier invocation's config differs (a grid moved, an arm added: each run directory checks its own hash,
    so the runs already made stay valid), that one is kept as ``config.earlier-<n>.yaml``, not written over."""
    path = rundir.config_yaml(out)
    if path.exists():
        old = path.read_text()
        if old == config_text:
            return
        n = 1
        while rundir.earlier_config(out, n).exists():
            n += 1
        atomic_write_text(rundir.earlier_config(out, n), old)
        log(f"[compare] {path}: the config differs from the one this comparison was last run with; that one is "
            f"kept as {rundir.earlier_config(out, n).name}")
    atomic_write_text(path, config_text)


@holds_run_dir(lambda cfg, kw: (check_server_methods(cfg, [split_arm(a)[0] for a in kw.get("methods") or cfg.compare_methods]),
                                 begin_run(cfg, False, print)))  # the rest of check_methods: in the body
def run_compare(cfg: RunConfig, out: str | Path, *, methods: tuple[str, ...] | None = None, config_text: str | None = None,
                progress: bool = True, log=print, jobs: int = 1) -> dict[str, Any]:
    """Run every arm of the head-to-head (resumable) and write ``OUT/compare.json``. An arm is a registered
    method or ``METHOD@CURATION``; its run directory is ``OUT/<arm>``. ``jobs``: how many runs (tuning points,
    then result arms) go at a time, each in a worker process of its own (:func:`run_planned`); the run
    directories and ``compare.json``'s numbers are the same for every ``jobs``, its timings aside."""
    out = Path(out)
    methods = methods or cfg.compare_methods
    unknown = [m for m in methods if split_arm(m)[0] not in METHODS]
    if unknown:
        raise RunError(f"unknown method {unknown[0]!r}: choose from {', '.join(METHODS)}")
    progress, log = begin_run(cfg, progress, log)
    check_jobs(cfg, jobs)
    # Before any work: a setting that no method of the comparison reads is refused. The comparison's methods
    # are the config's compare_methods; running some of them (--methods) leaves the others' settings unread
    # by this invocation, not by the comparison.
    names = tuple(dict.fromkeys(split_arm(m)[0] for m in methods))
    check_methods(cfg, names, compare=True,
                  read_by=tuple(dict.fromkeys(split_arm(m)[0] for m in (*methods, *cfg.compare_methods))))
    check_tuning(cfg, methods)
    tuning_pool = check_tuning_pool(cfg) if cfg.tuning and not cfg.tuning.exclude_reported else None  # refused here
    out.mkdir(parents=True, exist_ok=True)
    pool_dir = dist.main_first(lambda: write_tuning_pool(cfg, out))
    if pool_dir is not None:
        tuning_pool = check_tuning_pool(cfg, pool_dir)
    if config_text is not None and dist.is_main():
        record_config(out, config_text, log)
    results, rows_by_method, wall, budgets, reused = {}, {}, {}, {}, {}
    sources: dict[tuple[str, int], Path] = {}  # generation 0 deployed once per (deployment, seed)
    t0 = time.time()
    tuning = tune_learning_rates(cfg, out, methods, progress=progress, log=log, sources=sources,
                                 pool_dir=pool_dir, jobs=jobs) if cfg.tuning else {}
    tuning_seconds = round(time.time() - t0, 1)
    arms = []
    for method in methods:
        mcfg = apply_settings(cfg, method, tuning[method]["chosen_settings"]) if method in tuning else cfg
        arms.append((mcfg, PlannedRun(method, method_config(mcfg, method), out / method)))
    finished = run_planned([run for _, run in arms], sources, jobs=jobs, progress=progress, log=log)
    invocation = {}
    for method, (mcfg, run), done in zip(methods, arms, finished, strict=True):
        summary = done.summary
        reused[method], invocation[method] = done.reused, done.seconds
        summary["learning_rate"] = registry.get(split_arm(method)[0]).learning_rate(mcfg)
        results[method] = summary
        # The rows as written (with their solved task ids, for the task-level bootstrap and unanimous@k)
        rows_by_method[method] = {**summary, "per_seed": metrics_rows(out / method, cfg.seeds)}
        wall[method] = measured_seconds(rows_by_method[method]["per_seed"])
        budgets[method] = arm_budget(run.cfg, out / method, rows_by_method[method]["per_seed"])
    tuning_wall = round(sum(row.get("wall_seconds", 0.0) for t in tuning.values() for row in t["table"]), 1)
    # A resume finds generation 0 on disk and copies nothing: the copies the first invocation made are kept
    try:  # an unreadable compare.json is written again below; only what it recorded of the copies is lost
        previous = read_json(rundir.compare_json(out)) if rundir.compare_json(out).is_file() else {}
    except (OSError, ValueError):
        previous = {}
    before = previous.get("generation0_reuse") if isinstance(previous, dict) else None
    before = before if isinstance(before, dict) else {}
    reused = {m: reused[m] or (before.get("arms") or {}).get(m, {}) for m in methods}
    tuning_reuse = {}
    for t in tuning.values():
        for row in t["table"]:
            row["generation0_reused"] = row["generation0_reused"] or (before.get("tuning") or {}).get(row["run"], {})
            tuning_reuse[row["run"]] = row["generation0_reused"]
    saved = round(sum(r["saved_seconds"] for by_seed in (*reused.values(), *tuning_reuse.values())
                      for r in by_seed.values()), 1)
    report = {"name": cfg.name, "domain": cfg.domain, "seeds": list(cfg.seeds), "method_order": list(methods),
              "tasks": results[methods[0]]["tasks"], "heldout_tasks": results[methods[0]]["heldout_tasks"],
              "samples_per_task": cfg.sampling.samples_per_task,
              "budget_unit": "sampled completions used for learning",
              # as measured when each generation ran (metrics rows), kept across a resume; the machines named
              "wall_seconds": {m: wall[m]["seconds"] for m in methods}, "measured_seconds": wall,
              "budgets": budgets,
              "learning_rates": {m: results[m]["learning_rate"] for m in methods},
              "tuning": tuning, "tuning_wall_seconds": tuning_wall, "tuning_pool": tuning_pool,
              "task_overlap": split_overlap(cfg),
              "tuning_at_edge": sorted(m for m, t in tuning.items() if t["at_edge"]),
              # generation 0 deployed once per seed and copied into the other arms (and tuning points)
              "generation0_reuse": {"arms": reused, "tuning": tuning_reuse, "saved_seconds": saved},
              **compare_statistics(rows_by_method), "total_wall_seconds": round(
                  tuning_wall + sum(wall[m]["seconds"] for m in methods), 1),
              # this invocation alone (a resume of finished runs: seconds of reading)
              # each run's from its start to its end; with jobs > 1 they overlap, so their sum exceeds the total
              "invocation_wall_seconds": {"tuning": tuning_seconds, **invocation,
                                          "total": round(time.time() - t0, 1)}, "jobs": jobs,
              "machine": machine_record()}
    if dist.is_main():
        write_json(rundir.compare_json(out), report)
    return report
