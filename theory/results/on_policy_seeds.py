"""Across seeds: the machine-dependent magnitudes of ``on_policy_same_samples`` (warm-up steps, N⁺, the
``sequence_mean`` and mean-baseline cosines) from several ``iterdeploy theory --seed S`` runs.

Usage: ``python theory/results/on_policy_seeds.py DIR0 DIR1 ... > theory/results/on_policy_seeds.json``
(each DIR holds the ``theory.json`` of one seed). Per seed: its values with the t-interval over its draws;
across seeds: the mean and 95% t-interval over the per-seed values (the seeds are independent: model
initialisation, tasks and samples all change)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from iterdeploy_trl.theory.report import interval


def per_seed(path: Path) -> dict:
    d = json.loads((path / "theory.json").read_text())
    op = d["checks"]["on_policy_same_samples"]
    return {
        "seed": d["setup"]["seed"],
        "command": d["command"],
        "machine": d["machine"],
        "warmup_steps": d["setup"]["warmup"]["steps"],
        "beta_step": d["setup"]["warmup"]["beta_step"],
        "draws": op["repeats"],
        "samples": op["samples"],
        **{k: op["intervals"][k] for k in ("valid", "sequence_mean_cosine", "mean_baseline_cosine")},
        "null_random_direction": op["null_random_direction"],
        "ceiling_reinforce": op["ceiling_reinforce"],
    }


def main(dirs: list[str]) -> dict:
    seeds = [per_seed(Path(p)) for p in dirs]
    across = {"warmup_steps": interval(s["warmup_steps"] for s in seeds)}
    for key in ("valid", "sequence_mean_cosine", "mean_baseline_cosine", "null_random_direction"):
        across[key] = interval(s[key]["mean"] for s in seeds)
    return {"seeds": seeds, "across_seeds": across}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=1, ensure_ascii=False))
