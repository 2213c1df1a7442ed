"""What ``compare.json`` reports of the arms: per method and budget point the solved counts with intervals
(:func:`method_rows`), the paired comparisons against the reference with their tests (:func:`paired_measure`,
:func:`compare_statistics`; the formulas are :mod:`iterdeploy_trl.stats`'), and each arm's time and budget as its
metrics rows and ``train_stats.json`` measured them (:func:`metrics_rows`, :func:`measured_seconds`,
:func:`arm_budget`). Pure reading and arithmetic: nothing here runs a method."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from iterdeploy_trl import methods as registry
from iterdeploy_trl import rundir
from iterdeploy_trl.config import RunConfig
from iterdeploy_trl.runio import read_json, read_rows
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


def row_seconds(rows: Sequence[dict[str, Any]]) -> tuple[float, float]:
    """Σ of metrics ``rows``' ``deploy_seconds`` (sampling and VAL) and ``train_seconds``, unrounded."""
    return (sum(float(r.get("deploy_seconds") or 0.0) for r in rows),
            sum(float(r.get("train_seconds") or 0.0) for r in rows))


def measured_seconds(per_seed: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """An arm's time as measured when each generation ran: Σ over seeds and generations of the metrics
    rows' ``deploy_seconds`` (sampling and VAL) and ``train_seconds``, with the machines the rows name.
    A resume re-reads the rows and measures nothing again, so these survive it."""
    rows = [r for rs in per_seed.values() for r in rs]
    deploy, train = row_seconds(rows)
    machines = sorted({m for r in rows for m in (r.get("deploy_machine"), r.get("train_machine")) if m})
    return {"seconds": round(deploy + train, 1), "deploy_seconds": round(deploy, 1),
            "train_seconds": round(train, 1), "machines": machines or ["not recorded"]}


def evaluation_seconds(rows: Sequence[dict[str, Any]], online: bool) -> float:
    """The deployment seconds of metrics ``rows`` whose traces nothing trains on: every deployment of an online
    arm, a curating run's last generation."""
    last = max((r["generation"] for r in rows), default=0)
    return sum(float(r.get("deploy_seconds") or 0.0) for r in rows if online or r["generation"] == last)


def plan_runs(report: dict[str, Any], cmp_dir: Path) -> list[Path]:
    """The run directories a finished comparison (``report``: its compare.json) counts: its result arms and the
    tuning runs of its tuning tables. ``OUT/tuning`` may hold more (the runs of an earlier, moved grid)."""
    arms = [Path(cmp_dir) / arm for arm in report.get("budgets") or {}]
    tuning = [rundir.tuning_run(cmp_dir, row["run"]) for tuned in (report.get("tuning") or {}).values()
              for row in tuned.get("table") or []]
    return [run for run in [*arms, *tuning] if rundir.is_run(run)]


def phase_seconds(runs: Sequence[Path]) -> dict[str, float]:
    """Seconds per phase over ``runs`` as their metrics rows measured them: ``deploy`` (every deployment, VAL
    inside), ``evaluate`` (:func:`evaluation_seconds`; part of ``deploy``) and ``train`` (an online arm's trainer
    samples and scores inside it). Summed from the rows unrounded: a tiny protocol's hundred runs would otherwise
    add a hundred roundings."""
    out = {"deploy": 0.0, "evaluate": 0.0, "train": 0.0}
    for run in runs:
        online = not registry.get(read_json(rundir.resolved_config(run))["config"]["method"]).curates
        rows = [r for rs in metrics_rows(run, list(rundir.seed_dirs(run))).values() for r in rs]
        deploy, train = row_seconds(rows)
        out["deploy"] += deploy
        out["train"] += train
        out["evaluate"] += evaluation_seconds(rows, online)
    return out


def time_shares(report: dict[str, Any], cmp_dir: Path) -> dict[str, Any]:
    """Where a finished comparison's run-seconds went (``report``: its compare.json): ``tuning`` and ``arms``
    (seconds, as compare.json holds them), ``total`` (the seconds of its runs, :func:`plan_runs`, as measured in
    their metrics rows: equal to tuning + arms up to compare.json's rounding), the shares of ``total`` spent
    deploying for learning (``learn``), evaluating (``evaluate``) and training (``train``) over every run, tuning
    included, and ``outside``: the runs in ``OUT/tuning`` outside its tuning tables and their seconds."""
    tuning = float(report.get("tuning_wall_seconds") or 0.0)
    arms = sum(float((b.get("seconds") or {}).get("total") or 0.0) for b in (report.get("budgets") or {}).values())
    counted = plan_runs(report, cmp_dir)
    phases = phase_seconds(counted)
    total = phases["deploy"] + phases["train"]
    share = (lambda x: x / total) if total > 0 else (lambda x: 0.0)
    others = [run for run in rundir.method_runs(Path(cmp_dir) / rundir.TUNING) if run not in counted]
    rest = phase_seconds(others)
    return {"tuning": tuning, "arms": arms, "total": total, "learn": share(phases["deploy"] - phases["evaluate"]),
            "evaluate": share(phases["evaluate"]), "train": share(phases["train"]),
            "outside": {"runs": [run.name for run in others], "seconds": rest["deploy"] + rest["train"]}}


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
    steps = 0
    for seed, seed_rows in per_seed.items():
        for r in seed_rows:
            gdir = rundir.gen_dir(rundir.seed_dir(run_out, int(seed)), r["generation"])
            stats = rundir.train_stats(rundir.model(gdir))
            steps += int(read_json(stats).get("train_steps", 0)) if stats.exists() else 0
    deployed = sum((int(r.get("tasks") or 0) + int(r.get("heldout_tasks") or 0)) * k for r in rows)
    trainer_sampled = sum(int(r.get("train_traces") or 0) for r in rows) if online else 0
    sec = measured_seconds(per_seed)
    evaluate = evaluation_seconds(rows, online)
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
