"""Head-to-head: valid-trace SFT vs importance-weighted SFT vs uncurated SFT vs online REINFORCE.

Every method starts from the same base model, on the same task pool, with the same seeds, and spends
the same **budget of sampled completions used for learning**: the iterative-deployment methods sample
K completions per pool task per generation, so their generation-g model has learnt from
b_g = g·n·K completions; REINFORCE (:class:`~iterdeploy_trl.trainers.ReinforceTrainer`, online) is
trained in G segments of n·K sampled completions each and evaluated after each segment. All methods are
evaluated at the same budget points b_0..b_G by the same deployment (K samples per task on the pool and
the held-out split), and we also report training tokens and wall time, which are *not* equalised.

Layout: ``OUT/<method>/`` is a run directory of :mod:`iterdeploy_trl.loop` (REINFORCE writes the same
files), ``OUT/compare.json`` holds the per-budget statistics.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from iterdeploy_trl import dist
from iterdeploy_trl.config import RunConfig
from iterdeploy_trl.deploy import batch_seed
from iterdeploy_trl.loop import (
    RunError,
    _check_run_dir,
    aggregate,
    append_metrics,
    begin_run,
    deploy_generation,
    generation_metrics,
    make_backend,
    prepare_tasks,
    process_batch,
    resolve_base_model,
    run_loop,
)
from iterdeploy_trl.runio import read_json, read_jsonl, replace_dir, write_json

LOOP_METHODS = ("valid-sft", "iw-sft", "uncurated-sft")


def method_config(cfg: RunConfig, method: str) -> RunConfig:
    """The run config of one method in the comparison."""
    curation = "none" if method == "uncurated-sft" else ("shortest" if cfg.curation == "none" else cfg.curation)
    return dataclasses.replace(cfg, method=method, curation=curation, name=f"{cfg.name}/{method}").check()


def run_reinforce(cfg: RunConfig, out: Path, *, config_text: str | None = None, progress: bool = True,
                  log=print) -> dict[str, Any]:
    """Online REINFORCE with the VAL reward, evaluated after every n·K sampled completions."""
    progress, log = begin_run(cfg, progress, log)
    dist.main_first(lambda: _check_run_dir(cfg, out, config_text))
    task_set, pool, heldout = dist.main_first(lambda: prepare_tasks(cfg, out))
    base = dist.main_first(lambda: resolve_base_model(cfg, progress=progress))
    per_seed = {}
    for seed in cfg.seeds:
        per_seed[seed] = _reinforce_seed(cfg, out, seed, base, task_set.domain_pddl, pool, heldout,
                                         progress=progress, log=log)
    summary = {"name": cfg.name, "domain": cfg.domain, "method": "reinforce", "curation": None,
               "seeds": list(cfg.seeds), "base_model": str(base), "tasks": len(pool),
               "heldout_tasks": len(heldout), "samples_per_task": cfg.sampling.samples_per_task, "complete": True,
               "generations": aggregate(per_seed),
               "per_seed": {str(s): [{k: v for k, v in m.items() if not k.endswith("task_ids")} for m in ms]
                            for s, ms in per_seed.items()}}
    if dist.is_main():
        write_json(out / "summary.json", summary)
    return summary


def _reinforce_seed(cfg: RunConfig, out: Path, seed: int, base: Path, domain_pddl: str, pool: list[Any],
                    heldout: list[Any], *, progress: bool, log) -> list[dict[str, Any]]:

    sdir = out / f"seed_{seed}"
    metrics_path = sdir / "metrics.jsonl"
    sdir.mkdir(parents=True, exist_ok=True)
    done = {m["generation"]: m for m in (read_jsonl(metrics_path) if metrics_path.exists() else [])}
    per_segment = len(pool) * cfg.sampling.samples_per_task
    tokens = 0
    for g in range(cfg.generations + 1):
        gdir = sdir / f"gen_{g:02d}"
        model_dir = None if g == 0 else gdir / "model"
        if g > 0 and not dist.from_main((model_dir / "train_stats.json").exists()):
            prev = None if g == 1 else sdir / f"gen_{g - 1:02d}" / "model"
            train_reinforce_segment(cfg, base, prev, pool, domain_pddl, model_dir, completions=per_segment,
                                    seed=batch_seed(seed, "reinforce", g) % (2**31))
        stats = read_json(model_dir / "train_stats.json") if g > 0 else {}
        tokens += stats.get("train_completion_tokens", 0)
        t0 = time.time()
        records = deploy_generation(cfg, lambda md=model_dir: make_backend(cfg, base, md), domain_pddl,
                                    {"pool": pool, "heldout": heldout}, gdir, seed=seed, generation=g,
                                    model_id=str(model_dir or base), run_name=cfg.name, method="reinforce",
                                    progress=progress)
        if g not in done:
            m = generation_metrics(records, g, len(pool), len(heldout))
            m.update(seed=seed, samples_used=g * per_segment, deploy_seconds=round(time.time() - t0, 2),
                     train_traces=stats.get("train_traces", 0), train_seconds=stats.get("train_seconds", 0.0),
                     train_completion_tokens=stats.get("train_completion_tokens", 0),
                     train_completion_tokens_cumulative=tokens)
            append_metrics(metrics_path, m)
            done[g] = m
        m = done[g]
        log(f"reinforce seed {seed} budget {m['samples_used']}: solved {m['solved']}/{m['tasks']}, "
            f"held-out {m['heldout_solved']}/{m['heldout_tasks']}")
    return [done[g] for g in sorted(done)]


def reinforce_batch(cfg: RunConfig) -> tuple[int, int, int]:
    """(completions per optimizer step over all processes, per-process batch, per-process accumulation)."""
    tcfg, s = cfg.training, cfg.sampling
    # Completions per optimizer step: per_device_train_batch_size (completions) x accumulation.
    per_step = max(s.samples_per_task, (tcfg.batch_size // s.samples_per_task) * s.samples_per_task)
    return (per_step, *process_batch(per_step, tcfg.gradient_accumulation_steps))


def train_reinforce_segment(cfg: RunConfig, base: Path, init_from: Path | None, pool: list[Any], domain_pddl: str,
                            out_dir: Path, *, completions: int, seed: int) -> dict[str, Any]:
    """One segment of online REINFORCE: ``completions`` sampled completions, then save the model."""
    from datasets import Dataset

    from iterdeploy_trl.loop import _dtype, prompt_for
    from iterdeploy_trl.models import load_model_and_tokenizer
    from iterdeploy_trl.reward import ValidPlanReward
    from iterdeploy_trl.trainers import ReinforceConfig, ReinforceTrainer

    t0 = time.time()
    tcfg, s = cfg.training, cfg.sampling
    device = dist.device()
    model, tok = load_model_and_tokenizer(init_from or base, dtype=_dtype(cfg.model.dtype), device=device)
    rows = [{"prompt": prompt_for(cfg, domain_pddl, t, tok), "domain_pddl": domain_pddl, "problem_pddl": t.problem}
            for t in pool]
    # The global batch (completions per optimizer step) is the same whatever the number of processes.
    per_step, batch_size, accumulation = reinforce_batch(cfg)
    steps = max(1, math.ceil(completions / (per_step * tcfg.gradient_accumulation_steps)))
    tmp = out_dir.with_name(out_dir.name + ".partial")
    if dist.is_main():
        shutil.rmtree(tmp, ignore_errors=True)
    peft_config = None
    if tcfg.lora is not None:
        from peft import LoraConfig

        peft_config = LoraConfig(r=tcfg.lora.r, lora_alpha=tcfg.lora.alpha, lora_dropout=tcfg.lora.dropout,
                                 target_modules=tcfg.lora.target_modules, task_type="CAUSAL_LM")
    args = ReinforceConfig(
        output_dir=str(tmp / "trainer"), max_steps=steps,
        learning_rate=tcfg.reinforce_learning_rate or tcfg.learning_rate,
        per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation,
        num_generations=s.samples_per_task, temperature=s.temperature, top_p=s.top_p,
        max_completion_length=s.max_new_tokens, seed=seed, data_seed=seed, save_strategy="no", report_to=[],
        logging_steps=1, baseline=tcfg.reinforce_baseline, bf16=cfg.model.dtype == "bfloat16" and device.startswith("cuda"),
        use_vllm=s.backend == "vllm", lr_scheduler_type="constant", disable_tqdm=False,
    )
    reward = ValidPlanReward(timeout=cfg.validation_timeout, workers=cfg.validation_workers)
    trainer = ReinforceTrainer(model=model, reward_funcs=[reward], args=args, train_dataset=Dataset.from_list(rows),
                               processing_class=tok, peft_config=peft_config)
    dist.check_trainer(trainer)
    trainer.train()
    if dist.is_main():  # DDP: every process holds the same weights
        hist = trainer.state.log_history
        mean_len = [h["completions/mean_length"] for h in hist if "completions/mean_length" in h]
        tmp.mkdir(parents=True, exist_ok=True)
        model_out = trainer.model.merge_and_unload() if peft_config is not None else trainer.model
        model_out.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        shutil.rmtree(tmp / "trainer", ignore_errors=True)
        stats = {"train_traces": steps * per_step * tcfg.gradient_accumulation_steps, "train_steps": steps,
                 "train_seconds": round(time.time() - t0, 2),
                 "train_completion_tokens": int(sum(mean_len) * per_step * tcfg.gradient_accumulation_steps),
                 "reward_mean": [h.get("reward") for h in hist if "reward" in h]}
        write_json(tmp / "train_stats.json", stats)
        replace_dir(tmp, out_dir)
    dist.barrier()  # the model is in place before any process deploys it
    return read_json(out_dir / "train_stats.json")


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


def run_compare(cfg: RunConfig, out: str | Path, *, methods: tuple[str, ...] | None = None, config_text: str | None = None,
                progress: bool = True, log=print) -> dict[str, Any]:
    """Run every method of the head-to-head (resumable) and write ``OUT/compare.json``."""
    out = Path(out)
    progress, log = begin_run(cfg, progress, log)
    out.mkdir(parents=True, exist_ok=True)
    if config_text is not None and dist.is_main() and not (out / "config.yaml").exists():
        (out / "config.yaml").write_text(config_text)
    methods = methods or ("valid-sft", "iw-sft", "uncurated-sft", "reinforce")
    results = {}
    t0 = time.time()
    for method in methods:
        if method not in LOOP_METHODS + ("reinforce",):
            raise RunError(f"unknown method {method!r}: choose from {LOOP_METHODS + ('reinforce',)}")
        mcfg = method_config(cfg, method)
        mdir = out / method
        log(f"== {method} ==")
        start = time.time()
        if method == "reinforce":
            summary = run_reinforce(mcfg, mdir, progress=progress, log=log)
        else:
            summary = run_loop(mcfg, mdir, progress=progress, log=log)
        summary["wall_seconds"] = round(time.time() - start, 1)
        results[method] = summary
    report = {"name": cfg.name, "domain": cfg.domain, "seeds": list(cfg.seeds), "methods": list(methods),
              "tasks": results[methods[0]]["tasks"], "samples_per_task": cfg.sampling.samples_per_task,
              "budget_unit": "sampled completions used for learning",
              "wall_seconds": {m: results[m]["wall_seconds"] for m in methods},
              **compare_statistics(results), "total_wall_seconds": round(time.time() - t0, 1)}
    if dist.is_main():
        write_json(out / "compare.json", report)
    return report
