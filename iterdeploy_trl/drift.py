"""What iterative deployment does to the model over generations: drift measures of a run directory.

Per seed and generation g, from the generation's trace records (and, for the KL, the deployed models):

- ``entropy_heldout``: the Monte-Carlo estimate of the deployed sampling distribution's sequence entropy on the
  held-out prompts, H(β_g) ≈ −mean log β_g(y|x) over the held-out samples y ~ β_g(·|x) (nats a completion;
  ``entropy_per_token``: the same sum over all tokens sampled). ``se`` fields: the standard error over the
  samples (the K samples of a task are not independent of each other's task, so read it as a lower bound).
- ``kl_prev_heldout``: KL(β_g ‖ β_{g-1}) on the held-out prompts, ≈ mean [log β_g(y|x) − log β_{g-1}(y|x)]
  over the held-out samples of generation g, the first term recorded at sampling, the second scored under
  generation g−1's deployed model with the same temperature and top-p (``audit.score_logprobs``).
- ``distinct_valid_plans``: per task solved in the generation (pool and held-out apart), the number of
  distinct valid plans among its K samples, averaged over solved tasks (1 for a task solved one way).
- ``valid_plan_length_by_task``: each solved task's mean valid plan length (the figure draws it across
  generations); ``plan_length_change_common``: the mean change from generation g−1 over the tasks solved in
  both.
- ``reasoning_tokens_mean`` / ``completion_tokens_mean``: over every sample of the generation.
- ``tiebreak_acts``: of the pool tasks solved in the generation, the share where the curation's tie-break
  (shortest plan, then fewer reasoning tokens, then fewer completion tokens) keeps another completion than
  shortest-plan-then-earliest-sample would: where it is 0 the tie-break changes nothing.

Every measure but the KL is model-free (``drift_measures``) and is also in each generation's ``metrics.jsonl``
row, written by the loop as the generation finishes (``metrics.generation_metrics``; not
``valid_plan_length_by_task``, which stays here). The KL needs the previous generation's deployed model: with
``drift.kl_previous: true`` the loop loads it and writes ``kl_prev_heldout`` / ``kl_prev_heldout_se`` into the
row too (``metrics.kl_to_previous``, the function ``iterdeploy drift`` uses); by default only ``iterdeploy drift``
computes it, afterwards.

``iterdeploy drift RUN_DIR`` writes ``RUN_DIR/drift.jsonl`` (one row per seed and generation) and, with
``--figure``, a PNG of the measures across generations.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from iterdeploy_trl.drift_measures import (  # noqa: F401 (re-exported: the measures' old home)
    distinct_valid_plans,
    entropy_estimate,
    generation_row,
    kl_estimate,
    plan_length_by_task,
    tiebreak_share,
)
from iterdeploy_trl.metrics import kl_to_previous, score_under
from iterdeploy_trl.runio import write_jsonl


class DriftError(ValueError):
    """A run directory whose drift cannot be measured (the message names what is missing)."""


def measure_run(path: str | Path, *, kl: bool = True, log: Callable[[str], None] = lambda m: None
                ) -> list[dict[str, Any]]:
    """Drift rows of every finished generation of every seed of the run directory ``path``."""
    from iterdeploy_trl.audit import AuditError, open_run, read_traces

    try:
        run = open_run(path)
    except AuditError as exc:
        raise DriftError(str(exc)) from exc
    scoring: tuple[Any, Path] | None = None  # (the run's RunConfig, its base model), once the KL needs them
    rows: list[dict[str, Any]] = []
    for seed in run.seeds:
        previous: dict[str, float] | None = None
        prev_model: Path | None | str = "none"
        for g in range(run.generations + 1):
            recs = read_traces(run, seed, g)
            if recs is None:
                break
            row = {"seed": seed, "generation": g, **generation_row(recs, previous)}
            model = _deployed_model(run.path, seed, g)
            if kl and g > 0 and prev_model != "none":
                scoring = scoring or _run_base(run.config)
                row.update(kl_to_previous(*scoring, prev_model, recs))
            log(f"seed {seed} gen {g}: entropy {_fmt(row['entropy_heldout'])}, KL to previous "
                f"{_fmt(row.get('kl_prev_heldout'))}, distinct valid plans {_fmt(row['distinct_valid_plans_pool'])}")
            rows.append(row)
            previous = row["valid_plan_length_by_task"]
            prev_model = model
    if not rows:
        raise DriftError(f"{path}: no generation has trace records yet")
    return rows


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _deployed_model(run_path: Path, seed: int, g: int) -> Path | None:
    from iterdeploy_trl.rundir import deployed_model, seed_dir

    return deployed_model(seed_dir(run_path, seed), g)


def _run_base(cfg: Mapping[str, Any]) -> tuple[Any, Path]:
    """(RunConfig, base model path) of a run directory's resolved config; DriftError if the base is missing."""
    from iterdeploy_trl.audit import load_run_config
    from iterdeploy_trl.basemodel import auto_base_model_path

    run_cfg = load_run_config(dict(cfg))
    given = run_cfg.model.path
    base = auto_base_model_path(run_cfg) if given == "auto" else Path(given).expanduser()
    if not base.exists():
        raise DriftError(f"{base}: the run's base model is not there; the KL needs it (or run "
                         "`iterdeploy drift --no-kl`)")
    return run_cfg, base


