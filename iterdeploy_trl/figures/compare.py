"""The head-to-head figure of a compare directory."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from iterdeploy_trl.compare import MEASURES
from iterdeploy_trl.figures.markdown import Drawn, Markdown, fmt
from iterdeploy_trl.figures.sources import Compare
from iterdeploy_trl.figures.style import (
    SINGLE,
    arm_style,
    band,
    count_y,
    new_figure,
    save,
)
from iterdeploy_trl.methods import all_methods

# The methods that sample their own training completions (Method.trains_on PROMPTS: REINFORCE and the RL arms)
ONLINE_METHODS = frozenset(m.name for m in all_methods() if not m.curates)


def cumulative_tokens(method: str, rows: Sequence[dict[str, Any]]) -> list[float]:
    """Training tokens spent to obtain each budget point's model: REINFORCE's counter is cumulative
    already; an SFT generation's is that fine-tune's alone, so it is summed over generations."""
    if rows and all(r.get("train_completion_tokens_cumulative") is not None for r in rows):
        return [float(r["train_completion_tokens_cumulative"]) for r in rows]
    vals = [float(r.get("train_completion_tokens") or 0) for r in rows]
    if method in ONLINE_METHODS:  # runs made before the cumulative counter: REINFORCE's was cumulative
        return vals
    out, total = [], 0.0
    for v in vals:
        total += v
        out.append(total)
    return out


def interval_text(ci: Sequence[float] | None) -> str | None:
    """'[lo, hi]' in the table's number format (None: no interval)."""
    return None if ci is None else f"[{fmt(float(ci[0]))}, {fmt(float(ci[1]))}]"


def paired_rows(paired: dict[str, Any]) -> list[tuple[Any, ...]]:
    """One table row per comparison, measure and budget point; a compare.json written before the measures
    (one difference per point, pool solved) gives one row per point."""
    rows = []
    for name, points in paired.items():
        for d in points:
            if "diff_mean" in d:  # the old layout
                rows.append((name, "pool solved", d["generation"], d["diff_mean"], interval_text(d.get("diff_ci")),
                             None, d.get("p_value"), None))
                continue
            for measure, label in MEASURES.items():
                m = d.get(measure)
                if isinstance(m, dict):
                    rows.append((name, label, d["generation"], m["diff_mean"], interval_text(m.get("t_ci")),
                                 interval_text(m.get("bootstrap_ci")), m.get("p_value"), m.get("p_holm")))
    return rows


