"""One owner of the run-directory layout (issue 23 item 2): the path pieces of a run directory (file names,
``seed_*/gen_*``, the ``traces``/``model``/``tasks`` folders) are spelled only in ``iterdeploy_trl/rundir.py``;
every other module builds its paths with rundir's functions. Docstrings, comments and prose inside messages
are not path literals and are allowed. Also: the layout functions give the paths that existing run
directories have (old runs must still read)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from iterdeploy_trl import rundir, runio

PACKAGE = Path(rundir.__file__).parent
FILE_NAMES = {rundir.CONFIG_YAML, rundir.RESOLVED_CONFIG, rundir.SUMMARY, rundir.COMPARE, rundir.TASK_FILES,
              rundir.METRICS, rundir.TRAIN_SET, rundir.SAME_AS, rundir.TRAIN_STATS}
DIR_NAMES = {rundir.TRACES, rundir.MODEL, rundir.TASKS}  # common words: only where joined into a path (a / "x")
PREFIX = re.compile(r"^(seed|gen)_(\*|\d|\(|$)|/(seed|gen)_")
# runio sits below rundir (rundir reads through it), and names its fault-injection write sites by file name:
# only its site table may spell the names (checked against rundir's below)
ALLOWED = {"rundir.py": None, "runio.py": {"_SITES"}}


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            ids.add(id(body[0].value))
    return ids


def _allowed_nodes(tree: ast.AST, names: set[str]) -> set[int]:
    """Nodes inside the module-level assignments named ``names``."""
    ids = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id in names for t in node.targets):
            ids |= {id(n) for n in ast.walk(node)}
    return ids


def layout_literals(source: str, allowed: set[str] = frozenset()) -> list[tuple[int, str]]:
    """``(line, text)`` of every layout path literal in ``source`` (outside docstrings and ``allowed``
    assignments)."""
    tree = ast.parse(source)
    skip = _docstrings(tree) | _allowed_nodes(tree, set(allowed))
    joined = set()  # string pieces that are operands of a path join ``a / "x"``
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            joined |= {id(n) for n in (node.left, node.right)}
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):  # its pieces are judged with it
            skip |= {id(n) for n in node.values}
    hits = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.JoinedStr):
            head = node.values[0] if node.values else None
            text = head.value if isinstance(head, ast.Constant) and isinstance(head.value, str) else ""
            if PREFIX.search(text) or (text in FILE_NAMES):
                hits.append((node.lineno, ast.unparse(node)))
            continue
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
            continue
        v = node.value
        if v in FILE_NAMES or PREFIX.search(v) and ("*" in v or "/" in v or "(" in v or v in ("seed_", "gen_")) or (
                v in DIR_NAMES and id(node) in joined):
            hits.append((node.lineno, repr(v)))
    return hits


def test_the_scanner_finds_each_kind_of_literal() -> None:
    """The scanner itself: each spelling the old modules used is found; prose and docstrings are not."""
    found = layout_literals(r'''
"""Docstring naming seed_*/gen_* and resolved_config.json is fine."""
a = out / "resolved_config.json"
b = sorted(run.glob("seed_*/gen_*/traces/*.jsonl"))
c = run / f"seed_{seed}" / f"gen_{g:02d}" / "model"
m = re.fullmatch(r"gen_(\d+)", name)
d = gdir / "traces"
e = {"model": 1, "tasks": 2}
f = f"{path}: summary.json missing"
g = path.name == "compare.json"
''')
    lines = sorted({line for line, _ in found})
    assert lines == [3, 4, 5, 6, 7, 10], found


def test_layout_path_literals_only_in_rundir() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel in ALLOWED and ALLOWED[rel] is None:
            continue
        for line, text in layout_literals(path.read_text(), ALLOWED.get(rel) or set()):
            found.append(f"iterdeploy_trl/{rel}:{line}: {text}")
    assert not found, "layout path literals outside rundir.py (use rundir's functions):\n" + "\n".join(found)


def test_runio_write_sites_name_rundir_files() -> None:
    """runio's fault-site table knows the files rundir lays out (and the lock record), no other names."""
    lock = {n for n in runio._SITES if n.startswith(".lock")}
    assert set(runio._SITES) - lock <= FILE_NAMES
    assert FILE_NAMES - {rundir.CONFIG_YAML} <= set(runio._SITES) | {rundir.CONFIG_YAML}


