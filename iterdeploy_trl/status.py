"""Where a run directory stands, from its files alone (``iterdeploy status RUNDIR``): its seeds, the
generations each has finished, the stage it is in, its last summary line, and whether a process holds it.

Works on a running directory (it only reads, and takes no lock), on a stopped one, and on a comparison
(``OUT/<method>/`` run directories)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iterdeploy_trl import rundir
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
    damage: list[str] = field(default_factory=list)  # what is damaged, one line each (run_damage)

    def report(self) -> str:
        total = self.generations + 1
        lines = [f"{self.run_dir}: {self.name} ({self.method}), generations 0..{self.generations}, "
                 f"seeds {[s.seed for s in self.seeds]}"]
        if self.held:
            lines.append(f"  running: held by {describe_holder(self.holder)}")
        elif self.complete and self.damage:
            lines.append("  finished (summary.json complete), but DAMAGED since; no process holds it")
        elif self.complete:
            lines.append("  finished (summary.json complete); no process holds it")
        else:
            last = f" (last holder: {describe_holder(self.holder)})" if self.holder else ""
            lines.append(f"  stopped: no process holds it{last}; run the same command again to resume")
        for s in self.seeds:
            lines.append(f"  seed {s.seed}: {len(s.done)}/{total} generations done; {s.stage}")
            if s.last_line:
                lines.append(f"    last: {s.last_line}")
        if self.damage:
            lines.append(f"  damaged ({len(self.damage)}): run the same `iterdeploy run` command again to repair what "
                         "can be made again (trace chunks, models, train.jsonl, generated task files, this record "
                         "of the config); it names what it cannot repair")
            lines += [f"    - {d}" for d in self.damage]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"run_dir": str(self.run_dir), "name": self.name, "method": self.method,
                "generations": self.generations, "complete": self.complete, "held": self.held,
                "holder": self.holder, "damage": self.damage,
                "seeds": [{"seed": s.seed, "done": s.done, "stage": s.stage, "last_line": s.last_line}
                          for s in self.seeds]}


def _stage(sdir: Path, g: int, chunks_per_gen: int, held: bool, last: int) -> str:
    """What seed directory ``sdir`` is at, generation ``g`` being the first without a metrics row."""
    if g > last:
        return "all generations done"
    gdir = rundir.gen_dir(sdir, g)
    verb = "deploying" if held else "stopped while deploying"
    model = rundir.model(gdir)
    if g > 0 and not model.exists():
        train = "training" if held else "stopped while training"
        partial = rundir.partial(model)
        partial = f" ({partial.name} being written)" if partial.exists() else ""
        return f"{train} the generation-{g} model{partial}"
    chunks = len(rundir.chunk_files(gdir))
    if chunks >= chunks_per_gen > 0:  # deployed (or, generation 0 of a comparison, copied): scored next
        return f"generation {g} deployed ({chunks}/{chunks_per_gen} chunks of traces written), not yet scored"
    return f"{verb} generation {g}: {chunks}/{chunks_per_gen} chunks of traces written"


def recorded_config_matches(stored: Any) -> bool:
    """Whether the config that a ``resolved_config.json`` (``stored``) holds hashes to the hash recorded beside
    it. A body edited with its hash kept does not; nor does a body this version cannot read (one written by
    an older version: ``iterdeploy run`` rewrites it when the run resumes)."""
    from iterdeploy_trl.config import ConfigError, config_from_dict, hash_matches

    body = stored.get("config") if isinstance(stored, dict) else None
    if not isinstance(body, dict):
        return False
    try:
        return hash_matches(config_from_dict(body, check_paths=False), stored)
    except (ConfigError, ValueError, TypeError, KeyError):
        return False


def read_resolved(resolved: Path) -> dict[str, Any]:
    """A run directory's ``resolved_config.json``; one that is not a JSON object with a ``config`` mapping is
    a ``ValueError`` naming the file."""
    from iterdeploy_trl.runio import read_json_or_raise

    stored = read_json_or_raise(resolved, ValueError, invalid_hint=(
        "; `iterdeploy run` with the run's config and this --out writes it again from config.yaml when that "
        "holds the same config"))
    if not isinstance(stored, dict) or not isinstance(stored.get("config"), dict):
        raise ValueError(f"{resolved}: holds no 'config' mapping, so this is no record of a run's config")
    return stored


def config_of_run(run_dir: Path, stored: dict[str, Any]) -> dict[str, Any]:
    """The config of the run in ``run_dir``: the one its resolved_config.json (``stored``) holds or, where that
    does not hash to the hash beside it, ``config.yaml``'s (the config the run was started with) if that does."""
    from iterdeploy_trl.config import ConfigError, hash_matches, load_config

    if not recorded_config_matches(stored) and rundir.config_yaml(run_dir).is_file():
        try:
            started = load_config(rundir.config_yaml(run_dir), check_paths=False)
        except ConfigError:
            return stored["config"]
        if hash_matches(started, stored):
            return started.to_dict()
    return stored["config"]


