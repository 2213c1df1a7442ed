"""`iterdeploy drift RUNDIR...`: what the loop does to the model over generations."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("drift", help="drift across generations: entropy, KL to the previous model, distinct plans",
                       description="Measures, per seed and generation of a finished (or running) run directory: "
                                   "the deployed policy's entropy and its KL to the previous generation's on the "
                                   "held-out prompts, distinct valid plans per solved task, plan length per task, "
                                   "completion and reasoning tokens, and how often the curation's tie-break acts. "
                                   "Writes RUNDIR/drift.jsonl; --figure also drift.png.")
    p.add_argument("run_dirs", type=Path, nargs="+", metavar="RUNDIR", help="run directories (iterdeploy run --out)")
    p.add_argument("--no-kl", action="store_true", help="skip the KL (it loads every generation's model)")
    p.add_argument("--reuse", action="store_true",
                   help="take a RUNDIR's drift.jsonl from an earlier `iterdeploy drift` where it covers every finished "
                        "seed and generation of the run (re-measure where it does not): to redraw a figure without "
                        "re-scoring every model")
    p.add_argument("--figure", type=Path, metavar="PNG",
                   help="draw every run given into this PNG (a PDF beside it)")
    p.add_argument("--paired", type=Path, metavar="MD",
                   help="with exactly two RUNDIRs A B (the same seeds, one setting changed): write A − B per generation "
                        "and measure, paired by seed (t-interval over seeds; a task-and-seed bootstrap for the solved "
                        "counts), to this Markdown file, a JSON and a figure (PNG, PDF) beside it; measures without the KL and writes "
                        "nothing into the run directories")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from iterdeploy_trl.drift import DriftError, measure_run
    from iterdeploy_trl.runio import write_jsonl

    if args.paired:
        return _paired(args)
    drawn = []
    for path in args.run_dirs:
        rows = _earlier_rows(Path(path)) if args.reuse else None
        if rows is not None:
            print(f"{path}: drift.jsonl of an earlier measurement covers every finished generation; reused")
            drawn.append((Path(path).name, rows))
            continue
        try:
            rows = measure_run(path, kl=not args.no_kl, log=print)
        except DriftError as exc:
            print(f"iterdeploy drift: {exc}", file=sys.stderr)
            return 2
        write_jsonl(Path(path) / "drift.jsonl", rows)
        print(f"wrote {Path(path) / 'drift.jsonl'}")
        drawn.append((Path(path).name, rows))
    if args.figure:
        from iterdeploy_trl.figures.drift import drift_figure

        args.figure.parent.mkdir(parents=True, exist_ok=True)
        for f in drift_figure(drawn, args.figure):
            print(f"wrote {f}")
    return 0


def _earlier_rows(path: Path) -> list[dict] | None:
    """``path``'s drift.jsonl when it holds a row for exactly the (seed, generation) pairs of the run's metrics rows
    (what a measurement of the run as it is now would give); None otherwise (absent, unreadable, stale)."""
    from iterdeploy_trl import rundir
    from iterdeploy_trl.runio import read_jsonl

    try:
        rows = read_jsonl(path / "drift.jsonl")
        finished = {(seed, gen) for seed, sdir in rundir.seed_dirs(path).items()
                    for gen in rundir.read_metrics(rundir.metrics(sdir))}
    except (OSError, ValueError, rundir.RunDirError):
        return None
    have = {(r.get("seed"), r.get("generation")) for r in rows if isinstance(r, dict)}
    return rows if rows and have == finished else None


def _paired(args: argparse.Namespace) -> int:
    """``--paired MD``: A − B of two run directories, paired by seed."""
    import json

    from iterdeploy_trl.drift import DriftError, paired_difference, paired_markdown, run_table
    from iterdeploy_trl.rundir import RunDirError

    if len(args.run_dirs) != 2:
        print(f"iterdeploy drift: --paired needs exactly two RUNDIRs (A B), got {len(args.run_dirs)}", file=sys.stderr)
        return 2
    a, b = args.run_dirs
    try:
        rows = paired_difference(run_table(a), run_table(b))
    except (DriftError, RunDirError) as exc:
        print(f"iterdeploy drift: {exc}", file=sys.stderr)
        return 2
    if not rows:
        print(f"iterdeploy drift: {a} and {b} share no seed and generation to pair", file=sys.stderr)
        return 2
    args.paired.parent.mkdir(parents=True, exist_ok=True)
    args.paired.write_text(paired_markdown(rows, a.name, b.name))
    args.paired.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    from iterdeploy_trl.drift import PAIRED_MEASURES
    from iterdeploy_trl.figures.drift import paired_figure

    drawn = paired_figure(rows, [(key, label) for key, label, _ in PAIRED_MEASURES], a.name, b.name,
                          args.paired.with_suffix(".png"))
    print(f"wrote {args.paired}, {args.paired.with_suffix('.json')} and {', '.join(map(str, drawn))}")
    return 0