def fig_head_to_head(cmp: Compare, out: Path, stem: str, md: Markdown) -> Drawn:
    """Solved vs sampled-completion budget, vs training tokens and vs wall-clock seconds, 95% CI over seeds,
    per method (the wall-clock panel from the rows' ``wall_seconds_cumulative``; an older compare.json has none)."""
    fig, axes = new_figure(SINGLE, 6.6, 3, 1)  # the legend goes under the panels
    ax_b, ax_t, ax_w = axes[0, 0], axes[1, 0], axes[2, 0]
    drew_wall = False
    rows_md = []
    positive = []  # the positive cumulative token counts, for panel (b)'s scale
    n_tasks = None
    for i, (method, rows) in enumerate(cmp.methods.items()):
        if not rows:
            continue
        rows = sorted(rows, key=lambda r: r["generation"])
        style = arm_style(method, i)
        colour, label, line = style["colour"], style["label"], style["line"]
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
        band(ax_b, [r["samples_used"] for r in rows], mean, lo, hi, colour, label, **line)
        band(ax_t, tokens, mean, lo, hi, colour, label, **line)
        walls = [r.get("wall_seconds_cumulative") for r in rows]
        if all(w is not None for w in walls):
            band(ax_w, walls, mean, lo, hi, colour, label, **line)
            drew_wall = True
        for r, tok in zip(rows, tokens, strict=True):
            rows_md.append((method, r["generation"], r["samples_used"], r.get("heldout_solved_mean"),
                            interval_text(r.get("heldout_ci")), r["solved_mean"], interval_text(r["solved_ci"]),
                            r.get("unanimous"), interval_text(r.get("unanimous_ci")), r.get("train_traces"), tok,
                            r.get("train_seconds")))
    of = f" (of {n_tasks})" if n_tasks else ""
    ax_b.set_title("(a) pool tasks solved vs sampling budget")
    ax_b.set_xlabel("sampled completions used for learning")
    ax_t.set_title("(b) pool tasks solved vs training compute")
    ax_t.set_xlabel("training tokens (cumulative)")
    ax_b.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
    # The methods' token counts differ by orders of magnitude (one curated trace per task against every
    # sampled completion): a log axis, linear below the smallest positive count so that the base model's 0
    # is drawn too.
    if positive and max(positive) / min(positive) > 20:
        ax_t.set_xscale("symlog", linthresh=min(positive))
        ax_t.set_xlabel("training tokens (cumulative, log scale)")
    ax_w.set_title("(c) pool tasks solved vs wall-clock time")
    ax_w.set_xlabel("wall-clock seconds (deploy + train, cumulative)")
    _no_wall_note(ax_w, drew_wall)
    for a in (ax_b, ax_t, ax_w):
        a.set_ylabel(f"tasks solved{of}")
        count_y(a, False)
    _legend_below(fig, ax_b, cmp)
    files = save(fig, out, stem)
    sources = [cmp.path]
    notes = ["Pool tasks solved (the secondary measure; held-out solved, the primary one, is in the tables): mean "
             "over seeds with a two-sided 95% t interval (compare.json). Training tokens: completion "
             "tokens trained on to obtain each model, summed over generations for the SFT methods (each "
             "generation's fine-tune) — REINFORCE's count is cumulative already. Wall-clock seconds: each "
             "generation's deploy and train seconds as measured when it ran, summed up to the budget point (a "
             "generation 0 copied from another arm counts the seconds of copying it)."]
    if not cmp.complete:
        notes.append(f"IN PROGRESS: {cmp.path} has no compare.json yet; statistics computed from the finished "
                     "generations of its method runs.")
    md.section(f"Head-to-head — {cmp.label} ({cmp.domain})", files, sources, notes)
    md.table(["method", "generation", "sampled completions", "held-out solved (mean)", "held-out 95% CI",
              "pool solved (mean)", "pool 95% CI", "unanimous (pool)", "unanimous 95% CI (Wilson)", "train traces",
              "training tokens (cum.)", "train seconds"], rows_md)
    if cmp.paired:
        layout_before_measures = any("diff_mean" in d for ds in cmp.paired.values() for d in ds)
        md.text(f"Paired differences against {cmp.reference} (same seeds; " + (
            "an older compare.json: pool solved only, no task-level bootstrap, no correction):"
            if layout_before_measures else
            "held-out solved is the primary measure; Holm over every comparison tested):"))
        md.text("")
        md.table(["comparison", "measure", "generation", "diff (mean)", "seed-t 95% CI", "task-and-seed bootstrap "
                  "95% CI", "p (paired t)", "p (Holm)"], paired_rows(cmp.paired))
        for points in cmp.paired.values():  # the verdicts at each comparison's last budget point
            for measure in MEASURES:
                if points and isinstance(points[-1].get(measure), dict):
                    md.text(f"- {points[-1][measure]['verdict']}")
        md.text("")
    report = _compare_json(cmp)
    overlap = report.get("task_overlap")
    if isinstance(overlap, dict) and overlap.get("heldout_tasks"):
        md.text(f"Held-out tasks whose problem also lies in the pool: {overlap['heldout_tasks_in_pool']} of "
                f"{overlap['heldout_tasks']} (the pool holds {overlap['distinct_pool_problems']} distinct problems "
                f"in {overlap['pool_tasks']} tasks).")
        md.text("")
    tuning_md(report.get("tuning") or {}, md)
    budgets_md(report.get("budgets") or {}, md, report.get("tuning") or {})
    return Drawn(stem, "head_to_head", [ax_b.get_title(), ax_t.get_title(), ax_w.get_title()], files, sources)


