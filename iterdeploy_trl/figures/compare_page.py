"""The results page of one head-to-head (issue 24), as a draft: ``iterdeploy figures OUT --out FIGDIR --page
docs/results/<name>.md`` draws the compare directory's figures (pool and held-out tasks solved vs sampled
completions, vs training tokens and vs wall-clock seconds) and writes the page with every table the protocol
reports, read from ``OUT/compare.json``:

- the held-out table (the primary measure) and the pool table: per arm at the full budget, the mean over
  seeds, the per-seed values, the seed-level t interval, a task-and-seed bootstrap interval (from the arm's
  run directory: its metrics rows name the tasks solved) and unanimous@k with its Wilson interval; both
  measures along the budget;
- the paired differences against the reference arm, raw and Holm-adjusted p, and compare.json's verdict per
  arm and measure (no claim where an interval covers 0 or the Holm-adjusted p exceeds α);
- the tuning table (every grid point, its score per tuning seed, the chosen point, the grid edge flag with its
  knob), the tuning pool's disjointness record and the held-out/pool overlap;
- the budgets in every unit with the wall seconds per phase and the machine that measured them, and how often
  ``max_grad_norm`` clipped each fine-tune (from the arms' ``train_stats.json``);
- where the time went (:func:`time_md`): tuning vs result arms and each phase over every run, tuning included.

What only a person can write (the question, what the numbers show and do not show, the commit, the load on
the machine) is left as slots marked :data:`SLOT`; ``tests/test_compare_page.py`` fails while a page under
``docs/results/`` still holds one. The page is never written over: a second run asks for another path.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iterdeploy_trl import rundir
from iterdeploy_trl.compare import MEASURES, PRIMARY_MEASURE, metrics_rows, task_matrix
from iterdeploy_trl.figures.compare import budgets_md, interval_text, paired_rows, tuning_md
from iterdeploy_trl.figures.markdown import Drawn, Markdown, fmt
from iterdeploy_trl.figures.sources import FigureError
from iterdeploy_trl.stats import task_seed_bootstrap

SLOT = "WRITE:"  # marks what a person must write; a docs/results page holding it is a draft
DRAFT_NOTE = "<!-- DRAFT"
# compare.json's row keys per measure: the solved task ids (metrics rows) and the number of tasks
TASK_IDS = {"heldout_solved": "heldout_solved_task_ids", "solved": "solved_task_ids"}
TOTALS = {"heldout_solved": "heldout_tasks", "solved": "tasks"}
MEAN_KEYS = {"heldout_solved": ("heldout_solved_mean", "heldout_ci", "heldout_solved_per_seed", "heldout_unanimous",
                                "heldout_unanimous_ci"),
             "solved": ("solved_mean", "solved_ci", "solved_per_seed", "unanimous", "unanimous_ci")}


@dataclass
class Page:
    """What :func:`write_page` wrote: the page, and the figures it links."""

    path: Path
    figures: list[Drawn]


def slot(what: str) -> str:
    """A marked place for text a person writes."""
    return f"_[{SLOT} {what}]_"


def arm_bootstrap(run_dir: Path, seeds: Sequence[int], generation: int, measure: str,
                  total: int | None) -> list[float] | None:
    """The task-and-seed bootstrap interval of one arm's mean ``measure`` (tasks solved) at ``generation``: the
    same resampling as the paired intervals (``stats.task_seed_bootstrap``), of the arm's own 0/1 outcomes.
    None where a seed's metrics row is missing or names no solved task ids."""
    rows = metrics_rows(run_dir, seeds)
    at = [next((r for r in rs if r.get("generation") == generation), None) for rs in rows.values()]
    ids = TASK_IDS[measure]
    if not at or not total or any(r is None or ids not in r for r in at):
        return None
    _, lo, hi = task_seed_bootstrap(task_matrix([set(r[ids]) for r in at], [set() for _ in at], int(total)))
    return [lo, hi]