def _score(run_path: Path, cfg: Mapping[str, Any], model_dir: Path | None, recs: Sequence[Mapping[str, Any]],
           temperature: float, top_p: float) -> list[float]:
    """log β(y|x) of ``recs`` under a deployed model of the run whose resolved config is ``cfg``."""
    return score_under(*_run_base(cfg), model_dir, recs, temperature, top_p)


def write_drift(path: str | Path, *, kl: bool = True, figure: bool = False,
                log: Callable[[str], None] = lambda m: None) -> Path:
    """Measure ``path`` and write ``path/drift.jsonl`` (and ``drift.png`` with ``figure``); returns the JSONL."""
    rows = measure_run(path, kl=kl, log=log)
    out = Path(path) / "drift.jsonl"
    write_jsonl(out, rows)
    if figure:
        from iterdeploy_trl.figures.drift import drift_figure

        drift_figure([(Path(path).name, rows)], Path(path) / "drift.png")
    return out


# ------------------------------------------------------------------ two runs that differ in one setting

# (metrics/drift field, label, the field of task ids solved, where a count: the task-and-seed bootstrap)
PAIRED_MEASURES: tuple[tuple[str, str, str | None], ...] = (
    ("solved", "pool tasks solved", "solved_task_ids"),
    ("heldout_solved", "held-out tasks solved", "heldout_solved_task_ids"),
    ("mean_valid_plan_length", "valid plan length (pool samples)", None),
    ("distinct_valid_plans_pool", "distinct valid plans a solved task", None),
    ("completion_tokens_mean", "completion tokens a sample", None),
    ("train_tokens_per_trace", "completion tokens a training trace", None),
    ("train_completion_tokens", "completion tokens trained on", None),
)


def run_table(path: str | Path) -> dict[tuple[int, int], dict[str, Any]]:
    """(seed, generation) -> the generation's metrics row with the model-free drift measures of its traces
    (``measure_run`` without the KL: runs whose rows predate the measures get them too) and
    ``train_tokens_per_trace`` (the fine-tune's completion tokens over its traces; None at generation 0)."""
    from iterdeploy_trl.rundir import open_run

    metrics = open_run(path).metrics()
    table = {}
    for r in measure_run(path, kl=False):
        row = {**metrics.get(r["seed"], {}).get(r["generation"], {}), **r}
        traces = row.get("train_traces") or 0
        row["train_tokens_per_trace"] = row.get("train_completion_tokens", 0) / traces if traces else None
        table[r["seed"], r["generation"]] = row
    return table


