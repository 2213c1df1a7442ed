"""Result rows, the report and its ``theory.json`` form, summary statistics and plot series, the text table."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

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
    name: str
    label: str
    values: list[list[float]] = field(default_factory=list)  # per N, per repeat
    modules: list[list[dict[str, float]]] = field(default_factory=list)

    def add(self, i: int, value: float, per_module: dict[str, float]) -> None:
        while len(self.values) <= i:
            self.values.append([])
            self.modules.append([])
        self.values[i].append(value)
        self.modules[i].append(per_module)

    def add_nan(self, i: int, groups: Iterable[str]) -> None:
        """A draw without a valid sample: no estimate, NaN everywhere."""
        self.add(i, float("nan"), dict.fromkeys(groups, float("nan")))

    def to_json(self) -> dict[str, Any]:
        stats = [_summary(v) for v in self.values]
        groups = list(self.modules[0][0]) if self.modules and self.modules[0] else []
        return {
            "name": self.name,
            "label": self.label,
            "values": self.values,
            **{k: [s[k] for s in stats] for k in ("mean", "std", "p10", "p50", "p90")},
            "per_module_mean": {g: [_nanmean([m[g] for m in ms]) for ms in self.modules] for g in groups},
        }


def _nanmean(values: list[float]) -> float:
    kept = [v for v in values if v == v]
    return statistics.fmean(kept) if kept else float("nan")


def _fmt_curve(series: _Series, sizes: Sequence[int]) -> str:
    return ", ".join(
        f"N={n}: {_nanmean(series.values[i]):.3f}±{_nanstd(series.values[i]):.3f}"
        for i, n in enumerate(sizes)
    )


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
