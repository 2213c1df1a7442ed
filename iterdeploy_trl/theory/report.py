"""Result rows, the report and its ``theory.json`` form, summary statistics and plot series, the text table."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from iterdeploy_trl import stats

SCHEMA = "iterdeploy-theory/1"
PASS, FAIL = "pass", "fail"
# What a row's verdict means: an IDENTITY holds by construction of the code (both sides computed from one
# graph or one formula; it fails only through a coding slip), an EMPIRICAL row's outcome is an open
# question about samples, precision, tokenisation or training.
IDENTITY, EMPIRICAL = "identity", "empirical"


@dataclass(frozen=True)
class Row:
    """One line of the result table."""

    check: str
    expected: str
    measured: str
    verdict: str  # "pass" | "fail"
    kind: str  # IDENTITY | EMPIRICAL

    def __post_init__(self) -> None:
        if self.kind not in (IDENTITY, EMPIRICAL):
            raise ValueError(f"Row.kind must be {IDENTITY!r} or {EMPIRICAL!r}, got {self.kind!r}")

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass
class CheckResult:
    """Rows of one check, the numbers behind them, and the curves to plot."""

    name: str
    rows: list[Row]
    data: dict[str, Any] = field(default_factory=dict)
    plots: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class TheoryReport:
    """All checks of a run (see the module docstring for the JSON schema)."""

    results: list[CheckResult]
    setup: dict[str, Any]
    runtime_s: float = 0.0
    command: str | None = None
    machine: dict[str, Any] = field(default_factory=dict)  # ``runio.machine_record()`` of the run

    @property
    def rows(self) -> list[Row]:
        return [row for result in self.results for row in result.rows]

    @property
    def passed(self) -> bool:
        return all(row.verdict == PASS for row in self.rows)

    def to_json(self) -> dict[str, Any]:
        """The ``theory.json`` object; NaN (no valid sample in a draw) becomes null."""
        return _json_safe(
            {
                "schema": SCHEMA,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "runtime_s": round(self.runtime_s, 2),
                "command": self.command,
                "machine": self.machine,
                "setup": self.setup,
                "rows": [row.to_dict() for row in self.rows],
                "checks": {r.name: r.data for r in self.results},
                "plots": [plot for r in self.results for plot in r.plots],
            }
        )


def _json_safe(value: Any) -> Any:
    """Replace NaN and infinities by None (strict JSON), recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def verdict(ok: bool) -> str:
    return PASS if ok else FAIL


def interval(values: Iterable[float]) -> dict[str, Any]:
    """Mean of *independent* repeats (fresh sampling draws) with its 95% Student-t interval
    (``stats.t_interval``), the raw values kept: ``{"n", "mean", "std", "lo", "hi", "values", "dropped"}``.
    NaN values (a draw without a valid sample) are dropped and counted; n < 2 gives no interval (lo = hi =
    NaN). Never call it on bootstrap replicates (their spread is already a standard error)."""
    raw = [float(v) for v in values]
    kept = [v for v in raw if v == v]
    out: dict[str, Any] = {"n": len(kept), "mean": float("nan"), "std": float("nan"), "lo": float("nan"),
                           "hi": float("nan"), "values": raw, "dropped": len(raw) - len(kept)}
    if kept:
        ti = stats.t_interval(kept)
        out.update(mean=ti.mean, std=ti.sd)
        if ti.n >= 2:
            out.update(lo=ti.lo, hi=ti.hi)
    return out


def fmt_interval(iv: dict[str, Any], digits: int = 3, *, one: str = "n = 1, no interval") -> str:
    """``mean [lo, hi]`` of an ``interval`` dict (``mean (one)`` from one value, ``n/a`` from none)."""
    if iv["n"] == 0:
        return "n/a"
    if iv["n"] == 1:
        return f"{iv['mean']:.{digits}f} ({one})"
    return f"{iv['mean']:.{digits}f} [{iv['lo']:.{digits}f}, {iv['hi']:.{digits}f}]"


def _summary(values: list[float]) -> dict[str, float]:
    v = torch.tensor(values, dtype=torch.float64)
    q = torch.quantile(v, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)) if len(values) else v
    return {
        "mean": float(v.mean()),
        "std": float(v.std()) if len(values) > 1 else 0.0,
        "p10": float(q[0]),
        "p50": float(q[1]),
        "p90": float(q[2]),
    }