def arm_bootstraps(report: dict[str, Any], cmp_dir: Path) -> dict[str, dict[str, list[float] | None]]:
    """measure -> arm -> :func:`arm_bootstrap` at the arm's last budget point."""
    out: dict[str, dict[str, list[float] | None]] = {m: {} for m in MEASURES}
    for arm, rows in report["methods"].items():
        last = rows[-1] if rows else None
        for measure in MEASURES:
            out[measure][arm] = None if last is None else arm_bootstrap(
                cmp_dir / arm, report.get("seeds", []), last["generation"], measure, last.get(TOTALS[measure]))
    return out


def grad_clip(cmp_dir: Path, arm: str, seeds: Sequence[int], generation: int) -> list[dict[str, Any]]:
    """Each seed's record of how often ``max_grad_norm`` clipped the fine-tune that made ``generation``'s model
    (``train_stats.json``'s ``grad_clip``; seeds without one left out)."""
    from iterdeploy_trl import rundir
    from iterdeploy_trl.runio import read_json

    out = []
    for seed in seeds:
        path = rundir.train_stats(rundir.model(rundir.gen_dir(rundir.seed_dir(cmp_dir / arm, seed), generation)))
        record = read_json(path).get("grad_clip") if path.is_file() else None
        if isinstance(record, dict) and record.get("optimizer_steps"):
            out.append(record)
    return out


def clip_rows(report: dict[str, Any], cmp_dir: Path) -> list[tuple[Any, ...]]:
    """Per arm and generation after 0: the share of optimizer steps that ``max_grad_norm`` clipped (over every
    seed's steps, and per seed), the mean gradient norm before clipping (mean over seeds) and the threshold."""
    rows = []
    for arm, points in report["methods"].items():
        for r in points:
            records = grad_clip(cmp_dir, arm, report.get("seeds", []), r["generation"]) if r["generation"] else []
            if not records:
                continue
            steps = sum(int(x["optimizer_steps"]) for x in records)
            clipped = sum(int(x.get("clipped_steps") or 0) for x in records)
            norms = [float(x["grad_norm_mean"]) for x in records if x.get("grad_norm_mean") is not None]
            rows.append((arm, r["generation"], f"{clipped} of {steps}", clipped / steps,
                         ", ".join(fmt(x.get("clip_fraction")) for x in records),
                         sum(norms) / len(norms) if norms else None,
                         ", ".join(sorted({fmt(x.get("max_grad_norm")) for x in records}))))
    return rows


def _settings(report: dict[str, Any], arm: str) -> str:
    """The arm's chosen tuning point (or its learning rate), e.g. 'learning_rate 0.001, prompts_per_step 4'."""
    chosen = (report.get("tuning") or {}).get(arm, {}).get("chosen_settings")
    if chosen:
        return ", ".join(f"{k} {v:g}" for k, v in chosen.items())
    lr = (report.get("learning_rates") or {}).get(arm)
    return f"learning_rate {lr:g}" if lr is not None else "–"


def measure_rows(report: dict[str, Any], measure: str,
                 boots: dict[str, list[float] | None]) -> list[tuple[Any, ...]]:
    """One row per arm at its last budget point: settings, budget, mean, per seed, seed-t and bootstrap
    intervals, unanimous@k and its Wilson interval."""
    mean_k, ci_k, seeds_k, unan_k, unan_ci_k = MEAN_KEYS[measure]
    rows = []
    for arm, points in report["methods"].items():
        if not points:
            continue
        r = points[-1]
        rows.append((arm, _settings(report, arm), r["samples_used"], r.get(mean_k), ", ".join(
            fmt(v) for v in r.get(seeds_k) or []) or None, interval_text(r.get(ci_k)), interval_text(boots.get(arm)),
            r.get(unan_k), interval_text(r.get(unan_ci_k))))
    return rows


