"""Figures of a study, drawn from the directories that ``iterdeploy run``, ``iterdeploy compare`` and
``iterdeploy theory --out`` write.

``make_figures(paths, out)`` detects each path's kind and writes, as PNG and PDF, into ``out``:

=========================================  ==========================================================
file (stem)                                 from
=========================================  ==========================================================
``solved-<domain>``                        run dirs: tasks solved per generation (mean, min–max over
                                           seeds) and unanimous@k
``pool_vs_heldout-<domain>``               run dirs with a held-out split: solved fraction of each split
``plan_lengths-<domain>-<run>``            a run dir's traces: valid plan lengths per generation, the
                                           longest so far, against the pool's reference plan lengths
``tokens-<domain>-<run>``                  a run dir's traces: reasoning and completion tokens per trace
``curation_ablation-<domain>``             curated and uncurated runs (two run dirs, or a compare dir's
                                           valid-sft and uncurated-sft): solved, training-set sizes
``head_to_head-<domain>[-<compare>]``      a compare dir: solved vs sampled completions and vs training
                                           tokens, 95% CIs, for every method it holds
``theory-cosine_vs_n``                     theory.json: cosine vs samples per prompt, per estimator
``theory-same_samples``                    theory.json: same-sample cosines by normalisation and baseline
=========================================  ==========================================================

and ``results.md``: the numbers behind each figure and the source paths. Run directories given on the
command line make the per-run figures; a compare directory makes the head-to-head and (with both
methods) the curation ablation. Figures over several runs are drawn per domain. A run still in
progress is drawn up to its last finished generation, marked in the legend and in ``results.md``.
"""

from __future__ import annotations

import json
import math
import re
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Okabe–Ito, a palette that colour-blind readers can tell apart.
OKABE_ITO = {
    "blue": "#0072B2", "orange": "#E69F00", "green": "#009E73", "vermillion": "#D55E00",
    "sky": "#56B4E9", "purple": "#CC79A7", "yellow": "#F0E442", "black": "#000000",
}
CYCLE = [OKABE_ITO[c] for c in ("blue", "orange", "green", "vermillion", "sky", "purple", "black")]
METHOD_COLOURS = {"valid-sft": OKABE_ITO["blue"], "iw-sft": OKABE_ITO["green"],
                  "uncurated-sft": OKABE_ITO["orange"], "reinforce": OKABE_ITO["vermillion"]}
METHOD_LABELS = {"valid-sft": "valid-trace SFT", "iw-sft": "IW-SFT", "uncurated-sft": "uncurated SFT",
                 "reinforce": "REINFORCE"}
GREY = "#8c8c8c"
SINGLE = 3.3  # inches: one column of a two-column paper
DOUBLE = 6.9  # inches: both columns
FORMATS = ("png", "pdf")
STYLE = {
    "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "xtick.labelsize": 7, "ytick.labelsize": 7,
    "legend.fontsize": 6.5, "legend.frameon": False, "lines.linewidth": 1.2, "lines.markersize": 3.5,
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.25,
    "grid.linewidth": 0.5, "savefig.dpi": 300, "pdf.fonttype": 42, "ps.fonttype": 42,
    "figure.constrained_layout.use": True,
}


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
    label: str = ""
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
        """Per-generation mean/min/max over the seeds that finished it, and unanimous@k
        (``loop.aggregate``, as in ``summary.json``)."""
        from iterdeploy_trl.loop import aggregate

        per_seed = {s: [rows[g] for g in sorted(rows)] for s, rows in self.metrics.items() if rows}
        try:
            return aggregate(per_seed) if per_seed else []
        except KeyError as exc:
            raise FigureError(f"{self.path}/seed_*/metrics.jsonl: rows without {exc}; written by another version "
                              "of iterdeploy?") from exc

    def traces(self) -> list[dict[str, Any]]:
        """The small fields of every trace record of a finished generation (read once, file by file)."""
        if self._traces is None:
            self._traces = list(_read_traces(self))
        return self._traces

    def reference_lengths(self) -> tuple[list[int], list[int]]:
        """Reference plan lengths of the pool and of the held-out split."""
        rows = None
        tdir = self.path / "tasks"
        tasks_dir = self.config.get("tasks", {}).get("dir")
        for cand in (tdir, Path(tasks_dir).expanduser() if tasks_dir else None):
            if cand is not None and (cand / "tasks.jsonl").exists():
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


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise FigureError(f"{path}: cannot read ({exc})") from exc
    except json.JSONDecodeError as exc:
        raise FigureError(f"{path}: not valid JSON ({exc}); is it still being written?") from exc


def _read_metrics(path: Path) -> dict[int, dict[str, Any]]:
    rows: dict[int, dict[str, Any]] = {}
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise FigureError(f"{path}: cannot read ({exc})") from exc
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            if lineno == len(lines):  # a last line cut short by a crash: that generation is not finished
                break
            raise FigureError(f"{path}:{lineno}: not valid JSON ({exc})") from exc
        if not isinstance(row, dict) or "generation" not in row or "solved" not in row:
            raise FigureError(f"{path}:{lineno}: not a metrics row (no generation/solved)")
        rows[int(row["generation"])] = row
    return rows


def _read_traces(run: Run) -> Iterable[dict[str, Any]]:
    from iterdeploy_trl.runio import read_jsonl

    for seed, gens in sorted(run.metrics.items()):
        for g in sorted(gens):
            for path in sorted((run.path / f"seed_{seed}" / f"gen_{g:02d}" / "traces").glob("*.jsonl")):
                try:
                    records = read_jsonl(path)  # chunks are written whole (runio.write_jsonl)
                except UnicodeDecodeError:
                    raise
                except ValueError as exc:  # "<path>:<line>: not valid JSON (...)"
                    raise FigureError(str(exc)) from exc
                for rec in records:
                    row = {k: rec.get(k) for k in TRACE_FIELDS}
                    row["split"] = row["split"] or "pool"
                    row["seed"], row["generation"] = seed, g
                    yield row


def _is_run(path: Path) -> bool:
    return (path / "resolved_config.json").is_file()


