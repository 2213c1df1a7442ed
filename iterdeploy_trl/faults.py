"""Fault-injection hooks for the crash and full-disk tests. Production code calls these hooks at the points a
crash or a full disk could strike; without the variables below set, every hook returns at once (they are
inert, so they live in production code; the harness that sets them is :mod:`iterdeploy_trl.testing.killrun`).

- ``ITERDEPLOY_KILL_AT=point`` (or ``point:N``, the N-th time the point is reached): :func:`fault` kills
  the process with SIGKILL right there, as a real crash would (points: ``generation``, ``validation``,
  ``training``, and ``write:<site>`` halfway through a file write, see :func:`disk_write`).
- ``ITERDEPLOY_DISK_FULL_AT=site`` (or ``site:N``): :func:`disk_write` raises ``OSError(ENOSPC)`` at the
  N-th write at that site, halfway through the write where the site writes a file itself.
- ``ITERDEPLOY_WRITE_LOG=file``: each write appends ``<site> <path>`` to that file, so a test can list
  every write site a run reaches (:func:`write_sites`).
- ``ITERDEPLOY_CHUNK_LOG=file``: each process appends ``<rank> <chunk path>`` when it writes a trace chunk
  (:func:`note_chunk`; the distributed tests check that each chunk is written once).
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

KILL_ENV = "ITERDEPLOY_KILL_AT"
DISK_FULL_ENV = "ITERDEPLOY_DISK_FULL_AT"
WRITE_LOG_ENV = "ITERDEPLOY_WRITE_LOG"
CHUNK_LOG_ENV = "ITERDEPLOY_CHUNK_LOG"

_seen: dict[str, int] = {}


def _due(spec: str | None, point: str) -> bool:
    """Whether ``spec`` (``point`` or ``point:N``) fires now; counts the visits of ``point`` in this process."""
    if not spec:
        return False
    name, sep, count = spec.rpartition(":")
    if not sep or not count.isdigit():
        name, count = spec, "1"
    if name != point:
        return False
    _seen[spec] = _seen.get(spec, 0) + 1
    return _seen[spec] == int(count)


def fault(point: str) -> None:
    """Kill this process with SIGKILL if ``ITERDEPLOY_KILL_AT`` names ``point`` (and its count is reached)."""
    if _due(os.environ.get(KILL_ENV), point):
        import signal

        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


def disk_write(site: str, path: Path | str) -> None:
    """A write at ``site`` (of ``path``) is under way: log it, crash here, or fail it as a full disk would."""
    log = os.environ.get(WRITE_LOG_ENV)
    if log:
        with open(log, "a") as fh:
            fh.write(f"{site} {path}\n")
    fault(f"write:{site}")
    if _due(os.environ.get(DISK_FULL_ENV), site):
        raise OSError(errno.ENOSPC, f"No space left on device (injected by {DISK_FULL_ENV}={site})", str(path))


def write_sites(log: Path | str) -> dict[str, int]:
    """Write sites in a ``ITERDEPLOY_WRITE_LOG`` file, in first-reached order, with how often each was reached."""
    counts: dict[str, int] = {}
    for line in Path(log).read_text().splitlines():
        site = line.split(" ", 1)[0]
        counts[site] = counts.get(site, 0) + 1
    return counts


def note_chunk(path: Path, rank: int) -> None:
    """Record that process ``rank`` wrote trace chunk ``path`` (``ITERDEPLOY_CHUNK_LOG``)."""
    log = os.environ.get(CHUNK_LOG_ENV)
    if log:
        with open(log, "a") as fh:
            fh.write(f"{rank} {path}\n")
