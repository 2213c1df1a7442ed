"""Wall time of one domain's head-to-head protocol (``iterdeploy compare``), reduced, and where it goes.

    nice -n 5 python benchmarks/bench_protocol.py [--config experiments/compare_blocksworld.yaml]
        [--generations 1] [--pool 16] [--heldout 4] [--samples 4] [--tuning-pool 16] [--grid 2] [--out DIR]
        [--jobs N]
    python benchmarks/bench_protocol.py --from OUT [--wall SECONDS]   # a finished full-size comparison

Runs the config's protocol with every arm and its tuning as written, at a reduced size (documented by the
flags: generations, pool and held-out tasks, samples per task, the tuning pool, the first ``--grid`` learning
rates of each arm's grid and the first value of its batch knob, one result seed and one tuning seed) on the
config's own base model (``model.path: auto``, cached), and prints the share of the wall time in tuning, and
over every run (tuning and results) in deployment (sampling), validation (VAL on the deployed completions,
timed around the deployment's judging step), training (REINFORCE-family arms: their own sampling and VAL
inside the trainer included), and evaluation (deployments nothing trains on: every deployment of an online
arm, an SFT arm's last generation), each also as a share of the wall time over every run, tuning runs included;
plus the seconds generation-0 reuse saved. With ``--jobs N`` (N > 1) it runs the same reduced protocol twice in
this invocation, with ``iterdeploy compare --jobs 1`` and ``--jobs N`` (each in a directory of its own), and
prints both wall times, their ratio, and whether compare.json's numbers (timings aside) are the same. A script,
not a test.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

from iterdeploy_trl import deployment
from iterdeploy_trl.compare import run_compare
from iterdeploy_trl.config import load_config


def reduced(cfg, args):
    """The config at the benchmark's size (see the module docstring)."""
    t = cfg.tuning
    grids = {arm: {k: (v[: args.grid] if k == "learning_rate" else v[:1]) for k, v in grid.items()}
             for arm, grid in (t.grids or {}).items()}
    tuning = dataclasses.replace(t, seeds=t.seeds[:1], n=args.tuning_pool, heldout=min(args.heldout, t.heldout or 0),
                                 grids=grids or None)
    return dataclasses.replace(
        cfg, name=f"{cfg.name}-bench", generations=args.generations, seeds=cfg.seeds[:1],
        tasks=dataclasses.replace(cfg.tasks, n=args.pool, heldout=args.heldout),
        sampling=dataclasses.replace(cfg.sampling, samples_per_task=args.samples), tuning=tuning,
        chunk_size=max(args.pool, args.tuning_pool)).check()


def timed_judge():
    """Wrap the deployment's judging step (the real VAL call) with a timer; returns the list of seconds."""
    spent: list[float] = []
    real = deployment._judge

    def judge(*a, **kw):
        t0 = time.perf_counter()
        try:
            return real(*a, **kw)
        finally:
            spent.append(time.perf_counter() - t0)

    deployment._judge = judge
    return spent


def same_numbers(a: dict, b: dict, out_a: Path, out_b: Path) -> bool:
    """Whether two compare.json reports hold the same numbers, what depends on the clock, the machine, the
    directory's path or the jobs aside."""
    skip = ("seconds", "wall", "machine", "invocation", "jobs")

    def strip(v, out):
        if isinstance(v, dict):
            return {k: strip(x, out) for k, x in v.items() if not any(s in k for s in skip)}
        if isinstance(v, list):
            return [strip(x, out) for x in v]
        return v.replace(str(out), "OUT") if isinstance(v, str) else v

    return strip(a, out_a) == strip(b, out_b)