def fig_heldout(cmp: Compare, out: Path, stem: str, md: Markdown) -> Drawn:
    """Held-out tasks solved (the primary measure) vs the sampled-completion budget and vs wall-clock seconds,
    95% CI over seeds, per arm (``heldout_solved_mean``, ``heldout_ci`` and ``wall_seconds_cumulative`` of
    compare.json's rows)."""
    fig, axes = new_figure(SINGLE, 4.6, 2, 1)
    ax_b, ax_w = axes[0, 0], axes[1, 0]
    drew_wall, n_held = False, None
    for i, (arm, rows) in enumerate(cmp.methods.items()):
        rows = sorted((r for r in rows if r.get("heldout_solved_mean") is not None), key=lambda r: r["generation"])
        if not rows:
            continue
        style = arm_style(arm, i)
        colour, label, line = style["colour"], style["label"], style["line"]
        n_held = rows[-1].get("heldout_tasks") or n_held
        mean = [r["heldout_solved_mean"] for r in rows]
        lo = [(r.get("heldout_ci") or [m, m])[0] for r, m in zip(rows, mean, strict=True)]
        hi = [(r.get("heldout_ci") or [m, m])[1] for r, m in zip(rows, mean, strict=True)]
        band(ax_b, [r["samples_used"] for r in rows], mean, lo, hi, colour, label, **line)
        walls = [r.get("wall_seconds_cumulative") for r in rows]
        if all(w is not None for w in walls):
            band(ax_w, walls, mean, lo, hi, colour, label, **line)
            drew_wall = True
    ax_b.set_title("(a) held-out tasks solved vs sampling budget")
    ax_b.set_xlabel("sampled completions used for learning")
    ax_b.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
    ax_w.set_title("(b) held-out tasks solved vs wall-clock time")
    ax_w.set_xlabel("wall-clock seconds (deploy + train, cumulative)")
    _no_wall_note(ax_w, drew_wall)
    for a in (ax_b, ax_w):
        a.set_ylabel("held-out tasks solved" + (f" (of {n_held})" if n_held else ""))
        count_y(a, False)
    _legend_below(fig, ax_b, cmp)
    files = save(fig, out, stem)
    md.section(f"Held-out tasks solved (the primary measure) — {cmp.label} ({cmp.domain})", files, [cmp.path],
               ["Held-out tasks are never trained on. Mean over seeds with a two-sided 95% t interval (compare.json); "
                "wall-clock seconds as in the head-to-head figure. The numbers are the held-out columns of the "
                "head-to-head table."])
    return Drawn(stem, "head_to_head_heldout", [ax_b.get_title(), ax_w.get_title()], files, [cmp.path])


def _no_wall_note(ax: Any, drew_wall: bool) -> None:
    """Say on the wall-clock panel that compare.json holds no wall times, when none was drawn."""
    if not drew_wall:
        ax.text(0.5, 0.5, "no wall times in this compare.json", ha="center", va="center", transform=ax.transAxes)


