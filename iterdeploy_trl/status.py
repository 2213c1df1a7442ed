"""Where a run directory stands, from its files alone (``iterdeploy status RUNDIR``): its seeds, the
generations each has finished, the stage it is in, its last summary line, and whether a process holds it.

Works on a running directory (it only reads, and takes no lock), on a stopped one, and on a comparison
(``OUT/<method>/`` run directories)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iterdeploy_trl.runlock import describe_holder, is_held, read_holder


def count_text(value: float | None) -> str:
    """A count as a reader expects it: ``6`` for 6 or 6.0 (a mean over seeds that is whole), ``6.33`` for a
    mean that is not, ``-`` for none."""
    if value is None:
        return "-"
    return str(int(value)) if float(value).is_integer() else f"{value:.3g}"


def generation_line(seed: int, m: dict[str, Any], samples_per_task: int) -> str:
    """The one-line summary of a finished generation (what the loop prints, and ``status`` repeats)."""
    lengths = (f"valid plan length mean {m['mean_valid_plan_length']} max {m['max_valid_plan_length']}"
               if m.get("mean_valid_plan_length") is not None else "no valid plan")
    return (f"seed {seed} gen {m['generation']}: solved {m['solved']}/{m['tasks']}, held-out {m['heldout_solved']}/"
            f"{m['heldout_tasks']}, all-{samples_per_task}-valid {m['all_samples_valid']}, {lengths}, "
            f"trained on {m['train_traces']} traces")


@dataclass
class SeedStatus:
    seed: int
    done: list[int]  # generations with a metrics row
    stage: str  # what comes next / is under way
    last_line: str | None


@dataclass
class RunStatus:
    run_dir: Path
    name: str
    method: str
    generations: int
    seeds: list[SeedStatus] = field(default_factory=list)
    complete: bool = False
    held: bool = False
    holder: dict[str, Any] | None = None

    def report(self) -> str:
        total = self.generations + 1
        lines = [f"{self.run_dir}: {self.name} ({self.method}), generations 0..{self.generations}, "
                 f"seeds {[s.seed for s in self.seeds]}"]
        if self.held:
            lines.append(f"  running: held by {describe_holder(self.holder)}")
        elif self.complete:
            lines.append("  finished (summary.json complete); no process holds it")
        else:
            last = f" (last holder: {describe_holder(self.holder)})" if self.holder else ""
            lines.append(f"  stopped: no process holds it{last}; run the same command again to resume")
        for s in self.seeds:
            lines.append(f"  seed {s.seed}: {len(s.done)}/{total} generations done; {s.stage}")
            if s.last_line:
                lines.append(f"    last: {s.last_line}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"run_dir": str(self.run_dir), "name": self.name, "method": self.method,
                "generations": self.generations, "complete": self.complete, "held": self.held,
                "holder": self.holder,
                "seeds": [{"seed": s.seed, "done": s.done, "stage": s.stage, "last_line": s.last_line}
                          for s in self.seeds]}


def _rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    from iterdeploy_trl.runio import read_rows

    return sorted(read_rows(path), key=lambda m: m["generation"])


def _stage(sdir: Path, g: int, chunks_per_gen: int, held: bool, last: int) -> str:
    """What seed directory ``sdir`` is at, generation ``g`` being the first without a metrics row."""
    if g > last:
        return "all generations done"
    gdir = sdir / f"gen_{g:02d}"
    verb = "deploying" if held else "stopped while deploying"
    if g > 0 and not (gdir / "model").exists():
        train = "training" if held else "stopped while training"
        partial = " (model.partial being written)" if (gdir / "model.partial").exists() else ""
        return f"{train} the generation-{g} model{partial}"
    chunks = len(list((gdir / "traces").glob("*.jsonl"))) if (gdir / "traces").exists() else 0
    return f"{verb} generation {g}: {chunks}/{chunks_per_gen} chunks of traces written"


def run_status(run_dir: Path) -> RunStatus:
    """The status of one run directory (``resolved_config.json`` must exist)."""
    run_dir = Path(run_dir)
    resolved = run_dir / "resolved_config.json"
    if not resolved.exists():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no resolved_config.json)")
    cfg = json.loads(resolved.read_text())["config"]
    held = is_held(run_dir)
    st = RunStatus(run_dir, cfg.get("name", "?"), cfg.get("method", "?"), int(cfg["generations"]), held=held,
                   holder=read_holder(run_dir))
    chunk = int(cfg.get("chunk_size", 64))
    tasks = cfg.get("tasks", {})
    chunks_per_gen = math.ceil(int(tasks.get("n", 0)) / chunk) + math.ceil(int(tasks.get("heldout", 0)) / chunk)
    k = int(cfg.get("sampling", {}).get("samples_per_task", 1))
    for seed in cfg["seeds"]:
        sdir = run_dir / f"seed_{seed}"
        rows = _rows(sdir / "metrics.jsonl")
        done = [m["generation"] for m in rows]
        nxt = next((g for g in range(st.generations + 1) if g not in done), st.generations + 1)
        line = generation_line(seed, rows[-1], k) if rows else None
        if not sdir.exists():
            stage = "not started"
        else:
            stage = _stage(sdir, nxt, chunks_per_gen, held, st.generations)
        st.seeds.append(SeedStatus(seed, done, stage, line))
    summary = run_dir / "summary.json"
    if summary.exists():
        try:
            data = json.loads(summary.read_text())
            st.complete = bool(data.get("complete")) and all(len(s.done) == st.generations + 1 for s in st.seeds)
        except ValueError:
            pass
    return st


def status_report(path: Path) -> tuple[str, list[RunStatus]]:
    """The text ``iterdeploy status`` prints for a run directory or a comparison directory."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; give the --out of a run or a comparison")
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is a file, not a run directory; give the --out of a run or a comparison")
    if (path / "resolved_config.json").exists():
        st = run_status(path)
        return st.report(), [st]
    methods = sorted(p for p in path.iterdir() if (p / "resolved_config.json").exists()) if path.is_dir() else []
    if not methods:
        raise FileNotFoundError(f"{path} is neither a run directory (no resolved_config.json) nor a comparison "
                                "(no OUT/<method>/resolved_config.json); give the --out of a run")
    head = f"{path}: comparison of {', '.join(p.name for p in methods)}"
    if is_held(path):
        head += f"; running: held by {describe_holder(read_holder(path))}"
    elif (path / "compare.json").exists():
        head += "; finished (compare.json written)"
    statuses = [run_status(p) for p in methods]
    return "\n".join([head, *(s.report() for s in statuses)]), statuses