def test_layout_paths_of_an_existing_run(tmp_path) -> None:
    """The functions give the paths run directories written before rundir existed have."""
    run = tmp_path / "run"
    sdir, gdir = run / "seed_3", run / "seed_3" / "gen_02"
    assert rundir.seed_dir(run, 3) == sdir and rundir.gen_dir(sdir, 2) == gdir
    assert rundir.chunk(gdir, "heldout", 1) == gdir / "traces" / "heldout-00001.jsonl"
    assert rundir.train_set(gdir) == gdir / "train.jsonl" and rundir.model(gdir) == gdir / "model"
    assert rundir.metrics(sdir) == sdir / "metrics.jsonl" and rundir.summary(run) == run / "summary.json"
    assert rundir.resolved_config(run) == run / "resolved_config.json"
    assert rundir.same_as(gdir / "model") == gdir / "model" / "same_as.json"
    assert rundir.gen_dir(sdir, 123) == sdir / "gen_123"
    for d in (gdir, sdir / "gen_10", sdir / "gen_00", run / "seed_0", run / "seed_x", sdir / "gen_xx"):
        d.mkdir(parents=True, exist_ok=True)
    assert list(rundir.seed_dirs(run)) == [0, 3]
    assert list(rundir.gen_dirs(sdir)) == [0, 2, 10]


def test_open_run_says_what_a_path_is(tmp_path) -> None:
    with pytest.raises(rundir.RunDirError, match="no such directory"):
        rundir.open_run(tmp_path / "nothing")
    with pytest.raises(rundir.RunDirError, match="not a run directory"):
        rundir.open_run(tmp_path)
    (tmp_path / "resolved_config.json").write_text('{"config": {"seeds": [0]}}')
    with pytest.raises(rundir.RunDirError, match="no config with a domain"):
        rundir.open_run(tmp_path)


def _hand_made_run(root: Path) -> Path:
    import json

    run = root / "run"
    gdir = run / "seed_0" / "gen_00"
    (gdir / "traces").mkdir(parents=True)
    cfg = {"domain": "blocksworld", "seeds": [0], "generations": 0, "tasks": {"n": 1, "heldout": 0}}
    (run / "resolved_config.json").write_text(json.dumps({"hash": "hand-made", "config": cfg}))
    (run / "seed_0" / "metrics.jsonl").write_text(json.dumps({"generation": 0, "solved": 0, "tasks": 1}) + "\n")
    row = {"task_id": "t1", "split": "pool", "valid": False, "completion": "x", "plan_length": 0}
    (gdir / "traces" / "pool-00000.jsonl").write_text(json.dumps(row) + "\n")
    (gdir / "train.jsonl").write_text(json.dumps({"task_id": "t1", "completion": "x"}) + "\n")
    return run


def test_figures_and_audit_read_through_rundir(tmp_path, monkeypatch) -> None:
    """The figures and the audit read trace chunks with rundir's reader (one reader): a record it returns
    is what both see."""
    from iterdeploy_trl import audit
    from iterdeploy_trl.figures import sources

    run = _hand_made_run(tmp_path)
    assert [r["task_id"] for r in sources.load_run(run).traces()] == ["t1"]
    assert [r["task_id"] for r in audit.read_traces(audit.open_run(run), 0, 0)] == ["t1"]
    assert audit.read_train_rows(audit.open_run(run), 0, 0) == [{"task_id": "t1", "completion": "x"}]
    marker = [{"task_id": "from-rundir", "split": "pool"}]
    monkeypatch.setattr(rundir, "read_trace_file", lambda path: [dict(r) for r in marker])
    assert [r["task_id"] for r in sources.load_run(run).traces()] == ["from-rundir"]
    assert [r["task_id"] for r in audit.read_traces(audit.open_run(run), 0, 0)] == ["from-rundir"]


def _saved_model(d: Path) -> None:
    """A directory model_dir_problem accepts: config.json and a whole (empty) safetensors file."""
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    (d / "model.safetensors").write_bytes((2).to_bytes(8, "little") + b"{}")


def test_deployed_model_follows_same_as_records(tmp_path) -> None:
    """A generation whose training set was empty deploys the model its same_as.json names (a chain of them
    too); generation 0 deploys the base model (None)."""
    import json

    sdir = tmp_path / "run" / "seed_0"
    _saved_model(sdir / "gen_01" / "model")
    for g in (2, 3):
        (sdir / f"gen_0{g}" / "model").mkdir(parents=True)
        (sdir / f"gen_0{g}" / "model" / "same_as.json").write_text(json.dumps({"generation": g - 1}))
    assert rundir.deployed_model(sdir, 0) is None
    assert rundir.deployed_model(sdir, 1) == sdir / "gen_01" / "model"
    assert rundir.deployed_model(sdir, 3) == sdir / "gen_01" / "model"
    (sdir / "gen_03" / "model" / "same_as.json").write_text("{}")
    with pytest.raises(rundir.RunError, match="same_as.json: not a record"):
        rundir.deployed_model(sdir, 3)
