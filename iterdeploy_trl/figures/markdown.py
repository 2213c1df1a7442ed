"""What ``render_figures`` returns (``Drawn``, ``FigureReport``) and the ``results.md`` writer."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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


class Markdown:
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
            self.lines.append("| " + " | ".join(fmt(v) for v in row) + " |")
        self.lines.append("")

    def text(self, line: str) -> None:
        self.lines.append(line)


def fmt(v: Any) -> str:
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


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "run"



def unique_stem(stem: str, taken: set[str]) -> str:
    name, k = stem, 2
    while name in taken:
        name, k = f"{stem}-{k}", k + 1
    taken.add(name)
    return name

