"""Time task generation and summarise the difficulty of a pool (default: 1000 tasks per domain).

    python benchmarks/bench_taskgen.py [--n 1000] [--seed 0] [--validate]

Prints, per domain, the generation time and min / quartiles / max of the size parameter and of the
reference plan length (the numbers quoted in docs/tasks.md). ``--validate`` also checks every
reference plan with VAL.
"""

from __future__ import annotations

import argparse
import statistics
import time

from iterdeploy_trl.domains import PLANNING_DOMAINS, domain_pddl
from iterdeploy_trl.tasks import DEFAULT_SIZES, generate_tasks


def five_numbers(values: list[int]) -> str:
    """min / q1 / median / q3 / max (quartiles by the inclusive method)."""
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return f"{min(values)} / {q1:g} / {q2:g} / {q3:g} / {max(values)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--validate", action="store_true", help="check every reference plan with VAL")
    parser.add_argument("--domains", nargs="+", choices=PLANNING_DOMAINS, default=list(PLANNING_DOMAINS))
    args = parser.parse_args()
    for domain in args.domains:
        start = time.perf_counter()
        tasks = generate_tasks(domain, args.n, args.seed)
        seconds = time.perf_counter() - start
        lo, hi = DEFAULT_SIZES[domain]
        print(f"{domain}: {args.n} tasks in {seconds:.2f}s (size {lo}..{hi})")
        print(f"  size             {five_numbers([t.params['size'] for t in tasks])}")
        print(f"  reference length {five_numbers([t.reference_length for t in tasks])}")
        if domain != "blocksworld":
            keys = [k for k, v in tasks[0].params.items() if k != "size" and isinstance(v, int)]
            for key in keys:
                print(f"  {key:<16} {five_numbers([t.params[key] for t in tasks])}")
        if args.validate:
            from iterdeploy_trl.validate import validate_batch

            start = time.perf_counter()
            verdicts = validate_batch([(domain_pddl(domain), t.problem, t.reference_plan) for t in tasks])
            valid = sum(v.valid for v in verdicts)
            print(f"  VAL: {valid}/{len(tasks)} reference plans valid ({time.perf_counter() - start:.1f}s)")


if __name__ == "__main__":
    main()