def run_damage(run_dir: Path, cfg: dict[str, Any], stored: dict[str, Any], done: dict[int, list[int]]) -> list[str]:
    """What is damaged in run directory ``run_dir`` (``cfg``: its config, :func:`config_of_run`; ``stored``:
    its resolved_config.json; ``done``: the generations of each seed with a metrics row), one line each naming
    the file: the config record's hash, the task files against their record, and each finished generation's
    trace chunks (whole, one record of each task and sample), train.jsonl and model. Reads every trace chunk
    of the finished generations."""
    from iterdeploy_trl.runio import jsonl_problem, read_json
    from iterdeploy_trl.tasks.taskset import record_mismatch
    from iterdeploy_trl.traces import chunk_problem

    damage = []
    if not recorded_config_matches(stored):
        source = ("it" if cfg is stored["config"]
                  else f"{rundir.CONFIG_YAML}, which holds the config of that hash (the run was started with it)")
        damage.append(f"{rundir.resolved_config(run_dir)}: the config it holds does not hash to its recorded hash "
                      f"{stored.get('hash')} (edited, or written by an older version): the status above is read "
                      f"from {source}")
    record = rundir.task_files(run_dir)
    if record.exists():
        tasks_dir = (cfg.get("tasks") or {}).get("dir")
        try:
            changed = record_mismatch(Path(tasks_dir).expanduser() if tasks_dir else rundir.tasks_dir(run_dir),
                                      read_json(record))
        except (OSError, ValueError) as exc:
            changed = f"{record}: cannot be read ({exc})"
        if changed:
            damage.append(changed)
    tasks, size = cfg.get("tasks") or {}, int(cfg.get("chunk_size", 64))
    k = int((cfg.get("sampling") or {}).get("samples_per_task", 1))
    splits = {"pool": int(tasks.get("n", 0)), "heldout": int(tasks.get("heldout", 0))}
    for seed, gens in done.items():
        sdir = rundir.seed_dir(run_dir, seed)
        for g in gens:
            gdir = rundir.gen_dir(sdir, g)
            for split, n in splits.items():
                for i in range(0, n, size):
                    chunk = rundir.chunk(gdir, split, i // size)
                    problem = chunk_problem(chunk, min(size, n - i) * k) if chunk.exists() else "missing"
                    if problem:
                        damage.append(f"{chunk}: {problem}")
            train = rundir.train_set(gdir)
            problem = jsonl_problem(train) if train.exists() else None
            if problem:
                damage.append(f"{train}: {problem}")
            problem = rundir.model_dir_problem(rundir.model(gdir)) if g > 0 else None
            if problem:
                damage.append(problem)
    return damage


def run_status(run_dir: Path, *, damage: bool = True) -> RunStatus:
    """The status of one run directory (``resolved_config.json`` must exist); ``damage=False`` leaves out
    :func:`run_damage`, which reads every trace chunk of the finished generations."""
    run_dir = Path(run_dir)
    resolved = rundir.resolved_config(run_dir)
    if not resolved.exists():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no {rundir.RESOLVED_CONFIG})")
    stored = read_resolved(resolved)
    cfg = config_of_run(run_dir, stored)
    held = is_held(run_dir)
    st = RunStatus(run_dir, cfg.get("name", "?"), cfg.get("method", "?"), int(cfg["generations"]), held=held,
                   holder=read_holder(run_dir))
    chunk = int(cfg.get("chunk_size", 64))
    tasks = cfg.get("tasks", {})
    chunks_per_gen = math.ceil(int(tasks.get("n", 0)) / chunk) + math.ceil(int(tasks.get("heldout", 0)) / chunk)
    k = int(cfg.get("sampling", {}).get("samples_per_task", 1))
    run = rundir.RunDir(run_dir, {**stored, "config": cfg})  # the one reader, on the config status trusts
    metrics = run.metrics()
    for seed in cfg["seeds"]:
        sdir = run.seed_dir(seed)
        rows = [metrics[seed][g] for g in sorted(metrics.get(seed, {}))]
        done = [m["generation"] for m in rows]
        nxt = next((g for g in range(st.generations + 1) if g not in done), st.generations + 1)
        line = generation_line(seed, rows[-1], k) if rows else None
        if not sdir.exists():
            stage = "not started"
        else:
            stage = _stage(sdir, nxt, chunks_per_gen, held, st.generations)
        st.seeds.append(SeedStatus(seed, done, stage, line))
    summary, _ = rundir.read_summary(run_dir)  # an unreadable summary.json: not complete
    if summary is not None:
        st.complete = bool(summary.get("complete")) and all(len(s.done) == st.generations + 1 for s in st.seeds)
    if damage:
        st.damage = run_damage(run_dir, cfg, stored, {s.seed: s.done for s in st.seeds})
    return st


def status_report(path: Path) -> tuple[str, list[RunStatus]]:
    """The text ``iterdeploy status`` prints for a run directory or a comparison directory."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; give the --out of a run or a comparison")
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is a file, not a run directory; give the --out of a run or a comparison")
    if rundir.resolved_config(path).exists():
        st = run_status(path)
        return st.report(), [st]
    methods = rundir.method_runs(path)
    if not methods:
        raise FileNotFoundError(f"{path} is neither a run directory (no {rundir.RESOLVED_CONFIG}) nor a comparison "
                                f"(no {rundir.resolved_config('OUT/<method>')}); give the --out of a run")
    head = f"{path}: comparison of {', '.join(p.name for p in methods)}"
    if is_held(path):
        head += f"; running: held by {describe_holder(read_holder(path))}"
    elif rundir.compare_json(path).exists():
        head += f"; finished ({rundir.COMPARE} written)"
    statuses = [run_status(p) for p in methods]
    return "\n".join([head, *(s.report() for s in statuses)]), statuses