def paired_difference(a: Mapping[tuple[int, int], Mapping[str, Any]], b: Mapping[tuple[int, int], Mapping[str, Any]]
                      ) -> list[dict[str, Any]]:
    """Run A − run B (``run_table``s of two runs that differ in one setting, the same seeds), per generation
    and measure of ``PAIRED_MEASURES``, paired by seed over the seeds both ran: the means, the mean difference
    with its t-interval and p over seeds (``stats.paired_t``) and, for the solved counts, the task-and-seed
    bootstrap interval (``stats.task_seed_bootstrap``, the tasks resampled too). A row with generation
    ``"1-G"``: each seed's mean over generations 1..G (G the last generation both ran for every paired seed)."""
    from iterdeploy_trl.stats import paired_t, task_seed_bootstrap

    gens = sorted({g for _, g in a} & {g for _, g in b})
    out: list[dict[str, Any]] = []
    for key, label, ids in PAIRED_MEASURES:
        for g in gens:
            seeds = sorted(s for s, h in a if h == g and (s, g) in b and a[s, g].get(key) is not None
                           and b[s, g].get(key) is not None)
            if not seeds:
                continue
            xa, xb = [float(a[s, g][key]) for s in seeds], [float(b[s, g][key]) for s in seeds]
            out.append(_paired_row(key, label, g, seeds, xa, xb, paired_t([x - y for x, y in zip(xa, xb, strict=True)])))
            if ids is not None:
                total = int(a[seeds[0], g]["tasks" if key == "solved" else "heldout_tasks"])
                out[-1]["bootstrap"] = list(task_seed_bootstrap(_solved_diffs(a, b, seeds, g, ids, total)))
        late = [g for g in gens if g > 0]
        seeds = sorted({s for s, _ in a} & {s for s, _ in b})
        seeds = [s for s in seeds if all(a.get((s, g), {}).get(key) is not None
                                         and b.get((s, g), {}).get(key) is not None for g in late)]
        if late and seeds:
            xa = [sum(float(a[s, g][key]) for g in late) / len(late) for s in seeds]
            xb = [sum(float(b[s, g][key]) for g in late) / len(late) for s in seeds]
            out.append(_paired_row(key, label, f"1-{late[-1]}", seeds, xa, xb,
                                   paired_t([x - y for x, y in zip(xa, xb, strict=True)])))
    return out


def _paired_row(key: str, label: str, g: int | str, seeds: list[int], xa: list[float], xb: list[float],
                pt: Any) -> dict[str, Any]:
    return {"measure": key, "label": label, "generation": g, "seeds": seeds, "a": sum(xa) / len(xa),
            "b": sum(xb) / len(xb), "diff": pt.mean, "lo": pt.lo, "hi": pt.hi, "p": pt.p,
            "per_seed_diff": [x - y for x, y in zip(xa, xb, strict=True)]}


def _solved_diffs(a: Mapping[tuple[int, int], Mapping[str, Any]], b: Mapping[tuple[int, int], Mapping[str, Any]],
                  seeds: list[int], g: int, ids: str, total: int) -> list[list[float]]:
    """tasks × seeds of solved(A) − solved(B) for ``task_seed_bootstrap``: the tasks either run solved under
    some seed, and rows of zeros for the rest of the ``total`` (never solved: they are resampled too)."""
    solved_a = {s: set(a[s, g][ids]) for s in seeds}
    solved_b = {s: set(b[s, g][ids]) for s in seeds}
    tasks = sorted(set().union(*solved_a.values(), *solved_b.values()))
    rows = [[float(t in solved_a[s]) - float(t in solved_b[s]) for s in seeds] for t in tasks]
    return rows + [[0.0] * len(seeds)] * (total - len(tasks))


def paired_markdown(rows: Sequence[Mapping[str, Any]], a: str, b: str) -> str:
    """One Markdown table per measure of ``paired_difference``'s rows."""
    parts = []
    for key, label, ids in PAIRED_MEASURES:
        mine = [r for r in rows if r["measure"] == key]
        if not mine:
            continue
        head = f"| gen | {b} | {a} | {a} − {b} [95 % t over seeds] | p | per seed |"
        rule = "|---|---|---|---|---|---|"
        if ids is not None:
            head, rule = head + " task×seed bootstrap [95 %] |", rule + "---|"
        lines = [f"#### {label} (`{key}`)", "", head, rule]
        for r in mine:
            p = "–" if r["p"] is None else f"{r['p']:.2g}"
            cells = [str(r["generation"]), _num(r["b"]), _num(r["a"]),
                     f"{_num(r['diff'], sign=True)} [{_num(r['lo'], sign=True)}, {_num(r['hi'], sign=True)}]", p,
                     ", ".join(_num(d, sign=True) for d in r["per_seed_diff"])]
            if ids is not None:
                boot = r.get("bootstrap")
                cells.append("–" if boot is None else f"[{boot[1]:+.1f}, {boot[2]:+.1f}]")
            lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def _num(x: float, *, sign: bool = False) -> str:
    """Three significant digits, whole numbers from 100 on (no exponent)."""
    spec = ".0f" if abs(x) >= 100 else ".3g"
    return format(x, ("+" if sign else "") + spec)
