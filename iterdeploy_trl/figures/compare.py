"""The head-to-head figure of a compare directory."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from iterdeploy_trl.figures.markdown import Drawn, Markdown
from iterdeploy_trl.figures.sources import Compare
from iterdeploy_trl.figures.style import (
    CYCLE,
    METHOD_COLOURS,
    METHOD_LABELS,
    SINGLE,
    band,
    count_y,
    new_figure,
    save,
)


def cumulative_tokens(method: str, rows: Sequence[dict[str, Any]]) -> list[float]:
    """Training tokens spent to obtain each budget point's model: REINFORCE's counter is cumulative
    already; an SFT generation's is that fine-tune's alone, so it is summed over generations."""
    if rows and all(r.get("train_completion_tokens_cumulative") is not None for r in rows):
        return [float(r["train_completion_tokens_cumulative"]) for r in rows]
    vals = [float(r.get("train_completion_tokens") or 0) for r in rows]
    if method == "reinforce":  # runs made before the cumulative counter: REINFORCE's was cumulative
        return vals
    out, total = [], 0.0
    for v in vals:
        total += v
        out.append(total)
    return out


def fig_head_to_head(cmp: Compare, out: Path, stem: str, md: Markdown) -> Drawn:
    """Solved vs sampled-completion budget and vs training tokens, 95% CI over seeds, per method."""
    fig, axes = new_figure(SINGLE, 4.6, 2, 1)  # the legend goes under the panels
    ax_b, ax_t = axes[0, 0], axes[1, 0]
    rows_md = []
    positive = []  # the positive cumulative token counts, for panel (b)'s scale
    n_tasks = None
    for i, (method, rows) in enumerate(cmp.methods.items()):
        if not rows:
            continue
        rows = sorted(rows, key=lambda r: r["generation"])
        colour = METHOD_COLOURS.get(method, CYCLE[i % len(CYCLE)])
        label = METHOD_LABELS.get(method, method)
        run = cmp.runs.get(method)
        if run is not None:
            n_tasks = run.n_pool
            if not run.complete:
                label += " (running)"
        mean = [r["solved_mean"] for r in rows]
        lo = [r["solved_ci"][0] for r in rows]
        hi = [r["solved_ci"][1] for r in rows]
        tokens = cumulative_tokens(method, rows)
        positive += [tok for tok in tokens if tok and tok > 0]
        band(ax_b, [r["samples_used"] for r in rows], mean, lo, hi, colour, label)
        band(ax_t, tokens, mean, lo, hi, colour, label)
        for r, tok in zip(rows, tokens, strict=True):
            rows_md.append((method, r["generation"], r["samples_used"], r["solved_mean"], r["solved_ci"][0],
                            r["solved_ci"][1], r.get("unanimous"), r.get("heldout_solved_mean"),
                            r.get("train_traces"), tok, r.get("train_seconds")))
    of = f" (of {n_tasks})" if n_tasks else ""
    seeds = ", ".join(map(str, cmp.seeds))
    ax_b.set_title("(a) tasks solved vs sampling budget")
    ax_b.set_xlabel("sampled completions used for learning")
    ax_t.set_title("(b) tasks solved vs training compute")
    ax_t.set_xlabel("training tokens (cumulative)")
    ax_b.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
    # The methods' token counts differ by orders of magnitude (one curated trace per task against every
    # sampled completion): a log axis, linear below the smallest positive count so that the base model's 0
    # is drawn too.
    if positive and max(positive) / min(positive) > 20:
        ax_t.set_xscale("symlog", linthresh=min(positive))
        ax_t.set_xlabel("training tokens (cumulative, log scale)")
    for a in (ax_b, ax_t):
        a.set_ylabel(f"tasks solved{of}")
        count_y(a, False)
    # One legend under both panels: inside an axis it covers the bands it explains.
    handles, labels = ax_b.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(handles), 2),
                   title=f"{cmp.domain}; 95% CI over seeds {seeds}", title_fontsize=6.5)
    files = save(fig, out, stem)
    sources = [cmp.path]
    notes = ["Mean over seeds with a two-sided 95% t interval (compare.json). Training tokens: completion "
             "tokens trained on to obtain each model, summed over generations for the SFT methods (each "
             "generation's fine-tune) — REINFORCE's count is cumulative already."]
    if not cmp.complete:
        notes.append(f"IN PROGRESS: {cmp.path} has no compare.json yet; statistics computed from the finished "
                     "generations of its method runs.")
    md.section(f"Head-to-head — {cmp.label} ({cmp.domain})", files, sources, notes)
    md.table(["method", "generation", "sampled completions", "solved (mean)", "CI low", "CI high", "unanimous",
              "held-out solved (mean)", "train traces", "training tokens (cum.)", "train seconds"], rows_md)
    if cmp.paired:
        md.text(f"Paired differences against {cmp.reference} (same seeds):")
        md.text("")
        md.table(["comparison", "generation", "diff (mean)", "CI low", "CI high", "p (paired t)"],
                 [(name, d["generation"], d["diff_mean"], d["diff_ci"][0], d["diff_ci"][1], d.get("p_value"))
                  for name, ds in cmp.paired.items() for d in ds])
    return Drawn(stem, "head_to_head", [ax_b.get_title(), ax_t.get_title()], files, sources)

