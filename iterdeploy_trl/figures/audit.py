"""Figures of a reward audit (``iterdeploy audit``), drawn from the audit's own numbers: the selection
funnel, the effective reward of each training set, drift and regressions. One set per run."""

from __future__ import annotations

import re
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from iterdeploy_trl.figures.style import GREY, OKABE_ITO, SINGLE, STYLE, boxes, int_x, new_figure, save

STAGE_COLOURS = {"sampled": OKABE_ITO["sky"], "valid": OKABE_ITO["blue"], "curated": OKABE_ITO["vermillion"]}


def _slug(text: Any) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-") or "run"


def _per_gen(audit: dict[str, Any], get: Any) -> tuple[list[int], list[float]]:
    """Generation -> mean over seeds of ``get(entry)`` (entries where it is not None)."""
    by: dict[int, list[float]] = {}
    for s in audit["seeds"].values():
        for e in s["generations"]:
            v = get(e)
            if v is not None:
                by.setdefault(e["generation"], []).append(float(v))
    gens = sorted(by)
    return gens, [statistics.fmean(by[g]) for g in gens]


def fig_funnel(audit: dict[str, Any], out: Path, stem: str) -> list[Path]:
    """(a) traces at each funnel stage per generation; (b) plan length relative to the reference plan,
    (c) completion tokens, (d) undone actions per plan, at each stage (means over seeds)."""
    fig, axes = new_figure(SINGLE * 2, 4.2, 2, 2, sharex=True)
    panels = [(axes[0, 0], "n", "(a) traces at each stage", "pool traces"),
              (axes[0, 1], "relative_length_mean", "(b) plan length / reference plan length", "ratio"),
              (axes[1, 0], "completion_tokens_mean", "(c) completion tokens", "tokens per trace"),
              (axes[1, 1], "undone_per_plan", "(d) undone actions (a step reversed by the next)", "per plan")]
    for ax, key, title, ylabel in panels:
        for k, stage in enumerate(("sampled", "valid", "curated")):
            gens, vals = _per_gen(audit, lambda e, st=stage, kk=key: (e["funnel"].get(st) or {}).get(kk))
            if not gens:
                continue
            if key == "n":
                ax.bar([g + (k - 1) * 0.27 for g in gens], vals, width=0.27, color=STAGE_COLOURS[stage], label=stage)
            else:
                ax.plot(gens, vals, marker="os^"[k], color=STAGE_COLOURS[stage], label=stage)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
    for ax in axes[1]:
        ax.set_xlabel("generation")
        int_x(ax)
    axes[0, 0].set_yscale("symlog", linthresh=10)
    top = max([10.0, *(b.get_height() for b in axes[0, 0].patches)])
    axes[0, 0].set_ylim(0, top * 30)  # room above the bars for the legend
    axes[0, 0].legend(title=f"{audit['name']}: seeds {', '.join(audit['seeds'])}", title_fontsize=6.5,
                      loc="upper center", ncol=3)
    return save(fig, out, stem)


def fig_reward(audit: dict[str, Any], out: Path, stem: str) -> list[Path] | None:
    """(a) Prop. 2's effective rewards r·Σ_k λ_k β_k/π of each training set (all seeds), log scale; (b) the share
    of the total weight carried by each source generation."""
    data: dict[int, list[float]] = {}
    shares: dict[int, dict[int, list[float]]] = {}
    for s in audit["seeds"].values():
        for e in s["generations"]:
            er = e.get("effective_reward")
            if not er or not er.get("computed"):
                continue
            g = e["generation"]
            weights = [t["weight"] for t in er["per_trace"]] if er.get("per_trace") else er.get("weight_quantiles") or []
            data.setdefault(g, []).extend(weights)
            for src, v in er["statistics"]["share_by_source_generation"].items():
                shares.setdefault(g, {}).setdefault(int(src), []).append(v)
    if not shares:
        return None
    fig, axes = new_figure(SINGLE * 2, 2.6, 1, 2)
    ax, ax_s = axes[0, 0], axes[0, 1]
    gens = sorted(shares)
    if any(data.values()):
        boxes(ax, [[max(w, 1e-12) for w in data.get(g, [])] for g in gens], gens, OKABE_ITO["vermillion"])
        ax.set_yscale("log")
    ax.axhline(1.0, color=GREY, linestyle="--", linewidth=0.8, label="weight 1 (the mixture is π)")
    ax.set_title("(a) effective reward of each training trace")
    ax.set_xlabel("training set written after generation")
    ax.set_ylabel("r·Σ_k λ_k β_k / π")
    ax.legend(loc="best")
    int_x(ax)
    sources = sorted({src for g in gens for src in shares[g]})
    colours = [OKABE_ITO[c] for c in ("blue", "orange", "green", "vermillion", "sky", "purple", "black", "yellow")]
    bottom = [0.0] * len(gens)
    for i, src in enumerate(sources):
        vals = [statistics.fmean(shares[g].get(src, [0.0])) for g in gens]
        ax_s.bar(gens, vals, bottom=bottom, color=colours[i % len(colours)], label=f"sampled in gen {src}", width=0.6)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ax_s.set_title("(b) share of the total weight by source generation")
    ax_s.set_xlabel("training set written after generation")
    ax_s.set_ylabel("share of Σ weight")
    ax_s.set_ylim(0, 1.02)
    ax_s.legend(loc="lower left", fontsize=5.5)
    int_x(ax_s)
    return save(fig, out, stem)