def load_run(path: str | Path) -> Run:
    """Read a run directory (finished or in progress)."""
    path = Path(path)
    if not _is_run(path):
        raise FigureError(f"{path} is not a run directory (no resolved_config.json)")
    resolved = _load_json(path / "resolved_config.json")
    cfg = resolved.get("config") if isinstance(resolved, dict) else None
    if not isinstance(cfg, dict) or "domain" not in cfg:
        raise FigureError(f"{path / 'resolved_config.json'}: no config with a domain; not written by iterdeploy run?")
    seeds = [int(s) for s in cfg.get("seeds", [])]
    metrics: dict[int, dict[int, dict[str, Any]]] = {}
    for sdir in sorted(path.glob("seed_*")):
        m = re.fullmatch(r"seed_(-?\d+)", sdir.name)
        if m and (sdir / "metrics.jsonl").is_file():
            metrics[int(m.group(1))] = _read_metrics(sdir / "metrics.jsonl")
    seeds = seeds or sorted(metrics)
    gens = int(cfg.get("generations", 0))
    summary_path = path / "summary.json"
    summary = _load_json(summary_path) if summary_path.is_file() else None
    every = all(set(range(gens + 1)) <= set(metrics.get(s, {})) for s in seeds)
    complete = bool(summary and summary.get("complete")) and every
    tasks = cfg.get("tasks", {})
    first = next((row for rows in metrics.values() for row in rows.values()), {})
    return Run(
        path=path, name=str(cfg.get("name", path.name)), domain=str(cfg["domain"]),
        method=str(cfg.get("method", "valid-sft")), curation=cfg.get("curation"), seeds=seeds, generations=gens,
        n_pool=int(first.get("tasks", tasks.get("n", 0))), n_heldout=int(first.get("heldout_tasks", tasks.get("heldout", 0))),
        samples_per_task=int(cfg.get("sampling", {}).get("samples_per_task", 1)), metrics=metrics,
        complete=complete, config=cfg)


def load_compare(path: str | Path) -> Compare:
    """Read a compare directory; without ``compare.json`` (still running) the statistics are computed
    from its method runs (``compare.compare_statistics``) over the generations every seed finished."""
    from iterdeploy_trl.compare import LOOP_METHODS

    path = Path(path)
    all_methods = (*LOOP_METHODS, "reinforce")
    runs = {m: load_run(path / m) for m in all_methods if _is_run(path / m)}
    cpath = path / "compare.json"
    if cpath.is_file():
        data = _load_json(cpath)
        if not isinstance(data, dict) or not isinstance(data.get("methods"), dict):
            raise FigureError(f"{cpath}: no 'methods' table; not written by iterdeploy compare?")
        domain = data.get("domain") or next((r.domain for r in runs.values()), "unknown")
        return Compare(path, str(data.get("name", path.name)), str(domain), list(data.get("seeds", [])),
                       data["methods"], data.get("paired", {}), data.get("reference"), runs, True)
    if not runs:
        raise FigureError(f"{path} is not a compare directory (no compare.json, no method run directory)")
    from iterdeploy_trl.compare import compare_statistics
    from iterdeploy_trl.loop import aggregate

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
    data = _load_json(file)
    if not isinstance(data, dict) or not ("plots" in data or "rows" in data):
        raise FigureError(f"{file}: neither 'plots' nor 'rows'; not written by iterdeploy theory?")
    return Theory(file.parent, data)


def detect(path: str | Path) -> str:
    """'run', 'compare' or 'theory'; ``FigureError`` saying what was expected otherwise."""
    path = Path(path)
    if path.is_file():
        if path.name == "theory.json":
            return "theory"
        if path.name == "compare.json":
            return "compare"
        if path.name in ("summary.json", "resolved_config.json", "metrics.jsonl"):
            raise FigureError(f"{path}: give the run directory ({path.parent}), not one of its files")
        raise FigureError(f"{path}: a file; give a run, compare or theory directory")
    if not path.is_dir():
        raise FigureError(f"{path}: no such directory")
    if (path / "theory.json").is_file():
        return "theory"
    if (path / "compare.json").is_file():
        return "compare"
    if _is_run(path):
        return "run"
    from iterdeploy_trl.compare import LOOP_METHODS

    if any(_is_run(path / m) for m in (*LOOP_METHODS, "reinforce")):
        return "compare"
    raise FigureError(
        f"{path} is not a run directory (no resolved_config.json), a compare directory (no compare.json) nor a "
        "theory directory (no theory.json); give directories written by `iterdeploy run --out`, "
        "`iterdeploy compare --out` or `iterdeploy theory --out`")


def load(path: str | Path) -> Source:
    """Load one path of any kind (see ``detect``)."""
    kind = detect(path)
    path = Path(path)
    if kind == "compare":
        return load_compare(path.parent if path.is_file() else path)
    return load_theory(path) if kind == "theory" else load_run(path)


# ------------------------------------------------------------------------------------------ report


@dataclass
class Drawn:
    """One figure written: its file stem, panel titles, files and the sources it was drawn from."""

    stem: str
    kind: str
    panels: list[str]
    files: list[Path]
    sources: list[Path]


@dataclass
class FigureReport:
    """What ``render_figures`` wrote, and what the user should know (warnings)."""

    out: Path
    figures: list[Drawn] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    results: Path | None = None

    @property
    def files(self) -> list[Path]:
        return [f for d in self.figures for f in d.files] + ([self.results] if self.results else [])


class _Markdown:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def section(self, title: str, files: Sequence[Path], sources: Sequence[Path], notes: Sequence[str] = ()) -> None:
        self.lines += ["", f"## {title}", "", "Files: " + ", ".join(f"`{f.name}`" for f in files) + "  ",
                       "Sources: " + ", ".join(f"`{s}`" for s in sources)]
        self.lines += [f"> {n}" for n in notes]
        self.lines.append("")

    def table(self, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        self.lines.append("| " + " | ".join(header) + " |")
        self.lines.append("|" + "|".join("---" for _ in header) + "|")
        for row in rows:
            self.lines.append("| " + " | ".join(_fmt(v) for v in row) + " |")
        self.lines.append("")

    def text(self, line: str) -> None:
        self.lines.append(line)


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e6):
            return f"{v:.2e}"
        return f"{v:.1f}" if abs(v) >= 10 else f"{v:.3g}"
    return str(v).replace("|", "\\|")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "run"


