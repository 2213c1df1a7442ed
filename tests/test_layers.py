"""The package's layers hold (issue 23 item 4): no import cycle among ``iterdeploy_trl`` modules (imports inside
functions included), production code imports nothing from ``iterdeploy_trl.testing``, and the only imports
from a lower layer to a higher one are those ``docs/ARCHITECTURE.md`` lists with a reason.

The layers and the allowed upward imports are read from two tables of ``docs/ARCHITECTURE.md`` ("Layer map"
and "Upward imports"), so the document and the code cannot drift apart. Pure source scanning (``ast``): no
module is imported, the tests take well under a second."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "iterdeploy_trl"
ARCHITECTURE = ROOT / "docs" / "ARCHITECTURE.md"


# ------------------------------------------------------------------------------------------- scanning


def modules(package: Path = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file under ``package`` (``pkg/__init__.py`` is ``pkg``)."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        name = ".".join(path.relative_to(package.parent).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> Iterator[tuple[str, int]]:
    """(imported package module, line) of every import statement in the file, at any depth (inside
    functions, ``if TYPE_CHECKING:`` blocks, ...). ``from pkg import x`` names module ``pkg.x`` when that is
    a module, else ``pkg``; relative imports are resolved."""
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            if base.split(".")[0] != PACKAGE.name:
                continue
            for alias in node.names:
                full = f"{base}.{alias.name}"
                yield (full if full in known else base), node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE.name:
                    yield alias.name, node.lineno


def import_graph(package: Path = PACKAGE) -> dict[str, dict[str, int]]:
    """Module -> {imported package module: first line importing it} (self-imports left out)."""
    known = modules(package)
    graph: dict[str, dict[str, int]] = {}
    for name, path in known.items():
        edges: dict[str, int] = {}
        for target, line in imports(name, path, known):
            if target in known and target != name:
                edges.setdefault(target, line)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (each holds an import cycle); Tarjan's
    algorithm, iterative."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, {})))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def describe_cycle(component: list[str], graph: dict[str, dict[str, int]]) -> str:
    """Each module of a cycle with the imports (and lines) that keep it inside."""
    lines = [f"{len(component)} modules:"]
    for name in component:
        inside = {t: n for t, n in graph[name].items() if t in component}
        lines.append(f"  {name} -> " + ", ".join(f"{t} (line {n})" for t, n in sorted(inside.items())))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ the documented map


def _table(text: str, heading: str) -> list[list[str]]:
    """The body rows (cells, stripped) of the first markdown table after the line ``heading``."""
    lines = text.splitlines()
    try:
        start = lines.index(heading)
    except ValueError:
        pytest.fail(f"{ARCHITECTURE}: no line {heading!r}; the layer test reads its table")
    rows = []
    for line in lines[start + 1 :]:
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif rows:
            break
    return [r for r in rows[1:] if not set("".join(r)) <= set("-: ")]  # header and rule dropped


def _ticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def layer_map(text: str) -> list[tuple[str, list[str]]]:
    """(layer, module patterns) from the bottom layer up: ``x.py`` a module, ``d/`` a package and all below."""
    return [(row[0], _ticked(row[1])) for row in _table(text, "## Layer map")]


def _matches(name: str, pattern: str) -> bool:
    rel = name.split(".", 1)[1].replace(".", "/") if "." in name else "__init__"
    if pattern.endswith("/"):
        return rel == pattern[:-1] or rel.startswith(pattern)
    return rel == pattern.removesuffix(".py")


def layer_of(name: str, layers: list[tuple[str, list[str]]]) -> int:
    hits = [i for i, (_, pats) in enumerate(layers) if any(_matches(name, p) for p in pats)]
    assert len(hits) == 1, (
        f"{name}: in {len(hits)} layers of the layer map in {ARCHITECTURE} ({[layers[i][0] for i in hits]}); "
        "add it to exactly one row")
    return hits[0]


def upward_imports(graph: dict[str, dict[str, int]], layers: list[tuple[str, list[str]]]) -> dict[tuple[str, str], int]:
    """(importer, imported) -> line, for each import of a module in a higher layer than the importer's."""
    level = {name: layer_of(name, layers) for name in graph}
    return {(a, b): line for a, edges in graph.items() for b, line in edges.items() if level[b] > level[a]}


def _short(name: str) -> str:
    return name.split(".", 1)[1] if "." in name else "__init__"


def documented_upward(text: str) -> set[tuple[str, str]]:
    """(importer, imported) of each row of the "Upward imports" table (dotted names below the package); a row
    without a reason is refused."""
    out = set()
    for row in _table(text, "## Upward imports"):
        assert len(row) >= 3 and row[2], f"{ARCHITECTURE}: upward import {row} has no reason"
        (a,), (b,) = _ticked(row[0]), _ticked(row[1])
        out.add((a, b))
    return out


# ----------------------------------------------------------------------------------------------- tests


def test_the_scanner_finds_a_function_level_cycle(tmp_path: Path) -> None:
    """The scanner sees imports inside functions and resolves ``from pkg import module``: a two-module
    cycle closed by a function-level import is found, and a package without one has none."""
    pkg = tmp_path / "iterdeploy_trl"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from iterdeploy_trl.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..a import x\n    return x\n")
    graph = import_graph(pkg)
    assert graph["iterdeploy_trl.a"] == {"iterdeploy_trl.sub.b": 1}
    assert cycles(graph) == [["iterdeploy_trl.a", "iterdeploy_trl.sub.b"]]
    (pkg / "sub" / "b.py").write_text("def f():\n    return 1\n")
    assert cycles(import_graph(pkg)) == []


def test_no_import_cycles() -> None:
    graph = import_graph()
    found = cycles(graph)
    assert not found, "import cycles among iterdeploy_trl modules (function-level imports included):\n" + "\n".join(
        describe_cycle(c, graph) for c in found)


def test_production_code_imports_nothing_from_testing() -> None:
    graph = import_graph()
    bad = sorted(f"{a} -> {b} (line {n})" for a, edges in graph.items() for b, n in edges.items()
                 if b.startswith("iterdeploy_trl.testing") and not a.startswith("iterdeploy_trl.testing"))
    assert not bad, f"production modules import test support (move what they need out of testing/): {bad}"


def test_every_module_is_in_one_layer() -> None:
    layers = layer_map(ARCHITECTURE.read_text())
    assert len(layers) >= 10, f"{ARCHITECTURE}: the layer map has {len(layers)} rows"
    for name in modules():
        layer_of(name, layers)


def test_upward_imports_are_exactly_the_documented_ones() -> None:
    """Each import from a lower layer to a higher one is a row of "Upward imports" (with its reason), and
    each row is still an import of the code; at most 3 of them."""
    text = ARCHITECTURE.read_text()
    found = {(_short(a), _short(b)): n for (a, b), n in upward_imports(import_graph(), layer_map(text)).items()}
    listed = documented_upward(text)
    undocumented = sorted(f"{a} -> {b} (line {n})" for (a, b), n in found.items() if (a, b) not in listed)
    stale = sorted(f"{a} -> {b}" for a, b in listed - set(found))
    assert not undocumented, f"upward imports not listed in {ARCHITECTURE} 'Upward imports': {undocumented}"
    assert not stale, f"{ARCHITECTURE} lists upward imports the code no longer has: {stale}"
    assert len(listed) <= 3, f"{len(listed)} upward imports (at most 3): {sorted(listed)}"
