"""Release gates: choose the generation of a run to deploy by a stated criterion, and export its model
from the run directory without retraining (``iterdeploy export``).

Criteria (all computed from the run's trace records, so they hold for a run in progress too):

- ``best-heldout``: the generation whose model solves the most held-out tasks (mean over seeds; ties go
  to the earlier generation, the cheaper and less drifted one);
- ``no-regression``: the last generation that lost no pool task solved by every seed at an earlier
  generation (a rollback point: the loop's later generations are kept out if they forgot something);
- a generation number: that generation.
"""

from __future__ import annotations

import hashlib
import shutil
import statistics
from pathlib import Path
from typing import Any

CRITERIA = ("best-heldout", "no-regression")


class ReleaseError(ValueError):
    """A release that cannot be made (the message names the run, generation or criterion)."""


def solved_sets(run: Any) -> dict[int, dict[int, dict[str, set[str]]]]:
    """seed -> generation -> {"pool": solved task ids, "heldout": ...} from the trace records, for the
    generations whose traces are on disk."""
    from iterdeploy_trl.audit import read_traces

    out: dict[int, dict[int, dict[str, set[str]]]] = {}
    for seed in run.seeds:
        for g in range(run.generations + 1):
            recs = read_traces(run, seed, g)
            if recs is None:
                break
            out.setdefault(seed, {})[g] = {
                split: {r["task_id"] for r in recs if r["split"] == split and r.get("valid")}
                for split in ("pool", "heldout")}
    return out


def choose_generation(run: Any, criterion: str) -> tuple[int, dict[str, Any]]:
    """The generation ``criterion`` picks, and the numbers behind the choice."""
    sets = solved_sets(run)
    if not sets:
        raise ReleaseError(f"{run.path}: no generation has trace records yet")
    gens = sorted(set.intersection(*(set(v) for v in sets.values())))  # reached by every seed
    if criterion.isdigit():
        g = int(criterion)
        if g not in gens:
            raise ReleaseError(f"{run.path}: generation {g} is not finished by every seed (finished: {gens})")
        return g, {"criterion": f"generation {g}"}
    if criterion == "best-heldout":
        if not run.config.get("tasks", {}).get("heldout"):
            raise ReleaseError(f"{run.path}: the run has no held-out split (tasks.heldout: 0); choose by "
                               "'no-regression' or a generation number")
        means = {g: statistics.fmean(len(sets[s][g]["heldout"]) for s in sets) for g in gens}
        best = max(gens, key=lambda g: (means[g], -g))
        return best, {"criterion": criterion, "heldout_solved_mean": means}
    if criterion == "no-regression":
        kept, lost_at = gens[0], {}
        ever: set[str] = set()
        for g in gens:
            every = set.intersection(*(sets[s][g]["pool"] for s in sets))
            lost = ever - every
            lost_at[g] = sorted(lost)
            if not lost:
                kept = g
            ever |= every
        return kept, {"criterion": criterion, "lost_tasks_by_generation": lost_at}
    raise ReleaseError(f"unknown criterion {criterion!r}: use {', '.join(CRITERIA)} or a generation number")


def _tree_sha(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def export_model(run_dir: str | Path, out: str | Path, *, criterion: str = "best-heldout",
                 seed: int | None = None) -> dict[str, Any]:
    """Copy the chosen generation's model (of ``seed``, default the run's first) to ``out`` with a
    ``release.json`` naming the run, seed, generation, criterion and the source; nothing is retrained."""
    from iterdeploy_trl.audit import open_run
    from iterdeploy_trl.errors import RunError
    from iterdeploy_trl.runio import write_json

    run = open_run(run_dir)
    seed = run.seeds[0] if seed is None else seed
    if seed not in run.seeds:
        raise ReleaseError(f"{run.path}: no seed {seed} (seeds {run.seeds})")
    g, why = choose_generation(run, criterion)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ReleaseError(f"{out} is not empty; give a new directory")
    try:
        model_dir = run.model(seed, g)
    except RunError as exc:
        raise ReleaseError(str(exc)) from exc
    if model_dir is None:  # generation 0: the base model
        base = (run.summary or {}).get("base_model") or run.config.get("model", {}).get("path")
        if not base or base == "auto" or not (Path(base) / "config.json").exists():
            raise ReleaseError(f"generation 0 is the base model ({base}), which is not on this machine")
        model_dir = Path(base)
    if (model_dir / "adapter_config.json").exists():
        note = "a LoRA adapter: load it on the base model named in release.json"
    else:
        note = "a full model directory"
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(model_dir, tmp, ignore=shutil.ignore_patterns("trainer", "checkpoint-*"))
    info = {"run": str(run.path), "run_name": run.config.get("name"), "config_hash": run.stored_hash,
            "seed": seed, "generation": g, **why, "source": str(model_dir), "what": note,
            "base_model": (run.summary or {}).get("base_model") or run.config.get("model", {}).get("path"),
            "files_sha256": _tree_sha(tmp)}
    write_json(tmp / "release.json", info)
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return info