# ----------------------------------------------------------------------------------------- drawing


def _figure(width: float, height: float, nrows: int = 1, ncols: int = 1, **kw: Any) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))  # not pyplot: no global registry of open figures
    return fig, fig.subplots(nrows, ncols, squeeze=False, **kw)


def _save(fig: Any, out: Path, stem: str) -> list[Path]:
    files = []
    for fmt in FORMATS:
        f = out / f"{stem}.{fmt}"
        fig.savefig(f, format=fmt, metadata={"Creator": "iterdeploy figures"} if fmt == "pdf" else None)
        files.append(f)
    return files


def _count_y(ax: Any, frac: bool) -> None:
    """y from 0, integer ticks for counts, never a degenerate range."""
    from matplotlib.ticker import MaxNLocator

    if not frac:
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    lo, hi = ax.get_ylim()
    ax.set_ylim(0, max(hi, 0.05 if frac else 1.0))


def _int_x(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _colours(runs: Sequence[Run]) -> list[str]:
    """Method colours when each run has its own method, else the Okabe–Ito cycle."""
    methods = [r.method for r in runs]
    if len(set(methods)) == len(methods):
        return [METHOD_COLOURS.get(m, CYCLE[i % len(CYCLE)]) for i, m in enumerate(methods)]
    return [CYCLE[i % len(CYCLE)] for i in range(len(runs))]


def _solved_axis_label(runs: Sequence[Run]) -> tuple[str, bool]:
    """('tasks solved (of N)', False) when every run has the same pool, else a fraction."""
    sizes = {r.n_pool for r in runs}
    if len(sizes) == 1:
        return f"tasks solved (of {sizes.pop()})", False
    return "fraction of the pool solved", True


def _band(ax: Any, x: Sequence[float], mean: Sequence[float], lo: Sequence[float], hi: Sequence[float], colour: str,
          label: str, **kw: Any) -> None:
    ax.fill_between(x, lo, hi, color=colour, alpha=0.18, linewidth=0)
    ax.plot(x, mean, color=colour, marker="o", label=label, **kw)


def _vals(gens: list[dict[str, Any]], key: str, scale: float = 1.0) -> tuple[list, list, list]:
    def v(x: Any) -> float:
        return float("nan") if x is None else x / scale

    return ([v(g.get(key)) for g in gens], [v(g.get(f"{key}_min", g.get(key))) for g in gens],
            [v(g.get(f"{key}_max", g.get(key))) for g in gens])


def fig_solved(domain: str, runs: Sequence[Run], out: Path, stem: str, md: _Markdown) -> Drawn:
    """Tasks solved per generation (mean, min–max over seeds) and unanimous@k."""
    fig, axes = _figure(SINGLE, 3.4, 2, 1, sharex=True)
    ax, ax_u = axes[0, 0], axes[1, 0]
    ylabel, frac = _solved_axis_label(runs)
    rows = []
    ks = set()
    for run, colour in zip(runs, _colours(runs), strict=True):
        gens = run.aggregate()
        x = [g["generation"] for g in gens]
        mean, lo, hi = _vals(gens, "solved", run.n_pool if frac else 1.0)
        _band(ax, x, mean, lo, hi, colour, run.legend)
        ax_u.plot(x, [g["unanimous"] / (run.n_pool if frac else 1) for g in gens], color=colour, marker="s",
                  linestyle="--", label=run.legend)
        ks |= {g["unanimous_k"] for g in gens}
        rows += [(run.label, g["generation"], g["solved"], g.get("solved_min"), g.get("solved_max"),
                  g["unanimous"], g["unanimous_k"], run.n_pool) for g in gens]
    k = f"@{ks.pop()}" if len(ks) == 1 else "@k"
    ax.set_title("(a) tasks solved: mean, band min–max over seeds")
    ax.set_ylabel(ylabel)
    ax_u.set_title(f"(b) unanimous{k}: solved by every seed")
    ax_u.set_ylabel(ylabel.replace("tasks solved", "tasks"))
    ax_u.set_xlabel("generation")
    _int_x(ax_u)
    ax.legend(loc="best", title=_legend_title(domain, runs), title_fontsize=6.5)
    for a in (ax, ax_u):
        _count_y(a, frac)
    files = _save(fig, out, stem)
    md.section(f"Tasks solved per generation — {domain}", files, [r.path for r in runs], _progress_notes(runs))
    md.table(["run", "generation", "solved (mean)", "min", "max", "unanimous", "k (seeds)", "of"], rows)
    return Drawn(stem, "solved", [a.get_title() for a in (ax, ax_u)], files, [r.path for r in runs])


def fig_pool_vs_heldout(domain: str, runs: Sequence[Run], out: Path, stem: str, md: _Markdown) -> Drawn:
    """Solved fraction of the pool and of the held-out split per generation."""
    fig, axes = _figure(SINGLE, 2.3, 1, 2, sharey=True)
    ax_p, ax_h = axes[0, 0], axes[0, 1]
    rows = []
    pools = sorted({r.n_pool for r in runs})
    helds = sorted({r.n_heldout for r in runs})
    for run, colour in zip(runs, _colours(runs), strict=True):
        gens = run.aggregate()
        x = [g["generation"] for g in gens]
        mean, lo, hi = _vals(gens, "solved", run.n_pool)
        _band(ax_p, x, mean, lo, hi, colour, run.legend)
        hmean, hlo, hhi = _vals(gens, "heldout_solved", run.n_heldout)
        _band(ax_h, x, hmean, hlo, hhi, colour, run.legend, linestyle="--")
        rows += [(run.label, g["generation"], g["solved"], run.n_pool, round(g["solved"] / run.n_pool, 3),
                  g["heldout_solved"], run.n_heldout, round(g["heldout_solved"] / run.n_heldout, 3)) for g in gens]
    ax_p.set_title(f"(a) pool (n = {'/'.join(map(str, pools))})")
    ax_h.set_title(f"(b) held-out (n = {'/'.join(map(str, helds))})")
    ax_p.set_ylabel("fraction of the split solved")
    for a in (ax_p, ax_h):
        a.set_xlabel("generation")
        _int_x(a)
    top = max([0.05, *(v for line in ax_p.lines + ax_h.lines for v in line.get_ydata() if v == v)])
    ax_p.set_ylim(0, min(1.02, top * 1.25))
    ax_p.legend(loc="upper left", title=_legend_title(domain, runs), title_fontsize=6.5)
    files = _save(fig, out, stem)
    md.section(f"Pool vs held-out solved — {domain}", files, [r.path for r in runs],
               ["Fractions of each split's size (mean over seeds); bands: min–max over seeds.", *_progress_notes(runs)])
    md.table(["run", "generation", "pool solved (mean)", "pool size", "fraction", "held-out solved (mean)",
              "held-out size", "fraction"], rows)
    return Drawn(stem, "pool_vs_heldout", [ax_p.get_title(), ax_h.get_title()], files, [r.path for r in runs])


def _boxes(ax: Any, data: Sequence[Sequence[float]], positions: Sequence[float], colour: str, *,
           strip: bool = True, width: float = 0.55) -> None:
    import numpy as np

    keep = [(p, d) for p, d in zip(positions, data, strict=True) if len(d)]
    if not keep:
        return
    bp = ax.boxplot([d for _, d in keep], positions=[p for p, _ in keep], widths=width, showfliers=False,
                    patch_artist=True, manage_ticks=False, whis=(5, 95))
    for box in bp["boxes"]:
        box.set(facecolor=colour, alpha=0.3, edgecolor=colour, linewidth=0.8)
    for part in ("whiskers", "caps", "medians"):
        for line in bp[part]:
            line.set(color=colour, linewidth=0.8)
    if strip:
        rng = np.random.default_rng(0)
        for p, d in keep:
            if len(d) <= 400:
                ax.scatter(p + rng.uniform(-width / 3, width / 3, len(d)), d, s=2.5, color=colour, alpha=0.45,
                           linewidths=0, zorder=3)


def fig_plan_lengths(run: Run, out: Path, stem: str, md: _Markdown) -> Drawn:
    """Valid plan lengths per generation (all seeds), the longest so far, and the pool's reference lengths."""
    fig, axes = _figure(SINGLE, 2.5)
    ax = axes[0, 0]
    gens = run.finished
    valid: dict[int, list[int]] = {g: [] for g in gens}  # traces are read for finished generations only
    for t in run.traces():
        if t["split"] == "pool" and t["valid"] and t["plan_length"] is not None:
            valid[t["generation"]].append(t["plan_length"])
    pool_ref, _ = run.reference_lengths()
    _boxes(ax, [pool_ref], [-1.2], GREY, strip=False, width=0.7)
    _boxes(ax, [valid[g] for g in gens], gens, OKABE_ITO["blue"])
    longest: list[float] = []
    best = float("nan")  # nothing found yet
    for g in gens:
        if valid[g]:
            best = max(valid[g]) if best != best else max(best, *valid[g])
        longest.append(best)
    ax.plot(gens, longest, drawstyle="steps-mid", marker="D", markersize=2.5, color=OKABE_ITO["vermillion"],
            label="longest valid plan so far")
    ref_solved = []
    for g in gens:  # over the seeds that solved something in generation g
        vals = [rows[g].get("max_solved_reference_length") for rows in run.metrics.values()
                if g in rows and rows[g].get("solved")]
        ref_solved.append(max((v for v in vals if v), default=None))
    ax.plot(gens, [float("nan") if v is None else v for v in ref_solved], linestyle="none", marker="v",
            color="#555555", label="longest reference plan of a solved task")
    from matplotlib.patches import Patch

    handles, labels = ax.get_legend_handles_labels()
    handles += [Patch(facecolor=OKABE_ITO["blue"], alpha=0.3, edgecolor=OKABE_ITO["blue"]),
                Patch(facecolor=GREY, alpha=0.3, edgecolor=GREY)]
    labels += [f"valid plans ({_seeds(run)})", "reference plans of the pool"]
    ax.legend(handles, labels, loc="upper left", fontsize=6)
    ax.set_xticks([-1.2, *gens], ["ref.", *map(str, gens)])
    ax.set_xlim(-2, (gens[-1] if gens else 0) + 0.7)
    ax.set_xlabel("generation")
    ax.set_ylabel("plan length (actions)")
    ax.set_title(f"valid plan lengths, {run.legend}")
    top = max([*pool_ref, *(v for v in longest if v == v), 1])
    ax.set_ylim(0, top * 1.45)  # room for the legend
    files = _save(fig, out, stem)
    md.section(f"Plan lengths — {run.label} ({run.domain})", files, [run.path],
               ["Every valid trace on the pool, all seeds; boxes: quartiles, whiskers 5–95 %.",
                *_progress_notes([run])])
    rows = []
    for g, lo, ref in zip(gens, longest, ref_solved, strict=True):
        v = valid[g]
        rows.append((g, len(v), statistics.median(v) if v else None, statistics.fmean(v) if v else None,
                     max(v) if v else None, None if lo != lo else lo, ref))
    md.table(["generation", "valid traces", "median length", "mean length", "max length", "longest so far",
              "longest solved reference"], rows)
    if pool_ref:
        md.text(f"Pool reference plan lengths: n = {len(pool_ref)}, median {statistics.median(pool_ref)}, "
                f"mean {statistics.fmean(pool_ref):.1f}, max {max(pool_ref)}.")
    return Drawn(stem, "plan_lengths", [ax.get_title()], files, [run.path])


def fig_tokens(run: Run, out: Path, stem: str, md: _Markdown) -> Drawn:
    """Reasoning and completion tokens per trace, per generation (all pool traces; mean of valid ones)."""
    fig, axes = _figure(SINGLE, 3.4, 2, 1, sharex=True)
    gens = run.finished
    pool: dict[int, list[dict[str, Any]]] = {g: [] for g in gens}  # pool traces by generation
    for t in run.traces():
        if t["split"] == "pool":
            pool[t["generation"]].append(t)
    rows: dict[int, list[Any]] = {g: [g] for g in gens}
    titles = []
    for ax, key, what in ((axes[0, 0], "reasoning_tokens", "reasoning"), (axes[1, 0], "completion_tokens", "completion")):
        allv = {g: [t[key] for t in pool[g] if t[key] is not None] for g in gens}
        validv = {g: [t[key] for t in pool[g] if t["valid"] and t[key] is not None] for g in gens}
        _boxes(ax, [allv[g] for g in gens], gens, OKABE_ITO["sky"], strip=False)
        ax.plot(gens, [statistics.fmean(allv[g]) if allv[g] else float("nan") for g in gens], marker="D",
                color=OKABE_ITO["blue"], label="mean, all traces")
        ax.plot(gens, [statistics.fmean(validv[g]) if validv[g] else float("nan") for g in gens], marker="o",
                linestyle="--", color=OKABE_ITO["vermillion"], label="mean, valid traces")
        ax.set_ylabel("tokens per trace")
        title = f"({'a' if what == 'reasoning' else 'b'}) {what} tokens"
        ax.set_title(title + (f", {run.legend}" if what == "reasoning" else ""))
        titles.append(ax.get_title())
        ax.set_ylim(bottom=0)
        for g in gens:
            rows[g] += [statistics.fmean(allv[g]) if allv[g] else None,
                        statistics.median(allv[g]) if allv[g] else None,
                        statistics.fmean(validv[g]) if validv[g] else None]
    axes[0, 0].legend(loc="best", title=_legend_title(run.domain, [run]), title_fontsize=6.5)
    axes[1, 0].set_xlabel("generation")
    _int_x(axes[1, 0])
    files = _save(fig, out, stem)
    md.section(f"Tokens per trace — {run.label} ({run.domain})", files, [run.path],
               ["All pool traces of all seeds; boxes: quartiles, whiskers 5–95 %.", *_progress_notes([run])])
    md.table(["generation", "reasoning mean", "reasoning median", "reasoning mean (valid)", "completion mean",
              "completion median", "completion mean (valid)"], rows.values())
    return Drawn(stem, "tokens", titles, files, [run.path])


def fig_ablation(domain: str, curated: Sequence[Run], uncurated: Sequence[Run], out: Path, stem: str,
                 md: _Markdown) -> Drawn:
    """Curated vs uncurated: solved per generation, with each generation's training-set size."""
    fig, axes = _figure(SINGLE, 2.5)
    ax = axes[0, 0]
    runs = [*curated, *uncurated]
    ylabel, frac = _solved_axis_label(runs)
    rows = []
    palette = {True: [OKABE_ITO["blue"], OKABE_ITO["sky"], OKABE_ITO["green"]],
               False: [OKABE_ITO["orange"], OKABE_ITO["vermillion"], OKABE_ITO["purple"]]}
    for is_cur, group in ((True, curated), (False, uncurated)):
        for i, run in enumerate(group):
            colour = palette[is_cur][i % 3]
            gens = run.aggregate()
            x = [g["generation"] for g in gens]
            mean, lo, hi = _vals(gens, "solved", run.n_pool if frac else 1.0)
            what = f"curated ({run.curation})" if is_cur else "uncurated"
            _band(ax, x, mean, lo, hi, colour, f"{what}: {run.legend}", linestyle="-" if is_cur else "--")
            for xi, yi, g in zip(x, mean, gens, strict=True):
                if g["generation"] > 0 and g.get("train_traces") is not None:
                    # curated numbers up-left, uncurated up-right: both stay clear of the x-axis
                    ax.annotate(f"{g['train_traces']:.0f}", (xi, yi), textcoords="offset points",
                                xytext=(-4 if is_cur else 4, 4), ha="right" if is_cur else "left", fontsize=5.5,
                                color=colour)
            rows += [(run.label, what, g["generation"], g["solved"], g.get("solved_min"), g.get("solved_max"),
                      g.get("train_traces"), g.get("train_traces_min"), g.get("train_traces_max")) for g in gens]
    ax.set_title("curation ablation: tasks solved")
    ax.set_xlabel("generation")
    ax.set_ylabel(ylabel)
    _int_x(ax)
    ax.margins(y=0.15)
    _count_y(ax, frac)
    ax.legend(loc="best", title=_legend_title(domain, runs) + "; numbers: training traces", title_fontsize=6.5)
    files = _save(fig, out, stem)
    md.section(f"Curation ablation — {domain}", files, [r.path for r in runs],
               ["Training traces: the size of the set each generation's model was fine-tuned on (mean over "
                "seeds).", *_progress_notes(runs)])
    md.table(["run", "curation", "generation", "solved (mean)", "min", "max", "training traces (mean)", "min",
              "max"], rows)
    return Drawn(stem, "curation_ablation", [ax.get_title()], files, [r.path for r in runs])


def _cumulative_tokens(method: str, rows: Sequence[dict[str, Any]]) -> list[float]:
    """Training tokens spent to obtain each budget point's model: REINFORCE's counter is cumulative
    already; an SFT generation's is that fine-tune's alone, so it is summed over generations."""
    if rows and all(r.get("train_completion_tokens_cumulative") is not None for r in rows):
        return [float(r["train_completion_tokens_cumulative"]) for r in rows]
    vals = [float(r.get("train_completion_tokens") or 0) for r in rows]
    if method == "reinforce":  # runs made before the cumulative counter: REINFORCE's was cumulative
        return vals
    out, total = [], 0.0
    for v in vals:
        total += v
        out.append(total)
    return out


def fig_head_to_head(cmp: Compare, out: Path, stem: str, md: _Markdown) -> Drawn:
    """Solved vs sampled-completion budget and vs training tokens, 95% CI over seeds, per method."""
    fig, axes = _figure(SINGLE, 4.0, 2, 1)
    ax_b, ax_t = axes[0, 0], axes[1, 0]
    rows_md = []
    n_tasks = None
    for i, (method, rows) in enumerate(cmp.methods.items()):
        if not rows:
            continue
        rows = sorted(rows, key=lambda r: r["generation"])
        colour = METHOD_COLOURS.get(method, CYCLE[i % len(CYCLE)])
        label = METHOD_LABELS.get(method, method)
        run = cmp.runs.get(method)
        if run is not None:
            n_tasks = run.n_pool
            if not run.complete:
                label += " (running)"
        mean = [r["solved_mean"] for r in rows]
        lo = [r["solved_ci"][0] for r in rows]
        hi = [r["solved_ci"][1] for r in rows]
        tokens = _cumulative_tokens(method, rows)
        _band(ax_b, [r["samples_used"] for r in rows], mean, lo, hi, colour, label)
        _band(ax_t, tokens, mean, lo, hi, colour, label)
        for r, tok in zip(rows, tokens, strict=True):
            rows_md.append((method, r["generation"], r["samples_used"], r["solved_mean"], r["solved_ci"][0],
                            r["solved_ci"][1], r.get("unanimous"), r.get("heldout_solved_mean"),
                            r.get("train_traces"), tok, r.get("train_seconds")))
    of = f" (of {n_tasks})" if n_tasks else ""
    seeds = ", ".join(map(str, cmp.seeds))
    ax_b.set_title("(a) tasks solved vs sampling budget")
    ax_b.set_xlabel("sampled completions used for learning")
    ax_t.set_title("(b) tasks solved vs training compute")
    ax_t.set_xlabel("training tokens (cumulative)")
    for a in (ax_b, ax_t):
        a.set_ylabel(f"tasks solved{of}")
        _count_y(a, False)
        a.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
    ax_b.legend(loc="best", title=f"{cmp.domain}; 95% CI over seeds {seeds}", title_fontsize=6.5)
    files = _save(fig, out, stem)
    sources = [cmp.path]
    notes = ["Mean over seeds with a two-sided 95% t interval (compare.json). Training tokens: completion "
             "tokens trained on to obtain each model, summed over generations for the SFT methods (each "
             "generation's fine-tune) — REINFORCE's count is cumulative already."]
    if not cmp.complete:
        notes.append(f"IN PROGRESS: {cmp.path} has no compare.json yet; statistics computed from the finished "
                     "generations of its method runs.")
    md.section(f"Head-to-head — {cmp.label} ({cmp.domain})", files, sources, notes)
    md.table(["method", "generation", "sampled completions", "solved (mean)", "CI low", "CI high", "unanimous",
              "held-out solved (mean)", "train traces", "training tokens (cum.)", "train seconds"], rows_md)
    if cmp.paired:
        md.text(f"Paired differences against {cmp.reference} (same seeds):")
        md.text("")
        md.table(["comparison", "generation", "diff (mean)", "CI low", "CI high", "p (paired t)"],
                 [(name, d["generation"], d["diff_mean"], d["diff_ci"][0], d["diff_ci"][1], d.get("p_value"))
                  for name, ds in cmp.paired.items() for d in ds])
    return Drawn(stem, "head_to_head", [ax_b.get_title(), ax_t.get_title()], files, sources)


SAME_SAMPLE_LABELS = {  # estimator -> tick label (SFT on the valid traces under each loss normalisation)
    "sft[sequence_sum]": "SFT, token sum",
    "sft[batch_tokens]": "SFT, batch-token mean",
    "sft[sequence_mean]": "SFT, per-trace mean",
    "reinforce[mean]": "RL, mean baseline",
    "reinforce[leave_one_out]": "RL, leave-one-out",
}


def fig_theory_convergence(th: Theory, plots: Sequence[dict[str, Any]], out: Path, stem: str, md: _Markdown) -> Drawn:
    """Cosine vs samples per prompt for each estimator, mean with a 10–90 % band over repeats."""
    n = len(plots)
    fig, axes = _figure(SINGLE if n == 1 else DOUBLE, 3.5, 1, n)
    titles = []
    md.section("Theory: cosine vs number of samples", [out / f"{stem}.{f}" for f in FORMATS], [th.path / "theory.json"],
               ["Mean over repeats, band 10–90 %; dotted lines: exact limits."])
    for i, (ax, plot) in enumerate(zip(axes[0], plots, strict=True)):
        x = plot.get("x", [])
        for j, s in enumerate(plot.get("series", [])):
            colour = CYCLE[j % len(CYCLE)]
            mean = [_num(v) for v in s.get("mean", [])]
            lo = [_num(v) for v in s.get("p10", s.get("mean", []))]
            hi = [_num(v) for v in s.get("p90", s.get("mean", []))]
            ax.fill_between(x, lo, hi, color=colour, alpha=0.18, linewidth=0)
            ax.plot(x, mean, marker="o", color=colour, label=s.get("label", s.get("name", "")))
            md.table([f"{plot.get('id', '')}: {s.get('label', s.get('name', ''))}", *map(str, x)],
                     [("mean", *mean), ("p10", *lo), ("p90", *hi)])
        refs = plot.get("reference_lines", [])
        for k, ref in enumerate(refs):
            ax.axhline(_num(ref.get("y")), color=GREY if k == 0 else "#444444", linestyle=":" if k else "--",
                       linewidth=0.9, label=ref.get("label", ref.get("name", "")))
        if refs:
            md.text("Exact limits: " + "; ".join(f"{r.get('label', r.get('name'))} = {_fmt(_num(r.get('y')))}"
                                                 for r in refs) + ".")
            md.text("")
        if x:
            ax.set_xscale("log", base=2)
            ax.set_xlim(min(x) / 1.5, max(x) * 1.5)
            ax.set_xticks(x, [str(v) for v in x])
            ax.minorticks_off()
        # Cosines are often 1 to 1e-15: no offset notation, and a range of at least 0.1 below 1.
        seen = [v for line in ax.lines for v in line.get_ydata() if v == v]
        if all(v != v for s in plot.get("series", []) for v in map(_num, s.get("mean", []))):
            ax.text(0.5, 0.5, "no estimate:\nno valid sample drawn", transform=ax.transAxes, ha="center",
                    va="center", fontsize=7, color="#444444")
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.set_ylim(min([0.9, *seen]) - 0.05, max([1.0, *seen]) + 0.03)
        ax.set_xlabel(plot.get("x_label", "N (samples per prompt)"))
        ax.set_ylabel(_wrap(plot.get("y_label", "cosine"), 34))
        ax.set_title(_wrap(f"({'abcdefgh'[i]}) " + plot.get("title", plot.get("id", "")), 40))
        titles.append(ax.get_title())
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), fontsize=6)
    files = _save(fig, out, stem)
    return Drawn(stem, "theory_convergence", titles, files, [th.path / "theory.json"])


