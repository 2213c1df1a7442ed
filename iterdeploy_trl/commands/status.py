"""`iterdeploy status RUNDIR`: where a run stands (reads only; safe while the run is going)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="where a run stands: seeds, generations done, stage, last summary, lock",
                       description="Reads a run directory (or a comparison's OUT) without writing or locking it: "
                                   "its seeds, the generations each has finished, the stage it is in, the last "
                                   "summary line, and whether a process holds it (host, PID, start time).")
    p.add_argument("run_dir", type=Path, metavar="RUNDIR", help="a run directory (iterdeploy run --out) or a comparison's OUT")
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from iterdeploy_trl.status import status_report

    try:
        text, statuses = status_report(args.run_dir)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"iterdeploy status: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([s.to_dict() for s in statuses], indent=2))
    else:
        print(text)
    return 0
