"""The tuning stage of the head-to-head (issue 24's protocol): each arm run at every point of its grid on the
tuning seeds (:func:`tune_learning_rates`), on a tuning pool of its own (:func:`tuning_run_config`,
:func:`write_tuning_pool`) that :func:`check_tuning_pool` compares problem by problem with the reported pool and
held-out split before any work; :func:`check_tuning` refuses a grid that names no arm or a knob the arm lacks."""

from __future__ import annotations

import dataclasses
import itertools
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from iterdeploy_trl import dist, rundir
from iterdeploy_trl import methods as registry
from iterdeploy_trl.compare_arms import (
    PlannedRun,
    apply_settings,
    arm_grid,
    method_config,
    run_planned,
    with_setting,
)
from iterdeploy_trl.compare_stats import measured_seconds, metrics_rows
from iterdeploy_trl.config import RunConfig, split_arm
from iterdeploy_trl.errors import ConfigError
from iterdeploy_trl.tasks.generate import problem_key


def _point_name(arm: str, point: dict[str, float]) -> str:
    """A tuning run's directory name: ``<arm>-lr<rate>`` then ``-<knob><value>`` for each other knob."""
    rest = "".join(f"-{k}{v:g}" for k, v in point.items() if k != "learning_rate")
    return f"{arm}-lr{point['learning_rate']:g}{rest}" if "learning_rate" in point else f"{arm}{rest}"


def tuning_run_config(cfg: RunConfig, pool_dir: Path | None = None) -> RunConfig:
    """``cfg`` as the tuning runs take it: the tuning seeds and, with ``tuning.task_seed``, the tuning pool
    (``tuning.n`` + ``tuning.heldout`` tasks from that seed; null: the reported pool's sizes), or the task set
    written to ``pool_dir`` (``tuning.exclude_reported``; the base model stays the one of ``tasks.size``)."""
    t = cfg.tuning
    if t.task_seed is None:
        return dataclasses.replace(cfg, seeds=t.seeds)
    tasks = dataclasses.replace(cfg.tasks, seed=t.task_seed, n=t.n or cfg.tasks.n,
                                heldout=cfg.tasks.heldout if t.heldout is None else t.heldout,
                                dir=str(pool_dir) if pool_dir is not None else cfg.tasks.dir)
    return dataclasses.replace(cfg, seeds=t.seeds, tasks=tasks)


def _drawn(c: RunConfig, n: int | None = None) -> list[Any]:
    """The tasks ``c`` generates (``n``: that many from its seed instead of its pool and held-out split)."""
    from iterdeploy_trl.tasks import generate_tasks

    size = tuple(c.tasks.size) if c.tasks.size else None
    return generate_tasks(c.domain, n or c.tasks.n + c.tasks.heldout, c.tasks.seed, size=size,
                          distinct=c.tasks.distinct and n is None)


def write_tuning_pool(cfg: RunConfig, out: Path) -> Path | None:
    """With ``tuning.exclude_reported``: the tuning pool drawn from ``tuning.task_seed`` with every reported
    problem and every repeat skipped, written once to ``OUT/tuning/tasks`` (kept on a resume); None without."""
    from iterdeploy_trl.tasks import draw_distinct, write_task_set
    from iterdeploy_trl.tasks.taskset import INDEX

    t = cfg.tuning
    if t is None or not t.exclude_reported:
        return None
    root = rundir.tasks_dir(Path(out) / rundir.TUNING)
    if cfg.tasks.dir:
        raise ConfigError(f"tuning.exclude_reported: draws from the generator, but tasks.dir ({cfg.tasks.dir}) gives "
                          "the reported tasks; remove tuning.task_seed and tuning.exclude_reported")
    tcfg = tuning_run_config(cfg)
    need = tcfg.tasks.n + tcfg.tasks.heldout
    try:
        keep = draw_distinct(tcfg.domain, need, tcfg.tasks.seed, size=tuple(tcfg.tasks.size) if tcfg.tasks.size
                             else None, skip={problem_key(task.problem) for task in _drawn(cfg)})
    except ValueError as exc:
        raise ConfigError(f"tuning.n: {tcfg.tasks.n} + tuning.heldout {tcfg.tasks.heldout} tasks distinct from the "
                          f"reported ones and from each other are not drawn from tuning.task_seed {t.task_seed} "
                          f"({exc}): lower tuning.n / tuning.heldout") from None
    if (root / INDEX).exists():  # written by an earlier invocation: it must be this draw (deterministic)
        from iterdeploy_trl.tasks import load_task_set

        if [task.id for task in load_task_set(root).tasks] != [task.id for task in keep]:
            raise ConfigError(f"tuning.task_seed: {root} holds another tuning pool than tuning.task_seed "
                              f"{t.task_seed} with n {tcfg.tasks.n} + heldout {tcfg.tasks.heldout} draws; its "
                              "tuning runs were made on it: use the config that made it, or a new --out")
        return root
    if dist.is_main():
        write_task_set(keep, root)
    return root