def _legend_below(fig: Any, ax: Any, cmp: Compare) -> None:
    """One legend (``ax``'s entries) under every panel: inside an axis it covers the bands it explains."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(handles), 2),
                   title=f"{cmp.domain}; 95% CI over seeds {', '.join(map(str, cmp.seeds))}", title_fontsize=6.5)


def _compare_json(cmp: Compare) -> dict[str, Any]:
    """The compare directory's compare.json as a mapping ({} while it runs, or when unreadable: the figure
    reads its statistics through ``sources`` already, which reports such a file)."""
    import json

    from iterdeploy_trl import rundir

    path = rundir.compare_json(cmp.path)
    try:
        data = json.loads(path.read_text()) if cmp.complete and path.is_file() else {}
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def tuning_md(tuning: dict[str, Any], md: Markdown) -> None:
    """The tuning table (every grid point of every arm, the chosen one marked, its score per tuning seed), a
    table per arm (its grid, number of runs, chosen value, whether it lies at a grid edge and for which knob)
    and, per arm whose chosen value lies at an edge of its grid, a line saying so."""
    if not tuning:
        return
    rows = []
    for arm, t in tuning.items():
        knobs = list(t.get("grid") or {"learning_rate": None})
        for r in t.get("table", []):
            point = ", ".join(f"{k} {fmt(r.get(k))}" for k in knobs)
            chosen = all(r.get(k) == (t.get("chosen_settings") or {"learning_rate": t.get("chosen")}).get(k)
                         for k in knobs)
            per_seed = ", ".join(fmt(v) for v in r.get("solved_per_seed") or []) or None
            rows.append((arm, point, r.get("solved_mean"), per_seed, r.get("heldout_solved_mean"),
                         r.get("wall_seconds"), "chosen" if chosen else ""))
    md.text("Tuning (on the tuning seeds and, where compare.json says so, a tuning pool of its own; the point with "
            "the most tuning-pool tasks solved at the full budget is chosen):")
    md.text("")
    md.table(["arm", "grid point", "pool solved (mean)", "per tuning seed", "held-out solved", "wall s", ""], rows)
    md.table(["arm", "grid", "runs", "tuning seeds", "chosen", "chosen at a grid edge"],
             [(arm, " × ".join(f"{k} {', '.join(f'{v:g}' for v in vs)}" for k, vs in (t.get("grid") or {}).items()),
               t.get("runs", len(t.get("table", []))), ", ".join(map(str, t.get("seeds", []))) or None,
               ", ".join(f"{k} {v:g}" for k, v in (t.get("chosen_settings") or {}).items()) or None,
               f"yes ({', '.join(t.get('edge_knobs', []))})" if t.get("at_edge") else "no")
              for arm, t in tuning.items()])
    for arm, t in tuning.items():
        if t.get("at_edge"):
            md.text(f"- {arm}: the chosen {', '.join(t.get('edge_knobs', []))} lies at an edge of its grid; a value "
                    "beyond it was not tried")
    md.text("")


def budgets_md(budgets: dict[str, Any], md: Markdown, tuning: dict[str, Any] | None = None) -> None:
    """Each arm's budget in every unit (compare.json's ``budgets``), its wall seconds per phase as measured (with
    ``tuning``, compare.json's tuning table: the seconds of the arm's tuning runs) and the machines that measured
    them."""
    if not budgets:
        return
    tuning = tuning or {}
    md.text("Budgets per arm, summed over seeds (generated completions: every deployment, evaluation included, and "
            "the completions an online arm samples inside its trainer; wall seconds per phase as measured when each "
            "generation ran; validation runs inside deployment, so its seconds are part of deploy s):")
    md.text("")
    md.table(["arm", "sampled completions", "optimizer steps", "training tokens", "generated completions",
              "deploy s", "train s", "evaluate s", "total s", "tuning s", "validation s", "measured on"],
             [(arm, b["sampled_completions"], b["optimizer_steps"], b["training_tokens"], b["generated_completions"],
               b["seconds"]["deploy"], b["seconds"]["train"], b["seconds"]["evaluate"], b["seconds"]["total"],
               tuning_seconds(tuning.get(arm)), b["seconds"].get("validate"), ", ".join(b.get("machines") or []) or None)
              for arm, b in budgets.items()])
    md.text("")


def tuning_seconds(arm_tuning: dict[str, Any] | None) -> float | None:
    """The wall seconds of one arm's tuning runs as measured (the sum of its tuning table's ``wall_seconds``;
    None: the arm was not tuned)."""
    if not arm_tuning or not arm_tuning.get("table"):
        return None
    return round(sum(float(r.get("wall_seconds") or 0.0) for r in arm_tuning["table"]), 1)
