"""Drift across generations (``iterdeploy drift``): entropy and KL to the previous generation on the held-out
prompts, distinct valid plans per solved task, completion tokens, plan-length change and the tie-break's
share; one line per run, the mean over its seeds with the min–max band."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from iterdeploy_trl.figures.style import CYCLE, DOUBLE, STYLE, int_x, new_figure, save

PANELS = (
    ("entropy_heldout", "(a) entropy of β_g, held-out\n(nats a completion)"),
    ("kl_prev_heldout", "(b) KL(β_g ‖ β_g−1), held-out\n(nats a completion)"),
    ("distinct_valid_plans_pool", "(c) distinct valid plans\nper solved pool task"),
    ("completion_tokens_mean", "(d) completion tokens\n(mean a sample)"),
    ("plan_length_change_common", "(e) valid plan length change,\ntasks solved in g−1 and g"),
    ("tiebreak_acts", "(f) tie-break by tokens acts\n(share of solved pool tasks)"),
)


def _by_generation(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float], list[float], list[float]]:
    per: dict[int, list[float]] = defaultdict(list)
    for r in rows:
        if r.get(key) is not None:
            per[int(r["generation"])].append(float(r[key]))
    gens = sorted(per)
    return (gens, [sum(per[g]) / len(per[g]) for g in gens], [min(per[g]) for g in gens],
            [max(per[g]) for g in gens])


def drift_figure(runs: Sequence[tuple[str, Sequence[Mapping[str, Any]]]], out: Path) -> list[Path]:
    """Draw ``runs`` (label, drift rows) into ``out`` (a .png path; a .pdf beside it)."""
    import matplotlib as mpl

    with mpl.rc_context(STYLE):
        fig, axes = new_figure(DOUBLE, 4.4, 2, 3)
        for (label, rows), colour in zip(runs, CYCLE, strict=False):
            for ax, (key, title) in zip(axes.flat, PANELS, strict=True):
                x, mean, lo, hi = _by_generation(rows, key)
                ax.set_title(title)
                ax.set_xlabel("generation")
                int_x(ax)
                if not x:
                    continue
                ax.plot(x, mean, color=colour, marker="o", label=label)
                ax.fill_between(x, lo, hi, color=colour, alpha=0.2, linewidth=0)
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=max(1, len(labels)))
        out = Path(out)
        return save(fig, out.parent, out.stem)


def paired_figure(rows: Sequence[Mapping[str, Any]], measures: Sequence[tuple[str, str]], a: str, b: str,
                  out: Path) -> list[Path]:
    """``drift.paired_difference`` rows: one panel a measure (``measures``: (key, title)), A − B per generation,
    each seed's difference as a dot and the mean over seeds with its 95 % t-interval over seeds as a bar."""
    import matplotlib as mpl

    with mpl.rc_context(STYLE):
        ncols = 3
        nrows = -(-len(measures) // ncols)
        fig, axes = new_figure(DOUBLE, 2.2 * nrows, nrows, ncols)
        for ax, (key, title) in zip(axes.flat, measures, strict=False):
            mine = [r for r in rows if r["measure"] == key and isinstance(r["generation"], int)]
            ax.set_title(title)
            ax.set_xlabel("generation")
            ax.axhline(0, color="black", linewidth=0.6)
            int_x(ax)
            for r in mine:
                g = r["generation"]
                ax.plot([g] * len(r["per_seed_diff"]), r["per_seed_diff"], "o", color=CYCLE[1], alpha=0.5,
                        markersize=2.5)
                ax.errorbar([g], [r["diff"]], yerr=[[r["diff"] - r["lo"]], [r["hi"] - r["diff"]]], fmt="s",
                            color=CYCLE[0], markersize=3, capsize=1.5, linewidth=0.8)
        for ax in list(axes.flat)[len(measures):]:
            ax.set_visible(False)
        fig.suptitle(f"{a} − {b}, paired by seed: each seed (dots), mean and 95 % t-interval over seeds",
                     fontsize=7)
        out = Path(out)
        return save(fig, out.parent, out.stem)
