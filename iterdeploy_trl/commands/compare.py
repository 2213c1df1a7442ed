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
                                 progress=not args.no_progress)
    except (ConfigError, RunError, RunDirBusy, ValueError, FileNotFoundError, MainProcessFailed) as exc:
        print(f"iterdeploy compare: {exc}", file=sys.stderr)
        return 2
    if not is_main():
        return 0  # the main process reports
    for method, tuned in report.get("tuning", {}).items():
        rates = ", ".join(f"{r['learning_rate']:g}: {r['solved_mean']:.1f}" for r in tuned["table"])
        print(f"tuning {method} (seeds {tuned['seeds']}): {rates} -> {tuned['chosen']:g}")
    print(f"{'method':<15} {'lr':>8} {'budget':>8} {'solved (95% CI)':>22} {'unanimous':>10} {'vs reference (95% CI, p)':>32}")
    for method, rows in report["methods"].items():
        last = rows[-1]
        lo, hi = last["solved_ci"]
        diff = report["paired"].get(f"{method} - {report['reference']}")
        vs = ""
        if diff:
            d = diff[-1]
            p = "n/a" if d["p_value"] is None else f"{d['p_value']:.3g}"
            vs = f"{d['diff_mean']:+.1f} [{d['diff_ci'][0]:+.1f}, {d['diff_ci'][1]:+.1f}], p={p}"
        print(f"{method:<15} {report['learning_rates'][method]:>8g} {last['samples_used']:>8} "
              f"{last['solved_mean']:>8.1f} [{lo:6.1f}, {hi:6.1f}] {last['unanimous']:>10} {vs:>32}")
    print(f"wrote {args.out}/compare.json")
    return 0
