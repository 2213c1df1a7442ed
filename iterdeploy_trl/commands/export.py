"""`iterdeploy export`: the model of the generation a release criterion picks, from a run directory."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="copy the model of the generation chosen by a held-out / no-regression criterion out of a "
                       "run directory (no retraining)",
        description="Chooses a generation of RUNDIR by --select (best-heldout: most held-out tasks solved, mean "
                    "over seeds, ties to the earlier; no-regression: the last generation that lost no pool task "
                    "solved by every seed earlier; or a generation number) and copies that generation's model "
                    "of --seed into OUT with release.json (run, seed, generation, criterion and numbers, source).")
    p.add_argument("run_dir", type=Path, metavar="RUNDIR", help="the run directory to export a model from")
    p.add_argument("--out", type=Path, required=True, help="new directory for the model")
    p.add_argument("--select", default="best-heldout", help="best-heldout | no-regression | GENERATION")
    p.add_argument("--seed", type=int, default=None, help="the seed whose model is exported (default: the first)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from iterdeploy_trl.audit import AuditError
    from iterdeploy_trl.release import ReleaseError, export_model

    try:
        info = export_model(args.run_dir, args.out, criterion=args.select, seed=args.seed)
    except (AuditError, ReleaseError) as exc:
        print(f"iterdeploy export: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"iterdeploy export: cannot write {args.out}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(info, indent=1))
    return 0
