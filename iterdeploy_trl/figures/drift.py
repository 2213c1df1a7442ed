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
