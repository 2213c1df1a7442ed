"""`iterdeploy tasks`: generate a seeded task pool with reference plans, or import a folder of PDDL files, and
write it in the IPC layout."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

from iterdeploy_trl.domains import PLANNING_DOMAINS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tasks",
        help="generate a seeded task set, or import a folder of PDDL files (domain.pddl, problems/*.pddl)",
        description="Generate a seeded task set (--domain, --n) or import an IPC-layout folder (--from DIR: "
        "domain.pddl, problems/*.pddl, optional plans/<problem>.plan; missing plans are computed with Fast "
        "Downward and every plan is checked by VAL; unsolved tasks are reported and left out).",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--domain", choices=PLANNING_DOMAINS, help="a built-in domain to generate tasks of")
    source.add_argument("--from", dest="src", type=Path, metavar="DIR",
                        help="an IPC-layout folder to import (any STRIPS domain with typing, negative preconditions)")
    p.add_argument("--n", type=int, default=None, help="number of tasks (with --domain)")
    p.add_argument("--seed", type=int, default=0, help="pool seed (task ids are <domain>-<seed>-<index>)")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument(
        "--size",
        type=int,
        nargs=2,
        metavar=("LO", "HI"),
        default=None,
        help="range of the size parameter, drawn uniformly per task (blocks for blocksworld, a level for "
        "rovers and sokoban, ...); default: the domain's full range",
    )
    p.add_argument("--validate", action="store_true", help="check every reference plan with VAL")
    p.add_argument("--name", default=None, help="with --from: the task set's domain name (default: the domain "
                   "file's; needed when it clashes with a built-in domain)")
    p.add_argument("--alias", default="lama-first", help="with --from: Fast Downward configuration for missing "
                   "plans (default: lama-first, satisficing)")
    p.add_argument("--time-limit", type=float, default=60.0, metavar="S",
                   help="with --from: Fast Downward's time limit per task, in seconds (default: 60)")
    p.set_defaults(func=run)


def _import(args: argparse.Namespace) -> int:
    from iterdeploy_trl.pddlio import PDDLReadError
    from iterdeploy_trl.tasks import TaskSetError
    from iterdeploy_trl.tasks.importer import REPORT, import_folder
    from iterdeploy_trl.tasks.planner import PlannerNotFound

    start = time.perf_counter()
    try:
        task_set, report = import_folder(args.src, args.out, name=args.name, alias=args.alias,
                                         time_limit=args.time_limit, progress=print)
    except UnicodeDecodeError as exc:  # the codec's message names no file: find it
        bad = _not_text(args.src)
        where = f"{bad} is not a text file" if bad else f"a file under {args.src} is not text"
        print(f"iterdeploy tasks: {where} (byte {exc.start} is not UTF-8); PDDL and plan files must be plain "
              "text: remove or convert it", file=sys.stderr)
        return 2
    except (PDDLReadError, TaskSetError, PlannerNotFound, ValueError, OSError) as exc:
        print(f"iterdeploy tasks: {exc}", file=sys.stderr)
        return 2
    for task_id, why in report.left_out.items():
        print(f"  left out {task_id}: {why}", file=sys.stderr)
    sources = Counter(report.kept.values())
    lengths = [t.reference_length for t in task_set]
    print(
        f"imported {len(task_set)} {task_set.domain} tasks from {args.src} to {args.out} "
        f"({', '.join(f'{n} {s}' for s, n in sorted(sources.items()))}; every plan VAL-valid); "
        f"{len(report.left_out)} left out (see {args.out / REPORT}); reference length min/median/max "
        f"{min(lengths)}/{statistics.median(lengths):g}/{max(lengths)}; {time.perf_counter() - start:.1f}s"
    )
    return 0


def _not_text(src: Path) -> Path | None:
    """The first file under ``src`` (sorted) that is not UTF-8 text, or None."""
    for path in sorted(p for p in Path(src).rglob("*") if p.is_file()):
        try:
            path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            return path
        except OSError:
            continue
    return None


def run(args: argparse.Namespace) -> int:
    from iterdeploy_trl.runlock import out_dir_problem
    from iterdeploy_trl.tasks import DEFAULT_SIZES, TaskSetError, generate_tasks, write_task_set

    if out_dir_problem(args.out):
        print(f"iterdeploy tasks: {out_dir_problem(args.out)}", file=sys.stderr)
        return 2
    if args.src is not None:
        return _import(args)
    if args.n is None:
        print("iterdeploy tasks: --n is required with --domain", file=sys.stderr)
        return 2
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