def compare_jobs(cfg, out: Path, report: dict, wall: float, jobs: int) -> None:
    """Run the protocol again with ``jobs`` worker processes and print the two wall times and their ratio."""
    t0 = time.time()
    parallel = run_compare(cfg, out / f"cmp-jobs{jobs}", progress=False, log=lambda m: None, jobs=jobs)
    wall_n = time.time() - t0
    print(f"--jobs 1: {wall:.1f} s; --jobs {jobs}: {wall_n:.1f} s; ratio jobs {jobs} / jobs 1 = {wall_n / wall:.2f} "
          f"(same invocation, run one after the other); compare.json's numbers the same: "
          f"{'yes' if same_numbers(report, parallel, out / 'cmp', out / f'cmp-jobs{jobs}') else 'NO'}")
    print(f"  --jobs {jobs}: tuning stage {parallel['invocation_wall_seconds']['tuning']:.1f} s (jobs 1: "
          f"{report['invocation_wall_seconds']['tuning']:.1f} s); per-run seconds as measured in the runs: tuning "
          f"{parallel['tuning_wall_seconds']:.1f} s (jobs 1: {report['tuning_wall_seconds']:.1f} s), result arms "
          f"{sum(parallel['wall_seconds'].values()):.1f} s (jobs 1: {sum(report['wall_seconds'].values()):.1f} s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="experiments/compare_blocksworld.yaml")
    ap.add_argument("--generations", type=int, default=1)
    ap.add_argument("--pool", type=int, default=16)
    ap.add_argument("--heldout", type=int, default=4)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--tuning-pool", type=int, default=16)
    ap.add_argument("--grid", type=int, default=2, help="learning rates per arm (the first ones of its grid)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--jobs", type=int, default=1,
                    help="also run the protocol with iterdeploy compare --jobs N and print the ratio of the wall times")
    ap.add_argument("--from", dest="from_dir", type=Path, default=None,
                    help="print the shares of a finished full-size comparison (its compare.json and runs) instead")
    ap.add_argument("--wall", type=float, default=None,
                    help="with --from: the comparison's wall seconds end to end, where one invocation did not run it all")
    args = ap.parse_args()
    if args.from_dir:
        from_finished(args.from_dir, args.wall)
        return
    cfg = reduced(load_config(args.config), args)
    out = Path(args.out or tempfile.mkdtemp(prefix="bench_protocol_"))
    validate = timed_judge()
    t0 = time.time()
    report = run_compare(cfg, out / "cmp", progress=False, log=lambda m: None)
    wall = time.time() - t0
    if args.jobs > 1:
        compare_jobs(cfg, out, report, wall, args.jobs)
    print(f"config {args.config} reduced: arms {len(report['budgets'])} ({', '.join(report['budgets'])}); generations "
          f"{cfg.generations}, pool {cfg.tasks.n} + held-out {cfg.tasks.heldout}, K {cfg.sampling.samples_per_task}, "
          f"result seed {cfg.seeds[0]}; tuning seed {cfg.tuning.seeds[0]}, pool {cfg.tuning.n}")
    print_shares(report, out / "cmp", wall, sum(validate))


def print_shares(report: dict, cmp_dir: Path, wall: float, validation: float | None) -> None:
    """Where the wall time ``wall`` of the comparison in ``cmp_dir`` went: tuning, result arms, phases, per arm
    (``validation``: VAL's seconds where they were timed, else None)."""
    from iterdeploy_trl.compare_stats import time_shares

    budgets = report["budgets"]
    t = time_shares(report, cmp_dir)
    deploy = sum(b["seconds"]["deploy"] for b in budgets.values())
    train = sum(b["seconds"]["train"] for b in budgets.values())
    evaluate = sum(b["seconds"]["evaluate"] for b in budgets.values())
    tuning_rows = [row for tuned in report["tuning"].values() for row in tuned["table"]]
    print(f"{len(budgets)} arms, {len(tuning_rows)} tuning runs ({len(tuning_rows) // max(len(report['tuning']), 1)} "
          f"per arm), jobs {report.get('jobs', 1)}")
    print(f"wall {wall:.1f} s ({wall / 60:.1f} min, end to end); measured in the runs (their seconds add up over "
          f"parallel workers): tuning {t['tuning']:.1f} s, result arms {t['arms']:.1f} s")
    print(f"share of the run seconds: tuning {t['tuning'] / t['total']:.0%}, result arms {t['arms'] / t['total']:.0%}; "
          f"run seconds / wall = {t['total'] / wall:.2f} (about the number of runs going at once)")
    print(f"result arms by phase: deployment {deploy:.1f} s (of it evaluation-only {evaluate:.1f} s), training "
          f"{train:.1f} s")
    print(f"share of the run seconds by phase, every run (tuning included): deployment for learning "
          f"{t['learn']:.0%}, evaluation {t['evaluate']:.0%}, training {t['train']:.0%} (REINFORCE-family: their own "
          "sampling and VAL inside)")
    if t["outside"]["runs"]:
        print(f"not counted: {len(t['outside']['runs'])} tuning runs outside compare.json's tuning tables (an earlier "
              f"grid), {t['outside']['seconds']:.1f} run seconds")
    if validation is not None:
        print(f"validation (VAL on deployed completions, every run, tuning included): {validation:.1f} s = "
              f"{validation / wall:.0%} of the wall time (inside deployment and evaluation)")
    else:
        print("validation: not timed apart in a finished comparison (inside deployment; the reduced run times it)")
    print(f"generation 0 deployed once per seed and pool: {report['generation0_reuse']['saved_seconds']:.1f} s of "
          "deployment saved (the seconds the copied deployments took where they ran)")
    for arm, b in budgets.items():
        s = b["seconds"]
        print(f"  {arm:24s} total {s['total']:6.1f} s  deploy {s['deploy']:6.1f}  train {s['train']:6.1f}  "
              f"evaluate {s['evaluate']:6.1f}  steps {b['optimizer_steps']:4d}  tokens {b['training_tokens']:7d}  "
              f"generated {b['generated_completions']:5d}")


def from_finished(cmp_dir: Path, wall: float | None) -> None:
    """``--from DIR``: the shares of a finished full-size comparison (``iterdeploy compare --out DIR``)."""
    from iterdeploy_trl import rundir
    from iterdeploy_trl.runio import read_json

    report = read_json(rundir.compare_json(cmp_dir))
    total = wall or report["invocation_wall_seconds"]["total"]
    print(f"{cmp_dir}: {report['name']} ({report['domain']}), seeds {report['seeds']}, pool {report['tasks']} + "
          f"held-out {report['heldout_tasks']}, K {report['samples_per_task']}; machine "
          f"{report['machine'].get('cpu', report['machine'])}; wall {'as given (--wall)' if wall else 'of the last invocation'}")
    print_shares(report, cmp_dir, total, None)

if __name__ == "__main__":
    main()
