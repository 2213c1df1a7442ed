"""One writer per run directory.

``iterdeploy run`` and ``iterdeploy compare`` take ``RUNDIR/.lock`` (an OS file lock through
:mod:`filelock`: ``flock`` on Unix) before they write anything, and hold it until they return. A second
run on the same directory fails at once with :class:`RunDirBusy`, naming the holder from
``RUNDIR/.lock.json`` (host, PID, start time, command). The OS drops the lock when its process dies, however
it dies, so a lock left by a killed run is free: the next run takes it over and says whose it was.

Under ``accelerate launch``/``torchrun`` only the main process takes the lock; the other processes of the
launch write only their own trace chunks, after the main process has checked the directory.
A process may take the lock of a directory it already holds again (a caller of ``run_loop`` that holds
the directory itself): the lock is released when the outermost holder returns. ``run_compare`` holds
``OUT`` and each method's run holds ``OUT/<method>``.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from iterdeploy_trl import dist, rundir

LOCK_NAME = ".lock"
HOLDER_NAME = ".lock.json"
#: Files a run makes before it checks its directory (the lock, its holder, the log): a directory holding
#: only these (and ``config.yaml``) counts as empty.
SESSION_FILES = (LOCK_NAME, HOLDER_NAME, "run.log")

F = TypeVar("F", bound=Callable[..., Any])


class RunDirBusy(RuntimeError):
    """Another process holds the run directory; the message names it."""


def out_dir_problem(path: Path, option: str = "--out") -> str | None:
    """Why the directory ``path`` (given as ``option``) cannot be made or written into, found without writing
    anything: it, or a folder above it, is a file. None when it can be tried."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        return f"{option} {path} is a file, not a directory; choose another {option}"
    blocked = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocked is not None:
        return f"{option} {path}: {blocked} is a file, so no directory can be made there; choose another {option}"
    return None


def read_holder(run_dir: Path) -> dict[str, Any] | None:
    """The holder record of ``run_dir`` (the last process that took its lock), or None."""
    try:
        return json.loads((Path(run_dir) / HOLDER_NAME).read_text())
    except (OSError, ValueError):
        return None


def describe_holder(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "a process that left no holder record"
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(holder.get("started", 0)))
    return (f"PID {holder.get('pid')} on host {holder.get('host')}, started {started} "
            f"({holder.get('command', '?')})")


def is_held(run_dir: Path) -> bool:
    """Whether some process holds ``run_dir``'s lock now (tries it without waiting; takes nothing)."""
    from filelock import FileLock, Timeout

    path = Path(run_dir) / LOCK_NAME
    if not path.exists():
        return False
    probe = FileLock(str(path), timeout=0)
    try:
        probe.acquire()
    except Timeout:
        return True
    probe.release()
    return False


def _foreign(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds files but is neither a run directory nor a comparison of this package."""
    if not run_dir.is_dir():
        return False
    names = {p.name for p in run_dir.iterdir()}
    if not names - {rundir.CONFIG_YAML, *SESSION_FILES}:
        return False
    if names & {rundir.RESOLVED_CONFIG, rundir.COMPARE, LOCK_NAME}:
        return False
    return not any(rundir.resolved_config(run_dir / n).exists() for n in names)


class RunDirLock:
    """The lock of one run directory in this process (re-entrant; see the module docstring)."""

    _held: dict[Path, RunDirLock] = {}

    def __init__(self, run_dir: Path, log: Callable[[str], None] | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self._lock: Any = None
        self._depth = 0

    @classmethod
    def of(cls, run_dir: Path, log: Callable[[str], None] | None = None) -> RunDirLock:
        key = Path(os.path.abspath(run_dir))
        if key not in cls._held:
            cls._held[key] = cls(run_dir, log)
        return cls._held[key]

    def acquire(self) -> None:
        """Take the lock without waiting, or raise :class:`RunDirBusy` naming the holder."""
        from filelock import FileLock, Timeout

        if self._depth:
            self._depth += 1
            return
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise RunDirBusy(f"{self.run_dir} is a file, not a run directory; choose another --out")
        if _foreign(self.run_dir):
            # not ours: leave no lock file in it (nor sweep it); the run refuses it before writing
            self._depth = 1
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.run_dir / LOCK_NAME), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise RunDirBusy(
                f"{self.run_dir} is in use by another run: {describe_holder(read_holder(self.run_dir))}. "
                "Two runs writing one directory would destroy it; wait for that run to finish, stop it, or "
                "choose another --out (a run that was killed leaves nothing to clean up: its lock is "
                "taken over)") from None
        previous = read_holder(self.run_dir)
        if previous and (previous.get("pid"), previous.get("host")) != (os.getpid(), socket.gethostname()):
            if not previous.get("released"):
                self.log(f"[iterdeploy] {self.run_dir}: taking over the lock of {describe_holder(previous)}, "
                         "which no longer holds it (stopped without releasing it); resuming")
        from iterdeploy_trl.runio import write_json

        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                  "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300]}
        try:
            write_json(self.run_dir / HOLDER_NAME, holder)
        except BaseException:
            lock.release()
            raise
        self._lock = lock
        self._holder = holder
        self._depth = 1
        from iterdeploy_trl.runio import sweep_partial

        for left in sweep_partial(self.run_dir, own_lock=LOCK_NAME):
            self.log(f"[iterdeploy] removed {left}, left by a write that a crash cut short")

    def release(self) -> None:
        if not self._depth:
            return
        self._depth -= 1
        if self._depth or self._lock is None:
            return
        try:  # a clean stop says so, so that the next run does not report a take-over
            from iterdeploy_trl.runio import write_json

            write_json(self.run_dir / HOLDER_NAME, {**self._holder, "released": time.time()})
        except OSError:
            pass  # a full disk must not hide the error that stopped the run
        finally:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> RunDirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def holds_run_dir(prepare: Callable[[Any, dict[str, Any]], Any] | None = None) -> Callable[[F], F]:
    """Decorate ``fn(cfg, out, ...)`` to hold ``out``'s lock while it runs. ``prepare(cfg, kwargs)`` (the
    call's keyword arguments) runs first: the checks that must fail before anything is written, and joining the process group (the main process takes
    the lock; under several processes the others fail with ``dist.MainProcessFailed`` when it cannot be
    taken)."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(cfg: Any, out: Any, *args: Any, **kwargs: Any) -> Any:
            if prepare is not None:
                prepare(cfg, kwargs)
            dist.init()
            lock = RunDirLock.of(Path(out))
            dist.main_first(lock.acquire if dist.is_main() else (lambda: None))
            try:
                return fn(cfg, out, *args, **kwargs)
            finally:
                if dist.is_main():
                    lock.release()

        return wrapper  # type: ignore[return-value]

    return decorate