def check_tuning_pool(cfg: RunConfig, pool_dir: Path | None = None) -> dict[str, Any]:
    """Before any work: the tuning pool (``tuning.task_seed``, or the set written to ``pool_dir``) holds no
    task of the reported pool or held-out split (same problem text, the problem's name aside); a
    ``ConfigError`` naming both tasks otherwise. Returns what compare.json records of it."""
    t = cfg.tuning
    if t is None or t.task_seed is None:
        return {"pool": "the reported pool (tuning.task_seed not set)", "disjoint": False}
    if cfg.tasks.dir:
        raise ConfigError(f"tuning.task_seed: {t.task_seed} draws a tuning pool from the generator, but tasks.dir "
                          f"({cfg.tasks.dir}) gives the reported tasks; remove tuning.task_seed")
    tcfg = tuning_run_config(cfg, pool_dir)
    reported = {problem_key(task.problem): task.id for task in _drawn(cfg)}
    if pool_dir is not None:
        from iterdeploy_trl.tasks import load_task_set

        tuning_tasks = list(load_task_set(pool_dir).tasks)[: tcfg.tasks.n + tcfg.tasks.heldout]
    else:
        tuning_tasks = _drawn(tcfg)
    both = [(task.id, reported[problem_key(task.problem)]) for task in tuning_tasks
            if problem_key(task.problem) in reported]
    if both:
        raise ConfigError(f"tuning.task_seed: {t.task_seed} draws {len(both)} task(s) of the reported pool or "
                          f"held-out split (tasks.seed {cfg.tasks.seed}), e.g. tuning task {both[0][0]} = reported "
                          f"task {both[0][1]}: choose another tuning.task_seed, or set tuning.exclude_reported: true "
                          "(the draw skips the reported problems)")
    return {"pool": f"tasks.seed {t.task_seed}" + (" with the reported problems skipped" if pool_dir else ""),
            "disjoint": True, "tasks": tcfg.tasks.n, "heldout_tasks": tcfg.tasks.heldout,
            "checked_against": len(reported), "distinct_tuning_problems": len({problem_key(x.problem)
                                                                              for x in tuning_tasks})}


def split_overlap(cfg: RunConfig) -> dict[str, Any] | None:
    """How many held-out tasks repeat a pool problem (problem text, its name aside), and how many distinct
    problems the pool holds: small generated tasks repeat, so "held-out" is partly trained on (None for a
    task set given as tasks.dir)."""
    if cfg.tasks.dir:
        return None
    tasks = _drawn(cfg)
    pool = {problem_key(t.problem) for t in tasks[: cfg.tasks.n]}
    held = [problem_key(t.problem) for t in tasks[cfg.tasks.n :]]
    return {"heldout_tasks_in_pool": sum(h in pool for h in held), "heldout_tasks": len(held),
            "distinct_pool_problems": len(pool), "pool_tasks": cfg.tasks.n}


def check_tuning(cfg: RunConfig, arms: Sequence[str]) -> None:
    """Before any work: ``tuning.grids`` names arms of this comparison only, every knob is one its arm has, and
    (with grids) every tuned arm gets the same number of tuning runs."""
    if cfg.tuning is None:
        return
    grids = cfg.tuning.grids or {}
    for arm in grids:
        if arm not in arms:
            raise ConfigError(f"tuning.grids.{arm}: not an arm of this comparison ({', '.join(arms)}); remove it")
    for arm in arms:
        for knob, values in arm_grid(cfg, arm).items():
            with_setting(cfg, arm, knob, values[0])
    if grids:
        runs = {arm: len(list(itertools.product(*arm_grid(cfg, arm).values()))) for arm in arms}
        if len(set(runs.values())) > 1:
            raise ConfigError(f"tuning.grids: every arm needs the same number of tuning runs; got {runs} (an arm "
                              "without a grid of its own is tuned over its method's rate list, or not at all)")