def fig_theory_same_samples(th: Theory, comparisons: Sequence[dict[str, Any]], out: Path, stem: str,
                            md: _Markdown) -> Drawn:
    """1 − cosine to REINFORCE (no baseline) on the same samples, by SFT normalisation and baseline."""
    fig, axes = _figure(SINGLE, 2.6)
    ax = axes[0, 0]
    floor = 1e-16
    names = [SAME_SAMPLE_LABELS.get(c.get("a", ""), c.get("a", "")) for c in comparisons]
    gaps = []
    for c in comparisons:
        cos = _num(c.get("cosine"))
        gaps.append(float("nan") if math.isnan(cos) else max(floor, 1 - cos))
    expect_parallel = [c.get("a") in ("sft[sequence_sum]", "sft[batch_tokens]") for c in comparisons]
    colours = [OKABE_ITO["green"] if p else OKABE_ITO["orange"] for p in expect_parallel]
    y = list(range(len(comparisons)))[::-1]
    ax.barh(y, [g if not math.isnan(g) else 0 for g in gaps], color=colours, left=floor / 10, height=0.6)
    for yi, g, c in zip(y, gaps, comparisons, strict=True):
        cos = _num(c.get("cosine"))
        text = "g = 0" if math.isnan(g) else f"cos = {cos:.4f}" if g > 1e-6 else f"1−cos = {1 - cos:.0e}"
        text = text.replace("-", "−")
        ax.text(max(g if not math.isnan(g) else floor, floor) * 2, yi, text, va="center", fontsize=6)
    tol = 1e-9 if str(th.data.get("setup", {}).get("dtype", "float64")) == "float64" else 1e-4
    ax.axvline(tol, color=GREY, linestyle="--", linewidth=0.8, label=f"parallel: 1−cos ≤ {tol:.0e}")
    ax.set_xscale("log")
    ax.set_xlim(floor / 10, 10)
    ax.set_yticks(y, names)
    ax.set_xlabel("1 − cosine to REINFORCE, no baseline")
    ax.set_title("gradients on the same samples")
    ax.grid(axis="y", visible=False)
    from matplotlib.patches import Patch

    handles = [Patch(color=OKABE_ITO["green"], label="theory: parallel"),
               Patch(color=OKABE_ITO["orange"], label="theory: not parallel in general"),
               *ax.get_legend_handles_labels()[0]]
    fig.legend(handles=handles, loc="outside lower center", ncol=2, fontsize=6)
    files = _save(fig, out, stem)
    data = th.data.get("checks", {}).get("on_policy_same_samples", {})
    md.section("Theory: same-sample cosines", files, [th.path / "theory.json"],
               [f"N = {data.get('samples')} samples of which N⁺ = {data.get('valid')} valid; 1 − cos below 1e-16 "
                "drawn at 1e-16."])
    md.table(["estimator", "vs", "cosine", "1 − cosine", "norm ratio", "expected norm ratio"],
             [(c.get("a"), c.get("b"), c.get("cosine"), c.get("one_minus_cosine"), c.get("norm_ratio"),
               c.get("expected_norm_ratio")) for c in comparisons])
    return Drawn(stem, "theory_same_samples", [ax.get_title()], files, [th.path / "theory.json"])


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)) or text


