"""The run directory: its layout (every path and file name) and its one reader.

Layout (``iterdeploy run --out RUNDIR``; ``iterdeploy compare --out OUT`` holds one per method,
``OUT/<method>/``, beside ``OUT/compare.json``)::

    RUNDIR/config.yaml            the config as given
    RUNDIR/resolved_config.json   every field, defaults filled in, with its hash
    RUNDIR/tasks/                 the task pool and held-out split (IPC layout; absent with tasks.dir)
    RUNDIR/task_files.json        size and sha256 of each task file the run reads (checked on resume)
    RUNDIR/seed_<s>/gen_<gg>/traces/<split>-<chunk>.jsonl   trace records, written chunk by chunk
    RUNDIR/seed_<s>/gen_<gg>/train.jsonl                    curated training set after generation g
    RUNDIR/seed_<s>/gen_00/reused_from.json                 (a comparison's arm) generation 0 copied from
        another arm's deployment: where from and the seconds that deployment took
    RUNDIR/seed_<s>/gen_<gg>/model/                         the model deployed in generation g (g >= 1):
        train_stats.json (what its training did), or same_as.json (an empty training set kept the
        model of the generation it names)
    RUNDIR/seed_<s>/metrics.jsonl                           one row per finished generation
    RUNDIR/summary.json                                     per-generation results (mean over seeds)

Every other module builds these paths with the functions below and reads a run directory through
:func:`open_run` (:class:`RunDir`): the figures, the audit, the theory check and ``iterdeploy status``.
This module sits low: it imports only the file I/O (``runio``), the trace record (``traces``) and the
package's errors (``errors``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iterdeploy_trl.errors import RunError
from iterdeploy_trl.runio import read_json, read_json_or_raise, read_jsonl, read_rows, safetensors_problem

# ------------------------------------------------------------------------------------------- layout

CONFIG_YAML = "config.yaml"
RESOLVED_CONFIG = "resolved_config.json"
SUMMARY = "summary.json"
COMPARE = "compare.json"
TASKS = "tasks"
TUNING = "tuning"  # a comparison's tuning runs and pool (OUT/tuning/)
TASK_FILES = "task_files.json"
METRICS = "metrics.jsonl"
TRACES = "traces"
TRAIN_SET = "train.jsonl"
MODEL = "model"
SAME_AS = "same_as.json"
TRAIN_STATS = "train_stats.json"
REUSED_FROM = "reused_from.json"
TENSORBOARD = "tensorboard"
SEED_PREFIX = "seed_"
GEN_PREFIX = "gen_"
PARTIAL = ".partial"  # suffix of a directory being written (runio.write_dir, replace_dir)


def config_yaml(run: Path) -> Path:
    """The config as given (``RUNDIR/config.yaml``)."""
    return Path(run) / CONFIG_YAML


def earlier_config(out: Path, n: int) -> Path:
    """A comparison's ``n``-th earlier config (``OUT/config.earlier-<n>.yaml``): what ``config.yaml`` held before
    an invocation with another config (a grid moved, an arm added) resumed the comparison."""
    return Path(out) / f"config.earlier-{n}.yaml"


def resolved_config(run: Path) -> Path:
    """The resolved config with its hash (``RUNDIR/resolved_config.json``): what makes a run directory."""
    return Path(run) / RESOLVED_CONFIG


def summary(run: Path) -> Path:
    """The run's per-generation summary (``RUNDIR/summary.json``), written when a run finishes."""
    return Path(run) / SUMMARY


def compare_json(out: Path) -> Path:
    """A comparison's report (``OUT/compare.json``)."""
    return Path(out) / COMPARE


def tuning_run(out: Path, name: str) -> Path:
    """A comparison's tuning run directory (``OUT/tuning/<arm>-lr<rate>[-<knob><value>]``)."""
    return Path(out) / TUNING / name


def tasks_dir(run: Path) -> Path:
    """The run's own task set (``RUNDIR/tasks/``; generated from ``tasks.seed``)."""
    return Path(run) / TASKS


