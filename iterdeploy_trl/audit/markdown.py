"""The audit's report in markdown: one section per audited run (:func:`audit_markdown`) and the
blind-spot comparison (:func:`blind_spot_markdown`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from iterdeploy_trl.audit.reading import STAGES


def _f(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.2e}"
        return f"{v:.{digits}g}"
    return str(v)


def audit_markdown(audits: Sequence[dict[str, Any]], figures: Sequence[Path] = (),
                   experiment: dict[str, Any] | None = None) -> str:
    """The report: the blind-spot comparison (when a run declares one), then one section per run
    (lineage, checks, funnel, effective reward, drift)."""
    lines = ["# Reward audit", "", "Written by `iterdeploy audit` from the run directories alone. Funnel: pool "
             "traces of each generation; *curated* = those of the generation that curation returned to training "
             "right after it. Effective reward (Prop. 2): r·Σ_k λ_k β_k/π per training trace, r = 1 for every "
             "trace curation kept, λ_k the share of the training set sampled in generation k, β_k the model that "
             "deployed generation k (its sampling temperature and top-p) scored on every trace, π the model the "
             "training starts from (the base under training.init base, else the deployed model; at T 1).", ""]
    if experiment:
        lines += blind_spot_markdown(experiment, figures)
    for a in audits:
        lin = a["lineage"]
        lines += [f"## {a['name']} — `{a['run']}`", "",
                  f"Domain {a['domain']}; method {lin['method']}, curation `{lin['curation']}`"
                  f"{' (accumulated over generations)' if lin['accumulate'] else ''}; validator config "
                  f"`{lin['validator_config'] or 'exact VAL (no validator section)'}`; base model `{lin['base_model']}`; "
                  f"config hash {lin['config_hash']}; seeds {lin['seeds']}; {lin['pool_tasks']} pool + "
                  f"{lin['heldout_tasks']} held-out tasks × {lin['samples_per_task']} samples.", ""]
        for f in figures:
            if f.suffix == ".png" and _slug(a["name"]) in f.name:
                lines.append(f"![{f.stem}]({f.name})")
        lines.append("")
        bad = [c for c in a["checks"] if not c["ok"]]
        lines += [f"**Completeness and consistency**: {len(a['checks']) - len(bad)} of {len(a['checks'])} checks "
                  "pass" + (":" if bad else "."), ""]
        for c in bad:
            lines.append(f"- {'FAILED' if c['ok'] is False else 'not checked'}: {c['check']} — {c['detail']}")
        if bad:
            lines.append("")
        for seed, s in a["seeds"].items():
            lines += [f"### seed {seed}", "", "Funnel (pool): traces (tasks) at each stage and their mean features.", "",
                      "| gen | stage | traces | tasks | plan length | rel. to reference | reasoning tok. | completion tok. "
                      "| task size | repeated / plan | undone / plan | novel | valid |",
                      "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
            for e in s["generations"]:
                for st in STAGES:
                    x = e["funnel"].get(st)
                    if x is None:
                        continue
                    lines.append(f"| {e['generation']} | {st} | {x['n']} | {e['funnel_tasks'].get(st)} | "
                                 f"{_f(x['plan_length_mean'])} | {_f(x['relative_length_mean'])} | "
                                 f"{_f(x['reasoning_tokens_mean'])} | {_f(x['completion_tokens_mean'])} | "
                                 f"{_f(x['task_size_mean'])} | {_f(x['repeated_per_plan'])} | "
                                 f"{_f(x['undone_per_plan'])} | {_f(x['novel_fraction'])} | {_f(x['valid_fraction'])} |")
            lines += ["", "Action types (fraction of the actions written), sampled → curated:", ""]
            for e in s["generations"]:
                samp = e["funnel"]["sampled"]["action_type_fraction"]
                cur = e["funnel"].get("curated", {}).get("action_type_fraction", {})
                kinds = sorted(set(samp) | set(cur))
                lines.append(f"- gen {e['generation']}: " + ", ".join(
                    f"{k} {_f(samp.get(k, 0.0), 2)} → {_f(cur.get(k), 2) if cur else '–'}" for k in kinds))
            lines += ["", "Effective reward r·Σ_k λ_k β_k/π of each training set:", "",
                      "| after gen | rows | π = model of gen | λ_k by source gen | mean | median | p10 | p90 | max | ESS / n | top 10 % share | "
                      "weight share by source gen | valid among rewarded | recorded vs rescored log β, max abs diff |",
                      "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
            for e in s["generations"]:
                er = e.get("effective_reward")
                if er is None:
                    continue
                if not er.get("computed"):
                    lines.append(f"| {e['generation']} | {e['training_set']['rows']} | not computed: {er['why']} "
                                 "| | | | | | | | | | | |")
                    continue
                st = er["statistics"]
                share = ", ".join(f"{k}: {v:.2f}" for k, v in st["share_by_source_generation"].items())
                lams = ", ".join(f"{k}: {v:.2f}" for k, v in er["shares_by_source_generation"].items())
                lines.append(f"| {e['generation']} | {st['n']} | {er['pi_generation']} | {lams} | {_f(st['mean'])} | "
                             f"{_f(st['median'])} | {_f(st['p10'])} | {_f(st['p90'])} | {_f(st['max'])} | "
                             f"{_f(st['ess_fraction'])} | {_f(st['top10pct_share'])} | {share} | "
                             f"{_f(er['valid_fraction_of_rewarded'])} | {_f(er['recorded_behaviour_max_abs_logprob_diff'])} |")
            tops = [(e["generation"], t) for e in s["generations"] if e.get("effective_reward", {}).get("computed")
                    for t in e["effective_reward"]["top_traces"][:3]]
            if tops:
                lines += ["", "Heaviest training traces (top 3 per training set):", ""]
                lines += [f"- after gen {g}: {t['task_id']} (sampled in gen {t['generation']}, {t['plan_length']} "
                          f"actions): weight {_f(t['weight'])}, log Σλβ {t['log_mixture']:.2f}, log π {t['log_pi']:.2f}"
                          for g, t in tops]
            lines += ["", "Drift and regressions (all deployed outputs):", "",
                      "| gen | pool solved | held-out solved | lost since previous | lost since ever | newly solved "
                      "| pool valid | held-out valid | pool truncated | pool plan length | held-out plan length "
                      "| pool undone / plan | model | validator |",
                      "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
            for e in s["generations"]:
                sv, dp = e["solved"], e["deployed"]
                lines.append(f"| {e['generation']} | {sv['pool']}/{sv['pool_tasks']} | {sv['heldout']}/{sv['heldout_tasks']} "
                             f"| {len(sv['lost_since_previous'])} | {len(sv['lost_since_ever'])} | {len(sv['gained'])} | "
                             f"{_f(dp['pool']['valid_fraction'])} | {_f(dp['heldout']['valid_fraction'])} | "
                             f"{_f(dp['pool']['truncated_fraction'])} | {_f(dp['pool']['plan_length_mean'])} | "
                             f"{_f(dp['heldout']['plan_length_mean'])} | {_f(dp['pool']['undone_per_plan'])} | "
                             f"`{', '.join(e['lineage']['model'])}` | {'; '.join(e['lineage']['validator'])} |")
            blind = [e for e in s["generations"] if "blind_spot" in e]
            if blind:
                lines += ["", "Blind spot (pool outputs): accepted by the training validator, by the exact one, "
                          "and by the training one only (exploits):", "",
                          "| gen | training-validator valid | exact valid | exploit |", "|---|---|---|---|"]
                lines += [f"| {e['generation']} | {_f(e['blind_spot']['train_valid_fraction'])} | "
                          f"{_f(e['blind_spot']['exact_valid_fraction'])} | {_f(e['blind_spot']['exploit_fraction'])} |"
                          for e in blind]
            lines += ["", "Training sets (lineage):", ""]
            for e in s["generations"]:
                ts = e.get("training_set")
                if ts:
                    lines.append(f"- `{ts['file']}` (sha256 {ts['sha256']}): {ts['rows']} rows, "
                                 f"{ts['from_this_generation']} sampled in gen {e['generation']}, by source generation "
                                 f"{ts['by_source_generation']}, valid {_f(ts['valid_fraction'])}; trains generation "
                                 f"{ts['trains_generation']}" + (f"; train_stats {ts['train_stats']}"
                                                                 if ts.get("train_stats") else ""))
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def blind_spot_markdown(experiment: dict[str, Any], figures: Sequence[Path] = ()) -> list[str]:
    """The blind-spot comparison: per condition and generation, the exploit shares (of all samples, of the
    blind-accepted ones, of the curated training set) and solve rates, mean [95 % t-interval] over seeds;
    then every condition against every other, paired by seed, with raw and Holm-adjusted p."""
    lines = ["## Blind-spot experiment", "",
             f"Blind spot: {experiment['blind_spot']}. Every condition's deployed pool outputs are judged by the "
             "same two validators (traces of a run that did not record this blind verdict are checked again by VAL "
             "on the blind task). Exploit: accepted by the blind validator, rejected by the exact one. Its share "
             "among all samples, among the samples the blind validator accepts, and among the curated training set "
             "written after the generation (all generations' curated traces when accumulated; the last generation "
             "trains nothing: –). Solved: fraction of pool tasks with at least one accepted sample. Mean over "
             "seeds [95 % t-interval].", ""]
    lines += [f"![{f.stem}]({f.name})" for f in figures if f.suffix == ".png" and f.stem == "blind_spot_experiment"]
    lines += ["", "| condition | run | gen | seeds | exploits / all samples | exploits / blind-accepted | "
              "exploits / curated training set | exactly valid / sample | exact solved | blind solved |",
              "|---|---|---|---|---|---|---|---|---|---|"]

    def cell(x: dict[str, Any] | None) -> str:
        return "–" if x is None else f"{x['mean']:.3f} [{x['ci'][0]:.3f}, {x['ci'][1]:.3f}]"

    for r in experiment["runs"]:
        for e in r["summary"]:
            lines.append(f"| {r['condition']} | `{r['name']}` | {e['generation']} | {e['seeds']} | "
                         f"{cell(e.get('exploit_fraction'))} | {cell(e.get('exploit_share_of_blind_accepted'))} | "
                         f"{cell(e.get('curated_exploit_share'))} | {cell(e.get('exact_valid_fraction'))} | "
                         f"{cell(e.get('exact_solved'))} | {cell(e.get('blind_solved'))} |")
    paired = experiment.get("paired") or []
    if paired:
        from iterdeploy_trl.blindspot import PAIRED_MEASURES

        lines += ["", f"Paired by seed (A − B, the same seed in both; generation 0 deploys the same base model in "
                  f"every condition and is not tested): per-seed difference, mean [95 % t-interval], the seeds where "
                  f"A is higher / lower, two-sided paired-t p and Holm-adjusted p over all {len(paired)} tests of "
                  "this table.", "",
                  "| A − B | measure | gen | per seed (seed: A − B) | mean [95 % CI] | A higher / lower | p | Holm p |",
                  "|---|---|---|---|---|---|---|---|"]
        for row in paired:
            seeds = ", ".join(f"{d['seed']}: {d['diff']:+.3f}" for d in row["per_seed"])
            lines.append(f"| {row['a']} − {row['b']} | {PAIRED_MEASURES.get(row['measure'], row['measure'])} | "
                         f"{row['generation']} | {seeds} | {row['mean_diff']:+.3f} [{row['ci'][0]:+.3f}, "
                         f"{row['ci'][1]:+.3f}] | {row['a_higher_on']} / {row['a_lower_on']} | {_f(row['p'])} | "
                         f"{_f(row['p_holm'])} |")
    return [*lines, ""]


def _slug(text: Any) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-") or "run"