def tuning_points(cfg: RunConfig, methods: Sequence[str]) -> list[tuple[str, dict[str, float], str]]:
    """The tuning runs of ``methods``, in the order they run: ``(arm, point, run name)`` for every point of each
    arm's grid (:func:`arm_grid`); the run's directory is ``rundir.tuning_run(OUT, name)``."""
    points = []
    for arm in methods:
        grid = arm_grid(cfg, arm)
        for values in itertools.product(*grid.values()) if grid else ():
            point = dict(zip(grid, values, strict=True))
            points.append((arm, point, _point_name(arm, point)))
    return points


def final_solved(summary: dict[str, Any]) -> list[int]:
    """Each seed's pool tasks solved at a finished run's full budget (its last generation), from its summary."""
    return [ms[-1]["solved"] for ms in summary["per_seed"].values()]


def choose_point(grid: dict[str, list[float]], table: list[dict[str, Any]]) -> tuple[dict[str, Any], list[str]]:
    """The tuning rule: the row of ``table`` with the most tuning-pool tasks solved at the full budget (mean over
    the tuning seeds, ``solved_mean``; of equal rows the earlier), and the knobs of ``grid`` whose chosen value
    lies at an edge of its grid (a knob with one value has none)."""
    best = max(table, key=lambda row: row["solved_mean"])  # max keeps the first of equal rows
    return best, [k for k, vs in grid.items() if len(vs) > 1 and best[k] in (min(vs), max(vs))]


def tune_learning_rates(cfg: RunConfig, out: Path, methods: tuple[str, ...], *, progress: bool = True,
                        log=print, sources: dict[tuple[str, int], Path] | None = None,
                        pool_dir: Path | None = None, jobs: int = 1) -> dict[str, Any]:
    """Each arm at each point of its grid (:func:`arm_grid`: its learning rate and its batch knob) on the tuning
    seeds and the tuning pool (one run directory each, ``OUT/tuning/<arm>-lr<rate>[-<knob><value>]``,
    resumable); returns per arm the table, the chosen point (most tuning-pool tasks solved at the full budget,
    mean over the tuning seeds; ties: the earlier point) and whether a chosen value lies at an edge of its
    grid (``at_edge``, ``edge_knobs``). An arm without a grid keeps its configured settings. Generation 0 is
    deployed once per tuning seed and reused (``sources``). The runs go one by one, or ``jobs`` at a time
    (:func:`run_planned`: the same run directories either way)."""
    tuning = cfg.tuning
    sources = {} if sources is None else sources
    base = tuning_run_config(cfg, pool_dir)
    planned: list[tuple[str, dict[str, float], PlannedRun]] = []
    for arm, point, name in tuning_points(cfg, methods):
        tcfg = method_config(apply_settings(base, arm, point), arm)
        tcfg = dataclasses.replace(tcfg, name=f"{cfg.name}/tuning/{name}")
        planned.append((arm, point, PlannedRun(f"tuning {name} (seeds {', '.join(map(str, tuning.seeds))})",
                                               tcfg, rundir.tuning_run(out, name))))
    finished = run_planned([run for _, _, run in planned], sources, jobs=jobs, progress=progress, log=log)
    tables: dict[str, list[dict[str, Any]]] = {}
    for (arm, point, run), done in zip(planned, finished, strict=True):
        summary, tcfg = done.summary, run.cfg
        last = summary["generations"][-1]
        per_seed = final_solved(summary)
        rows = metrics_rows(run.out, tcfg.seeds)
        tables.setdefault(arm, []).append(
            {"run": run.out.name, **point, "learning_rate": point.get("learning_rate", registry.get(split_arm(arm)[0])
                                                                     .learning_rate(tcfg)),
             "solved_mean": statistics.fmean(per_seed), "solved_per_seed": per_seed,
             "samples_used": last["samples_used"], "heldout_solved_mean": last["heldout_solved"],
             "wall_seconds": measured_seconds(rows)["seconds"], "generation0_reused": done.reused})
    result: dict[str, Any] = {}
    for arm, table in tables.items():
        grid = arm_grid(cfg, arm)
        best, edges = choose_point(grid, table)
        result[arm] = {"seeds": list(tuning.seeds), "grid": grid, "table": table, "chosen": best["learning_rate"],
                       "chosen_settings": {k: best[k] for k in grid}, "at_edge": bool(edges), "edge_knobs": edges,
                       "runs": len(table)}
        log(f"tuning {arm}: " + ", ".join(f"{_point_name(arm, {k: r[k] for k in grid})} -> {r['solved_mean']:.1f}"
                                           for r in table)
            + f"; chosen {_point_name(arm, result[arm]['chosen_settings'])}"
            + (f" (AT THE GRID EDGE of {', '.join(edges)})" if edges else ""))
    return result
