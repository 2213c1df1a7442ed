"""The driver: load every input, draw every figure the inputs allow, write ``results.md``."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

from iterdeploy_trl.figures.compare import fig_head_to_head, fig_heldout
from iterdeploy_trl.figures.markdown import Drawn, FigureReport, Markdown, slug, unique_stem
from iterdeploy_trl.figures.run_traces import fig_plan_lengths, fig_tokens
from iterdeploy_trl.figures.runs import fig_ablation, fig_pool_vs_heldout, fig_solved
from iterdeploy_trl.figures.sources import Compare, FigureError, Run, Theory, label_runs, load
from iterdeploy_trl.figures.style import STYLE
from iterdeploy_trl.figures.theory import fig_theory_convergence, fig_theory_same_samples
from iterdeploy_trl.methods import all_methods

# The curation ablation's methods: those that train on curated traces with valid-trace SFT's trainer, from the
# base each generation (valid-trace SFT, and uncurated SFT, its curation: none), by their runs' curation.
ABLATION_METHODS = frozenset(m.name for m in all_methods() if m.curates and m.build_trainer is None and not m.continues)


def _draw_all(runs: list[Run], compares: list[Compare], theories: list[Theory], n_sources: int, out: Path,
              md: Markdown, drawn: list[Drawn], note: Callable[[str], None]) -> None:
    """Draw every figure the loaded sources allow (under the figure style)."""
    taken: set[str] = set()

    by_domain: dict[str, list[Run]] = {}
    for r in runs:
        by_domain.setdefault(r.domain, []).append(r)
    if len(by_domain) > 1:
        listing = "; ".join(f"{d}: {', '.join(r.label for r in rs)}" for d, rs in by_domain.items())
        note(f"the runs are of {len(by_domain)} domains ({listing}); tasks of different domains are not "
             "comparable, so each figure over several runs is drawn once per domain (…-<domain>.png)")
    for domain, rs in by_domain.items():
        drawn.append(fig_solved(domain, rs, out, unique_stem(f"solved-{domain}", taken), md))
        held = [r for r in rs if r.n_heldout > 0]
        if held:
            drawn.append(fig_pool_vs_heldout(domain, held, out, unique_stem(f"pool_vs_heldout-{domain}", taken), md))
        else:
            note(f"{domain}: no run has a held-out split (tasks.heldout: 0); no pool-vs-held-out figure")
    for r in runs:
        name = slug(r.label)
        drawn.append(fig_plan_lengths(r, out, unique_stem(f"plan_lengths-{r.domain}-{name}", taken), md))
        drawn.append(fig_tokens(r, out, unique_stem(f"tokens-{r.domain}-{name}", taken), md))

    # Curation ablation: curated and uncurated runs of one domain, from run dirs and compare dirs.
    ablation: dict[str, tuple[list[Run], list[Run]]] = {}
    pool = [*runs, *(r for c in compares for m, r in c.runs.items() if m in ABLATION_METHODS)]
    seen: set[Path] = set()
    for r in pool:
        if r.path.resolve() in seen:  # a compare's method dir also given as a run dir
            continue
        seen.add(r.path.resolve())
        if r.finished and r.method in ABLATION_METHODS:
            cur, unc = ablation.setdefault(r.domain, ([], []))
            (unc if r.curation == "none" else cur).append(r)
    for domain, (cur, unc) in ablation.items():
        if cur and unc:
            drawn.append(fig_ablation(domain, cur, unc, out, unique_stem(f"curation_ablation-{domain}", taken), md))
        elif unc:  # an uncurated run is made for the ablation only: say what it lacks (curated runs alone: nothing)
            note(f"{domain}: only uncurated runs; the curation ablation needs a curated run too (method: "
                 "valid-sft) or a compare dir with valid-sft and uncurated-sft")

    cmp_domains = {c.domain for c in compares}
    if len(cmp_domains) > 1:
        note(f"the compare dirs are of {len(cmp_domains)} domains ({', '.join(sorted(cmp_domains))}): one "
             "head-to-head figure each")
    for c in compares:
        if not any(c.methods.values()):
            note(f"{c.path}: no method has a generation finished by every seed yet; no head-to-head figure")
            continue
        same = sum(1 for o in compares if o.domain == c.domain) > 1
        stem = f"head_to_head-{c.domain}" + (f"-{slug(c.label)}" if same else "")
        drawn.append(fig_head_to_head(c, out, unique_stem(stem, taken), md))
        drawn.append(fig_heldout(c, out, unique_stem(stem.replace("head_to_head", "head_to_head_heldout", 1), taken), md))

    for i, th in enumerate(theories):
        suffix = f"-{i + 1}" if len(theories) > 1 else ""
        plots = [p for p in th.data.get("plots", []) if isinstance(p, dict) and p.get("series")]
        if plots:
            drawn.append(fig_theory_convergence(th, plots, out, unique_stem(f"theory-cosine_vs_n{suffix}", taken), md))
        else:
            note(f"{th.path}/theory.json: no cosine-vs-N plot data (exact_gradient/off_policy/mixture not run?)")
        comps = th.data.get("checks", {}).get("on_policy_same_samples", {}).get("comparisons")
        if comps:
            drawn.append(fig_theory_same_samples(th, comps, out, unique_stem(f"theory-same_samples{suffix}", taken), md))
        else:
            note(f"{th.path}/theory.json: no same-sample comparisons (on_policy_same_samples not run, or N⁺ = 0)")
        if th.data.get("rows"):
            md.section("Theory: checks", [], [th.path / "theory.json"])
            md.table(["check", "expected", "measured", "verdict"],
                     [(r.get("check"), r.get("expected"), r.get("measured"), r.get("verdict"))
                      for r in th.data["rows"]])


def render_figures(paths: Sequence[str | Path], out: str | Path, *,
                   warn: Callable[[str], None] | None = None) -> FigureReport:
    """Load every path (``FigureError`` if one is not a run/compare/theory directory, before anything is
    written), draw every figure the inputs allow into ``out``, and write ``out/results.md``."""
    if not paths:
        raise FigureError("no input: give run, compare or theory directories")
    sources = [load(p) for p in paths]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = FigureReport(out)

    def note(msg: str) -> None:
        report.warnings.append(msg)
        if warn:
            warn(msg)

    runs = [s for s in sources if isinstance(s, Run)]
    compares = [s for s in sources if isinstance(s, Compare)]
    theories = [s for s in sources if isinstance(s, Theory)]
    label_runs([*runs, *(r for c in compares for r in c.runs.values())])
    for run in runs:
        if not run.finished:
            note(f"{run.path}: no generation finished yet (no metrics.jsonl row); nothing to draw from it")
        elif not run.complete:
            note(f"{run.path}: run {run.status}; its figures show the finished generations only")
    runs = [r for r in runs if r.finished]
    for c in compares:
        c.label = c.name
        if not c.complete:
            note(f"{c.path}: compare in progress (no compare.json yet); drawing the finished generations of "
                 f"{', '.join(c.runs) or 'no method'}")
    import matplotlib as mpl

    md = Markdown()
    with mpl.rc_context(STYLE):
        _draw_all(runs, compares, theories, len(sources), out, md, report.figures, note)

    head = ["# Results behind the figures", "",
            f"Written by `iterdeploy figures` on {time.strftime('%Y-%m-%d %H:%M')} from:", ""]
    for s in sources:
        if isinstance(s, Run):
            head.append(f"- run `{s.label}` ({s.domain}, {s.method}, curation {s.curation}, seeds "
                        f"{', '.join(map(str, s.seeds))}, pool {s.n_pool}, held-out {s.n_heldout}, "
                        f"{s.samples_per_task} samples/task): `{s.path}` — {s.status}")
        elif isinstance(s, Compare):
            head.append(f"- compare `{s.label}` ({s.domain}, methods {', '.join(s.methods)}, seeds "
                        f"{', '.join(map(str, s.seeds))}): `{s.path}` — {'complete' if s.complete else 'in progress'}")
        else:
            head.append(f"- theory: `{s.path / 'theory.json'}` (schema {s.data.get('schema', '?')})")
    if report.warnings:
        head += ["", "Warnings:", *[f"- {w}" for w in report.warnings]]
    results = out / "results.md"
    results.write_text("\n".join(head + md.lines).rstrip() + "\n")
    report.results = results
    return report


def make_figures(paths: Sequence[str | Path], out: str | Path) -> list[Path]:
    """Every figure the inputs allow, as PNG and PDF, and ``results.md``, in ``out``; returns the files.

    ``paths``: run directories (``iterdeploy run``), compare directories (``iterdeploy compare``) and
    theory directories (``iterdeploy theory --out``), in any mix; the kind is detected. Raises
    ``FigureError`` (with the path) on a path of none of these kinds."""
    return render_figures(paths, out).files