def task_files(run: Path) -> Path:
    """The record of the task files the run reads (``RUNDIR/task_files.json``)."""
    return Path(run) / TASK_FILES


def seed_dir(run: Path, seed: int) -> Path:
    """``RUNDIR/seed_<s>``."""
    return Path(run) / f"{SEED_PREFIX}{seed}"


def gen_dir(sdir: Path, generation: int) -> Path:
    """``SEEDDIR/gen_<gg>`` (two digits at least)."""
    return Path(sdir) / f"{GEN_PREFIX}{generation:02d}"


def metrics(sdir: Path) -> Path:
    """A seed's metrics rows (``SEEDDIR/metrics.jsonl``)."""
    return Path(sdir) / METRICS


def traces_dir(gdir: Path) -> Path:
    """A generation's trace chunks (``GENDIR/traces/``)."""
    return Path(gdir) / TRACES


def chunk(gdir: Path, split: str, index: int) -> Path:
    """Trace chunk ``index`` of ``split`` (``GENDIR/traces/<split>-<index:05d>.jsonl``)."""
    return traces_dir(gdir) / f"{split}-{index:05d}.jsonl"


def chunk_files(gdir: Path, split: str | None = None) -> list[Path]:
    """The trace chunk files of a generation (of one ``split``, or all), in order."""
    return sorted(traces_dir(gdir).glob(f"{split}-*.jsonl" if split else "*.jsonl"))


def train_set(gdir: Path) -> Path:
    """The training set curated after generation g (``GENDIR/train.jsonl``)."""
    return Path(gdir) / TRAIN_SET


def reused_from(gdir: Path) -> Path:
    """Where a comparison copied this generation's traces from (``gen_00/reused_from.json``), written with the copy."""
    return Path(gdir) / REUSED_FROM


def model(gdir: Path) -> Path:
    """The model deployed in generation g >= 1 (``GENDIR/model/``)."""
    return Path(gdir) / MODEL


def partial(final: Path) -> Path:
    """Where a directory is written before it is renamed into place (``<final>.partial``)."""
    return Path(final).with_name(Path(final).name + PARTIAL)


def same_as(model_dir: Path) -> Path:
    """The record that a generation kept an earlier model (``MODELDIR/same_as.json``)."""
    return Path(model_dir) / SAME_AS


def train_stats(model_dir: Path) -> Path:
    """What training a model did (``MODELDIR/train_stats.json``)."""
    return Path(model_dir) / TRAIN_STATS


def tensorboard_dir(run: Path) -> Path:
    """TensorBoard's logs (``RUNDIR/tensorboard/``, laid out by seed and generation as the run is)."""
    return Path(run) / TENSORBOARD


def every_gen_dir(run: Path) -> list[Path]:
    """Every generation directory of every seed, sorted by path."""
    return sorted(p for p in Path(run).glob(f"{SEED_PREFIX}*/{GEN_PREFIX}*") if p.is_dir())


def _numbered(parent: Path, prefix: str) -> dict[int, Path]:
    out = {}
    for p in Path(parent).glob(f"{prefix}*"):
        tail = p.name[len(prefix):]
        if p.is_dir() and tail.lstrip("-").isdigit():
            out[int(tail)] = p
    return dict(sorted(out.items()))


def seed_dirs(run: Path) -> dict[int, Path]:
    """The seed directories on disk, by seed, in order."""
    return _numbered(run, SEED_PREFIX)


def gen_dirs(sdir: Path) -> dict[int, Path]:
    """The generation directories of a seed directory on disk, by generation, in order."""
    return _numbered(sdir, GEN_PREFIX)


def every_chunk_file(run: Path) -> list[Path]:
    """Every trace chunk file of every seed and generation, sorted by path."""
    return sorted(Path(run).glob(f"{SEED_PREFIX}*/{GEN_PREFIX}*/{TRACES}/*.jsonl"))


