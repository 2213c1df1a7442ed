"""Run-directory I/O: atomic writes and JSONL, so that a run killed at any point loses nothing.

Layout of a run directory (see ``docs/ARCHITECTURE.md``)::

    RUNDIR/config.yaml            the config as given
    RUNDIR/resolved_config.json   every field, defaults filled in, with its hash
    RUNDIR/tasks/                 the task pool and held-out split (IPC layout)
    RUNDIR/seed_<s>/gen_<g>/traces/<split>-<chunk>.jsonl   trace records, written chunk by chunk
    RUNDIR/seed_<s>/gen_<g>/train.jsonl                    curated training set after generation g
    RUNDIR/seed_<s>/gen_<g>/model/                         the model deployed in generation g (g >= 1)
    RUNDIR/seed_<s>/metrics.jsonl                          one row per finished generation
    RUNDIR/summary.json                                    per-generation results (mean over seeds)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and a rename: readers see all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, default=str) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with open(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{lineno}: not valid JSON ({exc})") from exc
    return rows


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a fully written directory into place (removing an older one)."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
