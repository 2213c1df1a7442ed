"""`iterdeploy run`: the iterative-deployment loop (resumes when RUNDIR exists)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run (or resume) the iterative-deployment loop",
                       description="Deploy, validate with VAL, curate, fine-tune, repeat. Without --config the "
                                   "CPU default runs (small local model, Blocksworld). Re-running with the same "
                                   "--out resumes where a killed run stopped.")
    p.add_argument("--config", type=Path, default=None, help="YAML/JSON run config (default: the CPU default)")
    p.add_argument("--out", type=Path, default=None, help="run directory (required unless --check)")
    p.add_argument("--check", action="store_true",
                   help="check the config, model, tokenizer, backend, task set, prompt lengths and --out, print "
                        "what the run would do, and exit (0: ready, 2: problems) without running or writing")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--report-to", nargs="+", default=None, metavar="TRACKER",
                   help="experiment trackers for the trainers' logs and the loop's metrics: trackio, tensorboard, "
                        "wandb (overrides the config's report_to; 'none' for none)")
    p.add_argument("--verbose", action="store_true",
                   help="show the libraries' own logs and progress bars (by default they go to RUNDIR/run.log)")
    p.add_argument("--json", action="store_true", help="print summary.json at the end")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from iterdeploy_trl.config import ConfigError, RunConfig, load_config
    from iterdeploy_trl.console import quiet_session
    from iterdeploy_trl.dist import MainProcessFailed, is_main, rank
    from iterdeploy_trl.errors import RunError
    from iterdeploy_trl.loop import run_loop
    from iterdeploy_trl.runlock import RunDirBusy, out_dir_problem

    if args.out is None and not args.check:
        print("iterdeploy run: --out RUNDIR is required (or --check to only check the config)", file=sys.stderr)
        return 2
    if not args.check and out_dir_problem(args.out):
        print(f"iterdeploy run: {out_dir_problem(args.out)}", file=sys.stderr)
        return 2
    try:
        if args.config is not None:
            # --check reports a missing model path with the other problems instead of stopping at it
            cfg = load_config(args.config, check_paths=not args.check)
            text = args.config.read_text()
        else:
            cfg = RunConfig().check()
            text = None
    except ConfigError as exc:
        print(f"iterdeploy run: bad config: {exc}", file=sys.stderr)
        return 2
    try:
        cfg = with_report_to(cfg, args.report_to)
    except ConfigError as exc:
        print(f"iterdeploy run: --report-to: {exc}", file=sys.stderr)
        return 2
    if args.check:
        from iterdeploy_trl.preflight import preflight

        result = preflight(cfg, args.out)
        print(f"iterdeploy run --check {args.config if args.config is not None else '(the CPU default)'}")
        print(result.report())
        return 0 if result.ok else 2
    from iterdeploy_trl.preflight import check_before_run
    from iterdeploy_trl.tasks import TaskSetError

    try:  # before the run's log opens in --out: a refused config writes nothing there (run_loop checks again)
        check_before_run(cfg)
    except (ConfigError, RunError, TaskSetError, ValueError, OSError) as exc:
        print(f"iterdeploy run: bad config: {exc}", file=sys.stderr)
        return 2
    try:
        with quiet_session(args.out, verbose=args.verbose, progress=not args.no_progress, rank=rank()):
            summary = run_loop(cfg, args.out, config_text=text, progress=not args.no_progress)
    except (ConfigError, RunError, RunDirBusy, FileNotFoundError, ValueError, MainProcessFailed) as exc:
        print(f"iterdeploy run: {exc}", file=sys.stderr)
        return 2
    if not is_main():
        return 0  # the main process reports
    print(done_line(args.out, summary))
    if args.json:
        print(json.dumps(summary, indent=2))
    return 0


def done_line(out: Any, summary: dict[str, Any]) -> str:
    """The run's last console line: first and last generation's solved counts (means over seeds where
    there are several, said so), as counts, not floats."""
    from iterdeploy_trl.status import count_text as c

    gens = summary["generations"]
    first, last = gens[0], gens[-1]
    seeds = len(last.get("seeds") or [None])
    over = f" (means over {seeds} seeds)" if seeds > 1 else ""
    return (f"done: {out}/summary.json — solved {c(first['solved'])} -> {c(last['solved'])} of {last['tasks']} "
            f"(held-out {c(first['heldout_solved'])} -> {c(last['heldout_solved'])} of {last['heldout_tasks']}), "
            f"longest solved reference plan {c(first['max_solved_reference_length'])} -> "
            f"{c(last['max_solved_reference_length'])}{over}")


def with_report_to(cfg, names: list[str] | None):  # type: ignore[no-untyped-def]
    """``cfg`` with ``--report-to`` applied (None: as the config says; ``none``: no tracker); checked again."""
    import dataclasses

    if names is None:
        return cfg
    return dataclasses.replace(cfg, report_to=tuple(n for n in names if n != "none")).check(paths=False)
