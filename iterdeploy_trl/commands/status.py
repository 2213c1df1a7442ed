"""`iterdeploy status RUNDIR`: where a run stands (reads only; safe while the run is going)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="where a run or a comparison stands: seeds, generations done, stage, last summary, lock",
                       description="Reads a run directory (or a comparison's OUT) without writing or locking it: "
                                   "its seeds, the generations each has finished, the stage it is in, the last "
                                   "summary line, and whether a process holds it (host, PID, start time). On a comparison's "
                                   "OUT: each tuning run and result arm (finished, under way, stopped, not started), "
                                   "the run seconds so far and a rough estimate of those left, and each arm's "
                                   "tuning choice once its grid is finished.")
    p.add_argument("run_dir", type=Path, metavar="RUNDIR", help="a run directory (iterdeploy run --out) or a comparison's OUT")
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from iterdeploy_trl.compare_status import comparison_status, is_comparison
    from iterdeploy_trl.config import ConfigError
    from iterdeploy_trl.status import status_report

    try:
        if args.run_dir.is_dir() and is_comparison(args.run_dir):
            st = comparison_status(args.run_dir)
            print(json.dumps(st.to_dict(), indent=2) if args.json else st.report())
            return 0
        text, statuses = status_report(args.run_dir)
    except (FileNotFoundError, ValueError, KeyError, ConfigError) as exc:
        print(f"iterdeploy status: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([s.to_dict() for s in statuses], indent=2))
    else:
        print(text)
    return 0
