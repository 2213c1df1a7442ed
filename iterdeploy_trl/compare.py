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
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from iterdeploy_trl import dist, rundir
from iterdeploy_trl import methods as registry
from iterdeploy_trl.config import METHODS, SFT_METHODS, RunConfig, TrainingConfig, config_hash, split_arm
from iterdeploy_trl.errors import ConfigError, RunError
from iterdeploy_trl.loop import begin_run, run_loop
from iterdeploy_trl.runchecks import check_methods, check_server_methods
from iterdeploy_trl.runio import atomic_write_text, machine_record, read_json, read_rows, write_json
from iterdeploy_trl.runlock import holds_run_dir
from iterdeploy_trl.tasks.generate import problem_key
from iterdeploy_trl.stats import (
    ALPHA,
    BOOTSTRAP_REPLICATES,
    BOOTSTRAP_SEED,
    LEVEL,
    difference_verdict,
    holm,
    paired_t,
    t_interval,
    task_seed_bootstrap,
    wilson_interval,
)

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
    root = rundir.tasks_dir(out / "tuning")
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
    keeps chunks on disk, so it deploys generation 0 no more. Returns per seed the source and the seconds its
    deployment took there (the time saved)."""
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
        log(f"[compare] seed {seed}: generation 0 of {run_out.name} reused from {src} (its deployment: {saved:.1f} s)")
    dist.barrier()  # the other processes deploy their share of generation 0 only after the copies are in place
    return reused


def register_generation_zero(cfg: RunConfig, run_out: Path, sources: dict[tuple[str, int], Path]) -> None:
    """Make ``run_out``'s finished generation-0 deployments the source of later arms with the same key."""
    key = deployment_key(cfg)
    for seed in cfg.seeds:
        gdir = rundir.gen_dir(rundir.seed_dir(run_out, seed), 0)
        if rundir.chunk_files(gdir):
            sources.setdefault((key, seed), gdir)


def apply_settings(cfg: RunConfig, arm: str, point: dict[str, float]) -> RunConfig:
    """``cfg`` with every knob of a grid ``point`` set for ``arm``."""
    for knob, value in point.items():
        cfg = with_setting(cfg, arm, knob, value)
    return cfg


def tune_learning_rates(cfg: RunConfig, out: Path, methods: tuple[str, ...], *, progress: bool = True,
                        log=print, sources: dict[tuple[str, int], Path] | None = None,
                        pool_dir: Path | None = None) -> dict[str, Any]:
    """Each arm at each point of its grid (:func:`arm_grid`: its learning rate and its batch knob) on the tuning
    seeds and the tuning pool (one run directory each, ``OUT/tuning/<arm>-lr<rate>[-<knob><value>]``,
    resumable); returns per arm the table, the chosen point (most tuning-pool tasks solved at the full budget,
    mean over the tuning seeds; ties: the earlier point) and whether a chosen value lies at an edge of its
    grid (``at_edge``, ``edge_knobs``). An arm without a grid keeps its configured settings. Generation 0 is
    deployed once per tuning seed and reused (``sources``)."""
    tuning = cfg.tuning
    sources = {} if sources is None else sources
    base = tuning_run_config(cfg, pool_dir)
    result: dict[str, Any] = {}
    for arm in methods:
        grid = arm_grid(cfg, arm)
        if not grid:
            continue
        table = []
        for values in itertools.product(*grid.values()):
            point = dict(zip(grid, values, strict=True))
            name = _point_name(arm, point)
            tcfg = method_config(apply_settings(base, arm, point), arm)
            tcfg = dataclasses.replace(tcfg, name=f"{cfg.name}/tuning/{name}")
            log(f"== tuning {name} (seeds {', '.join(map(str, tuning.seeds))}) ==")
            run_out = out / "tuning" / name
            reused = reuse_generation_zero(tcfg, run_out, sources, log)
            summary = run_loop(tcfg, run_out, progress=progress, log=log)
            register_generation_zero(tcfg, run_out, sources)
            last = summary["generations"][-1]
            per_seed = [ms[-1]["solved"] for ms in summary["per_seed"].values()]
            rows = metrics_rows(run_out, tcfg.seeds)
            table.append({"run": name, **point, "learning_rate": point.get("learning_rate", registry.get(split_arm(arm)[0])
                                                               .learning_rate(tcfg)),
                          "solved_mean": statistics.fmean(per_seed), "solved_per_seed": per_seed,
                          "samples_used": last["samples_used"], "heldout_solved_mean": last["heldout_solved"],
                          "wall_seconds": measured_seconds(rows)["seconds"], "generation0_reused": reused})
        best = max(table, key=lambda row: row["solved_mean"])  # max keeps the first of equal rows
        edges = [k for k, vs in grid.items() if len(vs) > 1 and best[k] in (min(vs), max(vs))]
        result[arm] = {"seeds": list(tuning.seeds), "grid": grid, "table": table, "chosen": best["learning_rate"],
                       "chosen_settings": {k: best[k] for k in grid}, "at_edge": bool(edges), "edge_knobs": edges,
                       "runs": len(table)}
        log(f"tuning {arm}: " + ", ".join(f"{_point_name(arm, {k: r[k] for k in grid})} -> {r['solved_mean']:.1f}"
                                           for r in table)
            + f"; chosen {_point_name(arm, result[arm]['chosen_settings'])}"
            + (f" (AT THE GRID EDGE of {', '.join(edges)})" if edges else ""))
    return result


