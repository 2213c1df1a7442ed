"""`iterdeploy tasks`: generate a seeded task pool with reference plans and write it in the IPC layout."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from iterdeploy_trl.domains import PLANNING_DOMAINS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tasks", help="generate a seeded task set (problems, reference plans, tasks.jsonl)")
    p.add_argument("--domain", choices=PLANNING_DOMAINS, required=True)
    p.add_argument("--n", type=int, required=True, help="number of tasks")
    p.add_argument("--seed", type=int, default=0, help="pool seed (task ids are <domain>-<seed>-<index>)")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument(
        "--size",
        type=int,
        nargs=2,
        metavar=("LO", "HI"),
        default=None,
        help="range of the size parameter, drawn uniformly per task (blocks for blocksworld, a level for "
        "rovers and sokoban); default: the domain's wide range",
    )
    p.add_argument("--validate", action="store_true", help="check every reference plan with VAL")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from iterdeploy_trl.tasks import DEFAULT_SIZES, TaskSetError, generate_tasks, write_task_set

    start = time.perf_counter()
    size = tuple(args.size) if args.size else DEFAULT_SIZES[args.domain]
    try:
        tasks = generate_tasks(args.domain, args.n, args.seed, size)
        if not tasks:
            raise ValueError("--n must be at least 1")
        write_task_set(tasks, args.out)
    except (ValueError, TaskSetError, OSError) as exc:
        print(f"iterdeploy tasks: {exc}", file=sys.stderr)
        return 2
    lengths = [t.reference_length for t in tasks]
    print(
        f"wrote {len(tasks)} {args.domain} tasks (seed {args.seed}, size {size[0]}..{size[1]}) to {args.out}; "
        f"reference length min/median/max {min(lengths)}/{statistics.median(lengths):g}/{max(lengths)}; "
        f"{time.perf_counter() - start:.1f}s"
    )
    if not args.validate:
        return 0
    from iterdeploy_trl.domains import domain_pddl
    from iterdeploy_trl.validate import validate_batch

    domain = domain_pddl(args.domain)
    verdicts = validate_batch([(domain, t.problem, t.reference_plan) for t in tasks])
    bad = [(t.id, v.reason) for t, v in zip(tasks, verdicts, strict=True) if not v.valid]
    for task_id, reason in bad[:10]:
        print(f"  {task_id}: {reason}", file=sys.stderr)
    print(f"VAL: {len(tasks) - len(bad)}/{len(tasks)} reference plans valid")
    return 1 if bad else 0
