"""`iterdeploy compare`: the head-to-head of SFT variants and REINFORCE under an equal budget."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="methods and arms head-to-head at equal budgets (valid-sft, iw-sft, uncurated-sft, reinforce, rloo, grpo, expert-iteration, METHOD@CURATION)",
                       description="Runs every method in `compare_methods` of the config on the same tasks, base "
                                   "model and seeds, with an equal budget of sampled completions; writes "
                                   "OUT/compare.json with confidence intervals and paired tests. Resumable.")
    p.add_argument("--config", type=Path, required=True,
                   help="YAML/JSON run config; its compare_methods and tuning sections say what runs "
                        "(e.g. experiments/cpu_compare_full.yaml)")
    p.add_argument("--out", type=Path, required=True,
                   help="comparison directory: one run directory per method and seed, and compare.json")
    p.add_argument("--methods", nargs="+", default=None, help="override compare_methods")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="run N of the comparison's runs at a time (tuning points, then the result arms), each in a "
                        "worker process with the config's torch threads and its log in its run directory's run.log; "
                        "the results are the same as with 1 (a run that copies another's generation 0 waits for "
                        "it). Default 1: one after another in this process")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--report-to", nargs="+", default=None, metavar="TRACKER",
                   help="trackio, tensorboard, wandb (overrides the config's report_to; 'none' for none)")
    p.add_argument("--verbose", action="store_true",
                   help="show the libraries' own logs and progress bars (by default they go to OUT/run.log)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from iterdeploy_trl.commands.run import with_report_to
    from iterdeploy_trl.compare import run_compare
    from iterdeploy_trl.config import ConfigError, load_config
    from iterdeploy_trl.console import quiet_session
    from iterdeploy_trl.dist import MainProcessFailed, is_main, rank
    from iterdeploy_trl.errors import RunError
    from iterdeploy_trl.runlock import RunDirBusy, out_dir_problem

    if out_dir_problem(args.out):
        print(f"iterdeploy compare: {out_dir_problem(args.out)}", file=sys.stderr)
        return 2
    try:
        cfg = with_report_to(load_config(args.config), args.report_to)
        methods = tuple(args.methods) if args.methods else cfg.compare_methods
        with quiet_session(args.out, verbose=args.verbose, progress=not args.no_progress, rank=rank()):
            report = run_compare(cfg, args.out, methods=methods, config_text=args.config.read_text(),
                                 progress=not args.no_progress, jobs=args.jobs)
    except (ConfigError, RunError, RunDirBusy, ValueError, FileNotFoundError, MainProcessFailed) as exc:
        print(f"iterdeploy compare: {exc}", file=sys.stderr)
        return 2
    if not is_main():
        return 0  # the main process reports
    for method, tuned in report.get("tuning", {}).items():
        knobs = tuned.get("grid") or {"learning_rate": None}
        points = ", ".join(" ".join(f"{k} {r[k]:g}" for k in knobs) + f": {r['solved_mean']:.1f}" for r in tuned["table"])
        chosen = " ".join(f"{k} {v:g}" for k, v in (tuned.get("chosen_settings") or {"learning_rate": tuned["chosen"]}).items())
        print(f"tuning {method} (seeds {tuned['seeds']}): {points} -> {chosen}" + (
            f" (at the edge of its grid: {', '.join(tuned['edge_knobs'])})" if tuned.get("at_edge") else ""))
    print(f"{'method':<24} {'lr':>8} {'budget':>8} {'held-out (95% CI)':>20} {'pool (95% CI)':>20} "
          f"{'unanimous':>9}  vs {report['reference']} at the full budget (Holm p)")
    for method, rows in report["methods"].items():
        last = rows[-1]
        print(f"{method:<24} {report['learning_rates'][method]:>8g} {last['samples_used']:>8} "
              f"{_mean_ci(last.get('heldout_solved_mean'), last.get('heldout_ci')):>20} "
              f"{_mean_ci(last['solved_mean'], last['solved_ci']):>20} {last['unanimous']:>9}  "
              f"{_versus(report['paired'].get(method + ' - ' + str(report['reference'])))}")
    print(f"wrote {args.out}/compare.json")
    return 0


def _mean_ci(mean: float | None, ci: list[float] | None) -> str:
    """'m [lo, hi]' at one decimal ('–' without a mean)."""
    if mean is None:
        return "–"
    return f"{mean:.1f}" + (f" [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else "")


def _versus(points: list[dict] | None) -> str:
    """The paired difference at the last budget point per measure, with its seed-t interval and Holm-adjusted p
    (a compare.json written before the measures: pool solved, raw p)."""
    if not points:
        return ""
    d = points[-1]
    if "diff_mean" in d:  # the layout before the measures
        p = "n/a" if d.get("p_value") is None else f"{d['p_value']:.3g}"
        return f"pool {d['diff_mean']:+.1f} [{d['diff_ci'][0]:+.1f}, {d['diff_ci'][1]:+.1f}], p={p}"
    parts = []
    for measure, name in (("heldout_solved", "held-out"), ("solved", "pool")):
        m = d.get(measure)
        if isinstance(m, dict):
            p = "n/a" if m.get("p_holm") is None else f"{m['p_holm']:.3g}"
            parts.append(f"{name} {m['diff_mean']:+.1f} [{m['t_ci'][0]:+.1f}, {m['t_ci'][1]:+.1f}], p={p}")
    return "; ".join(parts)
