"""Figures over the runs of one domain, from their metrics: tasks solved, pool vs held-out, the
curation ablation."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from iterdeploy_trl.figures.markdown import Drawn, Markdown
from iterdeploy_trl.figures.sources import Run, legend_title, progress_notes
from iterdeploy_trl.figures.style import (
    OKABE_ITO,
    SINGLE,
    band,
    count_y,
    gen_values,
    int_x,
    new_figure,
    run_colours,
    save,
    solved_axis_label,
)


def fig_solved(domain: str, runs: Sequence[Run], out: Path, stem: str, md: Markdown) -> Drawn:
    """Tasks solved per generation (mean, min–max over seeds) and unanimous@k."""
    fig, axes = new_figure(SINGLE, 3.4, 2, 1, sharex=True)
    ax, ax_u = axes[0, 0], axes[1, 0]
    ylabel, frac = solved_axis_label(runs)
    rows = []
    ks = set()
    for run, colour in zip(runs, run_colours(runs), strict=True):
        gens = run.aggregate()
        x = [g["generation"] for g in gens]
        mean, lo, hi = gen_values(gens, "solved", run.n_pool if frac else 1.0)
        band(ax, x, mean, lo, hi, colour, run.legend)
        ax_u.plot(x, [g["unanimous"] / (run.n_pool if frac else 1) for g in gens], color=colour, marker="s",
                  linestyle="--", label=run.legend)
        ks |= {g["unanimous_k"] for g in gens}
        rows += [(run.label, g["generation"], g["solved"], g.get("solved_min"), g.get("solved_max"),
                  g["unanimous"], g["unanimous_k"], run.n_pool) for g in gens]
    k = f"@{ks.pop()}" if len(ks) == 1 else "@k"
    ax.set_title("(a) tasks solved: mean, band min–max over seeds")
    ax.set_ylabel(ylabel)
    ax_u.set_title(f"(b) unanimous{k}: solved by every seed")
    ax_u.set_ylabel(ylabel.replace("tasks solved", "tasks"))
    ax_u.set_xlabel("generation")
    int_x(ax_u)
    ax.legend(loc="best", title=legend_title(domain, runs), title_fontsize=6.5)
    for a in (ax, ax_u):
        count_y(a, frac)
    files = save(fig, out, stem)
    md.section(f"Tasks solved per generation — {domain}", files, [r.path for r in runs], progress_notes(runs))
    md.table(["run", "generation", "solved (mean)", "min", "max", "unanimous", "k (seeds)", "of"], rows)
    return Drawn(stem, "solved", [a.get_title() for a in (ax, ax_u)], files, [r.path for r in runs])


def fig_pool_vs_heldout(domain: str, runs: Sequence[Run], out: Path, stem: str, md: Markdown) -> Drawn:
    """Solved fraction of the pool and of the held-out split per generation."""
    fig, axes = new_figure(SINGLE, 2.3, 1, 2, sharey=True)
    ax_p, ax_h = axes[0, 0], axes[0, 1]
    rows = []
    pools = sorted({r.n_pool for r in runs})
    helds = sorted({r.n_heldout for r in runs})
    for run, colour in zip(runs, run_colours(runs), strict=True):
        gens = run.aggregate()
        x = [g["generation"] for g in gens]
        mean, lo, hi = gen_values(gens, "solved", run.n_pool)
        band(ax_p, x, mean, lo, hi, colour, run.legend)
        hmean, hlo, hhi = gen_values(gens, "heldout_solved", run.n_heldout)
        band(ax_h, x, hmean, hlo, hhi, colour, run.legend, linestyle="--")
        rows += [(run.label, g["generation"], g["solved"], run.n_pool, round(g["solved"] / run.n_pool, 3),
                  g["heldout_solved"], run.n_heldout, round(g["heldout_solved"] / run.n_heldout, 3)) for g in gens]
    ax_p.set_title(f"(a) pool (n = {'/'.join(map(str, pools))})")
    ax_h.set_title(f"(b) held-out (n = {'/'.join(map(str, helds))})")
    ax_p.set_ylabel("fraction of the split solved")
    for a in (ax_p, ax_h):
        a.set_xlabel("generation")
        int_x(a)
    top = max([0.05, *(v for line in ax_p.lines + ax_h.lines for v in line.get_ydata() if v == v)])
    ax_p.set_ylim(0, min(1.02, top * 1.25))
    ax_p.legend(loc="upper left", title=legend_title(domain, runs), title_fontsize=6.5)
    files = save(fig, out, stem)
    md.section(f"Pool vs held-out solved — {domain}", files, [r.path for r in runs],
               ["Fractions of each split's size (mean over seeds); bands: min–max over seeds.", *progress_notes(runs)])
    md.table(["run", "generation", "pool solved (mean)", "pool size", "fraction", "held-out solved (mean)",
              "held-out size", "fraction"], rows)
    return Drawn(stem, "pool_vs_heldout", [ax_p.get_title(), ax_h.get_title()], files, [r.path for r in runs])



def fig_ablation(domain: str, curated: Sequence[Run], uncurated: Sequence[Run], out: Path, stem: str,
                 md: Markdown) -> Drawn:
    """Curated vs uncurated: solved per generation, with each generation's training-set size."""
    fig, axes = new_figure(SINGLE, 2.5)
    ax = axes[0, 0]
    runs = [*curated, *uncurated]
    ylabel, frac = solved_axis_label(runs)
    rows = []
    palette = {True: [OKABE_ITO["blue"], OKABE_ITO["sky"], OKABE_ITO["green"]],
               False: [OKABE_ITO["orange"], OKABE_ITO["vermillion"], OKABE_ITO["purple"]]}
    for is_cur, group in ((True, curated), (False, uncurated)):
        for i, run in enumerate(group):
            colour = palette[is_cur][i % 3]
            gens = run.aggregate()
            x = [g["generation"] for g in gens]
            mean, lo, hi = gen_values(gens, "solved", run.n_pool if frac else 1.0)
            what = f"curated ({run.curation})" if is_cur else "uncurated"
            band(ax, x, mean, lo, hi, colour, f"{what}: {run.legend}", linestyle="-" if is_cur else "--")
            for xi, yi, g in zip(x, mean, gens, strict=True):
                if g["generation"] > 0 and g.get("train_traces") is not None:
                    # curated numbers up-left, uncurated up-right: both stay clear of the x-axis
                    ax.annotate(f"{g['train_traces']:.0f}", (xi, yi), textcoords="offset points",
                                xytext=(-4 if is_cur else 4, 4), ha="right" if is_cur else "left", fontsize=5.5,
                                color=colour)
            rows += [(run.label, what, g["generation"], g["solved"], g.get("solved_min"), g.get("solved_max"),
                      g.get("train_traces"), g.get("train_traces_min"), g.get("train_traces_max")) for g in gens]
    ax.set_title("curation ablation: tasks solved")
    ax.set_xlabel("generation")
    ax.set_ylabel(ylabel)
    int_x(ax)
    ax.margins(y=0.15)
    count_y(ax, frac)
    ax.legend(loc="best", title=legend_title(domain, runs) + "; numbers: training traces", title_fontsize=6.5)
    files = save(fig, out, stem)
    md.section(f"Curation ablation — {domain}", files, [r.path for r in runs],
               ["Training traces: the size of the set each generation's model was fine-tuned on (mean over "
                "seeds).", *progress_notes(runs)])
    md.table(["run", "curation", "generation", "solved (mean)", "min", "max", "training traces (mean)", "min",
              "max"], rows)
    return Drawn(stem, "curation_ablation", [ax.get_title()], files, [r.path for r in runs])