def _seeds(run: Run) -> str:
    seeds = sorted(run.metrics) or run.seeds
    return f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"


def _legend_title(domain: str, runs: Sequence[Run]) -> str:
    """'<domain>; seeds 0, 1, 2' when every run has the same seeds, else per run."""
    seeds = {_seeds(r) for r in runs}
    if len(seeds) == 1:
        return f"{domain}; {seeds.pop()}"
    return f"{domain}; " + "; ".join(f"{r.label}: {_seeds(r)}" for r in runs)


def _progress_notes(runs: Sequence[Run]) -> list[str]:
    return [f"IN PROGRESS: {r.path} — {r.status}; drawn up to the finished generations." for r in runs
            if not r.complete]


# ------------------------------------------------------------------------------------------ driver


def _unique(stem: str, taken: set[str]) -> str:
    name, k = stem, 2
    while name in taken:
        name, k = f"{stem}-{k}", k + 1
    taken.add(name)
    return name


def _label_runs(runs: Sequence[Run]) -> None:
    """Legend labels: the run's name, with its directory when two directories share a name."""
    paths: dict[str, set[Path]] = {}
    for r in runs:
        paths.setdefault(r.name, set()).add(r.path.resolve())
    for r in runs:
        r.label = r.name if len(paths[r.name]) == 1 else f"{r.name} ({r.path.name})"