def budget_point_rows(report: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Both measures at every budget point of every arm (mean [seed-t interval]) and the wall seconds spent."""
    rows = []
    for arm, points in report["methods"].items():
        for r in points:
            rows.append((arm, r["generation"], r["samples_used"],
                         f"{fmt(r.get('heldout_solved_mean'))} {interval_text(r.get('heldout_ci')) or ''}".strip(),
                         f"{fmt(r.get('solved_mean'))} {interval_text(r.get('solved_ci')) or ''}".strip(),
                         r.get("wall_seconds_cumulative")))
    return rows


def _machine_line(report: dict[str, Any]) -> str:
    """compare.json's machine record and the machines the wall times were measured on."""
    m = report.get("machine") or {}
    versions = m.get("versions") or {}
    lib = ", ".join(f"{k} {versions[k]}" for k in ("torch", "transformers", "trl", "peft", "vllm") if k in versions)
    measured = sorted({x for b in (report.get("budgets") or {}).values() for x in b.get("machines") or []})
    return (f"{m.get('cpu', 'CPU not recorded')} (cpu family/model {m.get('cpu_family_model', '?')}, "
            f"{m.get('cpu_capability', '?')}, {m.get('cpu_count', '?')} CPUs; GPUs: "
            f"{', '.join(map(str, m.get('gpus') or [])) or 'none'}; Python {m.get('python', '?')}, {lib}; "
            f"compare.json `machine`). Wall times measured on: {', '.join(measured) or 'not recorded'}.")


def _config_path(cmp_dir: Path, root: Path) -> str:
    """The experiments/ config whose text OUT/config.yaml holds (the one the command was given), else a slot."""
    copy = rundir.config_yaml(cmp_dir)
    text = copy.read_text() if copy.is_file() else None
    for path in sorted((root / "experiments").glob("*.yaml")):
        if text is not None and path.read_text() == text:
            return str(path.relative_to(root))
    return slot(f"the config given to iterdeploy compare (its text: {copy})")


def _setup(report: dict[str, Any]) -> list[str]:
    """The setup paragraph: arms, tasks, budget, tuning pool, task overlap."""
    arms = list(report["methods"])
    budget = max((r["samples_used"] for rows in report["methods"].values() for r in rows), default=0)
    gens = max((r["generation"] for rows in report["methods"].values() for r in rows), default=0)
    lines = [f"**Setup.** {len(arms)} arms ({', '.join(arms)}) from one base model, on {report.get('tasks')} pool "
             f"tasks and {report.get('heldout_tasks')} held-out tasks of {report.get('domain')}, "
             f"{report.get('samples_per_task')} samples per task, {gens} round{'' if gens == 1 else 's'}: "
             f"{int(budget) if float(budget).is_integer() else fmt(budget)} "
             f"{report.get('budget_unit', 'sampled completions used for learning')} per seed for every arm. Held-out "
             f"tasks solved is the primary measure, pool tasks solved the second. Reference arm: "
             f"{report.get('reference')}."]
    pool = report.get("tuning_pool") or {}
    if pool:
        lines.append(f"Tuning pool: {pool.get('pool')}; {pool.get('tasks', '–')} + {pool.get('heldout_tasks', '–')} "
                     f"tasks ({pool.get('distinct_tuning_problems', '–')} distinct problems); disjoint from the "
                     f"{pool.get('checked_against', '–')} reported tasks: {fmt(pool.get('disjoint'))} (checked by "
                     "iterdeploy compare before any work).")
    overlap = report.get("task_overlap") or {}
    if overlap:
        lines.append(f"Held-out tasks whose problem also lies in the pool: {overlap.get('heldout_tasks_in_pool')} of "
                     f"{overlap.get('heldout_tasks')}; the pool holds {overlap.get('distinct_pool_problems')} "
                     f"distinct problems in {overlap.get('pool_tasks')} tasks.")
    return [" ".join(lines), ""]


def time_md(report: dict[str, Any], cmp_dir: Path, md: Markdown) -> None:
    """The page's "Time" section: where the run seconds of the whole protocol went
    (:func:`~iterdeploy_trl.compare_stats.time_shares`), the last invocation's wall time and its ``--jobs``, and
    what deploying generation 0 once saved."""
    from iterdeploy_trl.compare_stats import time_shares

    t = time_shares(report, cmp_dir)
    if t["total"] <= 0:
        return
    jobs = int(report.get("jobs") or 1)
    wall = (report.get("invocation_wall_seconds") or {}).get("total")
    md.text("## Time")
    md.text("")
    md.text(f"Measured in the runs (their seconds add up over parallel workers): {t['total']:.0f} run-seconds "
            f"({t['total'] / 3600:.2f} run-hours), tuning {t['tuning']:.0f} s ({t['tuning'] / t['total']:.0%}) and the "
            f"result arms {t['arms']:.0f} s ({t['arms'] / t['total']:.0%}). By phase over every run, tuning included: "
            f"deployment for learning {t['learn']:.0%}, evaluation {t['evaluate']:.0%}, training {t['train']:.0%} (an "
            f"online arm's trainer samples and scores inside its training; VAL runs inside each deployment). At "
            f"{jobs} run(s) at a time that is about {t['total'] / jobs / 60:.0f} minutes of wall time; the last "
            f"invocation of `iterdeploy compare` (`--jobs {jobs}`) took {fmt(wall)} s ({float(wall or 0) / 60:.1f} "
            f"min), which is the whole protocol's wall time only when that invocation ran it from the start. "
            f"Generation 0 deployed once per seed and pool saved "
            f"{fmt((report.get('generation0_reuse') or {}).get('saved_seconds'))} run-seconds. "
            f"`python benchmarks/bench_protocol.py --from {cmp_dir}` prints the same shares per arm.")
    if t["outside"]["runs"]:
        md.text("")
        md.text(f"Not counted above: {len(t['outside']['runs'])} run(s) in `{rundir.TUNING}/` outside the tuning "
                f"tables ({', '.join(t['outside']['runs'])}; {t['outside']['seconds']:.0f} run-seconds), from a grid "
                f"an earlier invocation ran (`config.earlier-<n>.yaml`).")
    md.text("")
    md.text(slot("whether the last invocation ran the whole protocol or resumed it, and what else ran meanwhile"))
    md.text("")


def page_markdown(report: dict[str, Any], cmp_dir: Path, figures: Sequence[Drawn], page: Path,
                  boots: dict[str, dict[str, list[float] | None]], *, written: str, compare_date: str,
                  config: str, figures_command: str) -> str:
    """The results page draft of ``report`` (compare.json), its figures linked relative to ``page``."""
    md = Markdown()
    ref = report.get("reference")
    tuning = report.get("tuning") or {}
    seeds = ", ".join(map(str, report.get("seeds", [])))
    tuning_seeds = sorted({s for t in tuning.values() for s in t.get("seeds", [])})
    inv = report.get("invocation_wall_seconds") or {}
    md.lines += [
        f"# Head-to-head, the issue-24 protocol: {report.get('domain')} ({report.get('name')})", "",
        f"{DRAFT_NOTE} written by `{figures_command}` on {written} from {cmp_dir}/compare.json: every number below "
        f"is compare.json's (the per-arm bootstrap intervals from the arms' metrics rows). Fill every slot marked "
        f"{SLOT}, then delete this line. -->", "",
        f"**Question.** {slot('what was asked, in one or two sentences')}", "",
        f"**Command.** `iterdeploy compare --config {config} --out {cmp_dir}`; the figures and this page: "
        f"`{figures_command}`.", "",
        *_setup(report),
        f"**Machine.** {_machine_line(report)} {slot('what else ran on the machine meanwhile (load)')}", "",
        f"**Date.** {compare_date} (compare.json written), commit {slot('the commit that ran it')}. Wall time measured "
        f"in the runs: {fmt(report.get('total_wall_seconds'))} s, of which tuning {fmt(report.get('tuning_wall_seconds'))} "
        f"s; the last invocation of iterdeploy compare: {fmt(inv.get('total'))} s (a resume only reads finished "
        f"runs back).", "",
        f"**Seeds.** Result seeds {seeds}; tuning seeds {', '.join(map(str, tuning_seeds)) or 'none (not tuned)'}.", "",
        "## Verdicts", "",
        slot("the headline: what the verdicts below say together, in proportion to the intervals"), ""]
    for measure, label in MEASURES.items():
        md.text(f"{label[0].upper()}{label[1:]}" + (" (the primary measure)" if measure == PRIMARY_MEASURE else "")
                + f", at the full budget, against {ref}:")
        md.text("")
        for verdict in (report.get("verdicts") or {}).get(measure, []):
            md.text(f"- {verdict}")
        md.text("")
    tests = report.get("tests") or {}
    boot = report.get("bootstrap") or {}
    intro = (f"Mean over the seeds {seeds} at the full budget; seed-t: a two-sided {fmt(tests.get('level', 0.95))} "
             f"t interval over seeds; bootstrap: tasks and seeds resampled with replacement ({boot.get('replicates', '–')} "
             f"replicates, percentile interval); unanimous@k: the tasks every seed solves, with a Wilson interval.")
    for measure, label in MEASURES.items():
        md.text(f"## {label[0].upper()}{label[1:]}" + (" (primary measure)" if measure == PRIMARY_MEASURE else ""))
        md.text("")
        md.text(intro)
        md.text("")
        total = next((rows[-1].get(TOTALS[measure]) for rows in report["methods"].values() if rows), None)
        md.table(["arm", "chosen settings", "sampled completions", f"mean (of {total})", "per seed", "seed-t 95% CI",
                  "task-and-seed bootstrap 95% CI", "unanimous@k", "unanimous 95% CI (Wilson)"],
                 measure_rows(report, measure, boots[measure]))
    md.text("## Along the budget")
    md.text("")
    md.table(["arm", "generation", "sampled completions", "held-out solved (mean [seed-t 95% CI])",
              "pool solved (mean [seed-t 95% CI])", "wall s (cumulative, mean per seed)"], budget_point_rows(report))
    md.text(f"## Paired differences against {ref}")
    md.text("")
    md.text(f"Same seeds, same tasks; {tests.get('test', 'paired t over seeds')}; {tests.get('correction', 'Holm')} "
            f"over the {tests.get('m', '–')} comparisons tested ({tests.get('family', '–')}; α = "
            f"{fmt(tests.get('alpha'))}); generation 0 is not tested (every arm deploys the same base model there).")
    md.text("")
    md.table(["comparison", "measure", "generation", "diff (mean)", "seed-t 95% CI", "task-and-seed bootstrap 95% CI",
              "p (paired t)", "p (Holm)"], paired_rows(report.get("paired") or {}))
    clips = clip_rows(report, cmp_dir)
    if clips:
        md.text("## Gradient clipping")
        md.text("")
        md.text("How often `max_grad_norm` clipped the fine-tune that made each generation's model (each seed's "
                "`train_stats.json`, `grad_clip`): a clipped step moves the weights by less than the learning rate "
                "times the gradient.")
        md.text("")
        md.table(["arm", "generation", "steps clipped", "share", "share per seed", "gradient norm (mean)",
                  "max_grad_norm"], clips)
    md.text("## Tuning")
    md.text("")
    tuning_md(tuning, md)
    if not tuning:
        md.text("No arm was tuned (no `tuning` section): each ran at its configured settings.")
        md.text("")
    md.text("## Budgets")
    md.text("")
    budgets_md(report.get("budgets") or {}, md, tuning)
    reuse = report.get("generation0_reuse") or {}
    md.text(f"Generation 0 is deployed once per seed and task pool and copied into the other arms and tuning runs "
            f"(its deployment counts in the arm that ran it; {fmt(reuse.get('saved_seconds'))} s of deployment "
            "saved). Validation (VAL) runs inside each deployment chunk: compare.json does not separate its seconds "
            "(`benchmarks/bench_protocol.py` measures its share).")
    md.text("")
    time_md(report, cmp_dir, md)
    md.text("## Figures")
    md.text("")
    for d in figures:
        png = next((f for f in d.files if f.suffix == ".png"), None)
        if png is not None:
            md.text(f"![{'; '.join(d.panels)}]({os.path.relpath(png, page.parent)})")
            md.text("")
    results = next((f.parent / "results.md" for d in figures for f in d.files), None)
    if results is not None:
        md.text(f"The numbers behind each figure: [results.md]({os.path.relpath(results, page.parent)}).")
        md.text("")
    md.text("## What it shows")
    md.text("")
    md.text(slot("what the numbers show, in proportion to the intervals above"))
    md.text("")
    md.text("## What it does not show")
    md.text("")
    md.text(slot("what the numbers do not show (one base model, one task pool: inference is conditional on them)"))
    md.text("")
    for arm in report.get("tuning_at_edge") or []:
        md.text(f"- {arm}: its chosen {', '.join(tuning[arm].get('edge_knobs', []))} lies at an edge of its grid; "
                "a value beyond it was not tried.")
    if overlap := report.get("task_overlap"):
        if overlap.get("heldout_tasks_in_pool"):
            md.text(f"- {overlap['heldout_tasks_in_pool']} of {overlap['heldout_tasks']} held-out tasks repeat a pool "
                    "problem: they are partly trained on.")
    return "\n".join(md.lines).rstrip() + "\n"


def write_page(cmp_dir: str | Path, fig_dir: str | Path, page: str | Path, *, warn=None,
               root: str | Path = ".", figures_command: str | None = None) -> Page:
    """Draw the figures of the compare directory ``cmp_dir`` into ``fig_dir`` (and its ``results.md``) and write
    the results page draft ``page``. ``FigureError`` before anything is written where ``cmp_dir`` has no
    compare.json (still running) or ``page`` exists already (it may hold written text)."""
    import json

    from iterdeploy_trl import rundir
    from iterdeploy_trl.figures.render import render_figures

    cmp_dir, fig_dir, page, root = Path(cmp_dir), Path(fig_dir), Path(page), Path(root)
    path = rundir.compare_json(cmp_dir)
    if not path.is_file():
        raise FigureError(f"--page: {path} does not exist (the comparison has not finished); run iterdeploy compare "
                          "to its end, then this command again")
    if page.exists():
        raise FigureError(f"--page: {page} exists and may hold written text; give another path or remove it")
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise FigureError(f"--page: {path} cannot be read as JSON ({exc}); is it still being written?") from None
    if not isinstance(report, dict) or not isinstance(report.get("methods"), dict) or "verdicts" not in report:
        raise FigureError(f"--page: {path} has no 'methods' and 'verdicts' (written before the issue-24 statistics?): "
                          "run iterdeploy compare on it again to rewrite it")
    drawn = render_figures([cmp_dir], fig_dir, warn=warn)
    figures = [d for d in drawn.figures if d.kind in ("head_to_head", "head_to_head_heldout")]
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(path.stat().st_mtime))
    command = figures_command or f"iterdeploy figures {cmp_dir} --out {fig_dir} --page {page}"
    text = page_markdown(report, cmp_dir, figures, page, arm_bootstraps(report, cmp_dir),
                         written=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), compare_date=stamp,
                         config=_config_path(cmp_dir, root), figures_command=command)
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(text)
    return Page(page, figures)
