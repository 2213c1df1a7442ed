"""Pools, plan lengths and planner comparison for the seven IPC-2023 learning-track domains.

    python benchmarks/bench_new_domains.py [--n 1000] [--seed 0] [--range full] [--validate]
        [--workers N] [--planner-sample 20] [--planner-size LO HI] [--planner-timeout 60] [--domains ...]

For each domain: the time to generate an ``--n``-task pool over the domain's ``--range`` size range
(``cpu`` or ``full``; task ``i`` draws from ``random.Random("iterdeploy-tasks/<domain>/<seed>/<i>")``,
its size first, as ``tasks.generate`` does), min / quartiles / max of the size and of the reference
plan length, with ``--validate`` VAL's verdict on every reference plan, and with
``--planner-sample K`` the ratio of reference plan length to Fast Downward's (``lama-first``, from
``up-fast-downward``) on the first K tasks of a pool of sizes ``--planner-size`` (default: the
cpu range). These are the numbers quoted in docs/tasks.md.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NEW_DOMAINS = ("childsnack", "ferry", "floortile", "miconic", "satellite", "spanner", "transport")
ROOT = Path(__file__).resolve().parents[1] / "iterdeploy_trl" / "domains"


def five_numbers(values: list[float]) -> str:
    """min / q1 / median / q3 / max (quartiles by the inclusive method)."""
    if len(values) == 1:
        return f"{values[0]:g}"
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return f"{min(values):g} / {q1:g} / {q2:g} / {q3:g} / {max(values):g}"


def pool(domain: str, n: int, seed: int, size: tuple[int, int]):
    """``n`` generated tasks ``(size, Generated)`` of ``domain``, seeded as ``tasks.generate`` seeds."""
    import random

    gen = importlib.import_module(f"iterdeploy_trl.domains.{domain}.generator")
    out = []
    for i in range(n):
        rng = random.Random(f"iterdeploy-tasks/{domain}/{seed}/{i}")
        s = rng.randint(*size)
        out.append((s, gen.generate(rng, s, f"{domain}-{seed}-{i:05d}")))
    return out


def fast_downward_plan(domain_file: Path, problem: str, timeout: float) -> list[str] | None:
    """Fast Downward's lama-first plan (action lines), or None when it finds none in ``timeout`` s."""
    import importlib.util

    spec = importlib.util.find_spec("up_fast_downward")  # located, not imported: it needs unified_planning
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("Fast Downward not found: pip install up-fast-downward")
    fd = Path(list(spec.submodule_search_locations)[0]) / "downward" / "fast-downward.py"
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "problem.pddl").write_text(problem)
        # The driver starts the search as a child process: give Fast Downward its own limit and, should
        # it overrun, kill the whole process group so no search is left running.
        cmd = [
            sys.executable,
            str(fd),
            "--overall-time-limit",
            f"{int(timeout)}s",
            "--alias",
            "lama-first",
            "--plan-file",
            "plan",
            str(domain_file),
            "problem.pddl",
        ]
        proc = subprocess.Popen(
            cmd, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        try:
            proc.wait(timeout=timeout + 10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return None
        plan = Path(tmp) / "plan"
        if not plan.exists():
            return None
        return [ln.strip() for ln in plan.read_text().splitlines() if ln.strip().startswith("(")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--range", choices=("cpu", "full"), default="full")
    parser.add_argument("--validate", action="store_true", help="check every reference plan with VAL")
    parser.add_argument("--workers", type=int, default=None, help="VAL worker threads (default: all CPUs)")
    parser.add_argument("--planner-sample", type=int, default=0)
    parser.add_argument("--planner-size", type=int, nargs=2, default=None)
    parser.add_argument("--planner-timeout", type=float, default=60.0)
    parser.add_argument("--domains", nargs="*", default=list(NEW_DOMAINS))
    args = parser.parse_args()
    for domain in args.domains:
        gen = importlib.import_module(f"iterdeploy_trl.domains.{domain}.generator")
        domain_file = ROOT / domain / "domain.pddl"
        size = gen.SIZES[args.range]
        start = time.perf_counter()
        tasks = pool(domain, args.n, args.seed, size)
        seconds = time.perf_counter() - start
        print(f"{domain}: {args.n} tasks in {seconds:.2f}s ({gen.SIZE_PARAMETER} {size[0]}..{size[1]})")
        print(f"  size             {five_numbers([s for s, _ in tasks])}")
        print(f"  reference length {five_numbers([len(g.plan) for _, g in tasks])}")
        for key, value in tasks[0][1].params.items():
            if key != "size" and isinstance(value, int):
                print(f"  {key:<16} {five_numbers([g.params[key] for _, g in tasks])}")
        if args.validate:
            from iterdeploy_trl.validate import validate_batch

            start = time.perf_counter()
            text = domain_file.read_text()
            verdicts = validate_batch(
                [(text, g.problem, list(g.plan)) for _, g in tasks], workers=args.workers
            )
            valid = sum(v.valid for v in verdicts)
            print(f"  VAL: {valid}/{len(tasks)} reference plans valid ({time.perf_counter() - start:.1f}s)")
        if args.planner_sample:
            lo, hi = gen.SIZES["cpu"]
            psize = tuple(args.planner_size) if args.planner_size else (lo, hi)
            sample = pool(domain, args.planner_sample, args.seed, psize)
            ratios, failed = [], 0
            start = time.perf_counter()
            for _, g in sample:
                fd = fast_downward_plan(domain_file, g.problem, args.planner_timeout)
                if fd is None:
                    failed += 1
                    continue
                ratios.append(len(g.plan) / max(1, len(fd)))
            spent = time.perf_counter() - start
            head = f"  reference / lama-first length on {len(sample)} tasks of size {psize[0]}..{psize[1]}: "
            if not ratios:
                print(f"{head}planner solved none in {args.planner_timeout:g}s each ({spent:.0f}s)")
                continue
            print(
                f"{head}mean {statistics.mean(ratios):.2f}, {five_numbers([round(r, 2) for r in ratios])}; "
                f"planner failed {failed} ({spent:.0f}s, {os.cpu_count()} CPUs)"
            )


if __name__ == "__main__":
    main()
