"""The inputs of the figures: run, compare and theory directories, read into small dataclasses."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iterdeploy_trl import rundir
from iterdeploy_trl.rundir import RunDir, RunDirError
from iterdeploy_trl.runio import read_json_or_raise


class FigureError(ValueError):
    """An input that cannot be drawn: not a run/compare/theory directory, unreadable file (named)."""


# ----------------------------------------------------------------------------------------- sources


@dataclass
class Run:
    """A run directory (``iterdeploy run``, or one method of ``iterdeploy compare``), finished or not."""

    path: Path
    name: str
    domain: str
    method: str
    curation: str | None
    seeds: list[int]  # configured seeds
    generations: int  # configured trained generations G: generations 0..G
    n_pool: int
    n_heldout: int
    samples_per_task: int
    metrics: dict[int, dict[int, dict[str, Any]]]  # seed -> generation -> metrics row
    complete: bool
    config: dict[str, Any]
    summary: dict[str, Any] | None = None  # summary.json of a finished run
    label: str = ""
    source: RunDir | None = field(default=None, repr=False)  # the run directory as rundir reads it
    _traces: list[dict[str, Any]] | None = field(default=None, repr=False)

    @property
    def finished(self) -> list[int]:
        """Generations finished by at least one seed."""
        return sorted({g for rows in self.metrics.values() for g in rows})

    @property
    def status(self) -> str:
        """'complete', or what is finished so far."""
        if self.complete:
            return "complete"
        parts = []
        for s in self.seeds:
            gens = sorted(self.metrics.get(s, {}))
            parts.append(f"seed {s}: " + (f"generations 0–{gens[-1]}" if gens else "none") + " finished")
        return f"in progress ({'; '.join(parts)}; of 0–{self.generations})"

    @property
    def legend(self) -> str:
        if self.complete:
            return self.label
        last = self.finished[-1] if self.finished else -1
        return f"{self.label} (running: gen ≤ {last} of {self.generations})"

    def aggregate(self) -> list[dict[str, Any]]:
        """Per-generation mean/min/max over the seeds that finished it, and unanimous@k: a finished run's
        ``summary.json``, else (in progress) ``loop.aggregate`` over the finished metrics rows."""
        if self.complete and self.summary and isinstance(self.summary.get("generations"), list):
            return self.summary["generations"]
        from iterdeploy_trl.metrics import aggregate

        per_seed = {s: [rows[g] for g in sorted(rows)] for s, rows in self.metrics.items() if rows}
        try:
            return aggregate(per_seed) if per_seed else []
        except KeyError as exc:
            raise FigureError(f"{rundir.metrics(rundir.seed_dir(self.path, '*'))}: rows without {exc}; written by "
                              "another version of iterdeploy?") from exc

    def traces(self) -> list[dict[str, Any]]:
        """The small fields of every trace record of a finished generation (read once, file by file)."""
        if self._traces is None:
            self._traces = list(_read_traces(self))
        return self._traces

    def reference_lengths(self) -> tuple[list[int], list[int]]:
        """Reference plan lengths of the pool and of the held-out split."""
        from iterdeploy_trl.tasks.taskset import INDEX

        rows = None
        tasks_dir = self.config.get("tasks", {}).get("dir")
        for cand in (rundir.tasks_dir(self.path), Path(tasks_dir).expanduser() if tasks_dir else None):
            if cand is not None and (cand / INDEX).exists():
                try:
                    from iterdeploy_trl.tasks import TaskSetError, load_task_set

                    rows = [t.reference_length for t in load_task_set(cand).tasks]
                except (TaskSetError, OSError, ValueError):
                    rows = None
                if rows is not None:
                    break
        if rows is None:  # the traces of generation 0 name every task's reference length
            seen: dict[tuple[str, str], int] = {}
            for t in self.traces():
                seen.setdefault((t["split"], t["task_id"]), t["reference_length"])
            return ([v for (s, _), v in seen.items() if s == "pool"], [v for (s, _), v in seen.items() if s != "pool"])
        return rows[: self.n_pool], rows[self.n_pool : self.n_pool + self.n_heldout]


@dataclass
class Compare:
    """A compare directory: ``compare.json`` (or, while it runs, statistics from its method runs)."""

    path: Path
    name: str
    domain: str
    seeds: list[int]
    methods: dict[str, list[dict[str, Any]]]  # method -> rows per budget point (compare.json's "methods")
    paired: dict[str, Any]
    reference: str | None
    runs: dict[str, Run]
    complete: bool
    label: str = ""


@dataclass
class Theory:
    """A theory directory (``theory.json``)."""

    path: Path
    data: dict[str, Any]


Source = Run | Compare | Theory

TRACE_FIELDS = ("split", "task_id", "valid", "plan_length", "reasoning_tokens", "completion_tokens",
                "reference_length", "truncated", "generation", "seed")


def load_json(path: Path) -> Any:
    return read_json_or_raise(path, FigureError, invalid_hint="; is it still being written?")


def _read_traces(run: Run) -> Iterable[dict[str, Any]]:
    """The small fields of every trace record of the finished generations (``rundir.read_trace_file``);
    ``FigureError`` naming a file that cannot be read."""
    try:
        for seed, gens in sorted(run.metrics.items()):
            for g in sorted(gens):
                for path in rundir.chunk_files(rundir.gen_dir(rundir.seed_dir(run.path, seed), g)):
                    for rec in rundir.read_trace_file(path):
                        row = {k: rec.get(k) for k in TRACE_FIELDS}
                        row["split"] = row["split"] or "pool"
                        row["seed"], row["generation"] = seed, g
                        yield row
    except RunDirError as exc:
        raise FigureError(str(exc)) from exc


def is_run(path: Path) -> bool:
    return rundir.is_run(path)


def load_run(path: str | Path) -> Run:
    """Read a run directory (finished or in progress) through :func:`iterdeploy_trl.rundir.open_run`."""
    path = Path(path)
    if not is_run(path):
        raise FigureError(f"{path} is not a run directory (no {rundir.RESOLVED_CONFIG})")
    try:
        run = rundir.open_run(path)
        metrics = run.metrics()
    except RunDirError as exc:
        raise FigureError(str(exc)) from exc
    if run.problems:  # summary.json unreadable
        raise FigureError(run.problems[0])
    summary = run.summary
    cfg = run.config
    seeds = [int(s) for s in cfg.get("seeds", [])] or sorted(metrics)
    gens = run.generations
    every = all(set(range(gens + 1)) <= set(metrics.get(s, {})) for s in seeds)
    complete = bool(summary and summary.get("complete")) and every
    tasks = cfg.get("tasks", {})
    first = next((row for rows in metrics.values() for row in rows.values()), {})
    return Run(
        path=path, name=str(cfg.get("name", path.name)), domain=str(cfg["domain"]),
        method=str(cfg.get("method", "valid-sft")), curation=cfg.get("curation"), seeds=seeds, generations=gens,
        n_pool=int(first.get("tasks", tasks.get("n", 0))), n_heldout=int(first.get("heldout_tasks", tasks.get("heldout", 0))),
        samples_per_task=int(cfg.get("sampling", {}).get("samples_per_task", 1)), metrics=metrics,
        complete=complete, config=cfg, summary=summary, source=run)


def load_compare(path: str | Path) -> Compare:
    """Read a compare directory; without ``compare.json`` (still running) the statistics are computed
    from its method runs (``compare_stats.compare_statistics``) over the generations every seed finished."""
    from iterdeploy_trl.methods import names as method_names

    path = Path(path)
    runs = {m: load_run(path / m) for m in method_names() if is_run(path / m)}
    cpath = rundir.compare_json(path)
    if cpath.is_file():
        data = load_json(cpath)
        if not isinstance(data, dict) or not isinstance(data.get("methods"), dict):
            raise FigureError(f"{cpath}: no 'methods' table; not written by iterdeploy compare?")
        domain = data.get("domain") or next((r.domain for r in runs.values()), "unknown")
        return Compare(path, str(data.get("name", path.name)), str(domain), list(data.get("seeds", [])),
                       data["methods"], data.get("paired", {}), data.get("reference"), runs, True)
    if not runs:
        raise FigureError(f"{path} is not a compare directory (no compare.json, no method run directory)")
    from iterdeploy_trl.compare_stats import compare_statistics
    from iterdeploy_trl.metrics import aggregate

    summaries = {}
    for method, run in runs.items():
        seeds = [s for s in run.seeds if run.metrics.get(s)]
        common = set.intersection(*(set(run.metrics[s]) for s in seeds)) if seeds else set()
        if not common:
            continue
        per_seed = {s: [run.metrics[s][g] for g in sorted(common)] for s in seeds}
        summaries[method] = {"per_seed": {str(s): rows for s, rows in per_seed.items()},
                             "generations": aggregate(per_seed)}
    stats = compare_statistics(summaries) if summaries else {"methods": {}, "paired": {}, "reference": None}
    first = next(iter(runs.values()))
    return Compare(path, first.name.split("/")[0], first.domain, first.seeds, stats["methods"], stats["paired"],
                   stats["reference"], runs, False)


def load_theory(path: str | Path) -> Theory:
    """Read ``theory.json`` (a directory holding it, or the file)."""
    path = Path(path)
    file = path if path.is_file() else path / "theory.json"
    data = load_json(file)
    if not isinstance(data, dict) or not ("plots" in data or "rows" in data):
        raise FigureError(f"{file}: neither 'plots' nor 'rows'; not written by iterdeploy theory?")
    return Theory(file.parent, data)


def detect(path: str | Path) -> str:
    """'run', 'compare' or 'theory'; ``FigureError`` saying what was expected otherwise."""
    path = Path(path)
    if path.is_file():
        if path.name == "theory.json":
            return "theory"
        if path.name == rundir.COMPARE:
            return "compare"
        if path.name in (rundir.SUMMARY, rundir.RESOLVED_CONFIG, rundir.METRICS):
            raise FigureError(f"{path}: give the run directory ({path.parent}), not one of its files")
        raise FigureError(f"{path}: a file; give a run, compare or theory directory")
    if not path.is_dir():
        raise FigureError(f"{path}: no such directory")
    if (path / "theory.json").is_file():
        return "theory"
    if rundir.compare_json(path).is_file():
        return "compare"
    if is_run(path):
        return "run"
    from iterdeploy_trl.methods import names as method_names

    if any(is_run(path / m) for m in method_names()):
        return "compare"
    raise FigureError(
        f"{path} is not a run directory (no {rundir.RESOLVED_CONFIG}), a compare directory (no {rundir.COMPARE}) nor a "
        "theory directory (no theory.json); give directories written by `iterdeploy run --out`, "
        "`iterdeploy compare --out` or `iterdeploy theory --out`")


def load(path: str | Path) -> Source:
    """Load one path of any kind (see ``detect``)."""
    kind = detect(path)
    path = Path(path)
    if kind == "compare":
        return load_compare(path.parent if path.is_file() else path)
    return load_theory(path) if kind == "theory" else load_run(path)



def seeds_text(run: Run) -> str:
    seeds = sorted(run.metrics) or run.seeds
    return f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"


def legend_title(domain: str, runs: Sequence[Run]) -> str:
    """'<domain>; seeds 0, 1, 2' when every run has the same seeds, else per run."""
    seeds = {seeds_text(r) for r in runs}
    if len(seeds) == 1:
        return f"{domain}; {seeds.pop()}"
    return f"{domain}; " + "; ".join(f"{r.label}: {seeds_text(r)}" for r in runs)


def progress_notes(runs: Sequence[Run]) -> list[str]:
    return [f"IN PROGRESS: {r.path} — {r.status}; drawn up to the finished generations." for r in runs
            if not r.complete]



def label_runs(runs: Sequence[Run]) -> None:
    """Legend labels: the run's name, with its directory when two directories share a name."""
    paths: dict[str, set[Path]] = {}
    for r in runs:
        paths.setdefault(r.name, set()).add(r.path.resolve())
    for r in runs:
        r.label = r.name if len(paths[r.name]) == 1 else f"{r.name} ({r.path.name})"