def _draw_all(runs: list[Run], compares: list[Compare], theories: list[Theory], n_sources: int, out: Path,
              md: _Markdown, drawn: list[Drawn], note: Callable[[str], None]) -> None:
    """Draw every figure the loaded sources allow (under the figure style)."""
    taken: set[str] = set()

    by_domain: dict[str, list[Run]] = {}
    for r in runs:
        by_domain.setdefault(r.domain, []).append(r)
    if len(by_domain) > 1:
        listing = "; ".join(f"{d}: {', '.join(r.label for r in rs)}" for d, rs in by_domain.items())
        note(f"the runs are of {len(by_domain)} domains ({listing}); tasks of different domains are not "
             "comparable, so each figure over several runs is drawn once per domain (…-<domain>.png)")
    for domain, rs in by_domain.items():
        drawn.append(fig_solved(domain, rs, out, _unique(f"solved-{domain}", taken), md))
        held = [r for r in rs if r.n_heldout > 0]
        if held:
            drawn.append(fig_pool_vs_heldout(domain, held, out, _unique(f"pool_vs_heldout-{domain}", taken), md))
        else:
            note(f"{domain}: no run has a held-out split (tasks.heldout: 0); no pool-vs-held-out figure")
    for r in runs:
        slug = _slug(r.label)
        drawn.append(fig_plan_lengths(r, out, _unique(f"plan_lengths-{r.domain}-{slug}", taken), md))
        drawn.append(fig_tokens(r, out, _unique(f"tokens-{r.domain}-{slug}", taken), md))

    # Curation ablation: curated and uncurated runs of one domain, from run dirs and compare dirs.
    ablation: dict[str, tuple[list[Run], list[Run]]] = {}
    pool = [*runs, *(r for c in compares for m, r in c.runs.items() if m in ("valid-sft", "uncurated-sft"))]
    seen: set[Path] = set()
    for r in pool:
        if r.path.resolve() in seen:  # a compare's method dir also given as a run dir
            continue
        seen.add(r.path.resolve())
        if r.finished and r.method != "reinforce" and (r.curation == "none" or r.method == "valid-sft"):
            cur, unc = ablation.setdefault(r.domain, ([], []))
            (unc if r.curation == "none" else cur).append(r)
    for domain, (cur, unc) in ablation.items():
        if cur and unc:
            drawn.append(fig_ablation(domain, cur, unc, out, _unique(f"curation_ablation-{domain}", taken), md))
        elif n_sources > 1 or compares:
            have = "curated" if cur else "uncurated"
            note(f"{domain}: only {have} runs; the curation ablation needs a curated and an uncurated run "
                 "(curation: none, method: uncurated-sft) or a compare dir with valid-sft and uncurated-sft")

    cmp_domains = {c.domain for c in compares}
    if len(cmp_domains) > 1:
        note(f"the compare dirs are of {len(cmp_domains)} domains ({', '.join(sorted(cmp_domains))}): one "
             "head-to-head figure each")
    for c in compares:
        if not any(c.methods.values()):
            note(f"{c.path}: no method has a generation finished by every seed yet; no head-to-head figure")
            continue
        same = sum(1 for o in compares if o.domain == c.domain) > 1
        stem = f"head_to_head-{c.domain}" + (f"-{_slug(c.label)}" if same else "")
        drawn.append(fig_head_to_head(c, out, _unique(stem, taken), md))

    for i, th in enumerate(theories):
        suffix = f"-{i + 1}" if len(theories) > 1 else ""
        plots = [p for p in th.data.get("plots", []) if isinstance(p, dict) and p.get("series")]
        if plots:
            drawn.append(fig_theory_convergence(th, plots, out, _unique(f"theory-cosine_vs_n{suffix}", taken), md))
        else:
            note(f"{th.path}/theory.json: no cosine-vs-N plot data (exact_gradient/off_policy/mixture not run?)")
        comps = th.data.get("checks", {}).get("on_policy_same_samples", {}).get("comparisons")
        if comps:
            drawn.append(fig_theory_same_samples(th, comps, out, _unique(f"theory-same_samples{suffix}", taken), md))
        else:
            note(f"{th.path}/theory.json: no same-sample comparisons (on_policy_same_samples not run, or N⁺ = 0)")
        if th.data.get("rows"):
            md.section("Theory: checks", [], [th.path / "theory.json"])
            md.table(["check", "expected", "measured", "verdict"],
                     [(r.get("check"), r.get("expected"), r.get("measured"), r.get("verdict"))
                      for r in th.data["rows"]])


