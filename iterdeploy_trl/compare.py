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
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from iterdeploy_trl import dist, rundir
from iterdeploy_trl import methods as registry
from iterdeploy_trl.config import METHODS, SFT_METHODS, RunConfig, TrainingConfig
from iterdeploy_trl.errors import RunError
from iterdeploy_trl.loop import begin_run, run_loop
from iterdeploy_trl.runchecks import check_methods, check_server_methods
from iterdeploy_trl.runio import atomic_write_text, machine_record, read_rows, write_json
from iterdeploy_trl.runlock import holds_run_dir
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
    (``Method.required_curation``) gets it, the others ``shortest`` where ``cfg`` says ``none``."""
    m = registry.get(method)
    changes: dict[str, Any] = dict(method=method, name=f"{cfg.name}/{method}", tuning=None,
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
        changes.update(curation="shortest" if cfg.curation == "none" else cfg.curation)
    return dataclasses.replace(cfg, **changes).check()


def with_learning_rate(cfg: RunConfig, method: str, lr: float) -> RunConfig:
    """``cfg`` with ``method``'s learning rate set to ``lr`` (its section's ``learning_rate`` where it has one,
    e.g. ``reinforce.learning_rate``; else ``training.learning_rate``)."""
    m = registry.get(method)
    if m.own_learning_rate:
        return dataclasses.replace(cfg, **{m.section: dataclasses.replace(m.settings_of(cfg), learning_rate=lr)})
    return dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, learning_rate=lr))


def tune_learning_rates(cfg: RunConfig, out: Path, methods: tuple[str, ...], *, progress: bool = True,
                        log=print) -> dict[str, Any]:
    """Each method at each candidate rate of ``cfg.tuning`` on the tuning seeds (one run directory each,
    ``OUT/tuning/<method>-lr<rate>``, resumable); returns per method the table and the chosen rate (most
    pool tasks solved at the full budget, mean over the tuning seeds; ties: the earlier candidate). A
    method without candidates keeps its configured rate."""
    tuning = cfg.tuning
    result: dict[str, Any] = {}
    for method in methods:
        rates = getattr(tuning, registry.get(method).tuning_key)
        if not rates:
            continue
        table = []
        for lr in rates:
            tcfg = method_config(dataclasses.replace(with_learning_rate(cfg, method, lr), seeds=tuning.seeds), method)
            tcfg = dataclasses.replace(tcfg, name=f"{cfg.name}/tuning/{method}-lr{lr:g}")
            log(f"== tuning {method} at learning rate {lr:g} (seeds {', '.join(map(str, tuning.seeds))}) ==")
            summary = run_loop(tcfg, out / "tuning" / f"{method}-lr{lr:g}", progress=progress, log=log)
            last = summary["generations"][-1]
            per_seed = [ms[-1]["solved"] for ms in summary["per_seed"].values()]
            table.append({"learning_rate": lr, "solved_mean": statistics.fmean(per_seed),
                          "solved_per_seed": per_seed, "samples_used": last["samples_used"],
                          "heldout_solved_mean": last["heldout_solved"],
                          "wall_seconds": measured_seconds(summary["per_seed"])["seconds"]})
        best = max(table, key=lambda row: row["solved_mean"])  # max keeps the first of equal rows
        result[method] = {"seeds": list(tuning.seeds), "table": table, "chosen": best["learning_rate"]}
        log(f"tuning {method}: " + ", ".join(f"lr {r['learning_rate']:g} -> {r['solved_mean']:.1f}" for r in table)
            + f"; chosen {best['learning_rate']:g}")
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
                     "train_seconds": gen["train_seconds"], "deploy_seconds": gen["deploy_seconds"]})
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


@holds_run_dir(lambda cfg, kw: (check_server_methods(cfg, kw.get("methods") or cfg.compare_methods),
                                 begin_run(cfg, False, print)))  # the rest of check_methods: in the body
def run_compare(cfg: RunConfig, out: str | Path, *, methods: tuple[str, ...] | None = None, config_text: str | None = None,
                progress: bool = True, log=print) -> dict[str, Any]:
    """Run every method of the head-to-head (resumable) and write ``OUT/compare.json``."""
    out = Path(out)
    methods = methods or cfg.compare_methods
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise RunError(f"unknown method {unknown[0]!r}: choose from {', '.join(METHODS)}")
    progress, log = begin_run(cfg, progress, log)
    # Before any work: a setting that no method of the comparison reads is refused. The comparison's methods
    # are the config's compare_methods; running some of them (--methods) leaves the others' settings unread
    # by this invocation, not by the comparison.
    check_methods(cfg, methods, compare=True, read_by=tuple(dict.fromkeys((*methods, *cfg.compare_methods))))
    out.mkdir(parents=True, exist_ok=True)
    if config_text is not None and dist.is_main() and not rundir.config_yaml(out).exists():
        atomic_write_text(rundir.config_yaml(out), config_text)
    results, rows_by_method, wall = {}, {}, {}
    t0 = time.time()
    tuning = tune_learning_rates(cfg, out, methods, progress=progress, log=log) if cfg.tuning else {}
    tuning_seconds = round(time.time() - t0, 1)
    invocation = {}
    for method in methods:
        log(f"== {method} ==")
        start = time.time()
        mcfg = with_learning_rate(cfg, method, tuning[method]["chosen"]) if method in tuning else cfg
        summary = run_loop(method_config(mcfg, method), out / method, progress=progress, log=log)
        invocation[method] = round(time.time() - start, 1)
        summary["learning_rate"] = registry.get(method).learning_rate(mcfg)
        results[method] = summary
        # The rows as written (with their solved task ids, for the task-level bootstrap and unanimous@k)
        rows_by_method[method] = {**summary, "per_seed": metrics_rows(out / method, cfg.seeds)}
        wall[method] = measured_seconds(rows_by_method[method]["per_seed"])
    tuning_wall = round(sum(row.get("wall_seconds", 0.0) for t in tuning.values() for row in t["table"]), 1)
    report = {"name": cfg.name, "domain": cfg.domain, "seeds": list(cfg.seeds), "method_order": list(methods),
              "tasks": results[methods[0]]["tasks"], "heldout_tasks": results[methods[0]]["heldout_tasks"],
              "samples_per_task": cfg.sampling.samples_per_task,
              "budget_unit": "sampled completions used for learning",
              # as measured when each generation ran (metrics rows), kept across a resume; the machines named
              "wall_seconds": {m: wall[m]["seconds"] for m in methods}, "measured_seconds": wall,
              "learning_rates": {m: results[m]["learning_rate"] for m in methods},
              "tuning": tuning, "tuning_wall_seconds": tuning_wall,
              **compare_statistics(rows_by_method), "total_wall_seconds": round(
                  tuning_wall + sum(wall[m]["seconds"] for m in methods), 1),
              # this invocation alone (a resume of finished runs: seconds of reading)
              "invocation_wall_seconds": {"tuning": tuning_seconds, **invocation,
                                          "total": round(time.time() - t0, 1)},
              "machine": machine_record()}
    if dist.is_main():
        write_json(rundir.compare_json(out), report)
    return report
