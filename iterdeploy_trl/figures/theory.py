"""Figures of ``theory.json``: cosine vs samples per prompt, and same-sample cosines."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from iterdeploy_trl.figures.markdown import Drawn, Markdown, fmt
from iterdeploy_trl.figures.sources import Theory
from iterdeploy_trl.figures.style import (
    CYCLE,
    DOUBLE,
    FORMATS,
    GREY,
    OKABE_ITO,
    SINGLE,
    new_figure,
    num,
    save,
    wrap,
)

MARKERS = ("o", "s", "^", "D", "v", "P", "X")
OTHER_LINESTYLES = ("-.", (0, (1, 1)), (0, (5, 1, 1, 1)))
COINCIDE = 1e-9  # series whose means differ by less than this everywhere are drawn so that both show


def coinciding(mean: Sequence[float], earlier: Sequence[tuple[str, Sequence[float]]]) -> str | None:
    """The label of an earlier series equal to ``mean`` within ``COINCIDE`` at every point, or None."""
    for label, other in earlier:
        if len(other) == len(mean) and mean and all(
                abs(a - b) < COINCIDE for a, b in zip(mean, other, strict=True) if a == a and b == b):
            return label
    return None


def wrap_label(text: str, width: int) -> str:
    """Wrap an axis label at spaces outside brackets, so that a formula such as
    ``E_π[r(λ + (1−λ)β/π)∇log π]`` stays on one line."""
    words, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == " " and depth <= 0:
            words.append(cur)
            cur = ""
        else:
            cur += ch
    words.append(cur)
    lines: list[str] = []
    for w in words:
        if lines and len(lines[-1]) + 1 + len(w) <= width:
            lines[-1] += " " + w
        else:
            lines.append(w)
    return "\n".join(lines)


SAME_SAMPLE_LABELS = {  # estimator -> tick label (SFT on the valid traces under each loss normalisation)
    "sft[sequence_sum]": "SFT, token sum",
    "sft[batch_tokens]": "SFT, batch-token mean",
    "sft[sequence_mean]": "SFT, per-trace mean",
    "reinforce[mean]": "RL, mean baseline",
    "reinforce[leave_one_out]": "RL, leave-one-out",
}


def fig_theory_convergence(th: Theory, plots: Sequence[dict[str, Any]], out: Path, stem: str, md: Markdown) -> Drawn:
    """Cosine vs samples per prompt for each estimator, mean with a 10–90 % band over repeats."""
    n = len(plots)
    fig, axes = new_figure(SINGLE if n == 1 else DOUBLE, 3.8, 1, n)
    titles = []
    md.section("Theory: cosine vs number of samples", [out / f"{stem}.{f}" for f in FORMATS], [th.path / "theory.json"],
               ["Mean over repeats, band 10–90 %; dashed grey: the panel's target; dotted, in a series' colour: that series' exact limit; other exact values dash-dotted."])
    for i, (ax, plot) in enumerate(zip(axes[0], plots, strict=True)):
        x = plot.get("x", [])
        series = plot.get("series", [])
        colours = {}
        drawn_means: list[tuple[str, list[float]]] = []
        for j, s in enumerate(series):
            colour = CYCLE[j % len(CYCLE)]
            label = s.get("label", s.get("name", ""))
            colours[s.get("name")] = colour
            mean = [num(v) for v in s.get("mean", [])]
            lo = [num(v) for v in s.get("p10", s.get("mean", []))]
            hi = [num(v) for v in s.get("p90", s.get("mean", []))]
            ax.fill_between(x, lo, hi, color=colour, alpha=0.18, linewidth=0)
            twin = coinciding(mean, drawn_means)
            if twin is None:
                ax.plot(x, mean, marker=MARKERS[j % len(MARKERS)], color=colour, label=wrap(label, 36), zorder=3)
            else:  # drawn the same would hide it under the earlier series: a ring and a dashed line on top
                ax.plot(x, mean, marker=MARKERS[j % len(MARKERS)], markersize=7, markerfacecolor="none",
                        markeredgewidth=1.1, linestyle=(0, (3, 2)), color=colour, zorder=4,
                        label=wrap(f"{label} (rings: the same values as {twin})", 36))
            drawn_means.append((label, mean))
            md.table([f"{plot.get('id', '')}: {label}", *map(str, x)],
                     [("mean", *mean), ("p10", *lo), ("p90", *hi)])
        refs = plot.get("reference_lines", [])
        others = 0
        for k, ref in enumerate(refs):
            y = num(ref.get("y"))
            label = f"{ref.get('label', ref.get('name', ''))} = {y:.3f}"
            name = str(ref.get("name", ""))
            if k == 0:  # the panel's target: what the estimators converge to
                style = {"color": GREY, "linestyle": "--"}
            elif name.endswith("_limit") and name[: -len("_limit")] in colours:  # the limit of one series
                style = {"color": colours[name[: -len("_limit")]], "linestyle": ":"}
            else:
                style = {"color": "#444444", "linestyle": OTHER_LINESTYLES[others % len(OTHER_LINESTYLES)]}
                others += 1
            ax.axhline(y, linewidth=1.0, label=wrap(label, 36), zorder=2, **style)
        if refs:
            md.text("Exact limits: " + "; ".join(f"{r.get('label', r.get('name'))} = {fmt(num(r.get('y')))}"
                                                 for r in refs) + ".")
            md.text("")
        if x:
            ax.set_xscale("log", base=2)
            ax.set_xlim(min(x) / 1.5, max(x) * 1.5)
            ax.set_xticks(x, [str(v) for v in x])
            ax.minorticks_off()
        # Cosines are often 1 to 1e-15: no offset notation, and a range of at least 0.1 below 1.
        seen = [v for line in ax.lines for v in line.get_ydata() if v == v]
        if all(v != v for s in plot.get("series", []) for v in map(num, s.get("mean", []))):
            ax.text(0.5, 0.5, "no estimate:\nno valid sample drawn", transform=ax.transAxes, ha="center",
                    va="center", fontsize=7, color="#444444")
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.set_ylim(min([0.9, *seen]) - 0.05, max([1.0, *seen]) + 0.03)
        ax.set_xlabel(plot.get("x_label", "N (samples per prompt)"))
        ax.set_ylabel(wrap_label(plot.get("y_label", "cosine"), 30))
        ax.set_title(wrap(f"({'abcdefgh'[i]}) " + plot.get("title", plot.get("id", "")), 40))
        titles.append(ax.get_title())
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), fontsize=6)
    files = save(fig, out, stem)
    return Drawn(stem, "theory_convergence", titles, files, [th.path / "theory.json"])


def fig_theory_same_samples(th: Theory, comparisons: Sequence[dict[str, Any]], out: Path, stem: str,
                            md: Markdown) -> Drawn:
    """1 − cosine to REINFORCE (no baseline) on the same samples, by SFT normalisation and baseline."""
    fig, axes = new_figure(SINGLE, 2.6)
    ax = axes[0, 0]
    floor = 1e-16
    names = [SAME_SAMPLE_LABELS.get(c.get("a", ""), c.get("a", "")) for c in comparisons]
    gaps = []
    for c in comparisons:
        cos = num(c.get("cosine"))
        gaps.append(float("nan") if math.isnan(cos) else max(floor, 1 - cos))
    expect_parallel = [c.get("a") in ("sft[sequence_sum]", "sft[batch_tokens]") for c in comparisons]
    colours = [OKABE_ITO["green"] if p else OKABE_ITO["orange"] for p in expect_parallel]
    y = list(range(len(comparisons)))[::-1]
    ax.barh(y, [g if not math.isnan(g) else 0 for g in gaps], color=colours, left=floor / 10, height=0.6)
    for yi, g, c in zip(y, gaps, comparisons, strict=True):
        cos = num(c.get("cosine"))
        text = "g = 0" if math.isnan(g) else f"cos = {cos:.4f}" if g > 1e-6 else f"1−cos = {1 - cos:.0e}"
        text = text.replace("-", "−")
        ax.text(max(g if not math.isnan(g) else floor, floor) * 2, yi, text, va="center", fontsize=6)
    tol = 1e-9 if str(th.data.get("setup", {}).get("dtype", "float64")) == "float64" else 1e-4
    ax.axvline(tol, color=GREY, linestyle="--", linewidth=0.8, label=f"parallel: 1−cos ≤ {tol:.0e}")
    ax.set_xscale("log")
    ax.set_xlim(floor / 10, 10)
    ax.set_yticks(y, names)
    ax.set_xlabel("1 − cosine to REINFORCE, no baseline")
    ax.set_title("gradients on the same samples")
    ax.grid(axis="y", visible=False)
    from matplotlib.patches import Patch

    handles = [Patch(color=OKABE_ITO["green"], label="theory: parallel"),
               Patch(color=OKABE_ITO["orange"], label="theory: not parallel in general"),
               *ax.get_legend_handles_labels()[0]]
    fig.legend(handles=handles, loc="outside lower center", ncol=2, fontsize=6)
    files = save(fig, out, stem)
    data = th.data.get("checks", {}).get("on_policy_same_samples", {})
    md.section("Theory: same-sample cosines", files, [th.path / "theory.json"],
               [f"N = {data.get('samples')} samples of which N⁺ = {data.get('valid')} valid; 1 − cos below 1e-16 "
                "drawn at 1e-16."])
    md.table(["estimator", "vs", "cosine", "1 − cosine", "norm ratio", "expected norm ratio"],
             [(c.get("a"), c.get("b"), c.get("cosine"), c.get("one_minus_cosine"), c.get("norm_ratio"),
               c.get("expected_norm_ratio")) for c in comparisons])
    return Drawn(stem, "theory_same_samples", [ax.get_title()], files, [th.path / "theory.json"])

