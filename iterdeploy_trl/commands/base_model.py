"""`iterdeploy base-model`: pretrain the small local base model of a domain on random legal walks,
and optionally measure it (legal actions, tasks solved) on a fresh task pool."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from iterdeploy_trl.domains import PLANNING_DOMAINS
from iterdeploy_trl.tasks.generate import CPU_SIZES

# The task sizes of the CPU configs (each domain's SIZES["cpu"], as in experiments/cpu_<domain>.yaml), the
# --task-size default.
CPU_TASK_SIZES = CPU_SIZES

# Kept in step with models.SIZES without importing torch for `--help`.
SIZES = ("tiny", "tiny-h64", "x64", "x96", "small", "medium", "gpu-check")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "base-model",
        help="pretrain a small base model on random legal action walks (no goal-directed plans)",
        description="Builds a small word-level causal LM over the domain's symbols and pretrains it on random "
        "legal action walks from generated (or given) tasks, each walk after a prompt with an unrelated goal: a "
        "model that knows the rules and cannot plan, the CPU configs' base model (model.path: auto). --measure N "
        "then counts legal actions and tasks solved on N fresh tasks.",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--domain", choices=PLANNING_DOMAINS, help="a built-in domain (walks from generated tasks)")
    source.add_argument("--tasks", type=Path, metavar="DIR", default=None,
                        help="a task set (e.g. imported with `iterdeploy tasks --from`): tokenizer from its domain "
                        "file and objects, walks from its tasks, --measure on its first N tasks")
    p.add_argument(
        "--out", type=Path, required=True, help="output directory (a Hugging Face model directory)"
    )
    # Defaults are those of a run config's auto base model (config.ModelConfig, TaskConfig).
    p.add_argument("--steps", type=int, default=5000, help="optimiser steps (default: 5000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the walks and of the initialisation")
    p.add_argument("--size", choices=tuple(SIZES), default="tiny", help="model size (default: tiny)")
    p.add_argument("--num-walks", type=int, default=80000, help="training walks (default: 80000)")
    p.add_argument("--batch-size", type=int, default=32, help="walks per step (default: 32)")
    p.add_argument("--lr", type=float, default=3e-3, help="pretraining learning rate (default: 3e-3)")
    p.add_argument(
        "--task-size",
        type=int,
        nargs=2,
        metavar=("LO", "HI"),
        default=None,
        help="generator size range of the tasks the walks start from and of the --measure pool (default: that "
        "of experiments/cpu_<domain>.yaml: blocksworld 2 5, sokoban 1 4, rovers 1 1)",
    )
    p.add_argument(
        "--measure-size",
        type=int,
        nargs=2,
        metavar=("LO", "HI"),
        default=None,
        help="size range of the --measure pool (default: --task-size): pretrain on a wider range than the pool's, "
        "or measure beyond the pretraining sizes",
    )
    p.add_argument("--max-walk", type=int, default=10, help="longest walk, in actions (default: 10)")
    p.add_argument(
        "--walks-per-task",
        type=int,
        default=4,
        help="walks from each generated task's initial state (default: 4; more parse fewer PDDL files)",
    )
    p.add_argument(
        "--walk-length",
        choices=("plan", "uniform"),
        default="plan",
        help="walk lengths uniform in 1..min(--max-walk, the task's reference plan length) (plan, the default) or "
        "in 1..--max-walk (uniform)",
    )
    p.add_argument(
        "--notes",
        action="store_true",
        help="walks carry a state note (a ; comment, prompts.state_note) before the first action and after each "
        "action, and so will the model's plans (rovers, sokoban; blocksworld has none)",
    )
    p.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (default: 1; more spin-wait on a busy box)"
    )
    p.add_argument(
        "--measure",
        type=int,
        default=0,
        metavar="N",
        help="afterwards, sample one plan for each of N fresh tasks and report legality and solve rate",
    )
    p.add_argument(
        "--measure-seeds",
        type=int,
        default=1,
        metavar="K",
        help="measure with sampling seeds 0..K-1 and add their spread and mean to measure.json (default: 1; one "
        "sample per task moves the legal fraction by several points between seeds)",
    )
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=512,
        help="generation limit when measuring (default: 512; with --notes a plan takes ~15-25 tokens an action)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from iterdeploy_trl.models import measure_small_model, pretrain_base_model

    task_set = None
    if args.tasks is not None:
        from iterdeploy_trl.tasks import TaskSetError, load_task_set

        try:
            task_set = load_task_set(args.tasks)
        except TaskSetError as exc:
            print(f"iterdeploy base-model: {exc}", file=sys.stderr)
            return 2
        args.domain = task_set.domain
    task_size = tuple(args.task_size or CPU_TASK_SIZES.get(args.domain, (1, 1)))
    measure_size = tuple(args.measure_size) if args.measure_size else task_size
    if task_set is None:  # before any work: a size the generator rejects would stop the run after pretraining
        from iterdeploy_trl.tasks.generate import SIZE_LIMITS

        lim_lo, lim_hi = SIZE_LIMITS[args.domain]
        for flag, (lo, hi) in (("--task-size", task_size), ("--measure-size", measure_size)):
            if not lim_lo <= lo <= hi <= lim_hi:
                print(f"iterdeploy base-model: {flag} {lo} {hi}: {args.domain} sizes must satisfy "
                      f"{lim_lo} <= LO <= HI <= {lim_hi}", file=sys.stderr)
                return 2
    if args.steps < 1 or args.num_walks < 1 or args.walks_per_task < 1 or args.measure_seeds < 1:
        print("iterdeploy base-model: --steps, --num-walks, --walks-per-task and --measure-seeds must be at least 1",
              file=sys.stderr)
        return 2
    from iterdeploy_trl.runlock import out_dir_problem

    if out_dir_problem(args.out):
        print(f"iterdeploy base-model: {out_dir_problem(args.out)}", file=sys.stderr)
        return 2
    if args.out.exists() and any(args.out.iterdir()) and not (args.out / "base_model.json").exists():
        print(
            f"iterdeploy base-model: {args.out} exists and is not a base-model directory; "
            "give an empty or new directory",
            file=sys.stderr,
        )
        return 2
    try:
        record = pretrain_base_model(
            args.domain,
            args.out,
            steps=args.steps,
            seed=args.seed,
            size=args.size,
            num_walks=args.num_walks,
            batch_size=args.batch_size,
            lr=args.lr,
            task_size=task_size,
            max_walk=args.max_walk,
            walks_per_task=args.walks_per_task,
            notes=args.notes,
            walk_length=args.walk_length,
            threads=args.threads,
            task_set=task_set,
        )
    except ValueError as exc:  # a size range the generator rejects, an unknown model size
        print(f"iterdeploy base-model: {exc}", file=sys.stderr)
        return 2
    print(
        f"saved the {args.domain} base model ({record['parameters']:,} parameters, final loss "
        f"{record['final_loss']:.4f}, {record['train_seconds']:.0f}s of training) to {args.out}"
    )
    if args.measure:
        reports = [
            measure_small_model(
                args.out,
                args.domain,
                n=args.measure,
                task_size=measure_size,
                max_new_tokens=args.max_new_tokens,
                seed=seed,
                task_set=task_set,
            )
            for seed in range(args.measure_seeds)
        ]
        report = reports[0]  # seed 0, in full
        if len(reports) > 1:
            report["by_seed"] = [
                {"seed": s, "legal_action_fraction": r["legal_action_fraction"], "solved": r["solved"]}
                for s, r in enumerate(reports)
            ]
            report["legal_action_fraction_mean"] = sum(r["legal_action_fraction"] for r in reports) / len(reports)
            report["solved_mean"] = sum(r["solved"] for r in reports) / len(reports)
        (args.out / "measure.json").write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(report, indent=2))
    return 0