# --------------------------------------------------------------------------- statistics

# The measures compared, the primary first: held-out tasks are never trained on, so they test what a method
# learnt; pool tasks are the ones SFT retrains on (a stored valid solution of every task ever solved).
MEASURES = {"heldout_solved": "held-out tasks solved", "solved": "pool tasks solved"}
PRIMARY_MEASURE = "heldout_solved"
_TASK_IDS = {"heldout_solved": "heldout_solved_task_ids", "solved": "solved_task_ids"}
_TOTALS = {"heldout_solved": "heldout_tasks", "solved": "tasks"}


def _at(rows: list[dict[str, Any]], g: int) -> dict[str, Any] | None:
    return next((m for m in rows if m["generation"] == g), None)


def _unanimous(rows: list[dict[str, Any]], ids_key: str) -> int | None:
    """Tasks solved under every seed (None when a row lacks its task ids: a summary.json's rows)."""
    if not rows or any(ids_key not in r for r in rows):
        return None
    return len(set.intersection(*(set(r[ids_key]) for r in rows)))


def _unanimous_ci(unanimous: int | None, total: int | None) -> list[float] | None:
    """Wilson interval of unanimous@k as tasks: n·[lo, hi] of the proportion unanimous/n."""
    if unanimous is None or not total:
        return None
    lo, hi = wilson_interval(unanimous, total)
    return [lo * total, hi * total]


def task_matrix(a: list[set[str]], b: list[set[str]], n_tasks: int) -> list[list[int]]:
    """D[t][s] = 1[t solved by arm a under seed s] − 1[t solved by b under s] over the ``n_tasks`` tasks
    (``a[s]``, ``b[s]``: the ids solved). Tasks neither arm ever solved are rows of zeros: only their number
    matters, so they need no ids."""
    union = sorted(set().union(*a, *b))
    if len(union) > n_tasks:
        raise ValueError(f"{len(union)} distinct solved task ids but only {n_tasks} tasks: the runs compared "
                         "do not share one task set")
    rows = [[int(t in sa) - int(t in sb) for sa, sb in zip(a, b, strict=True)] for t in union]
    return rows + [[0] * len(a) for _ in range(n_tasks - len(union))]


