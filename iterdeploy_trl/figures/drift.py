"""Drift across generations (``iterdeploy drift``): entropy and KL to the previous generation on the held-out
prompts, distinct valid plans per solved task, plan length and completion tokens; one line per run, the mean
over its seeds with the min–max band."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from iterdeploy_trl.figures.style import CYCLE, DOUBLE, int_x, new_figure, save

PANELS = (
    ("entropy_heldout", "entropy of β_g, held-out (nats)"),
    ("kl_prev_heldout", "KL(β_g ‖ β_{g−1}), held-out (nats)"),
    ("distinct_valid_plans_pool", "distinct valid plans\nper solved pool task"),
    ("completion_tokens_mean", "completion tokens (mean)"),
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
    fig, axes = new_figure(DOUBLE, 2.2, 1, len(PANELS))
    for (label, rows), colour in zip(runs, CYCLE, strict=False):
        for ax, (key, title) in zip(axes[0], PANELS, strict=True):
            x, mean, lo, hi = _by_generation(rows, key)
            if not x:
                continue
            ax.plot(x, mean, color=colour, marker="o", label=label)
            ax.fill_between(x, lo, hi, color=colour, alpha=0.2, linewidth=0)
            ax.set_title(title)
            ax.set_xlabel("generation")
            int_x(ax)
    axes[0][0].legend(loc="best")
    out = Path(out)
    return save(fig, out.parent, out.stem)
