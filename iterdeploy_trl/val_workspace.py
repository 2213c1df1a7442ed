"""The private temporary folder of one VAL call or batch (``_Workspace``: each distinct PDDL text written once,
an ``abort`` flag that kills the runs still going), named after its host and process so that the folders a
killed process left are swept (``sweep_workspaces``)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
import threading
from pathlib import Path

from iterdeploy_trl.val_verdict import PDDLError

PDDLSource = str | bytes | os.PathLike


def _load(source: PDDLSource, kind: str) -> tuple[str, str]:
    """``(text, label)`` of a domain or problem given as text or a path; label names it in errors."""
    if isinstance(source, os.PathLike):
        path = Path(source)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise PDDLError(f"{path}: no such {kind} file") from None
        except OSError as exc:
            raise PDDLError(f"{path}: cannot read the {kind} file ({exc.strerror})") from None
        return data.decode("utf-8", errors="replace"), str(path)
    if isinstance(source, bytes | bytearray):
        source = bytes(source).decode("utf-8", errors="replace")
    if not isinstance(source, str):
        raise PDDLError(f"{kind}: expected PDDL text or a pathlib.Path, got {type(source).__name__}")
    if "(" not in source:
        raise PDDLError(
            f"{kind}: expected PDDL text, got {source[:60]!r} (pass a pathlib.Path to read a file)"
        )
    return source, kind


_HOST = re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname())[:24] or "host"
_WORKSPACE = re.compile(r"iterdeploy-val-(.+)-(\d+)-[^-]+\Z")


def _workspace_prefix() -> str:
    """``iterdeploy-val-<host>-<pid>-``: a workspace names its owner, so that one left by a killed process
    can be told from one in use."""
    return f"iterdeploy-val-{_HOST}-{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def sweep_workspaces(tmpdir: str | None = None) -> list[Path]:
    """Remove the ``iterdeploy-val-*`` workspaces that processes of this host left when they were killed
    (SIGKILL leaves no chance to clean up); returns what was removed. Run once per process and temporary
    folder, when the first workspace is made there."""
    root = Path(tmpdir or tempfile.gettempdir())
    removed = []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return removed
    for entry in entries:
        match = _WORKSPACE.match(entry.name)
        if match is None or match.group(1) != _HOST or not entry.is_dir(follow_symlinks=False):
            continue
        if int(match.group(2)) != os.getpid() and not _alive(int(match.group(2))):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(Path(entry.path))
    return removed


_swept: set[str] = set()


class _Workspace:
    """A private temporary directory for one call or batch; each distinct PDDL text is written once.
    ``abort`` set: the VAL runs still going are killed (a batch that has given up)."""

    def __init__(self) -> None:
        root = tempfile.gettempdir()
        if root not in _swept:
            _swept.add(root)
            sweep_workspaces(root)
        self._tmp = tempfile.TemporaryDirectory(prefix=_workspace_prefix())
        self.dir = Path(self._tmp.name)
        self.abort = threading.Event()
        self._lock = threading.Lock()
        self._files: dict[tuple[str, str], Path] = {}
        self._loaded: dict[tuple[str, str], tuple[str, str]] = {}
        self._count = 0

    def __enter__(self) -> _Workspace:
        return self

    def __exit__(self, *exc: object) -> None:
        self._tmp.cleanup()

    def load(self, source: PDDLSource, kind: str) -> tuple[str, str]:
        if not isinstance(source, os.PathLike):
            return _load(source, kind)
        key = (kind, os.fspath(source))
        with self._lock:
            if key not in self._loaded:
                self._loaded[key] = _load(source, kind)
            return self._loaded[key]

    def file_for(self, text: str, kind: str) -> Path:
        with self._lock:
            path = self._files.get((kind, text))
            if path is None:
                self._count += 1
                path = self.dir / f"{kind}-{self._count}.pddl"
                path.write_text(text)
                self._files[(kind, text)] = path
            return path

    def new_name(self) -> str:
        with self._lock:
            self._count += 1
            return f"plan-{self._count}"