@dataclass
class _Series:
    """One estimator's cosines to a target: per N, one value per independent repeat (each repeat draws its own
    samples). ``coefs`` keeps each estimate's coefficients over the enumerated sequences (not written) so
    that the caller can fill ``ceilings``: per N, cos between independent draws of the same estimator."""

    name: str
    label: str
    values: list[list[float]] = field(default_factory=list)  # per N, per repeat
    modules: list[list[dict[str, float]]] = field(default_factory=list)
    coefs: list[list[Any]] = field(default_factory=list)  # per N, per repeat: coefficients, None if no estimate
    ceilings: list[list[float]] = field(default_factory=list)  # per N, per disjoint pair of repeats

    def add(self, i: int, value: float, per_module: dict[str, float], coef: Any = None) -> None:
        while len(self.values) <= i:
            self.values.append([])
            self.modules.append([])
            self.coefs.append([])
        self.values[i].append(value)
        self.modules[i].append(per_module)
        self.coefs[i].append(coef)

    def add_nan(self, i: int, groups: Iterable[str]) -> None:
        """A draw without a valid sample: no estimate, NaN everywhere."""
        self.add(i, float("nan"), dict.fromkeys(groups, float("nan")))

    def to_json(self) -> dict[str, Any]:
        summaries = [_summary(v) for v in self.values]
        intervals = [interval(v) for v in self.values]
        groups = list(self.modules[0][0]) if self.modules and self.modules[0] else []
        out = {
            "name": self.name,
            "label": self.label,
            "values": self.values,
            **{k: [s[k] for s in summaries] for k in ("mean", "std", "p10", "p50", "p90")},
            # 95% t-interval of the mean over the independent repeats (NaN draws dropped)
            **{k: [iv[k] for iv in intervals] for k in ("n", "lo", "hi")},
            "per_module_mean": {g: [_nanmean([m[g] for m in ms]) for ms in self.modules] for g in groups},
        }
        if self.ceilings:
            out["ceiling"] = [interval(c) for c in self.ceilings]
        return out


def fill_ceilings(series: _Series, direction: Callable[[Any], Any]) -> None:
    """The ceiling of each N: cos(x_a, x_b) for the disjoint pairs of repeats (0, 1), (2, 3), ... of the
    estimates that exist (``direction(coef)`` the estimate's vector). Repeats draw disjoint samples, so the
    pairs are independent: what two independent draws of the same estimator agree on, the most a
    cross-sample cosine can be expected to reach at that N."""
    series.ceilings = []
    for coefs in series.coefs:
        kept = [direction(c) for c in coefs if c is not None]
        series.ceilings.append(
            [_cosine(kept[k], kept[k + 1]) for k in range(0, len(kept) - 1, 2)]
        )


def random_direction_null(
    basis: Any, target: Any, repeats: int, generator: torch.Generator
) -> dict[str, Any]:
    """The null of a cosine to ``target``: cos(z @ basis, target) for ``repeats`` independent z ~ N(0, I),
    i.e. a random direction in the subspace the estimates live in (the span of the rows of ``basis``: the
    per-sequence score vectors g_y), with its mean and 95% t-interval over the draws (``interval``). Its
    mean is 0 by symmetry; its spread is what a cosine with no relation to the target reaches."""
    zs = torch.randn(repeats, basis.shape[0], generator=generator, dtype=torch.float64)
    values = [_cosine(z.to(basis) @ basis, target) for z in zs]
    return interval(values)


def _cosine(a: Any, b: Any) -> float:
    na, nb = float(a.norm()), float(b.norm())
    return float(a @ b) / (na * nb) if na > 0 and nb > 0 else float("nan")


def _nanmean(values: list[float]) -> float:
    kept = [v for v in values if v == v]
    return statistics.fmean(kept) if kept else float("nan")


def _fmt_curve(series: _Series, sizes: Sequence[int]) -> str:
    """``N=4: mean [lo, hi], ...`` (95% t-interval over the repeats), then the ceiling at the largest N."""
    text = ", ".join(f"N={n}: {fmt_interval(interval(series.values[i]))}" for i, n in enumerate(sizes))
    if series.ceilings:
        text += f"; ceiling cos(two draws) at N={sizes[-1]}: {fmt_interval(interval(series.ceilings[-1]))}"
    return text


def _nanstd(values: list[float]) -> float:
    kept = [v for v in values if v == v]
    return statistics.stdev(kept) if len(kept) > 1 else 0.0


def _plot(
    pid: str,
    check: str,
    title: str,
    sizes: Sequence[int],
    series: Sequence[_Series],
    y_label: str = "cosine to the exact on-policy gradient ∇J",
    reference: Sequence[tuple[str, str, float]] = (),
) -> dict[str, Any]:
    return {
        "id": pid,
        "check": check,
        "title": title,
        "x_label": "N (samples per prompt)",
        "y_label": y_label,
        "x": list(sizes),
        "series": [s.to_json() for s in series],
        "reference_lines": [{"name": n, "label": lab, "y": y} for n, lab, y in reference],
    }


def _converges(series: _Series, threshold: float) -> bool:
    """Mean cosine at the largest N at least ``threshold`` and above the mean at the smallest N."""
    first, last = _nanmean(series.values[0]), _nanmean(series.values[-1])
    return last >= threshold and (last > first or first >= threshold)


def format_table(rows: Sequence[Row], width: int = 120) -> str:
    """A plain-text table: check | expected | measured | verdict | kind (long cells wrapped)."""
    import textwrap

    cols = [("check", 32), ("expected", 36), ("measured", 42), ("verdict", 7), ("kind", 9)]
    scale = max(0.5, width / sum(w for _, w in cols))
    widths = [max(7, int(w * scale)) for _, w in cols]
    lines = [
        " | ".join(name.ljust(w) for (name, _), w in zip(cols, widths, strict=True)),
        "-+-".join("-" * w for w in widths),
    ]
    for row in rows:
        cells = [
            textwrap.wrap(str(getattr(row, name)), w) or [""]
            for (name, _), w in zip(cols, widths, strict=True)
        ]
        for k in range(max(len(c) for c in cells)):
            lines.append(
                " | ".join(
                    (c[k] if k < len(c) else "").ljust(w) for c, w in zip(cells, widths, strict=True)
                ).rstrip()
            )
    return "\n".join(lines)
