"""Figures of one run drawn from its trace records: plan lengths and tokens per generation."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from iterdeploy_trl.figures.markdown import Drawn, Markdown
from iterdeploy_trl.figures.sources import Run, legend_title, progress_notes, seeds_text
from iterdeploy_trl.figures.style import GREY, OKABE_ITO, SINGLE, boxes, int_x, new_figure, save


def fig_plan_lengths(run: Run, out: Path, stem: str, md: Markdown) -> Drawn:
    """Valid plan lengths per generation (all seeds), the longest so far, and the pool's reference lengths."""
    fig, axes = new_figure(SINGLE, 2.5)
    ax = axes[0, 0]
    gens = run.finished
    valid: dict[int, list[int]] = {g: [] for g in gens}  # traces are read for finished generations only
    for t in run.traces():
        if t["split"] == "pool" and t["valid"] and t["plan_length"] is not None:
            valid[t["generation"]].append(t["plan_length"])
    pool_ref, _ = run.reference_lengths()
    boxes(ax, [pool_ref], [-1.2], GREY, strip=False, width=0.7)
    boxes(ax, [valid[g] for g in gens], gens, OKABE_ITO["blue"])
    longest: list[float] = []
    best = float("nan")  # nothing found yet
    for g in gens:
        if valid[g]:
            best = max(valid[g]) if best != best else max(best, *valid[g])
        longest.append(best)
    ax.plot(gens, longest, drawstyle="steps-mid", marker="D", markersize=2.5, color=OKABE_ITO["vermillion"],
            label="longest valid plan so far")
    ref_solved = []
    for g in gens:  # over the seeds that solved something in generation g
        vals = [rows[g].get("max_solved_reference_length") for rows in run.metrics.values()
                if g in rows and rows[g].get("solved")]
        ref_solved.append(max((v for v in vals if v), default=None))
    ax.plot(gens, [float("nan") if v is None else v for v in ref_solved], linestyle="none", marker="v",
            color="#555555", label="longest reference plan of a solved task")
    from matplotlib.patches import Patch

    handles, labels = ax.get_legend_handles_labels()
    handles += [Patch(facecolor=OKABE_ITO["blue"], alpha=0.3, edgecolor=OKABE_ITO["blue"]),
                Patch(facecolor=GREY, alpha=0.3, edgecolor=GREY)]
    labels += [f"valid plans ({seeds_text(run)})", "reference plans of the pool"]
    ax.legend(handles, labels, loc="upper left", fontsize=6)
    ax.set_xticks([-1.2, *gens], ["ref.", *map(str, gens)])
    ax.set_xlim(-2, (gens[-1] if gens else 0) + 0.7)
    ax.set_xlabel("generation")
    ax.set_ylabel("plan length (actions)")
    ax.set_title(f"valid plan lengths, {run.legend}")
    top = max([*pool_ref, *(v for v in longest if v == v), 1])
    ax.set_ylim(0, top * 1.45)  # room for the legend
    files = save(fig, out, stem)
    md.section(f"Plan lengths — {run.label} ({run.domain})", files, [run.path],
               ["Every valid trace on the pool, all seeds; boxes: quartiles, whiskers 5–95 %.",
                *progress_notes([run])])
    rows = []
    for g, lo, ref in zip(gens, longest, ref_solved, strict=True):
        v = valid[g]
        rows.append((g, len(v), statistics.median(v) if v else None, statistics.fmean(v) if v else None,
                     max(v) if v else None, None if lo != lo else lo, ref))
    md.table(["generation", "valid traces", "median length", "mean length", "max length", "longest so far",
              "longest solved reference"], rows)
    if pool_ref:
        md.text(f"Pool reference plan lengths: n = {len(pool_ref)}, median {statistics.median(pool_ref)}, "
                f"mean {statistics.fmean(pool_ref):.1f}, max {max(pool_ref)}.")
    return Drawn(stem, "plan_lengths", [ax.get_title()], files, [run.path])


def fig_tokens(run: Run, out: Path, stem: str, md: Markdown) -> Drawn:
    """Reasoning and completion tokens per trace, per generation (all pool traces; mean of valid ones)."""
    fig, axes = new_figure(SINGLE, 3.4, 2, 1, sharex=True)
    gens = run.finished
    pool: dict[int, list[dict[str, Any]]] = {g: [] for g in gens}  # pool traces by generation
    for t in run.traces():
        if t["split"] == "pool":
            pool[t["generation"]].append(t)
    rows: dict[int, list[Any]] = {g: [g] for g in gens}
    titles = []
    for ax, key, what in ((axes[0, 0], "reasoning_tokens", "reasoning"), (axes[1, 0], "completion_tokens", "completion")):
        allv = {g: [t[key] for t in pool[g] if t[key] is not None] for g in gens}
        validv = {g: [t[key] for t in pool[g] if t["valid"] and t[key] is not None] for g in gens}
        boxes(ax, [allv[g] for g in gens], gens, OKABE_ITO["sky"], strip=False)
        ax.plot(gens, [statistics.fmean(allv[g]) if allv[g] else float("nan") for g in gens], marker="D",
                color=OKABE_ITO["blue"], label="mean, all traces")
        ax.plot(gens, [statistics.fmean(validv[g]) if validv[g] else float("nan") for g in gens], marker="o",
                linestyle="--", color=OKABE_ITO["vermillion"], label="mean, valid traces")
        ax.set_ylabel("tokens per trace")
        title = f"({'a' if what == 'reasoning' else 'b'}) {what} tokens"
        ax.set_title(title + (f", {run.legend}" if what == "reasoning" else ""))
        titles.append(ax.get_title())
        ax.set_ylim(bottom=0)
        for g in gens:
            rows[g] += [statistics.fmean(allv[g]) if allv[g] else None,
                        statistics.median(allv[g]) if allv[g] else None,
                        statistics.fmean(validv[g]) if validv[g] else None]
    axes[0, 0].legend(loc="best", title=legend_title(run.domain, [run]), title_fontsize=6.5)
    axes[1, 0].set_xlabel("generation")
    int_x(axes[1, 0])
    files = save(fig, out, stem)
    md.section(f"Tokens per trace — {run.label} ({run.domain})", files, [run.path],
               ["All pool traces of all seeds; boxes: quartiles, whiskers 5–95 %.", *progress_notes([run])])
    md.table(["generation", "reasoning mean", "reasoning median", "reasoning mean (valid)", "completion mean",
              "completion median", "completion mean (valid)"], rows.values())
    return Drawn(stem, "tokens", titles, files, [run.path])