def method_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Per budget point of one method: mean solved (pool and held-out) with a 95% t-interval over seeds,
    unanimous@k with a Wilson interval, and the budget in the units the loop counts."""
    per_seed = summary["per_seed"]
    rows = []
    for gen in summary["generations"]:
        g = gen["generation"]
        at_g = [r for r in (_at(ms, g) for ms in per_seed.values()) if r is not None]
        solved, held = [r["solved"] for r in at_g], [r["heldout_solved"] for r in at_g]
        ts, th = t_interval(solved), t_interval(held)
        held_unanimous = _unanimous(at_g, _TASK_IDS["heldout_solved"])
        # wall-clock seconds spent to reach this budget point (deploy + train of generations 0..g), mean over seeds
        walls = [sum(float(r.get("deploy_seconds") or 0.0) + float(r.get("train_seconds") or 0.0)
                     for r in ms if r["generation"] <= g) for ms in per_seed.values() if _at(ms, g) is not None]
        rows.append({"generation": g, "samples_used": gen["samples_used"], "solved_mean": ts.mean,
                     "solved_ci": [ts.lo, ts.hi], "solved_per_seed": solved, "unanimous": gen["unanimous"],
                     "unanimous_k": gen["unanimous_k"],
                     "unanimous_ci": _unanimous_ci(gen["unanimous"], gen.get("tasks")),
                     "heldout_solved_mean": th.mean, "heldout_ci": [th.lo, th.hi], "heldout_solved_per_seed": held,
                     "heldout_unanimous": held_unanimous,
                     "heldout_unanimous_ci": _unanimous_ci(held_unanimous, gen.get("heldout_tasks")),
                     "tasks": gen.get("tasks"), "heldout_tasks": gen.get("heldout_tasks"),
                     "train_traces": gen["train_traces"], "train_completion_tokens": gen["train_completion_tokens"],
                     "train_completion_tokens_cumulative": gen.get("train_completion_tokens_cumulative"),
                     "train_seconds": gen["train_seconds"], "deploy_seconds": gen["deploy_seconds"],
                     "wall_seconds_cumulative": round(statistics.fmean(walls), 2) if walls else None})
    return rows


def paired_measure(a_rows: list[dict[str, Any]], b_rows: list[dict[str, Any]], measure: str, *, tested: bool,
                   bootstrap_seed: int = BOOTSTRAP_SEED) -> dict[str, Any]:
    """One measure of one paired comparison at one budget point (``a_rows[i]``, ``b_rows[i]``: the same
    seed): the seed-level paired t interval and p-value, and, where the rows name their solved task ids,
    the task-and-seed paired bootstrap interval. ``tested``: whether the p-value joins the Holm family."""
    diffs = [a[measure] - b[measure] for a, b in zip(a_rows, b_rows, strict=True)]
    pt = paired_t([float(d) for d in diffs])
    ids_key, total_key = _TASK_IDS[measure], _TOTALS[measure]
    boot = None
    if all(ids_key in r for r in (*a_rows, *b_rows)) and a_rows and a_rows[0].get(total_key):
        matrix = task_matrix([set(r[ids_key]) for r in a_rows], [set(r[ids_key]) for r in b_rows],
                             int(a_rows[0][total_key]))
        _, lo, hi = task_seed_bootstrap(matrix, seed=bootstrap_seed)
        boot = [lo, hi]
    return {"diff_mean": pt.mean, "diff_per_seed": diffs, "t_ci": [pt.lo, pt.hi], "bootstrap_ci": boot,
            "p_value": pt.p if tested else None, "tested": tested,
            "total": a_rows[0].get(total_key) if a_rows else None}


def compare_statistics(results: dict[str, dict[str, Any]], reference: str = "valid-sft") -> dict[str, Any]:
    """Per method and budget point: :func:`method_rows`. Per other method against ``reference``, per budget
    point and measure (held-out solved first, the primary measure; pool solved second): the paired
    difference with a seed-level t interval and a task-and-seed paired bootstrap interval (when the
    per-seed rows carry their solved task ids, as ``metrics.jsonl`` rows do), the raw p-value of a paired
    t-test and its Holm-adjusted value over every comparison tested here, and a verdict. Generation 0 is
    not tested: every arm deploys the same base model there."""
    table = {method: method_rows(summary) for method, summary in results.items()}
    paired: dict[str, Any] = {}
    entries: list[tuple[str, str, dict[str, Any]]] = []  # (comparison, measure, entry): the Holm family
    if reference in table:
        ref_seeds = results[reference]["per_seed"]
        for method, summary in results.items():
            if method == reference:
                continue
            seeds = [s for s in summary["per_seed"] if s in ref_seeds]
            name = f"{method} - {reference}"
            by_gen = []
            for gen in summary["generations"]:
                g = gen["generation"]
                pairs = [(_at(summary["per_seed"][s], g), _at(ref_seeds[s], g)) for s in seeds]
                pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
                if not pairs:
                    continue
                a_rows, b_rows = [a for a, _ in pairs], [b for _, b in pairs]
                point: dict[str, Any] = {"generation": g, "samples_used": gen["samples_used"]}
                for measure in MEASURES:
                    point[measure] = paired_measure(a_rows, b_rows, measure, tested=g > 0)
                    entries.append((method, measure, point[measure]))
                by_gen.append(point)
            paired[name] = by_gen
    adjusted = holm([e["p_value"] for _, _, e in entries])
    for (method, measure, entry), p_holm in zip(entries, adjusted, strict=True):
        entry["p_holm"] = p_holm
        entry["verdict"] = difference_verdict(
            method, reference, MEASURES[measure], entry["total"], entry["diff_mean"],
            {"seed t": tuple(entry["t_ci"]) if entry["p_value"] is not None else None,
             "task-and-seed bootstrap": tuple(entry["bootstrap_ci"]) if entry["bootstrap_ci"] else None}, p_holm)
    verdicts = {measure: [points[-1][measure]["verdict"] for points in paired.values() if points]
                for measure in MEASURES}
    return {"methods": table, "paired": paired, "reference": reference, "primary_measure": PRIMARY_MEASURE,
            "measures": dict(MEASURES), "verdicts": verdicts,
            "tests": {"test": "paired t over seeds (two-sided)", "correction": "Holm-Bonferroni",
                      "family": "every method against the reference, at every budget point after generation 0, "
                                "on every measure", "m": sum(p is not None for p in adjusted), "alpha": ALPHA,
                      "level": LEVEL},
            "bootstrap": {"resampled": "tasks and seeds, with replacement, paired across arms",
                          "replicates": BOOTSTRAP_REPLICATES, "seed": BOOTSTRAP_SEED, "interval": "percentile"}}


# --------------------------------------------------------------------------- wall times


def metrics_rows(run_dir: Path, seeds: Sequence[int]) -> dict[str, list[dict[str, Any]]]:
    """Each seed's ``metrics.jsonl`` rows as written (with their solved task ids), keyed like a summary's
    ``per_seed``; a seed without the file is left out."""
    out = {}
    for seed in seeds:
        path = rundir.metrics(rundir.seed_dir(run_dir, seed))
        if path.exists():
            out[str(seed)] = read_rows(path)
    return out


def measured_seconds(per_seed: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """An arm's time as measured when each generation ran: Σ over seeds and generations of the metrics
    rows' ``deploy_seconds`` (sampling and VAL) and ``train_seconds``, with the machines the rows name.
    A resume re-reads the rows and measures nothing again, so these survive it."""
    rows = [r for rs in per_seed.values() for r in rs]
    deploy = sum(float(r.get("deploy_seconds") or 0.0) for r in rows)
    train = sum(float(r.get("train_seconds") or 0.0) for r in rows)
    machines = sorted({m for r in rows for m in (r.get("deploy_machine"), r.get("train_machine")) if m})
    return {"seconds": round(deploy + train, 1), "deploy_seconds": round(deploy, 1),
            "train_seconds": round(train, 1), "machines": machines or ["not recorded"]}


def arm_budget(cfg: RunConfig, run_out: Path, per_seed: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """An arm's budget in every unit, summed over its seeds, from its metrics rows and each generation's
    ``train_stats.json``: sampled completions used for learning (equal by design), optimizer steps, training
    tokens, generated completions (every deployment, evaluation included, plus the completions an online arm
    samples inside its trainer), and wall seconds per phase as measured. ``evaluate``: deployments whose
    traces nothing trains on (every one of an online arm; an SFT arm's last generation); validation is timed
    inside the deployment (a chunk is sampled and judged by VAL in one step), so it is not separable here."""
    online = not registry.get(cfg.method).curates
    k = cfg.sampling.samples_per_task
    rows = [r for rs in per_seed.values() for r in rs]
    last = max((r["generation"] for r in rows), default=0)
    steps = 0
    for seed, seed_rows in per_seed.items():
        for r in seed_rows:
            gdir = rundir.gen_dir(rundir.seed_dir(run_out, int(seed)), r["generation"])
            stats = rundir.train_stats(rundir.model(gdir))
            steps += int(read_json(stats).get("train_steps", 0)) if stats.exists() else 0
    deployed = sum((int(r.get("tasks") or 0) + int(r.get("heldout_tasks") or 0)) * k for r in rows)
    trainer_sampled = sum(int(r.get("train_traces") or 0) for r in rows) if online else 0
    sec = measured_seconds(per_seed)
    evaluate = sum(float(r.get("deploy_seconds") or 0.0) for r in rows if online or r["generation"] == last)
    gen0 = sum(float(r.get("deploy_seconds") or 0.0) for r in rows if r["generation"] == 0)
    return {"seeds": len(per_seed),
            "sampled_completions": sum(int(rs[-1].get("samples_used") or 0) for rs in per_seed.values() if rs),
            "optimizer_steps": steps,
            "training_tokens": sum(int(r.get("train_completion_tokens") or 0) for r in rows),
            "generated_completions": deployed + trainer_sampled, "deployed_completions": deployed,
            "trainer_sampled_completions": trainer_sampled,
            "seconds": {"deploy": sec["deploy_seconds"], "generation0_deploy": round(gen0, 1), "validate": None,
                        "train": sec["train_seconds"], "evaluate": round(evaluate, 1), "total": sec["seconds"]},
            "validate_note": "VAL runs inside each chunk's deployment: its seconds are part of deploy",
            "machines": sec["machines"]}


@holds_run_dir(lambda cfg, kw: (check_server_methods(cfg, [split_arm(a)[0] for a in kw.get("methods") or cfg.compare_methods]),
                                 begin_run(cfg, False, print)))  # the rest of check_methods: in the body
def run_compare(cfg: RunConfig, out: str | Path, *, methods: tuple[str, ...] | None = None, config_text: str | None = None,
                progress: bool = True, log=print) -> dict[str, Any]:
    """Run every arm of the head-to-head (resumable) and write ``OUT/compare.json``. An arm is a registered
    method or ``METHOD@CURATION``; its run directory is ``OUT/<arm>``."""
    out = Path(out)
    methods = methods or cfg.compare_methods
    unknown = [m for m in methods if split_arm(m)[0] not in METHODS]
    if unknown:
        raise RunError(f"unknown method {unknown[0]!r}: choose from {', '.join(METHODS)}")
    progress, log = begin_run(cfg, progress, log)
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
    if config_text is not None and dist.is_main() and not rundir.config_yaml(out).exists():
        atomic_write_text(rundir.config_yaml(out), config_text)
    results, rows_by_method, wall, budgets, reused = {}, {}, {}, {}, {}
    sources: dict[tuple[str, int], Path] = {}  # generation 0 deployed once per (deployment, seed)
    t0 = time.time()
    tuning = tune_learning_rates(cfg, out, methods, progress=progress, log=log, sources=sources,
                                 pool_dir=pool_dir) if cfg.tuning else {}
    tuning_seconds = round(time.time() - t0, 1)
    invocation = {}
    for method in methods:
        log(f"== {method} ==")
        start = time.time()
        mcfg = apply_settings(cfg, method, tuning[method]["chosen_settings"]) if method in tuning else cfg
        run_cfg = method_config(mcfg, method)
        reused[method] = reuse_generation_zero(run_cfg, out / method, sources, log)
        summary = run_loop(run_cfg, out / method, progress=progress, log=log)
        register_generation_zero(run_cfg, out / method, sources)
        invocation[method] = round(time.time() - start, 1)
        summary["learning_rate"] = registry.get(split_arm(method)[0]).learning_rate(mcfg)
        results[method] = summary
        # The rows as written (with their solved task ids, for the task-level bootstrap and unanimous@k)
        rows_by_method[method] = {**summary, "per_seed": metrics_rows(out / method, cfg.seeds)}
        wall[method] = measured_seconds(rows_by_method[method]["per_seed"])
        budgets[method] = arm_budget(run_cfg, out / method, rows_by_method[method]["per_seed"])
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
              "invocation_wall_seconds": {"tuning": tuning_seconds, **invocation,
                                          "total": round(time.time() - t0, 1)},
              "machine": machine_record()}
    if dist.is_main():
        write_json(rundir.compare_json(out), report)
    return report