def fig_drift(audit: dict[str, Any], out: Path, stem: str) -> list[Path]:
    """(a) valid fraction of every deployed output, pool and held-out (and, with a blind spot, the exact
    validator's and the exploit fraction); (b) tasks lost since the previous generation, lost since ever
    solved, and newly solved."""
    fig, axes = new_figure(SINGLE * 2, 2.6, 1, 2)
    ax, ax_l = axes[0, 0], axes[0, 1]
    for split, colour, ls in (("pool", OKABE_ITO["blue"], "-"), ("heldout", OKABE_ITO["orange"], "--")):
        gens, vals = _per_gen(audit, lambda e, sp=split: e["deployed"][sp]["valid_fraction"])
        ax.plot(gens, vals, marker="o", color=colour, linestyle=ls, label=f"{split}: valid")
    gens_b, exploit = _per_gen(audit, lambda e: e.get("blind_spot", {}).get("exploit_fraction"))
    if gens_b:
        _, exact = _per_gen(audit, lambda e: e.get("blind_spot", {}).get("exact_valid_fraction"))
        ax.plot(gens_b, exact, marker="s", color=OKABE_ITO["green"], label="pool: valid for the exact validator")
        ax.plot(gens_b, exploit, marker="^", color=OKABE_ITO["vermillion"], label="pool: exploits the blind spot")
    ax.set_title("(a) deployed outputs accepted")
    ax.set_ylabel("fraction of samples")
    ax.set_xlabel("generation")
    ax.set_ylim(bottom=0)
    ax.legend(loc="best")
    int_x(ax)
    for k, (key, label, colour) in enumerate((("lost_since_previous", "lost since the previous gen.", OKABE_ITO["vermillion"]),
                                              ("lost_since_ever", "lost since ever solved", OKABE_ITO["purple"]),
                                              ("gained", "solved for the first time", OKABE_ITO["green"]))):
        gens, vals = _per_gen(audit, lambda e, kk=key: len(e["solved"][kk]))
        ax_l.bar([g + (k - 1) * 0.27 for g in gens], vals, width=0.27, color=colour, label=label)
    ax_l.set_title("(b) regressions: pool tasks lost and gained")
    ax_l.set_ylabel("tasks (mean over seeds)")
    ax_l.set_xlabel("generation")
    ax_l.legend(loc="best")
    int_x(ax_l)
    return save(fig, out, stem)


def fig_blind_spot(experiment: dict[str, Any], out: Path, stem: str) -> list[Path]:
    """The blind-spot experiment: exploits (accepted by the blind validator, rejected by the exact one) as a
    share of (a) all deployed pool samples, (b) the blind-accepted ones, (c) the curated training set
    written after the generation; (d) pool solved under the exact validator; per condition, mean and 95 %
    t-interval over seeds (a generation without the measure, e.g. the last one's training set, is left out)."""
    import matplotlib as mpl

    colours = {"exact validator": OKABE_ITO["blue"], "blind spot": OKABE_ITO["vermillion"],
               "blind spot + exact counter-reward": OKABE_ITO["green"]}
    colours.update({r["condition"]: OKABE_ITO["green"] for r in experiment["runs"]
                    if r["condition"].startswith("blind spot + partial counter-reward")})
    with mpl.rc_context(STYLE):
        fig, axes = new_figure(SINGLE * 2, 4.4, 2, 2, sharex=True)
        for ax, key, title in zip(axes.flat, ("exploit_fraction", "exploit_share_of_blind_accepted",
                                            "curated_exploit_share", "exact_solved"),
                                  ("(a) exploits / all pool samples", "(b) exploits / blind-accepted samples",
                                   "(c) exploits / curated training set", "(d) pool tasks solved (exact)"),
                                  strict=True):
            for k, r in enumerate(experiment["runs"]):
                rows = [e for e in r["summary"] if e.get(key) is not None]
                if not rows:
                    continue
                x = [e["generation"] + (k - 1) * 0.06 for e in rows]
                mean = [e[key]["mean"] for e in rows]
                lo = [e[key]["ci"][0] for e in rows]
                hi = [e[key]["ci"][1] for e in rows]
                colour = colours.get(r["condition"], GREY)
                ax.fill_between(x, lo, hi, color=colour, alpha=0.15, linewidth=0)
                ax.plot(x, mean, marker="os^"[k % 3], color=colour,  # the label without its parenthesis (the table has it)
                        label=f"{r['condition'].split(' (')[0]} ({rows[0]['seeds']} seeds)")
            ax.set_title(title)
            ax.set_xlabel("generation")
            ax.set_ylim(bottom=0)
            int_x(ax)
        axes[0, 0].set_ylabel("fraction of pool samples")
        axes[0, 1].set_ylabel("fraction of blind-accepted")
        axes[1, 0].set_ylabel("fraction of training rows")
        axes[1, 1].set_ylabel("fraction of pool tasks")
        axes[1, 0].legend(loc="lower right", bbox_to_anchor=(1.0, 0.22), fontsize=5.5,
                          title=f"measured: {experiment['blind_spot']}",
                          title_fontsize=5.5)
        return save(fig, out, stem)


def draw_audit_figures(audits: Sequence[dict[str, Any]], out: Path) -> list[Path]:
    """Every audit figure (PNG + PDF) of every audited run; returns the files."""
    import matplotlib as mpl

    files: list[Path] = []
    taken: set[str] = set()
    with mpl.rc_context(STYLE):
        for a in audits:
            name = _slug(a["name"])
            k = 2
            while name in taken:
                name, k = f"{_slug(a['name'])}-{k}", k + 1
            taken.add(name)
            if not any(s["generations"] for s in a["seeds"].values()):
                continue
            files += fig_funnel(a, out, f"audit_funnel-{name}")
            files += fig_reward(a, out, f"audit_reward-{name}") or []
            files += fig_drift(a, out, f"audit_drift-{name}")
    return files