def render_figures(paths: Sequence[str | Path], out: str | Path, *,
                   warn: Callable[[str], None] | None = None) -> FigureReport:
    """Load every path (``FigureError`` if one is not a run/compare/theory directory, before anything is
    written), draw every figure the inputs allow into ``out``, and write ``out/results.md``."""
    if not paths:
        raise FigureError("no input: give run, compare or theory directories")
    sources = [load(p) for p in paths]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = FigureReport(out)

    def note(msg: str) -> None:
        report.warnings.append(msg)
        if warn:
            warn(msg)

    runs = [s for s in sources if isinstance(s, Run)]
    compares = [s for s in sources if isinstance(s, Compare)]
    theories = [s for s in sources if isinstance(s, Theory)]
    _label_runs([*runs, *(r for c in compares for r in c.runs.values())])
    for run in runs:
        if not run.finished:
            note(f"{run.path}: no generation finished yet (no metrics.jsonl row); nothing to draw from it")
        elif not run.complete:
            note(f"{run.path}: run {run.status}; its figures show the finished generations only")
    runs = [r for r in runs if r.finished]
    for c in compares:
        c.label = c.name
        if not c.complete:
            note(f"{c.path}: compare in progress (no compare.json yet); drawing the finished generations of "
                 f"{', '.join(c.runs) or 'no method'}")
    import matplotlib as mpl

    md = _Markdown()
    with mpl.rc_context(STYLE):
        _draw_all(runs, compares, theories, len(sources), out, md, report.figures, note)

    head = ["# Results behind the figures", "",
            f"Written by `iterdeploy figures` on {time.strftime('%Y-%m-%d %H:%M')} from:", ""]
    for s in sources:
        if isinstance(s, Run):
            head.append(f"- run `{s.label}` ({s.domain}, {s.method}, curation {s.curation}, seeds "
                        f"{', '.join(map(str, s.seeds))}, pool {s.n_pool}, held-out {s.n_heldout}, "
                        f"{s.samples_per_task} samples/task): `{s.path}` — {s.status}")
        elif isinstance(s, Compare):
            head.append(f"- compare `{s.label}` ({s.domain}, methods {', '.join(s.methods)}, seeds "
                        f"{', '.join(map(str, s.seeds))}): `{s.path}` — {'complete' if s.complete else 'in progress'}")
        else:
            head.append(f"- theory: `{s.path / 'theory.json'}` (schema {s.data.get('schema', '?')})")
    if report.warnings:
        head += ["", "Warnings:", *[f"- {w}" for w in report.warnings]]
    results = out / "results.md"
    results.write_text("\n".join(head + md.lines).rstrip() + "\n")
    report.results = results
    return report


def make_figures(paths: Sequence[str | Path], out: str | Path) -> list[Path]:
    """Every figure the inputs allow, as PNG and PDF, and ``results.md``, in ``out``; returns the files.

    ``paths``: run directories (``iterdeploy run``), compare directories (``iterdeploy compare``) and
    theory directories (``iterdeploy theory --out``), in any mix; the kind is detected. Raises
    ``FigureError`` (with the path) on a path of none of these kinds."""
    return render_figures(paths, out).files


__all__ = ["Compare", "Drawn", "FigureError", "FigureReport", "Run", "Theory", "detect", "load", "load_compare",
           "load_run", "load_theory", "make_figures", "render_figures"]
