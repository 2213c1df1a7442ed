"""The figures' look (Okabe–Ito colours, paper column widths, one matplotlib style) and the axis
helpers every figure family shares."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iterdeploy_trl.config_schema import split_arm
from iterdeploy_trl.methods import all_methods

if TYPE_CHECKING:
    from iterdeploy_trl.figures.sources import Run

# Okabe–Ito, a palette that colour-blind readers can tell apart.
OKABE_ITO = {
    "blue": "#0072B2", "orange": "#E69F00", "green": "#009E73", "vermillion": "#D55E00",
    "sky": "#56B4E9", "purple": "#CC79A7", "yellow": "#F0E442", "black": "#000000",
}
CYCLE = [OKABE_ITO[c] for c in ("blue", "orange", "green", "vermillion", "sky", "purple", "black")]
# Each method's colour and label are its plug-in's (iterdeploy_trl/methods/: Method.colour, Method.label).
METHOD_COLOURS = {m.name: m.colour for m in all_methods()}
METHOD_LABELS = {m.name: m.label for m in all_methods()}
# A comparison arm with its own curation rule (valid-sft@random-valid) is drawn in its method's colour with the
# rule's line style and marker: nine arms, eight colours that colour-blind readers can tell apart.
CURATION_LINES = {"random-valid": ("--", "s"), "all-valid": (":", "^")}
OTHER_CURATION_LINE = ("-.", "D")
GREY = "#8c8c8c"
SINGLE = 3.3  # inches: one column of a two-column paper
DOUBLE = 6.9  # inches: both columns
FORMATS = ("png", "pdf")
STYLE = {
    "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "xtick.labelsize": 7, "ytick.labelsize": 7,
    "legend.fontsize": 6.5, "legend.frameon": False, "lines.linewidth": 1.2, "lines.markersize": 3.5,
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.25,
    "grid.linewidth": 0.5, "savefig.dpi": 300, "pdf.fonttype": 42, "ps.fonttype": 42,
    "figure.constrained_layout.use": True,
}


def new_figure(width: float, height: float, nrows: int = 1, ncols: int = 1, **kw: Any) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))  # not pyplot: no global registry of open figures
    return fig, fig.subplots(nrows, ncols, squeeze=False, **kw)


def save(fig: Any, out: Path, stem: str) -> list[Path]:
    files = []
    for fmt in FORMATS:
        f = out / f"{stem}.{fmt}"
        fig.savefig(f, format=fmt, metadata={"Creator": "iterdeploy figures"} if fmt == "pdf" else None)
        files.append(f)
    return files


def count_y(ax: Any, frac: bool) -> None:
    """y from 0, integer ticks for counts, never a degenerate range."""
    from matplotlib.ticker import MaxNLocator

    if not frac:
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    lo, hi = ax.get_ylim()
    ax.set_ylim(0, max(hi, 0.05 if frac else 1.0))


def int_x(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def run_colours(runs: Sequence[Run]) -> list[str]:
    """Method colours when each run has its own method, else the Okabe–Ito cycle."""
    methods = [r.method for r in runs]
    if len(set(methods)) == len(methods):
        return [METHOD_COLOURS.get(m, CYCLE[i % len(CYCLE)]) for i, m in enumerate(methods)]
    return [CYCLE[i % len(CYCLE)] for i in range(len(runs))]


def solved_axis_label(runs: Sequence[Run]) -> tuple[str, bool]:
    """('tasks solved (of N)', False) when every run has the same pool, else a fraction."""
    sizes = {r.n_pool for r in runs}
    if len(sizes) == 1:
        return f"tasks solved (of {sizes.pop()})", False
    return "fraction of the pool solved", True


def arm_style(arm: str, i: int) -> dict[str, Any]:
    """How a comparison figure draws ``arm`` (the ``i``-th): ``colour``, ``label`` and ``line`` (its line style and
    marker, keywords for :func:`band`). A method is drawn in its plug-in's colour, solid; ``method@rule`` in the
    method's colour with the rule's line."""
    method, rule = split_arm(arm)
    colour = METHOD_COLOURS.get(method, CYCLE[i % len(CYCLE)])
    if rule is None:
        return {"colour": colour, "label": METHOD_LABELS.get(arm, arm), "line": {"linestyle": "-", "marker": "o"}}
    linestyle, marker = CURATION_LINES.get(rule, OTHER_CURATION_LINE)
    return {"colour": colour, "label": f"{METHOD_LABELS.get(method, method)}, {rule} curation",
            "line": {"linestyle": linestyle, "marker": marker}}


def band(ax: Any, x: Sequence[float], mean: Sequence[float], lo: Sequence[float], hi: Sequence[float], colour: str,
         label: str, marker: str = "o", **kw: Any) -> None:
    ax.fill_between(x, lo, hi, color=colour, alpha=0.18, linewidth=0)
    ax.plot(x, mean, color=colour, marker=marker, label=label, **kw)


def gen_values(gens: list[dict[str, Any]], key: str, scale: float = 1.0) -> tuple[list, list, list]:
    def v(x: Any) -> float:
        return float("nan") if x is None else x / scale

    return ([v(g.get(key)) for g in gens], [v(g.get(f"{key}_min", g.get(key))) for g in gens],
            [v(g.get(f"{key}_max", g.get(key))) for g in gens])



def boxes(ax: Any, data: Sequence[Sequence[float]], positions: Sequence[float], colour: str, *,
           strip: bool = True, width: float = 0.55) -> None:
    import numpy as np

    keep = [(p, d) for p, d in zip(positions, data, strict=True) if len(d)]
    if not keep:
        return
    bp = ax.boxplot([d for _, d in keep], positions=[p for p, _ in keep], widths=width, showfliers=False,
                    patch_artist=True, manage_ticks=False, whis=(5, 95))
    for box in bp["boxes"]:
        box.set(facecolor=colour, alpha=0.3, edgecolor=colour, linewidth=0.8)
    for part in ("whiskers", "caps", "medians"):
        for line in bp[part]:
            line.set(color=colour, linewidth=0.8)
    if strip:
        rng = np.random.default_rng(0)
        for p, d in keep:
            if len(d) <= 400:
                ax.scatter(p + rng.uniform(-width / 3, width / 3, len(d)), d, s=2.5, color=colour, alpha=0.45,
                           linewidths=0, zorder=3)



def num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)) or text

