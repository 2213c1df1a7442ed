"""Head-to-head: valid-trace SFT vs importance-weighted SFT vs uncurated SFT vs online REINFORCE.

Every method starts from the same base model, on the same task pool, with the same seeds, and spends
the same **budget of sampled completions used for learning**: the iterative-deployment methods sample
K completions per pool task per generation, so their generation-g model has learnt from
b_g = g·n·K completions; REINFORCE (:class:`~iterdeploy_trl.trainers.ReinforceTrainer`, online) is
trained in G segments of n·K sampled completions each and evaluated after each segment. All methods are
evaluated at the same budget points b_0..b_G by the same deployment (K samples per task on the pool and
the held-out split), and we also report training tokens and wall time, which are *not* equalised.

Every method is one run of the same loop (:func:`iterdeploy_trl.loop.run_loop`; a method is its entry of
``loop.METHOD_TABLE``: its data and its trainer): this module only schedules the methods and computes the
statistics. Layout: ``OUT/<method>/`` is a run directory of the loop, ``OUT/compare.json`` holds the
per-budget statistics.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from pathlib import Path
from typing import Any

from iterdeploy_trl import dist
from iterdeploy_trl.config import METHODS, SFT_METHODS, RunConfig, TrainingConfig
from iterdeploy_trl.loop import RunError, begin_run, check_methods, check_server_methods, run_loop
from iterdeploy_trl.runio import atomic_write_text, machine_record, write_json
from iterdeploy_trl.runlock import holds_run_dir

LOOP_METHODS = SFT_METHODS  # the methods that train on the deployment's traces (the figures' name for them)


def method_config(cfg: RunConfig, method: str) -> RunConfig:
    """The run config of one method in the comparison: the shared settings of ``cfg`` and the method's
    own section only (so a method's run directory, and its hash, hold nothing another method reads).
    REINFORCE, which curates nothing and trains online, gets the SFT methods' settings at their defaults."""
    changes: dict[str, Any] = dict(method=method, name=f"{cfg.name}/{method}", tuning=None,
                                   iw_sft=cfg.iw_sft if method == "iw-sft" else None,
                                   reinforce=cfg.reinforce if method == "reinforce" else None)
    if method == "reinforce":
        sft = TrainingConfig()
        changes.update(curation=RunConfig.curation, accumulate=RunConfig.accumulate,
                       training=dataclasses.replace(cfg.training, init=sft.init, epochs=sft.epochs,
                                                    validation_fraction=sft.validation_fraction))
    elif method == "uncurated-sft":
        changes.update(curation="none")
    else:
        changes.update(curation="shortest" if cfg.curation == "none" else cfg.curation)
    return dataclasses.replace(cfg, **changes).check()


def with_learning_rate(cfg: RunConfig, method: str, lr: float) -> RunConfig:
    """``cfg`` with ``method``'s learning rate set to ``lr`` (REINFORCE: ``reinforce.learning_rate``)."""
    if method == "reinforce":
        return dataclasses.replace(cfg, reinforce=dataclasses.replace(cfg.reinforce_settings, learning_rate=lr))
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
        rates = tuning.reinforce_learning_rates if method == "reinforce" else tuning.sft_learning_rates
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
                          "heldout_solved_mean": last["heldout_solved"]})
        best = max(table, key=lambda row: row["solved_mean"])  # max keeps the first of equal rows
        result[method] = {"seeds": list(tuning.seeds), "table": table, "chosen": best["learning_rate"]}
        log(f"tuning {method}: " + ", ".join(f"lr {r['learning_rate']:g} -> {r['solved_mean']:.1f}" for r in table)
            + f"; chosen {best['learning_rate']:g}")
    return result


# --------------------------------------------------------------------------- statistics


