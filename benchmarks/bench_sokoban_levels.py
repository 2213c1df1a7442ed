"""Sokoban difficulty per level: reference plan lengths and Fast Downward's plan lengths.

    python benchmarks/bench_sokoban_levels.py [--n 200] [--planner-sample 20] [--planner-timeout 60] [--seed 0]

For each level 1..10: min / quartiles / max of the reference plan length over ``--n`` tasks (seed
``--seed``), the tasks with a reference plan of at most two actions and those with a single stone off its
goal, and for the first ``--planner-sample`` tasks the length of Fast Downward's ``lama-first`` plan
(``up-fast-downward``; satisficing, so an upper bound on the optimal length), checked by VAL, and the
median ratio reference / planner. The numbers in docs/tasks.md come from this script.
"""

from __future__ import annotations

import argparse
import statistics

from iterdeploy_trl.domains import domain_pddl
from iterdeploy_trl.sim import Simulator
from iterdeploy_trl.tasks import generate_tasks
from iterdeploy_trl.tasks.planner import run_fast_downward
from iterdeploy_trl.validate import validate_batch


def five(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:g}"
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return f"{min(values):g} / {q1:g} / {q2:g} / {q3:g} / {max(values):g}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--planner-sample", type=int, default=20)
    ap.add_argument("--planner-timeout", type=float, default=60.0)
    args = ap.parse_args()
    dom = domain_pddl("sokoban")
    print("| level | reference length | plans <= 2 | one stone off | Fast Downward length (solved) | ref / FD |")
    print("|---|---|---|---|---|---|")
    for level in range(1, 11):
        tasks = generate_tasks("sokoban", args.n, args.seed, size=(level, level))
        short = sum(t.reference_length <= 2 for t in tasks)
        one_off = 0
        for t in tasks:
            sim = Simulator(dom, t.problem)
            goals = {a[1] for a in sim.init_state if a[0] == "is-goal"}
            off = sum(1 for a in sim.init_state if a[0] == "at" and a[1].startswith("stone") and a[2] not in goals)
            one_off += off == 1 and t.params["stones"] > 1
        sample = tasks[: args.planner_sample]
        results = [run_fast_downward(dom, t.problem, time_limit=args.planner_timeout) for t in sample]
        solved = [(t, r) for t, r in zip(sample, results, strict=True) if r.plan is not None]
        verdicts = validate_batch([(dom, t.problem, list(r.plan)) for t, r in solved], workers=1)
        valid = [(t, r) for (t, r), v in zip(solved, verdicts, strict=True) if v.valid]
        ratios = [t.reference_length / max(1, len(r.plan)) for t, r in valid]
        ratio = f"{statistics.median(ratios):.2f}" if ratios else "-"
        print(f"| {level} | {five([t.reference_length for t in tasks])} | {short} | {one_off} | "
              f"{five([len(r.plan) for _, r in valid])} ({len(valid)}/{len(sample)}) | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
