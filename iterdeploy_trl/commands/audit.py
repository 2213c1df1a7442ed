"""`iterdeploy audit`: what each generation's selection rewarded, from run directories alone."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "audit", help="reward audit of run directories: funnel, effective reward, drift, lineage (Markdown, "
                      "figures, JSON)",
        description="Reads each run directory (iterdeploy run --out) and writes OUT/audit.md, OUT/audit.json and "
                    "figures: per generation the selection funnel (sampled -> valid -> curated) and how plan "
                    "length, tokens, task size, action types, repeated/undone actions and novelty differ along "
                    "it; the effective per-trace reward r sum_k lambda_k beta_k/pi of Prop. 2 (every source "
                    "generation's model and pi, the model the training starts from, loaded from the run "
                    "directory); drift and regressions of all "
                    "deployed outputs; lineage and a completeness/consistency check.")
    p.add_argument("paths", nargs="+", type=Path, metavar="RUNDIR", help="run directories")
    p.add_argument("--out", type=Path, default=None, help="report directory (default: RUNDIR/audit for one run)")
    p.add_argument("--no-score", action="store_true",
                   help="skip loading the models (no effective rewards; the rest of the audit is made)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from iterdeploy_trl.audit import AuditError, write_audit

    if args.out is None:
        if len(args.paths) > 1:
            print("iterdeploy audit: give --out DIR when auditing several run directories", file=sys.stderr)
            return 2
        args.out = args.paths[0] / "audit"
    from iterdeploy_trl.runlock import out_dir_problem

    problem = out_dir_problem(args.out)
    if problem:  # before any model is scored (minutes), not when the report is written
        print(f"iterdeploy audit: {problem}", file=sys.stderr)
        return 2
    try:
        report = write_audit(args.paths, args.out, score=not args.no_score,
                             log=lambda m: print(f"[audit] {m}", file=sys.stderr, flush=True))
    except AuditError as exc:
        print(f"iterdeploy audit: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"iterdeploy audit: cannot write to {args.out}: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a file of a shape we did not foresee: say so, no traceback
        print(f"iterdeploy audit: could not audit {', '.join(map(str, args.paths))}: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return 1
    for a in report.audits:
        failed = [c for c in a["checks"] if c["ok"] is False]
        print(f"{a['run']}: {len(a['checks']) - len(failed)} of {len(a['checks'])} checks pass"
              + (f"; FAILED: {'; '.join(c['check'] for c in failed[:5])}" if failed else ""))
    print(f"wrote {', '.join(str(f) for f in report.files)}")
    return 0