def _ci(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and a two-sided t confidence interval (the interval collapses with one value)."""
    from scipy import stats

    m = statistics.fmean(values)
    if len(values) < 2:
        return m, m, m
    se = statistics.stdev(values) / math.sqrt(len(values))
    half = float(stats.t.ppf(0.5 + level / 2, len(values) - 1)) * se
    return m, m - half, m + half


def compare_statistics(results: dict[str, dict[str, Any]], reference: str = "valid-sft") -> dict[str, Any]:
    """Per method and budget point: mean solved with a 95% CI over seeds, unanimous@k; and paired
    differences against ``reference`` at each budget point (paired t-test over seeds)."""
    from scipy import stats

    table: dict[str, Any] = {}
    for method, summary in results.items():
        rows = []
        per_seed = summary["per_seed"]
        for gen in summary["generations"]:
            g = gen["generation"]
            solved = [next(m["solved"] for m in ms if m["generation"] == g) for ms in per_seed.values()]
            held = [next(m["heldout_solved"] for m in ms if m["generation"] == g) for ms in per_seed.values()]
            mean, lo, hi = _ci([float(x) for x in solved])
            hmean, hlo, hhi = _ci([float(x) for x in held])
            rows.append({"generation": g, "samples_used": gen["samples_used"], "solved_mean": mean,
                         "solved_ci": [lo, hi], "solved_per_seed": solved, "unanimous": gen["unanimous"],
                         "unanimous_k": gen["unanimous_k"], "heldout_solved_mean": hmean, "heldout_ci": [hlo, hhi],
                         "train_traces": gen["train_traces"], "train_completion_tokens": gen["train_completion_tokens"],
                         "train_completion_tokens_cumulative": gen.get("train_completion_tokens_cumulative"),
                         "train_seconds": gen["train_seconds"], "deploy_seconds": gen["deploy_seconds"]})
        table[method] = rows
    paired: dict[str, Any] = {}
    if reference in table:
        ref_seeds = results[reference]["per_seed"]
        for method, summary in results.items():
            if method == reference:
                continue
            diffs_by_gen = []
            for gen in summary["generations"]:
                g = gen["generation"]
                seeds = [s for s in summary["per_seed"] if s in ref_seeds]
                d = [next(m["solved"] for m in summary["per_seed"][s] if m["generation"] == g)
                     - next(m["solved"] for m in ref_seeds[s] if m["generation"] == g) for s in seeds]
                mean, lo, hi = _ci([float(x) for x in d])
                p = None
                if len(d) >= 2 and statistics.pstdev(d) > 0:
                    p = float(stats.ttest_1samp(d, 0.0).pvalue)
                diffs_by_gen.append({"generation": g, "samples_used": gen["samples_used"], "diff_mean": mean,
                                     "diff_ci": [lo, hi], "diff_per_seed": d, "p_value": p})
            paired[f"{method} - {reference}"] = diffs_by_gen
    return {"methods": table, "paired": paired, "reference": reference}


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
    if config_text is not None and dist.is_main() and not (out / "config.yaml").exists():
        atomic_write_text(out / "config.yaml", config_text)
    results = {}
    t0 = time.time()
    tuning = tune_learning_rates(cfg, out, methods, progress=progress, log=log) if cfg.tuning else {}
    tuning_seconds = round(time.time() - t0, 1)
    for method in methods:
        log(f"== {method} ==")
        start = time.time()
        mcfg = with_learning_rate(cfg, method, tuning[method]["chosen"]) if method in tuning else cfg
        summary = run_loop(method_config(mcfg, method), out / method, progress=progress, log=log)
        summary["wall_seconds"] = round(time.time() - start, 1)
        lr = mcfg.reinforce_settings.learning_rate if method == "reinforce" else None
        summary["learning_rate"] = lr or mcfg.training.learning_rate
        results[method] = summary
    report = {"name": cfg.name, "domain": cfg.domain, "seeds": list(cfg.seeds), "method_order": list(methods),
              "tasks": results[methods[0]]["tasks"], "samples_per_task": cfg.sampling.samples_per_task,
              "budget_unit": "sampled completions used for learning",
              "wall_seconds": {m: results[m]["wall_seconds"] for m in methods},
              "learning_rates": {m: results[m]["learning_rate"] for m in methods},
              "tuning": tuning, "tuning_wall_seconds": tuning_seconds,
              **compare_statistics(results), "total_wall_seconds": round(time.time() - t0, 1),
              "machine": machine_record()}
    if dist.is_main():
        write_json(out / "compare.json", report)
    return report