def every_metrics_file(run: Path) -> list[Path]:
    """Every seed's ``metrics.jsonl``, sorted by path."""
    return sorted(Path(run).glob(f"{SEED_PREFIX}*/{METRICS}"))


def every_model_file(run: Path) -> list[Path]:
    """Every file of every generation's model directory, sorted by path."""
    return sorted(Path(run).glob(f"{SEED_PREFIX}*/{GEN_PREFIX}*/{MODEL}/*"))


def model_location(model_dir: Path) -> tuple[Path, int | None, int | None]:
    """(run directory, seed, generation) of ``RUNDIR/seed_<s>/gen_<g>/model``. A model directory outside that
    layout (``train_generation`` called from the Python API) gives ``(its parent, None, None)``."""
    gdir = Path(model_dir).parent
    sdir = gdir.parent
    g, s = gdir.name[len(GEN_PREFIX):], sdir.name[len(SEED_PREFIX):]
    if not (gdir.name.startswith(GEN_PREFIX) and g.isdigit() and sdir.name.startswith(SEED_PREFIX) and s.isdigit()):
        return gdir, None, None
    return sdir.parent, int(s), int(g)


def generation_of(gdir: Path) -> int:
    """The generation of a generation directory (``gen_03`` -> 3)."""
    return int(Path(gdir).name[len(GEN_PREFIX):])


def seed_of(sdir: Path) -> int:
    """The seed of a seed directory (``seed_2`` -> 2)."""
    return int(Path(sdir).name[len(SEED_PREFIX):])


def is_run(path: Path) -> bool:
    """Whether ``path`` is a run directory (it holds ``resolved_config.json``)."""
    return resolved_config(path).is_file()


def method_runs(path: Path) -> list[Path]:
    """The run directories directly under ``path`` (a comparison's ``OUT/<method>/``), by name."""
    path = Path(path)
    return sorted(p for p in path.iterdir() if is_run(p)) if path.is_dir() else []


# ------------------------------------------------------------------------------------------- reader


class RunDirError(ValueError):
    """A run directory, or one of its files, that cannot be read (the message names the path)."""


def read_trace_file(path: Path) -> list[dict[str, Any]]:
    """The trace records of one chunk file as dicts: through the typed trace record where the records are
    this version's, else the JSONL rows as written (another version's records, a blind-spot run's
    verdicts; the readers say what a row lacks). :class:`RunDirError` naming the file and line otherwise."""
    from iterdeploy_trl.traces import read_traces

    try:
        try:
            return [dataclasses.asdict(r) for r in read_traces(path)]
        except ValueError:
            pass
        return read_jsonl(path)  # chunks are written whole (runio.write_jsonl)
    except UnicodeDecodeError as exc:
        raise RunDirError(f"{path}: not text ({exc})") from exc
    except (ValueError, TypeError, KeyError) as exc:  # "<path>:<line>: not valid JSON (...)", a bad record
        raise RunDirError(f"{path}: {exc}" if str(path) not in str(exc) else str(exc)) from exc
    except OSError as exc:
        raise RunDirError(f"{path}: cannot read ({exc})") from exc


def read_metrics(path: Path) -> dict[int, dict[str, Any]]:
    """A ``metrics.jsonl`` by generation (``runio.read_rows``: the last row of a generation wins; a last line
    cut short by a crash is a generation not finished). :class:`RunDirError` naming the file on a bad row."""
    try:
        rows = read_rows(Path(path))
    except (OSError, UnicodeDecodeError) as exc:
        raise RunDirError(f"{path}: cannot read ({exc})") from exc
    except (ValueError, AttributeError) as exc:  # "<path>:<line>: not valid JSON (...)"; a row that is no object
        raise RunDirError(str(exc) if str(path) in str(exc) else f"{path}: not a metrics row ({exc})") from exc
    out: dict[int, dict[str, Any]] = {}
    for row in rows:
        if "generation" not in row or "solved" not in row:
            raise RunDirError(f"{path}: not a metrics row (no generation/solved): {json.dumps(row)[:80]}")
        out[int(row["generation"])] = row
    return out


