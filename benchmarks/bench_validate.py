"""Validation throughput: ``validate_batch`` vs a plain serial loop of VAL calls on the same plans.

    python benchmarks/bench_validate.py [--n 200] [--workers N] [--domains blocksworld,rovers,sokoban]

Plans are the generators' reference plans (valid) and the same plans without their last action
(invalid), half and half. The serial baseline writes each problem and plan to a file and runs
``Validate -v`` on it, one after the other, with no pre-checks. A script, not a test.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

from iterdeploy_trl.domains import domain_pddl
from iterdeploy_trl.tasks import generate_tasks
from iterdeploy_trl.validate import find_validate, validate_batch, validate_plan, validator_info


def make_jobs(names: list[str], n: int) -> list[tuple[str, str, list[str]]]:
    jobs = []
    per_domain = -(-n // (2 * len(names)))
    for name in names:
        domain = domain_pddl(name)
        for task in generate_tasks(name, per_domain, seed=0):
            plan = list(task.reference_plan)
            jobs.append((domain, task.problem, plan))
            jobs.append((domain, task.problem, plan[:-1]))
    return jobs[:n]


def serial_raw_val(jobs: list[tuple[str, str, list[str]]]) -> tuple[float, list[bool]]:
    exe = find_validate()
    valid = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        start = time.perf_counter()
        for i, (domain, problem, plan) in enumerate(jobs):
            paths = [base / f"d{i}.pddl", base / f"p{i}.pddl", base / f"{i}.plan"]
            for path, text in zip(paths, (domain, problem, "\n".join(plan) + "\n"), strict=True):
                path.write_text(text)
            out = subprocess.run([exe, "-v", *map(str, paths)], capture_output=True, text=True, timeout=60)
            valid.append("Plan valid" in out.stdout.splitlines())
        return time.perf_counter() - start, valid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200, help="number of plans (default 200)")
    parser.add_argument("--workers", type=int, default=None, help="validate_batch workers (default: CPUs)")
    parser.add_argument("--domains", default="blocksworld,rovers,sokoban")
    args = parser.parse_args()

    jobs = make_jobs(args.domains.split(","), args.n)
    print(f"{len(jobs)} plans ({args.domains}); {validator_info().id}; {os.cpu_count()} CPUs")
    lengths = [len(plan) for _, _, plan in jobs]
    print(f"plan length: mean {sum(lengths) / len(lengths):.1f}, max {max(lengths)}")

    raw_s, raw_valid = serial_raw_val(jobs)
    start = time.perf_counter()
    serial = [validate_plan(d, p, plan) for d, p, plan in jobs]
    serial_s = time.perf_counter() - start
    start = time.perf_counter()
    batch = validate_batch(jobs, workers=args.workers)
    batch_s = time.perf_counter() - start

    assert [v.valid for v in batch] == [v.valid for v in serial] == raw_valid, "verdicts disagree"
    n = len(jobs)
    print(f"serial raw VAL loop     : {n / raw_s:8.1f} plans/s ({raw_s:.2f} s)")
    print(f"serial validate_plan    : {n / serial_s:8.1f} plans/s ({serial_s:.2f} s)")
    print(
        f"validate_batch (w={args.workers or os.cpu_count()})  : {n / batch_s:8.1f} plans/s ({batch_s:.2f} s)"
    )
    print(f"ratio batch / raw serial: {raw_s / batch_s:.2f}x")
    print(f"valid: {sum(v.valid for v in batch)} of {n}")


if __name__ == "__main__":
    main()