def model_dir_problem(model_dir: Path) -> str | None:
    """Why the saved model directory ``model_dir`` (a full model, a LoRA adapter, or a ``same_as.json``
    pointer to an earlier generation's model) cannot be loaded, as ``PATH: what``; None when its config
    and weight files are whole. Only headers are read: cheap enough to check every model a run reuses."""
    d = Path(model_dir)
    if not d.is_dir():
        return f"{d}: missing"
    if same_as(d).exists():
        try:
            ok = isinstance(read_json(same_as(d)).get("generation"), int)
        except (OSError, ValueError, AttributeError):
            ok = False
        return None if ok else f"{same_as(d)}: not a record of the generation whose model is kept"
    adapter = (d / "adapter_config.json").exists()
    config = d / ("adapter_config.json" if adapter else "config.json")
    if not config.exists():
        return f"{d}: no config.json or adapter_config.json (not a saved model)"
    try:
        json.loads(config.read_text())
    except (OSError, ValueError):
        return f"{config}: not valid JSON"
    prefix = "adapter_model" if adapter else "model"
    index = d / f"{prefix}.safetensors.index.json"
    if index.exists():
        try:
            shards = sorted(set(read_json(index)["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return f"{index}: not a safetensors index (no weight_map)"
        weights = [d / name for name in shards]
    elif (d / f"{prefix}.safetensors").exists() or not (d / f"{prefix}.bin").exists():
        weights = [d / f"{prefix}.safetensors"]
    else:
        weights = []  # a pickled checkpoint (an older save): loadable by transformers, not checked here
    for path in weights:
        if not path.exists():
            return f"{path}: missing"
        problem = safetensors_problem(path)
        if problem:
            return f"{path}: {problem}"
    return None


def deployed_model(sdir: Path, generation: int) -> Path | None:
    """The model directory deployed in ``generation`` of seed directory ``sdir`` (None: the base model),
    following ``same_as.json`` records back (a generation whose training set was empty keeps the previous
    model). ``RunError`` (``PATH: what``, and what to do) on a model directory that cannot be loaded (a file
    missing, a weight file cut short or not safetensors; only headers are read)."""
    g = generation
    while g > 0:
        d = model(gen_dir(sdir, g))
        problem = model_dir_problem(d)
        if problem:
            raise RunError(f"{problem}: the generation-{g} model of {sdir} is damaged; run the same `iterdeploy "
                              f"run` command again to train it again (its training is seeded), or delete {d} first")
        if same_as(d).exists():
            g = read_json(same_as(d))["generation"]
            continue
        return d
    return None


def open_run(path: str | Path) -> RunDir:
    """Open a run directory (finished or not) by its resolved config; :class:`RunDirError` saying what
    ``path`` is instead (missing, a file, a comparison holding run directories, no config with a domain)."""
    path = Path(path)
    if not path.exists():
        raise RunDirError(f"{path}: no such directory; give a directory written by `iterdeploy run --out`")
    if not path.is_dir():
        raise RunDirError(f"{path}: a file; give the run directory that holds it")
    if not is_run(path):
        raise RunDirError(f"{path} is not a run directory (no {RESOLVED_CONFIG})")
    resolved = read_json_or_raise(resolved_config(path), RunDirError, invalid_hint="; is it still being written?")
    cfg = resolved.get("config") if isinstance(resolved, dict) else None
    if not isinstance(cfg, dict) or "domain" not in cfg:
        raise RunDirError(f"{resolved_config(path)}: no config with a domain; not written by `iterdeploy run`?")
    data, problem = read_summary(path)
    return RunDir(path, resolved, data, [problem] if problem else [])


def read_summary(run: Path) -> tuple[dict[str, Any] | None, str | None]:
    """A run's ``summary.json`` (None when there is none, or it is not a mapping) and why it could not be read
    (None when it could, or there is none)."""
    if not summary(run).is_file():
        return None, None
    try:
        data = read_json_or_raise(summary(run), RunDirError, invalid_hint="; is it still being written?")
    except RunDirError as exc:
        return None, str(exc)
    return (data if isinstance(data, dict) else None), None


@dataclass
class RunDir:
    """A run directory as every reader sees it: its recorded config, and per seed and generation its
    metrics, trace records, curated training sets and models. Nothing is read until asked for."""

    path: Path
    resolved: dict[str, Any]  # resolved_config.json: {"hash", "config"}
    summary: dict[str, Any] | None = None  # summary.json (a finished run's), None when missing or unreadable
    problems: list[str] = field(default_factory=list)  # what could not be read (each line names the file)

    @property
    def config(self) -> dict[str, Any]:
        return self.resolved["config"]

    @property
    def stored_hash(self) -> str | None:
        return self.resolved.get("hash")

    @property
    def seeds(self) -> list[int]:
        """The configured seeds."""
        return [int(s) for s in self.config.get("seeds", [0])]

    @property
    def generations(self) -> int:
        """The configured number of trained generations G (generations 0..G)."""
        return int(self.config.get("generations", 0))

    def seed_dir(self, seed: int) -> Path:
        return seed_dir(self.path, seed)

    def gen_dir(self, seed: int, generation: int) -> Path:
        return gen_dir(self.seed_dir(seed), generation)

    def seeds_on_disk(self) -> list[int]:
        """Seeds with a directory, in order."""
        return list(seed_dirs(self.path))

    def metrics(self) -> dict[int, dict[int, dict[str, Any]]]:
        """seed -> generation -> metrics row, for every seed directory with a ``metrics.jsonl``."""
        return {s: read_metrics(metrics(d)) for s, d in seed_dirs(self.path).items() if metrics(d).is_file()}

    def trace_files(self, seed: int, generation: int, split: str | None = None) -> list[Path]:
        return chunk_files(self.gen_dir(seed, generation), split)

    def traces(self, seed: int, generation: int, split: str | None = None) -> list[dict[str, Any]] | None:
        """Every trace record of one generation of one seed (of one ``split``, or all), as dicts with
        ``split`` (default ``pool``) and ``generation`` filled in; None when it has no trace file."""
        files = self.trace_files(seed, generation, split)
        if not files:
            return None
        rows = [r for f in files for r in read_trace_file(f)]
        for r in rows:
            r["split"] = r.get("split") or "pool"
            r["generation"] = generation if r.get("generation") is None else r["generation"]
        return rows

    def iter_traces(self) -> Iterator[tuple[int, int, dict[str, Any]]]:
        """``(seed, generation, record)`` of every generation with a metrics row, in order."""
        for seed, gens in sorted(self.metrics().items()):
            for g in sorted(gens):
                for f in self.trace_files(seed, g):
                    for rec in read_trace_file(f):
                        yield seed, g, rec

    def train_rows(self, seed: int, generation: int) -> list[dict[str, Any]] | None:
        """The training set curated after ``generation`` (``train.jsonl``), or None when there is none."""
        path = train_set(self.gen_dir(seed, generation))
        if not path.is_file():
            return None
        try:
            return read_jsonl(path)
        except (ValueError, OSError, UnicodeDecodeError) as exc:
            raise RunDirError(f"{path}: {exc}" if str(path) not in str(exc) else str(exc)) from exc

    def model(self, seed: int, generation: int) -> Path | None:
        """The model deployed in ``generation`` (None: the base model); see :func:`deployed_model`."""
        return deployed_model(self.seed_dir(seed), generation)

    def task_dirs(self) -> list[Path]:
        """Where the run's task set may be: its own copy, then the config's ``tasks.dir``."""
        given = (self.config.get("tasks") or {}).get("dir")
        return [tasks_dir(self.path)] + ([Path(given).expanduser()] if given else [])
